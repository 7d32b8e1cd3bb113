"""The session dynamics' likelihood: satisfaction replayed from the logged clicks, leaving and returning.

In the simulator (:class:`envs.response.UserResponse`) a user's satisfaction ``s`` starts uniform in
``initial_satisfaction``, changes after every step by what was clicked —
``gain * (quality - 0.5) - penalty * clickbait * (1 + clickbait_fatigue * f)`` for a click, ``-boredom``
for none — and after each step the user leaves with probability ``leave_base + leave_scale * (1 - s)**2``.
When a session ends with sessions left, the user returns with probability
``sigmoid(return_bias + return_slope * (s - 0.5))`` after ``1 + Poisson(return_delay * (1 - s / 2) - 1)``
days, having recovered ``satisfaction_recovery`` of the gap to a fresh starting draw.

Given the logged slates and clicks, the satisfaction path is deterministic up to the starting draw (and
the fresh draw at each return): the clicked items' quality and clickbait traits are in the catalog, the
clickbait count ``f`` is replayed from the clicks. So the likelihood of the observed session ends —
stayed after every step but the last, left after the last unless the budget (or the step cap) ended the
session, which *censors* it — and of the returns and their delays has a closed form per starting value.
:class:`DynamicsLikelihood` integrates the starting satisfaction with ``G`` stratified particles per user
(midpoint quadrature of the uniform; fixed stratified uniforms for the draw at each return) and maximises
the log of the average over particles with L-BFGS-B on analytic gradients (forward mode along the paths).

This needs the steps *without* a click, i.e. logged impressions. With plain interactions the no-click
steps are unobserved; :func:`fit_leave_scale_by_moments` then matches the distribution of interactions
per session by simulation instead (method of simulated moments, common random numbers).

References:
    - Ie, E. et al. (2019). "RecSim" (the satisfaction / leaving user model this simulator follows).
    - Zhao, K. et al. (2023). "KuaiSim" (retention: leaving and returning as a function of the session).
    - Train, K. (2009). "Discrete Choice Methods with Simulation", ch. 10 (simulated maximum likelihood).
    - McFadden, D. (1989). "A method of simulated moments for estimation of discrete response models
      without numerical integration." Econometrica.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, gammaln, logsumexp

from envs.catalog import ItemCatalog
from envs.config import SlateEnvConfig

DYNAMICS_PARAMETERS = (
    "satisfaction_gain",
    "clickbait_penalty",
    "boredom",
    "leave_scale",
    "return_bias",
    "return_slope",
    "return_delay",
)
"""Parameters :class:`DynamicsLikelihood` can fit."""
RETURN_PARAMETERS = ("return_bias", "return_slope", "return_delay")
BOUNDS = {
    "satisfaction_gain": (0.0, 2.0),
    "clickbait_penalty": (0.0, 2.0),
    "boredom": (0.0, 0.5),
    "leave_scale": (1e-4, 50.0),
    "return_bias": (-10.0, 10.0),
    "return_slope": (0.0, 30.0),
    "return_delay": (1.0, 60.0),
}
"""Box constraints while fitting."""
DAY = 86_400.0


@dataclass(frozen=True)
class SessionSteps:
    """The logged steps of U users (n rows, each user's rows contiguous, in time order) as the dynamics see them.

    Attributes:
        user_start: [U + 1] int64 row offsets of each user.
        quality: [n] float32 quality of the clicked item (0 where no click).
        clickbait: [n] float32 clickbait trait of the clicked item (0 where no click).
        clicked: [n] bool.
        ends_session: [n] bool: the row is its session's last step.
        left: [n] float32 1 where the session ended by leaving, 0 where the user stayed, NaN where the
            leave decision is not observed (the budget or the step cap ended the session: censored).
        returned: [n] float32 at a session's last step: 1 if the user came back, 0 if not, NaN where no
            return was possible (no sessions left) or none is modelled.
        days: [n] float32 days until the next session where ``returned`` is 1 (NaN where the log does not
            say them: the delay then does not enter the likelihood).
    """

    user_start: np.ndarray
    quality: np.ndarray
    clickbait: np.ndarray
    clicked: np.ndarray
    ends_session: np.ndarray
    left: np.ndarray
    returned: np.ndarray
    days: np.ndarray

    @property
    def num_users(self) -> int:
        return len(self.user_start) - 1


def session_steps(log, catalog: ItemCatalog, config: SlateEnvConfig) -> SessionSteps:
    """:class:`SessionSteps` of a :class:`envs.calibration_data.SlateLog` under ``config``'s budget and caps.

    A session that lasted ``budget`` steps ended by the budget (its last leave decision is censored); so did
    one that reached ``max_episode_steps`` steps of the user's episode. A session followed by another of the
    same user is a return after the days between them (at least one); where the user's last session is
    not their ``sessions``-th, they did not return.
    """
    n = log.size
    starts = np.flatnonzero(np.r_[True, log.user[1:] != log.user[:-1]]) if n else np.zeros(0, np.int64)
    item = log.clicked_items()
    clicked = item >= 0
    safe = np.maximum(item, 0)
    ends = np.r_[log.session[1:] != log.session[:-1], True] if n else np.zeros(0, bool)
    user_row = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))  # [n] step within the episode
    censored = ends & ((log.step + 1 >= config.budget) | (user_row + 1 >= config.max_episode_steps))
    left = np.where(ends, 1.0, 0.0).astype(np.float32)
    left[censored] = np.nan
    last_of_user = np.r_[log.user[1:] != log.user[:-1], True] if n else np.zeros(0, bool)
    session_index = np.zeros(n, np.int64)  # 1-based session of the user at each row
    if n:
        new = np.r_[True, log.session[1:] != log.session[:-1]]
        count = np.cumsum(new)
        session_index = count - np.repeat(count[starts] - 1, np.diff(np.r_[starts, n]))
    returned = np.full(n, np.nan, np.float32)
    days = np.zeros(n, np.float32)
    if config.sessions > 1:
        possible = ends & (session_index < config.sessions) & ~(user_row + 1 >= config.max_episode_steps)
        came_back = possible & ~last_of_user
        returned[possible] = came_back[possible].astype(np.float32)
        gap = np.r_[np.diff(log.time), 0.0] / DAY
        # Unknown days (a log whose clock does not say them) leave the delay out of the likelihood.
        days[came_back] = np.maximum(np.round(gap[came_back]), 1.0) if log.days_known else np.nan
    return SessionSteps(
        user_start=np.r_[starts, n].astype(np.int64),
        quality=np.where(clicked, catalog.quality[safe], 0.0).astype(np.float32),
        clickbait=np.where(clicked, catalog.clickbait[safe], 0.0).astype(np.float32),
        clicked=clicked,
        ends_session=ends,
        left=left,
        returned=returned,
        days=days,
    )


@dataclass
class DynamicsFit:
    """Result of :meth:`DynamicsLikelihood.fit` (as :class:`envs.calibration_choice.ChoiceFit`)."""

    values: dict[str, float]
    free: list[str]
    std_errors: dict[str, float] = field(default_factory=dict)
    log_likelihood: float = float("nan")
    converged: bool = False
    iterations: int = 0


class DynamicsLikelihood:
    """Simulated log-likelihood of the observed session ends and returns (module docstring).

    Args:
        steps: the logged steps.
        config: the held parameters (initial satisfaction, leave base, fatigue, recovery, sessions).
        particles: G stratified starting satisfactions per user.
        seed: seed of the fresh draws at returns (fixed: common random numbers).
    """

    def __init__(
        self, steps: SessionSteps, config: SlateEnvConfig, particles: int = 32, seed: int = 0
    ) -> None:
        self.steps, self.config = steps, config
        low, high = config.initial_satisfaction
        grid = (np.arange(particles) + 0.5) / particles
        self.start = (low + (high - low) * grid).astype(np.float64)  # [G]
        lengths = np.diff(steps.user_start)
        self.order = np.argsort(-lengths, kind="stable")
        self.active = np.searchsorted(
            -lengths[self.order], -np.arange(int(lengths.max(initial=0))), side="left"
        )
        rng = np.random.default_rng(seed)
        sessions = int(steps.ends_session.sum())
        # One stratified, shuffled uniform per particle for each return draw (reused by every user).
        self.fresh = low + (high - low) * (rng.permuted(np.tile(grid, (max(sessions, 1), 1)), axis=1))
        self.fatigue = self._replay_fatigue()

    def _replay_fatigue(self) -> np.ndarray:
        """[n] clickbait count ``f`` after each step's update (what the harm of a clickbait click uses)."""
        s, config = self.steps, self.config
        keep = 1.0 - config.fatigue_recovery
        out = np.zeros(len(s.clicked), np.float64)
        f = np.zeros(s.num_users)
        start = s.user_start[self.order]
        for t, m in enumerate(self.active):
            rows = start[:m] + t
            f[:m] = keep * f[:m] + s.clickbait[rows]
            out[rows] = f[:m]
            back = s.returned[rows] == 1
            f[:m][back] *= keep ** np.nan_to_num(s.days[rows][back], nan=1.0)  # unknown days: one
        return out

    def per_user(self, values: dict[str, float], record: np.ndarray | None = None) -> np.ndarray:
        """[U] log-likelihood of each user's session ends (and returns) at ``values``.

        Args:
            record: optional [n, G] array that receives every particle's satisfaction after each row's step
                (what the simulator's ``info["satisfaction"]`` reports), for checking the replay.
        """
        return self.scores(values, [], record)[0]

    def scores(
        self, values: dict[str, float], free: list[str], record: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """([U] log-likelihood per user, [U, len(free)] its derivatives in ``free``: the per-user scores).

        The derivatives are carried forward along every particle's satisfaction path (forward mode): a
        clipped step passes no derivative, the leave and return terms add theirs.
        """
        s, config = self.steps, self.config
        gain, penalty = values["satisfaction_gain"], values["clickbait_penalty"]
        boredom, scale = values["boredom"], values["leave_scale"]
        bias, slope, delay = values["return_bias"], values["return_slope"], values["return_delay"]
        index = {name: i for i, name in enumerate(free)}
        width = len(free)
        harm_unit = s.clickbait * (1.0 + config.clickbait_fatigue * self.fatigue)  # [n]
        delta = np.where(s.clicked, gain * (s.quality - 0.5) - penalty * harm_unit, -boredom)  # [n]
        d_delta = np.zeros((len(delta), width))  # [n, P]
        if "satisfaction_gain" in index:
            d_delta[:, index["satisfaction_gain"]] = np.where(s.clicked, s.quality - 0.5, 0.0)
        if "clickbait_penalty" in index:
            d_delta[:, index["clickbait_penalty"]] = np.where(s.clicked, -harm_unit, 0.0)
        if "boredom" in index:
            d_delta[:, index["boredom"]] = np.where(s.clicked, 0.0, -1.0)
        g = len(self.start)
        users = s.num_users
        sat = np.tile(self.start, (users, 1))  # [U', G] users in self.order
        d_sat = np.zeros((users, g, width))  # [U', G, P]
        ll = np.zeros((users, g))
        d_ll = np.zeros((users, g, width))
        start = s.user_start[self.order]
        session = 0
        for t, m in enumerate(self.active):
            rows = start[:m] + t
            inside = sat[:m] + delta[rows][:, None]
            free_move = ((inside > 0.0) & (inside < 1.0))[:, :, None]
            sat[:m] = np.clip(inside, 0.0, 1.0)
            d_sat[:m] = np.where(free_move, d_sat[:m] + d_delta[rows][:, None, :], 0.0)
            if record is not None:
                record[rows] = sat[:m]
            left = s.left[rows]
            observed = ~np.isnan(left)
            gap = 1.0 - sat[:m]
            p = np.clip(config.leave_base + scale * np.square(gap), 1e-12, 1.0 - 1e-12)  # [m, G]
            went = (left == 1.0)[:, None]
            ll[:m] += np.where(observed[:, None], np.where(went, np.log(p), np.log1p(-p)), 0.0)
            if width:
                dl_dp = np.where(observed[:, None], np.where(went, 1.0 / p, -1.0 / (1.0 - p)), 0.0)  # [m, G]
                d_ll[:m] += (dl_dp * -2.0 * scale * gap)[:, :, None] * d_sat[:m]
                if "leave_scale" in index:
                    d_ll[:m, :, index["leave_scale"]] += dl_dp * np.square(gap)
            ret = s.returned[rows]
            has = ~np.isnan(ret)
            if not has.any():
                continue
            idx = np.flatnonzero(has)
            sv, dsv = sat[idx], d_sat[idx]
            logit = bias + slope * (sv - 0.5)
            back = ret[idx] == 1.0
            term = np.where(back[:, None], -np.logaddexp(0.0, -logit), -np.logaddexp(0.0, logit))
            prob = expit(logit)
            dl_dlogit = np.where(back[:, None], 1.0 - prob, -prob)  # [r, G]
            d_term = (dl_dlogit * slope)[:, :, None] * dsv
            if "return_bias" in index:
                d_term[:, :, index["return_bias"]] += dl_dlogit
            if "return_slope" in index:
                d_term[:, :, index["return_slope"]] += dl_dlogit * (sv - 0.5)
            if back.any():
                sb = sv[back]
                days = s.days[rows][idx][back]
                timed = ~np.isnan(days)[:, None]  # the delay's term only where the days are known
                raw = delay * (1.0 - sb / 2.0) - 1.0
                lam = np.maximum(raw, 1e-9)
                k = (np.nan_to_num(days, nan=1.0) - 1.0)[:, None]
                term[back] += np.where(timed, k * np.log(lam) - lam - gammaln(k + 1.0), 0.0)
                dl_dlam = np.where(timed & (raw > 1e-9), k / lam - 1.0, 0.0)
                d_term[back] += (dl_dlam * -delay / 2.0)[:, :, None] * dsv[back]
                if "return_delay" in index:
                    d_term[back, :, index["return_delay"]] += dl_dlam * (1.0 - sb / 2.0)
                fresh = self.fresh[(session + np.arange(int(back.sum()))) % len(self.fresh)]
                session += int(back.sum())
                rec = config.satisfaction_recovery
                sat[idx[back]] = sb + rec * (fresh - sb)
                d_sat[idx[back]] = (1.0 - rec) * dsv[back]
            ll[idx] += term
            d_ll[idx] += d_term
        total = logsumexp(ll, axis=1) - np.log(g)  # [U']
        weights = np.exp(ll - logsumexp(ll, axis=1, keepdims=True))  # [U', G]
        out, score = np.empty(users), np.empty((users, width))
        out[self.order] = total
        score[self.order] = np.einsum("ugp,ug->up", d_ll, weights)
        return out, score

    def fit(self, start: dict[str, float], free: list[str], max_iter: int = 200) -> DynamicsFit:
        """Maximise over ``free`` from ``start`` (the others held) with L-BFGS-B on the analytic scores;
        BHHH standard errors from the per-user scores at the optimum."""
        values = dict(start)
        if not free:
            return DynamicsFit(values, [], log_likelihood=float(self.per_user(values).sum()), converged=True)
        users = max(self.steps.num_users, 1)
        bounds = [BOUNDS[n] for n in free]
        x0 = np.clip([values[n] for n in free], [b[0] for b in bounds], [b[1] for b in bounds])

        def at(vec: np.ndarray) -> dict[str, float]:
            return {**values, **{n: float(v) for n, v in zip(free, vec, strict=True)}}

        def objective(vec: np.ndarray) -> tuple[float, np.ndarray]:
            ll, score = self.scores(at(vec), free)
            return -float(ll.sum()) / users, -score.sum(axis=0) / users

        result = minimize(
            objective,
            x0,
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": max_iter, "ftol": 1e-12, "gtol": 1e-8},
        )
        fitted = at(result.x)
        ll, score = self.scores(fitted, free)
        try:
            covariance = np.linalg.inv(score.T @ score)
            errors = {n: float(np.sqrt(max(covariance[i, i], 0.0))) for i, n in enumerate(free)}
        except np.linalg.LinAlgError:
            errors = dict.fromkeys(free, float("nan"))
        return DynamicsFit(
            values=fitted,
            free=list(free),
            std_errors=errors,
            log_likelihood=float(ll.sum()),
            converged=bool(result.success),
            iterations=int(result.nit),
        )


def dynamics_values(config: SlateEnvConfig) -> dict[str, float]:
    """The config's values of :data:`DYNAMICS_PARAMETERS`."""
    return {name: float(getattr(config, name)) for name in DYNAMICS_PARAMETERS}
