"""Item-level off-policy estimators of a slate policy's reward per request: IPS, SNIPS, DM, DR (and clipped).

Target quantity: the target policy's expected reward per request on the logged requests,

    V(π) = (1/n) Σ_i E_{s ~ π(x_i)} [ Σ_{p < k_i} reward at position p ],

where request i shows ``k_i`` positions (slate sizes may vary: the size is part of the request). Every
estimator below estimates this same V; for one-step sessions it is the target's on-policy value.

Weights are item-position weights ``w_ip = π(a_ip at p | x_i) / μ(a_ip at p | h_i)`` with μ the logging
process's probability of showing the logged item there — the mixture of every logging policy, weighted by
the probability that the user's arm was each of them (:mod:`rayrec.logs.mixture`). They need only the
item-position marginals of the policies, never the probability of whole slates, whose number
(K!/(K-k)!) makes slate-level weights unusable. The price is the item-position model (IPM): IPS and SNIPS
are unbiased when the reward at position p depends only on the context, the item and p. Clicks that
compete (a user picks at most one item of the slate, as in the simulator's choice model) break it, the
more so the more often users click; the direct method uses a slate click model that has that competition
(:mod:`rayrec.ab.reward_model`), and the doubly robust estimator adds its item-position-weighted residuals,
so DR is unbiased when the click model is right, and when the IPM holds for it and for the clicks.

Estimators, with ``n_p`` the number of requests that have a position p:

- IPS:   (1/n) Σ_i Σ_p w_ip r_ip
- SNIPS: Σ_p (n_p / n) (Σ_i w_ip r_ip) / (Σ_i w_ip)      (self-normalised per position: E[w_ip] = 1)
- DM:    (1/n) Σ_i E_{s ~ π(x_i)} Σ_p r̂(x_i, s, p)
- DR:    DM + (1/n) Σ_i Σ_p w_ip (r_ip - r̂(x_i, s_i, p))
- with ``clip`` M: IPS and DR with weights ``min(w, M)``. Clipping biases IPS down by at most
  ``R (1/n) Σ_i Σ_p Σ_j (π(j at p | x_i) - M μ(j at p | h_i))_+`` (R the largest reward of an item), computed
  exactly from the marginals; DR by at most that much either way. Their intervals are widened by it.

Intervals are percentile bootstraps that resample *users* (all of a user's requests together).

References:
    - Li, S., Abbasi-Yadkori, Y., Kveton, B., Muthukrishnan, S., Vinay, V. & Wen, Z. (2018). "Offline
      Evaluation of Ranking Policies with Click Models." KDD (item-position IPS).
    - Swaminathan, A., Krishnamurthy, A., Agarwal, A., Dudík, M., Langford, J., Jose, D. & Zitouni, I.
      (2017). "Off-policy evaluation for slate recommendation." NeurIPS.
    - Swaminathan, A. & Joachims, T. (2015). "The Self-Normalized Estimator for Counterfactual Learning."
      NeurIPS (SNIPS).
    - Dudík, M., Langford, J. & Li, L. (2011). "Doubly Robust Policy Evaluation and Learning." ICML.
    - Ionides, E. L. (2008). "Truncated Importance Sampling." J. Comput. Graph. Stat. (clipping).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rayrec.ab.stats import resample_counts
from rayrec.errors import DataError
from rayrec.logs.mixture import WeightDiagnostics

ESTIMATORS = ("ips", "snips", "dm", "dr")
CLIPPED = ("ips_clip", "dr_clip")
"""Reported when a clipping threshold is set."""


@dataclass(frozen=True)
class LoggedSlates:
    """Logged requests and the target policy's view of them (n requests, up to k positions).

    Attributes:
        user_index: [n] int64 user of each request, the bootstrap's resampling unit.
        mask: [n, k] bool, True for the positions each request showed.
        reward: [n, k] float64 reward of each shown item.
        target_propensity: [n, k] float64 π(shown item at p | x) of the target.
        logging_propensity: [n, k] float64 μ(shown item at p | h) of the logging process, in (0, 1]
            where ``mask``.
        direct: [n] float64 the reward model's expected reward of the target's slate on each request.
        predicted: [n, k] float64 the reward model's expected reward at each position of the logged slate.
        unsupported: [n] float64 the target's item-position mass on (item, position) pairs the logging
            process shows with less than 1/n of the target's probability on that request (weight above n,
            so a log of n requests is unlikely to hold them; probability 0 included),
            ``Σ_p Σ_j π(j at p) 1[π(j at p) > n μ(j at p)]``.
        clip: weight threshold M of the clipped estimators (None: none).
        clip_excess: [n] float64 ``Σ_p Σ_j (π(j at p) - M μ(j at p))_+`` (None without ``clip``).
    """

    user_index: np.ndarray
    mask: np.ndarray
    reward: np.ndarray
    target_propensity: np.ndarray
    logging_propensity: np.ndarray
    direct: np.ndarray
    predicted: np.ndarray
    unsupported: np.ndarray
    clip: float | None = None
    clip_excess: np.ndarray | None = None

    def __post_init__(self) -> None:
        n, k = self.mask.shape
        if n == 0:
            raise DataError("no logged requests to evaluate")
        for name in ("reward", "target_propensity", "logging_propensity", "predicted"):
            if getattr(self, name).shape != (n, k):
                raise ValueError(f"LoggedSlates.{name}: shape {getattr(self, name).shape}, expected {(n, k)}")
        for name in ("user_index", "direct", "unsupported"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"LoggedSlates.{name}: shape {getattr(self, name).shape}, expected ({n},)")
        if (self.clip is None) != (self.clip_excess is None):
            raise ValueError("LoggedSlates: clip and clip_excess come together")
        if self.clip is not None and not (self.clip > 0 and self.clip_excess.shape == (n,)):
            raise ValueError(f"LoggedSlates: clip {self.clip} must be > 0 with clip_excess of shape ({n},)")
        prop = self.logging_propensity[self.mask]
        bad = ~((prop > 0) & (prop <= 1))
        if bad.any():
            raise DataError(
                f"{int(bad.sum())} logging propensities are outside (0, 1] (e.g. {prop[bad][:3].tolist()}); "
                "importance weights need the logging process's probability of each shown item"
            )

    def weights(self) -> np.ndarray:
        """[n, k] importance weights π/μ of the shown items (0 at masked positions)."""
        return np.where(
            self.mask, self.target_propensity / np.where(self.mask, self.logging_propensity, 1.0), 0.0
        )

    @property
    def reward_bound(self) -> float:
        """R: the largest reward one item can earn, taken as max(1, largest logged reward)."""
        return max(1.0, float(self.reward[self.mask].max()))

    def clip_bias_bound(self) -> float:
        """Bound on the bias clipping causes (module docstring), in reward per request."""
        return 0.0 if self.clip_excess is None else self.reward_bound * float(self.clip_excess.mean())

    def diagnostics(self) -> WeightDiagnostics:
        """Support diagnostics of the weights of every shown item."""
        unsupported = float(self.unsupported.sum() / self.mask.sum())
        return WeightDiagnostics.of(self.weights()[self.mask], unsupported)


@dataclass(frozen=True)
class OpeEstimate:
    """One estimator's value and its (1 - alpha) interval; ``bias_bound`` is the clipping bias bound."""

    value: float
    ci_low: float
    ci_high: float
    bias_bound: float = 0.0

    def to_json(self) -> dict:
        out = {"value": self.value, "ci95": [self.ci_low, self.ci_high]}
        return out | ({"bias_bound": self.bias_bound} if self.bias_bound else {})


