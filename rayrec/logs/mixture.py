"""Who logged what: the logging process of a multi-arm log, and how much support it gives a target.

A log written by ``rayrec ab`` or ``rayrec serve`` mixes A logging policies: each user is assigned to an
arm by a salted hash (share ``rho_a`` of the users, the same for every kind of user) and every request of
the user is ranked by that arm's policy ``pi_a``. Treating the assignment as the randomisation it is, the
probability that the logging process showed what the log holds — marginalised over the arm — is known
exactly once every logged request is re-scored by every arm's policy (the requests table keeps the
candidates and features each ranker saw):

- a user's first request is ranked by arm a with probability ``rho_a``, so the probability of showing j
  at position p is the mixture ``sum_a rho_a pi_a(j at p | x)``: the balance heuristic of Agarwal et al.
  (2017), which weights a deterministic arm's requests with the randomised arms' probabilities instead of
  giving them weight 0 wherever the target differs;
- a later request is ranked by arm a with the posterior probability ``P(a | what the user was shown
  before) ∝ rho_a prod_{earlier} pi_a(slate | x)``: the mixture stays the exact probability of the
  event given everything before it. (After a few requests the posterior usually names the arm, and a
  deterministic arm's later requests support only its own slates — which the diagnostics then report.)

The same mixture over whole slate sequences gives the trajectory weights of the session-level
estimators: ``W_t = prod_{u <= t} pi(s_u | x_u) / sum_a rho_a prod_{u <= t} pi_a(s_u | x_u)``.

References:
    - Agarwal, A., Basu, S., Schnabel, T. & Joachims, T. (2017). "Effective Evaluation using Logged
      Bandit Feedback from Multiple Loggers." KDD.
    - Veach, E. & Guibas, L. (1995). "Optimally Combining Sampling Techniques for Monte Carlo Rendering."
      SIGGRAPH (the balance heuristic).
    - Kish, L. (1965). Survey Sampling (the effective sample size).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import logsumexp

from rayrec import plackett_luce
from rayrec.baselines import RandomPolicy
from rayrec.errors import DataError
from rayrec.slate_policy import Observation, SlatePolicy


def slate_log_prob(policy: SlatePolicy, obs: Observation, slates: np.ndarray) -> np.ndarray:
    """[b] log-probability that ``policy`` shows the ordered slates [b, k] on ``obs``.

    Uniformly random slates, trained policies in sampled mode (Plackett–Luce over their scores) and
    deterministic policies (their marginals are 0 or 1) are known; any other policy must offer
    ``slate_log_prob(obs, slates)``.
    """
    own = getattr(policy, "slate_log_prob", None)
    if callable(own):
        return np.asarray(own(obs, slates), dtype=np.float64)
    b, k = slates.shape
    if isinstance(policy, RandomPolicy):
        num = obs["features"].shape[1]
        return np.full(b, -np.log(num - np.arange(k, dtype=np.float64)).sum())
    if getattr(policy, "sampled", False) and callable(getattr(policy, "scores", None)):
        logits = torch.from_numpy(np.asarray(policy.scores(obs), dtype=np.float64))  # [b, K]
        return plackett_luce.slate_log_prob(logits, torch.from_numpy(slates)).numpy()
    marginals = policy.position_marginals(obs, k)  # [b, k, K]
    if not np.isin(marginals, (0.0, 1.0)).all():
        raise DataError(
            f"policy {policy.name!r}: the probability of a whole slate is unknown (it is randomised but "
            "neither uniform nor Plackett–Luce); give it a slate_log_prob(obs, slates) method"
        )
    shown = np.take_along_axis(marginals, slates[:, :, None], axis=2)[..., 0]  # [b, k] 0 or 1
    return np.where(shown.all(axis=1), 0.0, -np.inf)


def within_user_cumsum(values: np.ndarray, user: np.ndarray, *, inclusive: bool) -> np.ndarray:
    """[n] sums of ``values`` [n] (which may be -inf) over each user's rows up to each row.

    Args:
        user: [n] non-decreasing user of each row.
        inclusive: include the row itself (else only the rows before it).
    """
    impossible = ~np.isfinite(values)
    finite = np.where(impossible, 0.0, values)
    total, count = np.cumsum(finite), np.cumsum(impossible)
    starts = np.flatnonzero(np.r_[True, np.diff(user) != 0])  # [U] first row of each user
    total = total - (total - finite)[starts][user]  # inclusive sums restarted at each user
    count = count - (count - impossible)[starts][user]
    if not inclusive:
        total, count = total - finite, count - impossible
    return np.where(count > 0, -np.inf, total)


@dataclass(frozen=True)
class LoggingMixture:
    """The logging process of n requests of U users by A policies (module docstring).

    Attributes:
        names: A logging policy names.
        shares: [A] share of the users each policy ranked for (the arm weights, as realised).
        user: [n] non-decreasing user of each request.
        log_slate: [A, n] log-probability that policy a shows the slate that request i logged.
    """

    names: tuple[str, ...]
    shares: np.ndarray
    user: np.ndarray
    log_slate: np.ndarray

    def __post_init__(self) -> None:
        a, n = len(self.names), len(self.user)
        if self.shares.shape != (a,) or self.log_slate.shape != (a, n):
            raise ValueError(
                f"LoggingMixture: shares {self.shares.shape} and log_slate {self.log_slate.shape} must be "
                f"[{a}] and [{a}, {n}]"
            )
        if not np.isclose(self.shares.sum(), 1.0) or (self.shares <= 0).any():
            raise ValueError(f"LoggingMixture: shares {self.shares} must be positive and sum to 1")

    def _prefix(self, *, inclusive: bool) -> np.ndarray:
        """[A, n] log rho_a + log prod of pi_a over the user's requests up to each one."""
        return np.log(self.shares)[:, None] + np.stack(
            [within_user_cumsum(row, self.user, inclusive=inclusive) for row in self.log_slate]
        )

    def posterior(self) -> np.ndarray:
        """[n, A] probability that request i's user was ranked by policy a, given the user's earlier slates."""
        prior = self._prefix(inclusive=False)  # [A, n]
        return np.exp(prior - logsumexp(prior, axis=0)).T

    def log_behaviour(self) -> np.ndarray:
        """[n] log-probability that the logging process showed the user's slates up to request i."""
        return logsumexp(self._prefix(inclusive=True), axis=0)


@dataclass(frozen=True)
class WeightDiagnostics:
    """How well the log supports an estimate, from its importance weights.

    Attributes:
        unsupported_mass: share of the target's probability mass on events the log is unlikely to hold
            (a weight above the number of logged events, probability 0 included); the weighted estimators
            effectively miss it (IPS is then low by up to that share of the value). None where it cannot
            be computed (whole slate sequences).
        ess: Kish's effective sample size of the weights, ``(sum w)^2 / sum w^2``.
        ess_share: ``ess`` over the number of weights.
        max_weight: the largest weight.
        mean_weight: the mean weight (about ``1 - unsupported_mass`` when the propensities are right).
    """

    unsupported_mass: float | None
    ess: float
    ess_share: float
    max_weight: float
    mean_weight: float

    @classmethod
    def of(cls, weights: np.ndarray, unsupported_mass: float | None) -> WeightDiagnostics:
        """From the weights [m] of the estimate."""
        total, squares = float(weights.sum()), float(np.square(weights).sum())
        ess = total * total / squares if squares > 0 else 0.0
        return cls(
            unsupported_mass=unsupported_mass,
            ess=ess,
            ess_share=ess / len(weights),
            max_weight=float(weights.max()),
            mean_weight=total / len(weights),
        )
