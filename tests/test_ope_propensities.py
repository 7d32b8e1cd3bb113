"""Propensities that importance weights divide by: exact Plackett–Luce marginals, slate probabilities and
the multi-logger mixture, each against brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from rayrec import plackett_luce as pl
from rayrec.baselines import GreedyPolicy, RandomPolicy
from rayrec.errors import DataError
from rayrec.logs.mixture import LoggingMixture, WeightDiagnostics, slate_log_prob, within_user_cumsum


def enumerate_marginals(logits: np.ndarray, k: int) -> np.ndarray:
    """[k, K] position marginals from the probability of every ordered slate (float64, exact sums)."""
    weights = np.exp(logits - logits.max())
    out = np.zeros((k, len(weights)))
    for slate in itertools.permutations(range(len(weights)), k):
        p, left = 1.0, np.ones(len(weights), dtype=bool)
        for item in slate:
            p *= weights[item] / weights[left].sum()
            left[item] = False
        out[np.arange(k), list(slate)] += p
    return out


@pytest.mark.parametrize("scale", [0.1, 1.0, 3.0, 10.0, 30.0])
def test_exact_marginals_match_enumeration(scale):
    rng = np.random.default_rng(int(scale * 10))
    for _ in range(6):
        num = int(rng.integers(2, 8))
        k = int(rng.integers(1, num + 1))
        logits = rng.normal(size=num) * scale  # scale 30: weights spanning e^100, ties of tiny items
        exact = pl.exact_position_marginals(torch.from_numpy(logits), k).numpy()
        np.testing.assert_allclose(exact, enumerate_marginals(logits, k), atol=1e-9, rtol=0)


def test_exact_marginals_are_a_distribution_for_a_hundred_candidates():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 100)) * 2.0
    marginals = pl.exact_position_marginals(torch.from_numpy(logits), 10).numpy()  # [3, 10, 100]
    np.testing.assert_allclose(marginals.sum(-1), 1.0, atol=1e-7)  # every position shows one item
    assert (marginals.sum(-2) <= 1.0 + 1e-7).all() and (marginals > 0).all()  # an item at most once
    # Position 1 in closed form: the first item i, then j first among the rest.
    w = np.exp(logits - logits.max(-1, keepdims=True))  # [3, K]
    total = w.sum(-1, keepdims=True)
    after_i = (w / total)[:, :, None] * w[:, None, :] / (total[:, :, None] - w[:, :, None])  # [3, i, j]
    after_i[:, np.arange(100), np.arange(100)] = 0.0
    np.testing.assert_allclose(marginals[:, 1], after_i.sum(1), atol=1e-9)


def test_position_marginals_are_exact_up_to_ten_positions_in_the_input_dtype():
    logits = torch.tensor([[1.2, -0.3, 0.0, 2.0, -1.5]])
    exact = enumerate_marginals(logits[0].double().numpy(), 3)
    marginals = pl.position_marginals(logits, 3)  # no samples drawn
    assert marginals.dtype == torch.float32 and marginals.shape == (1, 3, 5)
    np.testing.assert_allclose(marginals[0].numpy(), exact, atol=1e-7)
    long = pl.position_marginals(
        torch.randn(2, 30), 12, num_samples=64, generator=torch.Generator().manual_seed(0)
    )
    np.testing.assert_allclose(long.sum(-1).numpy(), 1.0, atol=1e-5)  # k > 10: the Monte Carlo estimate


def _obs(batch: int, num: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "profile": rng.normal(size=(batch, 4)).astype(np.float32),
        "candidates": rng.normal(size=(batch, num, 4)).astype(np.float32),
        "features": rng.normal(size=(batch, num, 3)).astype(np.float32),
        "budget": np.ones((batch, 1), np.float32),
    }


class _Unknown:
    """A randomised policy whose slate probabilities nobody knows."""

    name = "unknown"

    def position_marginals(self, obs, slate_size):
        return np.full((len(obs["features"]), slate_size, obs["features"].shape[1]), 0.25)


def test_slate_log_prob_of_random_deterministic_and_unknown_policies():
    rng = np.random.default_rng(1)
    obs = _obs(5, 6, rng)
    shown = np.stack([rng.permutation(6)[:3] for _ in range(5)])
    np.testing.assert_allclose(slate_log_prob(RandomPolicy(), obs, shown), -math.log(6 * 5 * 4))
    greedy = GreedyPolicy()
    own = greedy.select(obs, 3).indices
    shown[0] = own[0]
    logp = slate_log_prob(greedy, obs, shown)
    assert logp[0] == 0.0 and np.isneginf(logp[1:]).all()
    with pytest.raises(DataError, match="slate_log_prob"):
        slate_log_prob(_Unknown(), obs, shown)


def test_mixture_posterior_and_behaviour_match_the_arm_assignment_by_hand():
    # Two users, two arms with shares 0.25 / 0.75; per-request slate probabilities under each arm.
    user = np.array([0, 0, 0, 1, 1])
    probs = np.array([[0.5, 0.5, 0.2, 1.0, 0.1], [0.1, 0.4, 0.2, 0.0, 0.3]])  # [A, n]
    shares = np.array([0.25, 0.75])
    with np.errstate(divide="ignore"):
        mixture = LoggingMixture(("a", "b"), shares, user, np.log(probs))
    expected_posterior, expected_behaviour = [], []
    for u in (0, 1):
        rows = np.flatnonzero(user == u)
        for t, _ in enumerate(rows):
            before = shares * probs[:, rows[:t]].prod(axis=1)
            expected_posterior.append(before / before.sum())
            expected_behaviour.append((shares * probs[:, rows[: t + 1]].prod(axis=1)).sum())
    np.testing.assert_allclose(mixture.posterior(), expected_posterior)
    np.testing.assert_allclose(np.exp(mixture.log_behaviour()), expected_behaviour)
    np.testing.assert_array_equal(
        within_user_cumsum(np.array([1.0, -np.inf, 2.0, 3.0, 4.0]), user, inclusive=False),
        [0.0, 1.0, -np.inf, 0.0, 3.0],
    )


def test_weight_diagnostics():
    diag = WeightDiagnostics.of(np.array([1.0, 1.0, 2.0, 0.0]), 0.1)
    assert diag.ess == pytest.approx(16 / 6) and diag.ess_share == pytest.approx(16 / 24)
    assert diag.max_weight == 2.0 and diag.mean_weight == 1.0 and diag.unsupported_mass == 0.1
