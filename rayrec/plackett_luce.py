"""Plackett–Luce distribution over ordered slates of k distinct candidates out of K (pure torch).

A Plackett–Luce (PL) model with candidate scores (logits) ``s_1..s_K`` picks the item at each position
from the candidates not shown yet, with probability proportional to ``exp(s_j)``::

    P(slate = (i_1, ..., i_k)) = prod_p exp(s_{i_p}) / sum_{j not in {i_1..i_{p-1}}} exp(s_j)

Everything here is built on :func:`conditional_log_probs` — the [.., k, K] table of each position's
categorical distribution given the slate's prefix — so that the log-probability, the entropy and KL
estimates and the Monte Carlo position marginals share one (tested) definition. Exact position marginals
(slates of up to 10) come from the exponential-race form of the same model
(:func:`exact_position_marginals`), tested against enumeration.

References:
    - Plackett, R. L. (1975). The Analysis of Permutations. Applied Statistics 24(2).
    - Kool, W., van Hoof, H., Welling, M. (2019). Stochastic Beams and Where to Find Them: The
      Gumbel-Top-k Trick for Sampling Sequences Without Replacement. ICML. https://arxiv.org/abs/1903.06059
"""

from __future__ import annotations

import math

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


EXACT_MARGINALS_MAX_SLATE = 10
"""Slates of up to this many positions get exact position marginals (:func:`exact_position_marginals`)."""

_QUADRATURE_STEP = 0.25
"""Trapezoid step in log-time: the integrands are smooth and decay at both ends, so the rule converges
geometrically; 0.25 keeps the error below 1e-10 per entry (tested against enumeration)."""
_LEFT_NATS = 18.0
"""The grid starts where ``t * sum(weights) = e^-18``: below it, positions >= 1 hold < 1e-15 of the mass."""
_RIGHT_ARRIVALS = 40.0
"""The grid ends where the (k+1)-th heaviest candidate has arrived with probability 1 - e^-40."""
_SPREAD_NATS = 700.0
"""Logits further than this below a row's maximum are raised to it (exp would underflow to 0)."""
_CELLS = 1 << 23
"""float64 cells (64 MiB) of the suffix table held at once: rows are processed in chunks of this size."""


