"""Off-policy estimators for slate policies under the item-position model: IPS, SNIPS, DM and DR.

Assumption (item-position model, IPM): the click on the item shown at position p depends only on the
context, that item and p — not on the other items of the slate — so a slate's value is the sum of its
positions' values and

    V(π) = E_x  Σ_p Σ_j  π(j at p | x) · E[click | x, j, p].

It needs only the item-position marginals ``π(j at p | x)`` of the logging and target policies
(:meth:`rayrec.slate_policy.SlatePolicy.position_marginals`), not the probability of whole slates, whose
number (K!/(K-k)!) makes slate-level importance weights unusable. The model is exact when clicks at
different positions are independent; under a choice model where items compete for one click (the
simulator's conditional logit) it is an approximation whose error shrinks as the no-click option
dominates (rare clicks), and grows when the target shows many more attractive items together than the
logging policy did.

Estimators, for n logged requests with weights ``w_ip = π_t(a_ip at p | x_i) / π_0(a_ip at p | x_i)``:

- IPS:   (1/n) Σ_i Σ_p w_ip c_ip
- SNIPS: Σ_p (Σ_i w_ip c_ip) / (Σ_i w_ip)                 (self-normalised per position)
- DM:    (1/n) Σ_i Σ_p Σ_j π_t(j at p | x_i) q̂(x_i, j, p)
- DR:    DM + (1/n) Σ_i Σ_p w_ip (c_ip - q̂(x_i, a_ip, p))

with q̂ a click model fitted on the logs (:mod:`rayrec.ab.reward_model`). The value is expected clicks per
request. Intervals are percentile bootstraps that resample *users* (all of a user's requests together),
since requests of one user are not independent.

References:
    - Li, S., Abbasi-Yadkori, Y., Kveton, B., Muthukrishnan, S., Vinay, V. & Wen, Z. (2018). "Offline
      Evaluation of Ranking Policies with Click Models." KDD.
    - Swaminathan, A., Krishnamurthy, A., Agarwal, A., Dudík, M., Langford, J., Jose, D. & Zitouni, I.
      (2017). "Off-policy evaluation for slate recommendation." NeurIPS.
    - Dudík, M., Langford, J. & Li, L. (2011). "Doubly Robust Policy Evaluation and Learning." ICML.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rayrec.ab.stats import resample_counts
from rayrec.errors import DataError

ESTIMATORS = ("ips", "snips", "dm", "dr")


@dataclass(frozen=True)
class LoggedSlates:
    """Logged requests and the target policy's view of them (n requests, k positions, K candidates).

    Attributes:
        user_index: [n] int64 user of each request (0..U-1), the bootstrap's resampling unit.
        shown: [n, k] int64 candidate index shown at each position.
        mask: [n, k] bool, False for positions beyond a request's slate size.
        logging_propensity: [n, k] float64 π_0(shown at p | x) as logged, in (0, 1] where ``mask``.
        clicks: [n, k] float64 reward of each shown item (1.0 for a click).
        target_marginals: [n, k, K] float64 π_t(j at p | x) of the target policy.
        predicted_clicks: [n, k, K] float64 click model's q̂(x, j, p).
    """

    user_index: np.ndarray
    shown: np.ndarray
    mask: np.ndarray
    logging_propensity: np.ndarray
    clicks: np.ndarray
    target_marginals: np.ndarray
    predicted_clicks: np.ndarray

    def __post_init__(self) -> None:
        n, k = self.shown.shape
        if n == 0:
            raise DataError("no logged requests to evaluate")
        for name in ("mask", "logging_propensity", "clicks"):
            if getattr(self, name).shape != (n, k):
                raise ValueError(f"LoggedSlates.{name}: shape {getattr(self, name).shape}, expected {(n, k)}")
        if self.user_index.shape != (n,):
            raise ValueError(f"LoggedSlates.user_index: shape {self.user_index.shape}, expected ({n},)")
        big_k = self.target_marginals.shape[-1]
        for name in ("target_marginals", "predicted_clicks"):
            if getattr(self, name).shape != (n, k, big_k):
                raise ValueError(
                    f"LoggedSlates.{name}: shape {getattr(self, name).shape}, expected {(n, k, big_k)}"
                )
        prop = self.logging_propensity[self.mask]
        bad = ~((prop > 0) & (prop <= 1))
        if bad.any():
            raise DataError(
                f"{int(bad.sum())} logged propensities are outside (0, 1] (e.g. {prop[bad][:3].tolist()}); "
                "importance weights need the logging policy's probability of each shown item"
            )

    def weights(self) -> np.ndarray:
        """[n, k] importance weights π_t/π_0 of the shown items (0 at masked positions)."""
        target = np.take_along_axis(self.target_marginals, self.shown[..., None], axis=2)[..., 0]  # [n, k]
        return np.where(self.mask, target / np.where(self.mask, self.logging_propensity, 1.0), 0.0)


@dataclass(frozen=True)
class OpeEstimate:
    """One estimator's value (expected clicks per request) and its bootstrap interval."""

    value: float
    ci_low: float
    ci_high: float


