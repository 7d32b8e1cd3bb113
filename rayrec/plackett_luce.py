"""Plackett–Luce distribution over ordered slates of k distinct candidates out of K (pure torch).

A Plackett–Luce (PL) model with candidate scores (logits) ``s_1..s_K`` picks the item at each position
from the candidates not shown yet, with probability proportional to ``exp(s_j)``::

    P(slate = (i_1, ..., i_k)) = prod_p exp(s_{i_p}) / sum_{j not in {i_1..i_{p-1}}} exp(s_j)

Everything here is built on :func:`conditional_log_probs` — the [.., k, K] table of each position's
categorical distribution given the slate's prefix — so that the log-probability, the entropy and KL
estimates and the position marginals share one (tested) definition.

References:
    - Plackett, R. L. (1975). The Analysis of Permutations. Applied Statistics 24(2).
    - Kool, W., van Hoof, H., Welling, M. (2019). Stochastic Beams and Where to Find Them: The
      Gumbel-Top-k Trick for Sampling Sequences Without Replacement. ICML. https://arxiv.org/abs/1903.06059
"""

from __future__ import annotations

import torch
from torch.distributions import Distribution, constraints


def gumbel_top_k(logits: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """An exact PL sample: the top k of ``logits`` perturbed with i.i.d. Gumbel(0, 1) noise.

    Args:
        logits: [..., K] candidate scores.
        k: slate size, ``1 <= k <= K``.
        generator: torch RNG for reproducible draws.

    Returns:
        [..., k] int64 candidate indices in display order.
    """
    # -log(Exp(1)) is Gumbel(0, 1); exponential_ takes a generator where torch's Gumbel sampler does not.
    noise = torch.empty_like(logits).exponential_(generator=generator).log().neg()  # [..., K]
    return torch.topk(logits.detach() + noise, k, dim=-1).indices  # [..., k]


def top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The PL mode: the k highest-scoring candidates, best first. [..., K] → [..., k] int64."""
    return torch.topk(logits, k, dim=-1).indices


def conditional_log_probs(logits: torch.Tensor, slate: torch.Tensor) -> torch.Tensor:
    """Log-probability of every candidate at every position, given the slate's earlier positions.

    Args:
        logits: [..., K] candidate scores.
        slate: [..., k] int64 distinct candidate indices (broadcastable against ``logits``' batch shape).

    Returns:
        [..., k, K] where entry ``[p, j]`` is ``log P(position p shows j | positions < p show slate[:p])``;
        ``-inf`` for candidates already shown at an earlier position.
    """
    num_candidates = logits.shape[-1]
    shown = torch.nn.functional.one_hot(slate.long(), num_candidates).bool()  # [..., k, K]
    # Exclusive cumulative "or" along positions: what was shown strictly before position p.
    before = (shown.long().cumsum(dim=-2) - shown.long()).bool()  # [..., k, K]
    masked = logits.unsqueeze(-2).masked_fill(before, float("-inf"))  # [..., k, K]
    return torch.log_softmax(masked, dim=-1)  # [..., k, K]


def _xlogx_sum(log_p: torch.Tensor) -> torch.Tensor:
    """``sum_j p_j log p_j`` over the last axis, with ``0 log 0 = 0`` for excluded (-inf) entries."""
    finite = torch.isfinite(log_p)
    safe = torch.where(finite, log_p, torch.zeros_like(log_p))
    return (safe.exp() * safe * finite).sum(dim=-1)


def slate_log_prob(logits: torch.Tensor, slate: torch.Tensor) -> torch.Tensor:
    """Exact log-probability of the ordered slate. logits [..., K], slate [..., k] → [...]."""
    cond = conditional_log_probs(logits, slate)  # [..., k, K]
    return cond.gather(-1, slate.long().unsqueeze(-1)).squeeze(-1).sum(dim=-1)  # [...]


def entropy_estimate(
    logits: torch.Tensor, k: int, num_samples: int = 1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Chain-rule Monte Carlo estimate of the entropy of the ordered slate, [..., K] → [...].

    By the chain rule ``H(X_1..X_k) = sum_p E[H(X_p | X_<p)]``; we draw ``num_samples`` prefixes from the
    PL model itself and sum the exact conditional entropies along each, which is an unbiased estimate of
    the joint entropy (exact for k = 1 and for the first position). The prefixes are sampled without
    gradient, so the gradient is that of the conditional entropies along the drawn prefixes — the usual
    low-variance surrogate used as an exploration bonus, not the exact entropy gradient.
    """
    slates = gumbel_top_k(logits.unsqueeze(0).expand(num_samples, *logits.shape), k, generator)  # [S, ..., k]
    cond = conditional_log_probs(logits.unsqueeze(0), slates)  # [S, ..., k, K]
    return -_xlogx_sum(cond).sum(dim=-1).mean(dim=0)  # [...]


def kl_estimate(
    logits_p: torch.Tensor,
    logits_q: torch.Tensor,
    k: int,
    num_samples: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Chain-rule Monte Carlo estimate of ``KL(PL(p) || PL(q))`` over ordered slates, [..., K] → [...].

    ``KL = sum_p E_{prefix ~ p}[KL(p(X_p | prefix) || q(X_p | prefix))]``: prefixes drawn from ``p``, exact
    categorical KLs along them. Unbiased, and never negative (unlike the naive ``log p(s) - log q(s)``).
    """
    slates = gumbel_top_k(logits_p.unsqueeze(0).expand(num_samples, *logits_p.shape), k, generator)
    cond_p = conditional_log_probs(logits_p.unsqueeze(0), slates)  # [S, ..., k, K]
    cond_q = conditional_log_probs(logits_q.unsqueeze(0), slates)  # [S, ..., k, K]
    finite = torch.isfinite(cond_p)
    diff = torch.where(finite, cond_p - cond_q, torch.zeros_like(cond_p))
    per_position = (cond_p.exp() * diff).sum(dim=-1)  # [S, ..., k]
    return per_position.sum(dim=-1).mean(dim=0)  # [...]


def position_marginals(
    logits: torch.Tensor, k: int, num_samples: int = 256, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Probability that candidate j is shown at position p, [..., K] → [..., k, K] (rows sum to 1).

    Exact for position 0. Later positions are a Rao–Blackwellised Monte Carlo estimate with
    ``num_samples`` prefixes drawn from the model: the average over drawn prefixes of the exact conditional
    distribution at that position. It is unbiased, every row sums to exactly 1, and — unlike counting
    sampled slates — it is strictly positive for every candidate that can appear, so an item-position
    propensity logged from it is never zero.
    """
    with torch.no_grad():
        slates = gumbel_top_k(logits.unsqueeze(0).expand(num_samples, *logits.shape), k, generator)
        return conditional_log_probs(logits.unsqueeze(0), slates).exp().mean(dim=0)  # [..., k, K]


class PlackettLuce(Distribution):
    """``torch.distributions`` interface to the PL model over ordered slates of ``slate_size`` candidates.

    Args:
        logits: [B..., K] candidate scores; the batch shape is ``logits.shape[:-1]``.
        slate_size: k, the number of distinct candidates in a slate (event shape ``(k,)``).
        num_estimate_samples: prefixes drawn per row for :meth:`entropy` and :meth:`kl`.
    """

    arg_constraints = {"logits": constraints.real}  # noqa: RUF012 (torch's own class-attribute API)
    has_rsample = False

    def __init__(self, logits: torch.Tensor, slate_size: int, num_estimate_samples: int = 1) -> None:
        if not 1 <= slate_size <= logits.shape[-1]:
            raise ValueError(
                f"slate_size {slate_size} must be in 1..{logits.shape[-1]} (the candidate count)"
            )
        self.logits = logits
        self.slate_size = slate_size
        self.num_estimate_samples = num_estimate_samples
        super().__init__(batch_shape=logits.shape[:-1], event_shape=(slate_size,), validate_args=False)

    @property
    def mode(self) -> torch.Tensor:
        return top_k(self.logits, self.slate_size)

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = (), generator=None) -> torch.Tensor:
        logits = self.logits.expand(*sample_shape, *self.logits.shape)
        return gumbel_top_k(logits, self.slate_size, generator)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return slate_log_prob(self.logits, value)

    def entropy(self) -> torch.Tensor:
        return entropy_estimate(self.logits, self.slate_size, self.num_estimate_samples)

    def kl(self, other: PlackettLuce) -> torch.Tensor:
        """Estimate of ``KL(self || other)``, see :func:`kl_estimate`."""
        return kl_estimate(self.logits, other.logits, self.slate_size, self.num_estimate_samples)