def per_request_terms(logged: LoggedSlates) -> dict[str, np.ndarray]:
    """The per-request quantities every estimator is a ratio of sums of.

    Returns:
        ``ips``, ``dm``, ``dr`` (and ``ips_clip``, ``dr_clip``) [n]; ``snips_num``, ``snips_den``,
        ``positions`` [n, k].
    """
    w = logged.weights()  # [n, k]
    reward = np.where(logged.mask, logged.reward, 0.0)
    residual = reward - np.where(logged.mask, logged.predicted, 0.0)  # [n, k]
    terms = {
        "ips": (w * reward).sum(1),
        "dm": logged.direct,
        "dr": logged.direct + (w * residual).sum(1),
        "snips_num": w * reward,
        "snips_den": w,
        "positions": logged.mask.astype(np.float64),
    }
    if logged.clip is not None:
        clipped = np.minimum(w, logged.clip)
        terms |= {
            "ips_clip": (clipped * reward).sum(1),
            "dr_clip": logged.direct + (clipped * residual).sum(1),
        }
    return terms


def _estimates(sums: dict[str, np.ndarray], requests: np.ndarray) -> dict[str, np.ndarray]:
    """Estimator values from (possibly resampled) sums over requests [..., (k)]: each value [...]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(sums["snips_den"] > 0, sums["snips_num"] / sums["snips_den"], 0.0)  # [..., k]
        out = {"snips": (mean * sums["positions"]).sum(-1) / requests}
    names = [name for name in (*ESTIMATORS, *CLIPPED) if name in sums]
    return out | {name: sums[name] / requests for name in names}


def estimate_all(
    logged: LoggedSlates, *, alpha: float = 0.05, resamples: int = 1000, seed: int = 0
) -> dict[str, OpeEstimate]:
    """IPS, SNIPS, DM and DR (and the clipped ones) with user-level percentile-bootstrap intervals.

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
    draws: dict[str, list[np.ndarray]] = {name: [] for name in point}
    for counts in resample_counts(n_users, resamples, rng):  # [b, U]
        resampled = {name: np.tensordot(counts, v, axes=(1, 0)) for name, v in user_sums.items()}  # [b, ...]
        for name, values in _estimates(resampled, counts @ user_requests).items():
            draws[name].append(values)
    bound = logged.clip_bias_bound()
    out = {}
    for name in (*ESTIMATORS, *CLIPPED):
        if name not in point:
            continue
        lo, hi = np.quantile(np.concatenate(draws[name]), [alpha / 2.0, 1.0 - alpha / 2.0])
        if name in CLIPPED:  # clipping lowers IPS, and moves DR either way, by at most `bound`
            lo, hi = lo - (bound if name == "dr_clip" else 0.0), hi + bound
        out[name] = OpeEstimate(
            value=float(point[name]),
            ci_low=float(lo),
            ci_high=float(hi),
            bias_bound=bound if name in CLIPPED else 0.0,
        )
    return out