def per_request_terms(logged: LoggedSlates) -> dict[str, np.ndarray]:
    """The per-request quantities every estimator is a ratio of sums of.

    Returns:
        ``ips`` [n], ``dm`` [n], ``dr`` [n], ``snips_num`` [n, k], ``snips_den`` [n, k].
    """
    w = logged.weights()  # [n, k]
    clicks = np.where(logged.mask, logged.clicks, 0.0)
    direct = (logged.target_marginals * logged.predicted_clicks).sum(-1)  # [n, k] E_target[q̂] per position
    direct = np.where(logged.mask, direct, 0.0)
    q_shown = np.take_along_axis(logged.predicted_clicks, logged.shown[..., None], axis=2)[..., 0]  # [n, k]
    return {
        "ips": (w * clicks).sum(1),
        "dm": direct.sum(1),
        "dr": direct.sum(1) + (w * (clicks - np.where(logged.mask, q_shown, 0.0))).sum(1),
        "snips_num": w * clicks,
        "snips_den": w,
    }


def _estimates(sums: dict[str, np.ndarray], requests: np.ndarray) -> dict[str, np.ndarray]:
    """Estimator values from (possibly resampled) sums over requests: each value [...]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        snips = np.where(sums["snips_den"] > 0, sums["snips_num"] / sums["snips_den"], 0.0).sum(-1)
        return {
            "ips": sums["ips"] / requests,
            "snips": snips,
            "dm": sums["dm"] / requests,
            "dr": sums["dr"] / requests,
        }


def estimate_all(
    logged: LoggedSlates, *, alpha: float = 0.05, resamples: int = 1000, seed: int = 0
) -> dict[str, OpeEstimate]:
    """IPS, SNIPS, DM and DR with user-level percentile-bootstrap intervals.

    Per-user sums of each term are formed once; a bootstrap resample is then a matrix product of
    resampling counts [b, U] with those sums [U, m], for all estimators at once.
    """
    terms = per_request_terms(logged)
    _, users = np.unique(logged.user_index, return_inverse=True)
    n_users = int(users.max()) + 1

    def per_user(values: np.ndarray) -> np.ndarray:  # [n, ...] → [U, ...]
        out = np.zeros((n_users, *values.shape[1:]))
        np.add.at(out, users, values)
        return out

    user_sums = {name: per_user(v) for name, v in terms.items()}
    user_requests = np.bincount(users, minlength=n_users).astype(np.float64)  # [U]
    point = _estimates({k: v.sum(0) for k, v in user_sums.items()}, user_requests.sum())
    rng = np.random.default_rng(seed)
    draws: dict[str, list[np.ndarray]] = {name: [] for name in ESTIMATORS}
    for counts in resample_counts(n_users, resamples, rng):  # [b, U]
        resampled = {name: np.tensordot(counts, v, axes=(1, 0)) for name, v in user_sums.items()}  # [b, ...]
        for name, values in _estimates(resampled, counts @ user_requests).items():
            draws[name].append(values)
    out = {}
    for name in ESTIMATORS:
        lo, hi = np.quantile(np.concatenate(draws[name]), [alpha / 2.0, 1.0 - alpha / 2.0])
        out[name] = OpeEstimate(value=float(point[name]), ci_low=float(lo), ci_high=float(hi))
    return out
