"""Session-level off-policy estimators of a user's return: fitted-Q evaluation, PDIS and sequential DR.

Target quantity: the target policy's expected return per user — the summed reward of all of a user's
requests, the ``session_return`` of :mod:`rayrec.metrics.session` on which the A/B test decides — for users
like the logged ones. The event log links a user's requests (the requests table's ``user_id`` and ``ts``),
so each user's rows are one episode: states ``x_t`` (what the ranker saw), slates ``s_t``, rewards ``r_t``.
The item-level estimators (:mod:`rayrec.ab.ope`) value one request and rank a clickbait-chasing policy
high; these value what a policy does to the rest of the episode (users who leave early earn nothing more).

Weights are the trajectory weights ``W_t = π(s_0..s_t) / μ(s_0..s_t)`` of the multi-logger mixture
(:mod:`rayrec.logs.mixture`): a user's slates up to t, under the target over under the logging process. They
grow with the horizon, so only targets close to a logging policy along whole episodes are well supported;
the diagnostics (effective sample size, largest weight, mean weight, which should be near 1) say how well.

Estimators, over U users:

- FQE (fitted-Q evaluation): ``Q̂(x, s) = θ · φ(x, s)`` fitted by iterating the ridge regression of
  ``r_t + V̂(x_{t+1})`` on ``φ(x_t, s_t)`` over every logged step, ``V̂(x) = E_{s ~ π(x)} θ · φ(x, s)`` and 0
  after a user's last request, for as many iterations as the longest episode has steps;
  estimate ``(1/U) Σ_u V̂(x_{u,0})``. Model-based: biased as far as the features miss the dynamics.
- PDIS (per-decision importance sampling): ``(1/U) Σ_u Σ_t W_t r_t``. Unbiased; high variance.
- SDR (sequential doubly robust): ``(1/U) Σ_u Σ_t [W_t (r_t - Q̂(x_t, s_t)) + W_{t-1} V̂(x_t)]``,
  ``W_{-1} = 1``: PDIS with FQE as control variate; unbiased for any Q̂ when the weights are right.

Q-features follow SlateQ's decomposition — the user clicks at most one item and what follows depends on
which one — with click probabilities from the slate click model (:mod:`rayrec.ab.reward_model`)::

    φ(x, s) = [ Σ_p P(click p | s) ξ(x, s_p),  P(no click | s) η(x) ],
    ξ(x, j) = [1, budget, features_j, basis(embedding_j)],  η(x) = [1, budget].

Intervals resample users. FQE's and SDR's are percentile bootstraps that refit FQE on every resample from
per-user sufficient statistics (a refit is a few small matrix products), so they include the model's
estimation error; with more than :data:`MAX_UNITS` users, users are resampled in that many random groups.
PDIS is a mean of per-user values, skewed by large weights: its interval is a studentized bootstrap.

References:
    - Le, H., Voloshin, C. & Yue, Y. (2019). "Batch Policy Learning under Constraints." ICML (FQE).
    - Precup, D., Sutton, R. S. & Singh, S. (2000). "Eligibility Traces for Off-Policy Policy
      Evaluation." ICML (PDIS).
    - Jiang, N. & Li, L. (2016). "Doubly Robust Off-policy Value Evaluation for Reinforcement Learning."
      ICML.
    - Thomas, P. & Brunskill, E. (2016). "Data-Efficient Off-Policy Policy Evaluation for Reinforcement
      Learning." ICML.
    - Ie, E. et al. (2019). "SlateQ: A Tractable Decomposition for Reinforcement Learning with
      Recommendation Sets." IJCAI.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rayrec.ab.ope import OpeEstimate
from rayrec.ab.stats import bootstrap_moments, resample_counts
from rayrec.errors import DataError
from rayrec.logs.mixture import WeightDiagnostics

ESTIMATORS = ("fqe", "pdis", "sdr")
MAX_UNITS = 4096
"""Bootstrap units at most: beyond, users are resampled in this many random groups of users."""
RIDGE = 1e-3
"""FQE's ridge penalty per logged step."""
_ROW_CHUNK = 4096
"""Rows whose outer products are formed at once."""