def exact_position_marginals(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Exact PL position marginals ``P(candidate j at position p)``, [..., K] → [..., k, K] float64.

    PL sampling is an exponential race: candidate i arrives at ``T_i ~ Exp(w_i)``, ``w_i = exp(s_i)``, and
    the slate lists the first k arrivals in order (this is the Gumbel-top-k trick: ``-log T_i`` is a
    Gumbel perturbation of ``s_i``). So j is at position p exactly when j arrives at some t and exactly p
    of the others have arrived before::

        P(j at p) = integral_0^inf  w_j e^{-w_j t}  PB_{-j}(p; t)  dt,

    where ``PB_{-j}(p; t)`` is the Poisson-binomial probability that exactly p of the other candidates,
    each arrived with probability ``1 - e^{-w_i t}``, have arrived. For every t the probabilities of 0..k-1
    arrivals among all-but-j come from prefix and suffix products of the candidates' generating
    polynomials ``(e^{-w_i t} + (1 - e^{-w_i t}) z)`` truncated at degree k-1 (sums of non-negative terms:
    no cancellation). The integral is a trapezoid rule in ``y = log t``, where each candidate's arrival
    density is a Gumbel density of unit scale — smooth and decaying at both ends, so the rule converges
    geometrically; the grid runs from where nothing has arrived to where the k+1 heaviest have. Position 0
    is the closed form ``w_j / sum(w)``.

    Cost: O(G K k^2) per row, with G ≈ 4 × (22 + ln K + the spread in nats of the k+1 largest logits)
    grid points: about 0.4 ms per row for K = 20, k = 5 and 3.5 ms for K = 100, k = 10 on one core, less
    than the 256-sample Monte Carlo estimate costs. Accuracy: better than 1e-9 per entry.

    References:
        - Luce, R. D. (1959). Individual Choice Behavior; Yellott, J. I. (1977). "The relationship
          between Luce's choice axiom, Thurstone's theory of comparative judgment, and the double
          exponential distribution." J. Math. Psychology 15 (the exponential race).
        - Trefethen, L. N. & Weideman, J. A. C. (2014). "The exponentially convergent trapezoidal rule."
          SIAM Review 56(3).
    """
    if not 1 <= k <= logits.shape[-1]:
        raise ValueError(f"slate size {k} must be in 1..{logits.shape[-1]} (the candidate count)")
    batch_shape, num = logits.shape[:-1], logits.shape[-1]
    flat = logits.detach().reshape(-1, num).double()  # [B, K]
    shifted = flat - flat.max(dim=-1, keepdim=True).values
    weights = shifted.clamp(min=-_SPREAD_NATS).exp()  # [B, K], max 1
    total = weights.sum(dim=-1)  # [B]
    out = torch.empty(len(flat), k, num, dtype=torch.float64)
    out[:, 0] = weights / total[:, None]
    if k > 1 and len(flat):
        stop = weights.topk(min(k + 1, num), dim=-1).values[:, -1]  # [B] (k+1)-th heaviest
        start = -total.log() - _LEFT_NATS  # [B] first grid point (log-time)
        points = torch.ceil((math.log(_RIGHT_ARRIVALS) - stop.log() - start) / _QUADRATURE_STEP).long() + 1
        order = torch.argsort(points, descending=True)
        first = 0
        while first < len(order):
            size = max(1, _CELLS // (int(points[order[first]]) * num * k))
            rows = order[first : first + size]
            out[rows, 1:] = _later_positions(weights[rows], start[rows], int(points[rows[0]]), k)
            first += size
    return out.reshape(*batch_shape, k, num)


def _later_positions(weights: torch.Tensor, start: torch.Tensor, points: int, k: int) -> torch.Tensor:
    """Positions 1..k-1 of :func:`exact_position_marginals` for B rows: [B, K] weights → [B, k - 1, K].

    Args:
        start: [B] first grid point of each row in log-time; every row uses ``points`` points.
    """
    batch, num = weights.shape
    step = _QUADRATURE_STEP
    time = (start[:, None] + step * torch.arange(points, dtype=torch.float64)).exp()  # [B, G]
    rate = (weights.T[:, :, None] * time[None]).reshape(num, -1)  # [K, N = B G]: w_i t
    waiting = torch.exp(-rate)  # [K, N] candidate i not arrived by t
    arrived = -torch.expm1(-rate)  # [K, N]
    # suffix[i, m]: P(exactly m of the candidates after i have arrived), m < k.
    suffix = torch.zeros(num, k, rate.shape[1], dtype=torch.float64)
    suffix[-1, 0] = 1.0
    for i in range(num - 2, -1, -1):
        torch.mul(suffix[i + 1], waiting[i + 1], out=suffix[i])
        suffix[i, 1:] += suffix[i + 1, :-1] * arrived[i + 1]
    prefix = torch.zeros(k, rate.shape[1], dtype=torch.float64)  # candidates before j
    prefix[0] = 1.0
    density = rate * waiting  # [K, N] w_j t e^{-w_j t}: the arrival density in log-time
    out = torch.empty(batch, k - 1, num, dtype=torch.float64)
    for j in range(num):
        others = torch.zeros(k - 1, rate.shape[1], dtype=torch.float64)  # m = 1..k-1 arrivals but j
        for a in range(k):
            low = max(1, a)
            others[low - 1 :] += prefix[a] * suffix[j, low - a : k - a]
        out[:, :, j] = step * (others * density[j]).reshape(k - 1, batch, points).sum(dim=-1).T
        grown = prefix * waiting[j]
        grown[1:] += prefix[:-1] * arrived[j]
        prefix = grown
    return out


def position_marginals(
    logits: torch.Tensor, k: int, num_samples: int = 256, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Probability that candidate j is shown at position p, [..., K] → [..., k, K] in ``logits``' dtype.

    For slates of up to :data:`EXACT_MARGINALS_MAX_SLATE` positions the marginals are exact
    (:func:`exact_position_marginals`), so the propensities logged from them and the importance weights
    divided by them carry no sampling error. Longer slates get a Rao–Blackwellised Monte Carlo estimate
    with ``num_samples`` prefixes drawn from the model (``generator``): the average over drawn prefixes of
    the exact conditional distribution at that position — unbiased, rows summing to exactly 1, strictly
    positive for every candidate that can appear, exact at position 0.
    """
    with torch.no_grad():
        if k <= EXACT_MARGINALS_MAX_SLATE:
            return exact_position_marginals(logits, k).to(logits.dtype)
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
