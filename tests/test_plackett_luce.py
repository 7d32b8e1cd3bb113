"""Plackett–Luce against brute-force enumeration of every ordered slate on a small K."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from rayrec import plackett_luce as pl

K, k = 5, 3


def _enumerate(logits: torch.Tensor, slate_size: int) -> dict[tuple[int, ...], float]:
    """Probability of every ordered slate, straight from the PL definition (float64)."""
    weights = logits.double().exp().tolist()
    probs = {}
    for slate in itertools.permutations(range(len(weights)), slate_size):
        p, remaining = 1.0, sum(weights)
        for item in slate:
            p *= weights[item] / remaining
            remaining -= weights[item]
        probs[slate] = p
    return probs


@pytest.fixture
def logits() -> torch.Tensor:
    return torch.tensor([1.2, -0.3, 0.0, 2.0, -1.5])


def test_log_probs_match_enumeration_and_sum_to_one(logits):
    exact = _enumerate(logits, k)
    slates = torch.tensor(list(exact))  # [P, k]
    log_p = pl.slate_log_prob(logits.expand(len(slates), K), slates)  # [P]
    np.testing.assert_allclose(log_p.exp().numpy(), np.array(list(exact.values())), rtol=1e-5)
    assert math.isclose(log_p.exp().sum().item(), 1.0, rel_tol=1e-5)
    assert len(exact) == math.perm(K, k)


def test_gumbel_top_k_frequencies_match_enumeration(logits):
    exact = _enumerate(logits, k)
    n = 200_000
    draws = pl.gumbel_top_k(logits.expand(n, K), k, torch.Generator().manual_seed(0))  # [n, k]
    assert (draws.sort(dim=-1).values.diff(dim=-1) > 0).all(), "slates must hold distinct candidates"
    counts: dict[tuple[int, ...], int] = {}
    for row in map(tuple, draws.tolist()):
        counts[row] = counts.get(row, 0) + 1
    for slate, p in exact.items():
        # 5 binomial standard deviations: a wrong sampler fails, a right one essentially never does.
        assert abs(counts.get(slate, 0) / n - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-4, slate


def test_entropy_and_kl_estimates_match_enumeration(logits):
    exact = _enumerate(logits, k)
    true_entropy = -sum(p * math.log(p) for p in exact.values())
    estimate = pl.entropy_estimate(logits, k, num_samples=20_000, generator=torch.Generator().manual_seed(1))
    assert estimate.item() == pytest.approx(true_entropy, rel=0.01)

    other = torch.tensor([0.0, 0.5, -0.5, 1.0, 0.3])
    exact_q = _enumerate(other, k)
    true_kl = sum(p * math.log(p / exact_q[s]) for s, p in exact.items())
    kl = pl.kl_estimate(logits, other, k, num_samples=20_000, generator=torch.Generator().manual_seed(2))
    assert kl.item() == pytest.approx(true_kl, rel=0.03)
    assert pl.kl_estimate(logits, logits, k, num_samples=8).item() == pytest.approx(0.0, abs=1e-6)


def test_position_marginals_match_enumeration(logits):
    exact = _enumerate(logits, k)
    expected = np.zeros((k, K))
    for slate, p in exact.items():
        for pos, item in enumerate(slate):
            expected[pos, item] += p
    marg = pl.position_marginals(logits, k, num_samples=20_000, generator=torch.Generator().manual_seed(3))
    assert marg.shape == (k, K)
    np.testing.assert_allclose(marg.sum(-1).numpy(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(marg[0].numpy(), expected[0], rtol=1e-5)  # position 0 is exact
    np.testing.assert_allclose(marg.numpy(), expected, atol=0.01)
    assert (marg > 0).all()


def test_distribution_interface_and_mode(logits):
    batch = torch.stack([logits, -logits])  # [2, K]
    dist = pl.PlackettLuce(batch, slate_size=k)
    assert dist.batch_shape == (2,) and dist.event_shape == (k,)
    assert dist.mode.tolist() == [[3, 0, 2], [4, 1, 2]]
    sample = dist.sample((7,))
    assert sample.shape == (7, 2, k)
    assert dist.log_prob(sample).shape == (7, 2)
    assert dist.entropy().shape == (2,)
    with pytest.raises(ValueError, match="slate_size"):
        pl.PlackettLuce(batch, slate_size=K + 1)


def test_log_prob_is_differentiable(logits):
    scores = logits.clone().requires_grad_(True)
    pl.slate_log_prob(scores, torch.tensor([3, 0, 2])).backward()
    # d log P / d s_j = 1[j shown] - sum over positions of P(j | prefix): finite and summing to zero.
    assert torch.isfinite(scores.grad).all()
    assert scores.grad.sum().item() == pytest.approx(0.0, abs=1e-5)