def q_features(
    click_probability: np.ndarray, features: np.ndarray, projected: np.ndarray, budget: np.ndarray
) -> np.ndarray:
    """φ(x, s) of slates of k positions (module docstring): [b, P] with P = 4 + F + r.

    Args:
        click_probability: [b, k] the click model's probability of a click at each position (0 where a
            shorter slate has no position).
        features: [b, k, F] features of the slate's items; projected: [b, k, r] their embedding basis.
        budget: [b, 1] the budget feature.
    """
    b, k = click_probability.shape
    item = np.concatenate(
        [np.ones((b, k, 1)), np.broadcast_to(budget[:, None, :], (b, k, 1)), features, projected], axis=2
    )  # [b, k, 2 + F + r]
    no_click = 1.0 - click_probability.sum(axis=1, keepdims=True)  # [b, 1]
    return np.concatenate(
        [
            np.einsum("bk,bkq->bq", click_probability, item),
            no_click * np.concatenate([np.ones((b, 1)), budget], 1),
        ],
        axis=1,
    )


@dataclass(frozen=True)
class LoggedEpisodes:
    """U users' logged episodes and the target's view of them (n requests, P Q-features).

    Attributes:
        user: [n] int64 user of each request, 0..U-1, non-decreasing, each user's requests in time order.
        reward: [n] float64 reward of each request (summed over its positions).
        features: [n, P] float64 φ(x_t, s_t) of the logged slate.
        expected_features: [n, P] float64 E_{s ~ π(x_t)} φ(x_t, s) under the target.
        log_weight: [n] float64 log W_t, the trajectory weight of the user's slates up to this request
            (-inf where the target never shows them).
    """

    user: np.ndarray
    reward: np.ndarray
    features: np.ndarray
    expected_features: np.ndarray
    log_weight: np.ndarray

    def __post_init__(self) -> None:
        n, p = self.features.shape
        if n == 0:
            raise DataError("no logged requests to evaluate")
        for name, shape in (
            ("user", (n,)),
            ("reward", (n,)),
            ("expected_features", (n, p)),
            ("log_weight", (n,)),
        ):
            if getattr(self, name).shape != shape:
                raise ValueError(
                    f"LoggedEpisodes.{name}: shape {getattr(self, name).shape}, expected {shape}"
                )
        if self.user[0] != 0 or not np.isin(np.diff(self.user), (0, 1)).all():
            raise ValueError("LoggedEpisodes.user must number users 0..U-1 in non-decreasing row order")
        if not (np.isfinite(self.features).all() and np.isfinite(self.expected_features).all()):
            raise ValueError("LoggedEpisodes: Q-features must be finite")
        if np.isnan(self.log_weight).any() or (self.log_weight == np.inf).any():
            raise ValueError("LoggedEpisodes.log_weight must be finite or -inf")

    @property
    def first(self) -> np.ndarray:
        """[n] bool: the user's first request."""
        return np.r_[True, self.user[1:] != self.user[:-1]]

    @property
    def last(self) -> np.ndarray:
        """[n] bool: the user's last request."""
        return np.r_[self.user[1:] != self.user[:-1], True]

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        """([n] W_t, [n] W_{t-1} with W_{-1} = 1)."""
        w = np.exp(self.log_weight)
        previous = np.r_[1.0, w[:-1]]
        return w, np.where(self.first, 1.0, previous)

    def diagnostics(self) -> WeightDiagnostics:
        """Diagnostics of the users' whole-episode weights (support of whole slate sequences is not
        enumerable: ``unsupported_mass`` is None)."""
        return WeightDiagnostics.of(self.weights()[0][self.last], None)


def _fqe(
    gram: np.ndarray, cross: np.ndarray, target: np.ndarray, steps: np.ndarray, horizon: int
) -> np.ndarray:
    """FQE's θ [b, P] from summed statistics of b (re)samples.

    Args:
        gram: [b, P, P] Σ φ_t φ_tᵀ; cross: [b, P, P] Σ φ_t φ̄_{t+1}ᵀ; target: [b, P] Σ φ_t r_t.
        steps: [b] logged steps (the ridge is ``RIDGE`` per step).
        horizon: iterations (the longest episode's steps).
    """
    p = gram.shape[-1]
    inverse = np.linalg.inv(gram + (RIDGE * steps)[:, None, None] * np.eye(p))  # [b, P, P]
    theta = np.zeros(target.shape)
    for _ in range(horizon):
        updated = np.einsum("bpq,bq->bp", inverse, target + np.einsum("bpq,bq->bp", cross, theta))
        done = np.abs(updated - theta).max() <= 1e-12 * max(1.0, np.abs(updated).max())
        theta = updated
        if done:
            break
    return theta


def studentized_interval(
    values: np.ndarray, alpha: float, resamples: int, rng: np.random.Generator
) -> tuple[float, float]:
    """Bootstrap-t interval of the mean of ``values`` [U]: the bootstrap distribution of
    ``(mean* - mean) / se*`` replaces Student's t, which corrects the interval for the skew that large
    importance weights give (second-order accurate, where the percentile interval is first-order).
    """
    n = len(values)
    mean, se = values.mean(), values.std(ddof=1) / np.sqrt(n)
    means, variances = bootstrap_moments(values, resamples, rng)  # [B] each
    spread = np.sqrt(variances / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_star = np.where(spread > 0, (means - mean) / spread, 0.0)
    q_lo, q_hi = np.quantile(t_star, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(mean - q_hi * se), float(mean - q_lo * se)


def estimate_episodes(
    episodes: LoggedEpisodes, *, alpha: float = 0.05, resamples: int = 1000, seed: int = 0
) -> dict[str, OpeEstimate]:
    """FQE, PDIS and SDR with intervals over users (module docstring)."""
    rng = np.random.default_rng(seed)
    user, phi, expected = episodes.user, episodes.features, episodes.expected_features
    n, p = phi.shape
    num_users = int(user[-1]) + 1
    if num_users > MAX_UNITS:
        unit_of_user = rng.permutation(num_users) % MAX_UNITS
        unit = unit_of_user[user]
    else:
        unit_of_user, unit = np.arange(num_users), user
    units = int(unit_of_user.max()) + 1
    following = np.zeros_like(expected)  # φ̄ of the next request of the same user, 0 after the last
    following[:-1] = expected[1:]
    following[episodes.last] = 0.0
    gram, cross = np.zeros((units, p, p)), np.zeros((units, p, p))
    for start in range(0, n, _ROW_CHUNK):
        rows = slice(start, start + _ROW_CHUNK)
        np.add.at(gram, unit[rows], np.einsum("np,nq->npq", phi[rows], phi[rows]))
        np.add.at(cross, unit[rows], np.einsum("np,nq->npq", phi[rows], following[rows]))

    def per(index: np.ndarray, size: int, values: np.ndarray) -> np.ndarray:
        out = np.zeros((size, *values.shape[1:]))
        np.add.at(out, index, values)
        return out

    target = per(unit, units, phi * episodes.reward[:, None])  # [B, P]
    steps = np.bincount(unit, minlength=units).astype(np.float64)  # [B]
    horizon = int(np.bincount(user).max())

    def fqe(counts: np.ndarray) -> np.ndarray:  # [b, B] unit multiplicities → θ [b, P]
        return _fqe(
            np.tensordot(counts, gram, axes=(1, 0)),
            np.tensordot(counts, cross, axes=(1, 0)),
            counts @ target,
            counts @ steps,
            horizon,
        )

    w, w_previous = episodes.weights()
    start_features = per(unit_of_user, units, expected[episodes.first])  # [B, P] Σ φ̄(x_0) per unit
    # [B, P] SDR's control variate is control · θ.
    control = per(unit, units, w_previous[:, None] * expected - w[:, None] * phi)
    pdis = per(user, num_users, w * episodes.reward)  # [U] per-user PDIS values
    weighted_reward = per(unit_of_user, units, pdis)  # [B]
    users = np.bincount(unit_of_user, minlength=units).astype(np.float64)  # [B]

    def values(counts: np.ndarray) -> dict[str, np.ndarray]:  # [b, B] unit multiplicities → each [b]
        theta, total = fqe(counts), counts @ users
        return {
            "fqe": ((counts @ start_features) * theta).sum(1) / total,
            "sdr": (counts @ weighted_reward + ((counts @ control) * theta).sum(1)) / total,
        }

    point = values(np.ones((1, units)))
    draws = [values(counts) for counts in resample_counts(units, resamples, rng)]
    out = {}
    for name in ("fqe", "sdr"):
        lo, hi = np.quantile(np.concatenate([d[name] for d in draws]), [alpha / 2.0, 1.0 - alpha / 2.0])
        out[name] = OpeEstimate(value=float(point[name][0]), ci_low=float(lo), ci_high=float(hi))
    out["pdis"] = OpeEstimate(float(pdis.mean()), *studentized_interval(pdis, alpha, resamples, rng))
    return {name: out[name] for name in ESTIMATORS}
