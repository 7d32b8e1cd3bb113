"""The choice model's likelihood of logged choices, with the users' hidden interests integrated out.

The simulator's users choose by :class:`envs.choice.ConditionalLogitChoice`: at a request with alternatives
``j`` (a slate's items by position, or the items a user could have been exposed to) the user picks ``j`` with
probability ∝ ``exp(u_j / T) * decay ** p_j`` or nothing with probability ∝ ``exp(u_0 / T)``, where

    u_j = x · e_j + clickbait_appeal * clickbait_j + popularity_appeal * popularity_j
          - satiation_penalty * max(0, e_j · σ)

The interest ``x`` is hidden. What is logged is the user's *observed profile* ``p`` (the normalised mean of
what they engaged with); the simulator draws the interest as the profile's direction plus Gaussian noise
(``x_0 = normalise(p_0 + interest_noise * ε / sqrt(d))``, :func:`envs.users.add_interest_noise`), and after
every click the interest drifts toward the clicked item (``x ← normalise((1 - drift) x + drift e)``). Given
``ε`` the whole interest path is a deterministic function of the logged clicks, so each user's likelihood is

    L_u(θ) = E_ε [ Π_t P(choice_t | x_t(ε; drift, noise), alternatives_t; θ) ]

which :class:`ChoiceLikelihood` estimates by **simulated maximum likelihood** with ``R`` antithetic draws of
``ε`` per user, held fixed while fitting (common random numbers make the objective smooth), and maximises
with L-BFGS-B on analytic gradients: the utilities are linear in the appeal parameters, and the interest
path's derivatives in ``drift`` and ``noise`` are carried forward along it. Standard errors come from the
outer product of the per-user scores (BHHH).

Plugging the profile in for the interest instead (ignoring the noise) is the errors-in-variables case: it
attenuates the utility's slope and so inflates the temperature — the bias of the earlier calibration.
The satiation vector σ is deterministic given the clicks (it fades every step and by the day between
sessions), so it enters as a known offset at the preset's satiation parameters.

References:
    - McFadden, D. (1973). "Conditional logit analysis of qualitative choice behavior."
    - McFadden, D. & Train, K. (2000). "Mixed MNL models for discrete response." J. Applied Econometrics.
    - Train, K. (2009). "Discrete Choice Methods with Simulation", ch. 6 (mixed logit) and 10 (simulated
      maximum likelihood, antithetic draws, BHHH).
    - Berndt, Hall, Hall & Hausman (1974). "Estimation and inference in nonlinear structural models."
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp

from envs.catalog import ItemCatalog
from envs.config import SlateEnvConfig
from envs.users import NO_ITEM

CHOICE_PARAMETERS = (
    "temperature",
    "no_click_utility",
    "position_decay",
    "clickbait_appeal",
    "popularity_appeal",
    "interest_drift",
    "interest_noise",
)
"""Parameters :class:`ChoiceLikelihood` can fit, in the order of its parameter vectors."""

BOUNDS = {
    "temperature": (1e-3, 10.0),
    "no_click_utility": (-5.0, 5.0),
    "position_decay": (0.02, 1.0),
    "clickbait_appeal": (-3.0, 3.0),
    "popularity_appeal": (-3.0, 3.0),
    "interest_drift": (0.0, 0.95),
    "interest_noise": (0.0, 3.0),
}
"""Box constraints of each parameter while fitting (natural units)."""
LOG_SCALE = ("temperature", "position_decay")
"""Parameters optimised on a log scale (positive; multiplicative)."""


@dataclass(frozen=True)
class ChoiceData:
    """Logged choice situations (n rows, up to K alternatives, d dims), each user's rows contiguous in time order.

    Attributes:
        user_start: [U + 1] int64 offsets: user u's rows are ``user_start[u]:user_start[u + 1]``.
        first_profile: [U, d] float32 the observed profile at each user's first row (the interest's anchor).
        profile: [n, d] float32 the observed profile at each row (the retrieval-score baseline's input).
        alternatives: [n, K] int64 catalog rows (:data:`envs.users.NO_ITEM` pads).
        chosen: [n] int64 the chosen alternative's column, -1 for the outside option (no click).
        clicked_item: [n] int64 catalog row chosen, -1 for none (drives drift and satiation).
        fade: [n] float64 periods of satiation fading before the row beyond the one step since the previous
            row (days between sessions; 0 inside a session).
        outside: whether requests without a choice are logged (the outside option is observed).
        positions: whether the alternatives are display positions (position decay applies).
        exposure: how the alternatives were obtained (said in the report).
        log_weight: [n, K] float32 ``ln π(C | j)`` added to each alternative's logit when the alternatives
            are a sample (:func:`exposure_choice_data`); None for logged slates (no correction).
    """

    user_start: np.ndarray
    first_profile: np.ndarray
    profile: np.ndarray
    alternatives: np.ndarray
    chosen: np.ndarray
    clicked_item: np.ndarray
    fade: np.ndarray
    outside: bool
    positions: bool
    exposure: str
    log_weight: np.ndarray | None = None

    @property
    def size(self) -> int:
        return len(self.chosen)

    @property
    def num_users(self) -> int:
        return len(self.user_start) - 1

    def user_of_rows(self) -> np.ndarray:
        """[n] user index of every row."""
        return np.repeat(np.arange(self.num_users), np.diff(self.user_start))

    def take_users(self, users: np.ndarray) -> ChoiceData:
        """The rows of ``users`` [m] (sorted user indices)."""
        lengths = np.diff(self.user_start)[users]
        rows = np.concatenate([np.arange(self.user_start[u], self.user_start[u + 1]) for u in users])
        return ChoiceData(
            user_start=np.r_[0, np.cumsum(lengths)].astype(np.int64),
            first_profile=self.first_profile[users],
            profile=self.profile[rows],
            alternatives=self.alternatives[rows],
            chosen=self.chosen[rows],
            clicked_item=self.clicked_item[rows],
            fade=self.fade[rows],
            outside=self.outside,
            positions=self.positions,
            exposure=self.exposure,
            log_weight=None if self.log_weight is None else self.log_weight[rows],
        )


def satiation_offsets(data: ChoiceData, catalog: ItemCatalog, config: SlateEnvConfig) -> np.ndarray:
    """[n, K] ``max(0, e_j · σ)`` of every alternative, σ replayed from the clicks (zeros when satiation is off).

    σ starts at 0 for every user, fades by ``1 - satiation_recovery`` each step (and per day between
    sessions) and gains ``satiation_gain * e`` on a click, as :class:`envs.response.UserResponse` does.
    """
    out = np.zeros(data.alternatives.shape, np.float32)
    if not (config.satiation_penalty and config.satiation_gain):
        return out
    keep = 1.0 - config.satiation_recovery
    sigma = np.zeros((data.num_users, catalog.dim), np.float64)
    lengths = np.diff(data.user_start)
    for t in range(int(lengths.max())):
        users = np.flatnonzero(lengths > t)
        rows = data.user_start[users] + t
        if t > 0:
            sigma[users] *= keep ** data.fade[rows][:, None]
        emb = catalog.embeddings[np.maximum(data.alternatives[rows], 0)]  # [m, K, d]
        out[rows] = np.maximum(np.einsum("mkd,md->mk", emb, sigma[users]), 0.0)
        clicked = data.clicked_item[rows] >= 0
        sigma[users] *= keep
        sigma[users[clicked]] += config.satiation_gain * catalog.embeddings[data.clicked_item[rows[clicked]]]
    return out


@dataclass
class ScoreTable:
    """Interest scores ``x · e_j`` of every alternative under R draws, with derivatives.

    Attributes:
        scores: [n, R, K] float32.
        chosen: [n, R] float64 the chosen alternative's score (0 for the outside option).
        d_drift, d_drift_chosen, d_noise, d_noise_chosen: the same, differentiated in drift and noise
            (None when the scores do not depend on them).
    """

    scores: np.ndarray
    chosen: np.ndarray
    d_drift: np.ndarray | None = None
    d_drift_chosen: np.ndarray | None = None
    d_noise: np.ndarray | None = None
    d_noise_chosen: np.ndarray | None = None


class InterestPaths:
    """Simulated interest paths of every user: ``R`` antithetic noise draws, drifting toward each click.

    Args:
        data: the choices.
        catalog: the items.
        draws: R, even (draws come in antithetic pairs ε, -ε).
        seed: seed of the draws (fixed: common random numbers across parameter values).
    """

    def __init__(self, data: ChoiceData, catalog: ItemCatalog, draws: int, seed: int) -> None:
        self.data, self.catalog = data, catalog
        half = max(draws // 2, 1)
        dim = catalog.dim
        eps = np.random.default_rng(seed).standard_normal((data.num_users, half, dim))
        self.eps = np.concatenate([eps, -eps], axis=1) / np.sqrt(dim)  # [U, R, d]
        self.draws = self.eps.shape[1]
        self._cache: tuple[tuple[float, float], ScoreTable] | None = None

    def table(self, drift: float, noise: float) -> ScoreTable:
        key = (float(drift), float(noise))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._compute(*key))
        return self._cache[1]

    def _compute(self, drift: float, noise: float) -> ScoreTable:
        """Scores along every user's interest path; users are processed longest first, so the users still
        active at step t are a prefix of the state (views, no gathers)."""
        data, emb = self.data, self.catalog.embeddings
        n, k = data.alternatives.shape
        r = self.draws
        lengths = np.diff(data.user_start)
        order = np.argsort(-lengths, kind="stable")  # users by decreasing length
        active = np.searchsorted(-lengths[order], -np.arange(int(lengths.max()) if n else 0), side="left")
        start = data.user_start[order]
        eps = self.eps[order].astype(np.float32)
        z = data.first_profile[order].astype(np.float32)[:, None, :] + np.float32(noise) * eps  # [U, R, d]
        norm = np.maximum(np.linalg.norm(z, axis=2, keepdims=True), 1e-12)
        x = z / norm
        # The state holds x, dx/dδ and dx/dσ = (I - x xᵀ) ε / |z| side by side: [U, 3R, d].
        state = np.concatenate(
            [x, np.zeros_like(x), (eps - x * np.sum(x * eps, axis=2, keepdims=True)) / norm], 1
        )
        scores = np.empty((n, 3 * r, k), np.float32)
        for t, m in enumerate(active):
            rows = start[:m] + t
            alt = data.alternatives[rows]
            e = emb[np.maximum(alt, 0)] * (alt >= 0)[..., None]  # [m, K, d]
            scores[rows] = np.matmul(state[:m], e.transpose(0, 2, 1))  # [m, 3R, K]
            clicked = np.flatnonzero(data.clicked_item[rows] >= 0)
            if drift > 0 and len(clicked):
                block = state[clicked]  # [c, 3R, d]: x, dx/dδ, dx/dσ
                x = block[:, :r]
                target = emb[data.clicked_item[rows[clicked]]][:, None, :]  # [c, 1, d]
                y = np.float32(1.0 - drift) * x + np.float32(drift) * target
                y_norm = np.sqrt(np.sum(y * y, axis=2, keepdims=True)) + np.float32(1e-12)
                new = y / y_norm
                tangents = np.float32(1.0 - drift) * block[:, r:]  # [c, 2R, d]
                tangents[:, :r] += target - x
                # d normalise(y) = (I - new newᵀ) dy / |y|, for both tangents at once.
                new_twice = np.concatenate([new, new], axis=1)
                y_twice = np.concatenate([y_norm, y_norm], axis=1)
                tangents -= new_twice * np.sum(new_twice * tangents, axis=2, keepdims=True)
                tangents /= y_twice
                block[:, :r] = new
                block[:, r:] = tangents
                state[clicked] = block
        chosen = data.chosen
        picked = scores[np.arange(n), :, np.maximum(chosen, 0)].astype(np.float64)  # [n, 3R]
        picked = np.where((chosen >= 0)[:, None], picked, 0.0)
        return ScoreTable(
            scores[:, :r],
            picked[:, :r],
            scores[:, r : 2 * r],
            picked[:, r : 2 * r],
            scores[:, 2 * r :],
            picked[:, 2 * r :],
        )


class FixedScores:
    """Scores that depend on no fitted parameter (R = 1): e.g. ``profile · e`` or zeros."""

    def __init__(self, data: ChoiceData, scores: np.ndarray) -> None:
        rows = np.arange(data.size)
        chosen = np.where(data.chosen >= 0, scores[rows, np.maximum(data.chosen, 0)], 0.0)
        self._table = ScoreTable(scores[:, None, :].astype(np.float32), chosen[:, None].astype(np.float64))
        self.draws = 1

    def table(self, drift: float, noise: float) -> ScoreTable:
        return self._table


def profile_scores(data: ChoiceData, catalog: ItemCatalog) -> np.ndarray:
    """[n, K] ``profile · e_j``: the retrieval score of every alternative (0 for padding)."""
    alt = data.alternatives
    emb = catalog.embeddings[np.maximum(alt, 0)] * (alt >= 0)[..., None]
    return np.einsum("nkd,nd->nk", emb, data.profile).astype(np.float32)


@dataclass
class ChoiceFit:
    """Result of :meth:`ChoiceLikelihood.fit`.

    Attributes:
        values: every parameter's value (fitted or held).
        free: the fitted parameters' names.
        std_errors: BHHH standard error of each fitted parameter (NaN when the information is singular).
        log_likelihood: total simulated log-likelihood at the optimum.
        choices: rows the likelihood covers.
        converged: whether L-BFGS-B reported convergence.
        iterations: optimiser iterations.
    """

    values: dict[str, float]
    free: list[str]
    std_errors: dict[str, float] = field(default_factory=dict)
    log_likelihood: float = float("nan")
    choices: int = 0
    converged: bool = False
    iterations: int = 0


class ChoiceLikelihood:
    """Simulated log-likelihood of :class:`ChoiceData` under the conditional logit (module docstring).

    Args:
        data: the choices.
        catalog: the items (clickbait and popularity traits).
        scores: :class:`InterestPaths` (the model) or :class:`FixedScores` (baselines).
        satiation: [n, K] satiation offsets (:func:`satiation_offsets`) and the penalty they are weighted by.
    """

    def __init__(
        self,
        data: ChoiceData,
        catalog: ItemCatalog,
        scores: InterestPaths | FixedScores,
        satiation: tuple[np.ndarray, float] | None = None,
    ) -> None:
        self.data, self.scores = data, scores
        alt = data.alternatives
        self.mask = alt >= 0  # [n, K]
        # [n, K] known logit offsets: padding is never chosen; sampled alternatives carry ln π(C | j).
        self.pad = np.where(self.mask, 0.0, -np.inf).astype(np.float64)
        if data.log_weight is not None:
            self.pad = self.pad + data.log_weight.astype(np.float64)
        safe = np.maximum(alt, 0)
        self.clickbait = np.where(self.mask, catalog.clickbait[safe], 0.0).astype(np.float64)  # [n, K]
        self.popularity = np.where(self.mask, catalog.popularity[safe], 0.0).astype(np.float64)
        self.position = np.broadcast_to(np.arange(alt.shape[1], dtype=np.float64), alt.shape)
        if not data.positions:
            self.position = np.zeros(alt.shape, np.float64)
        sat, penalty = satiation if satiation is not None else (np.zeros(alt.shape, np.float32), 0.0)
        self.offset = (-penalty * sat).astype(np.float64)  # [n, K] known utility offset
        rows = np.arange(data.size)
        clicked = data.chosen >= 0
        col = np.maximum(data.chosen, 0)

        def chosen_of(table: np.ndarray) -> np.ndarray:
            return np.where(clicked, table[rows, col], 0.0).astype(np.float64)  # [n]

        self.chosen_clickbait = chosen_of(self.clickbait)
        self.chosen_popularity = chosen_of(self.popularity)
        self.chosen_position = chosen_of(self.position)
        self.chosen_offset = chosen_of(self.offset)
        self.chosen_weight = (
            chosen_of(data.log_weight) if data.log_weight is not None else np.zeros(data.size)
        )
        self.clicked = clicked
        self.starts = data.user_start[:-1]
        self.row_user = data.user_of_rows()

    def _logits(self, values: dict[str, float], table: ScoreTable) -> tuple[np.ndarray, np.ndarray, float]:
        """([n, R, K] cosine utilities, [n, R, K] logits (padding -inf), outside logit), in float64: the
        objective must be smooth to far below float32's rounding for the line search."""
        a = 1.0 / values["temperature"]
        base = values["clickbait_appeal"] * self.clickbait + values["popularity_appeal"] * self.popularity
        utility = table.scores + (base + self.offset)[:, None, :].astype(np.float64)  # [n, R, K]
        shift = np.log(values["position_decay"]) * self.position + self.pad  # [n, K]
        logits = a * utility + shift[:, None, :]
        outside = a * values["no_click_utility"] if self.data.outside else -np.inf
        return utility, logits, outside

    def _softmax(self, logits: np.ndarray, outside: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lse [n, R], prob [n, R, K], prob of the outside option [n, R])."""
        top = logits.max(axis=2)  # [n, R]
        if self.data.outside:
            top = np.maximum(top, outside)
        weights = np.exp(logits - top[:, :, None])
        total = weights.sum(axis=2)  # [n, R]
        out = np.exp(outside - top) if self.data.outside else 0.0
        total = total + out
        prob = weights / total[:, :, None]
        return top + np.log(total), prob, out / total

    def evaluate(
        self, values: dict[str, float], free: list[str], per_user: bool = False
    ) -> tuple[float, np.ndarray, np.ndarray | None]:
        """Simulated log-likelihood at ``values`` and its gradient in the optimiser's coordinates of ``free``.

        Returns:
            (total log-likelihood, [len(free)] gradient, [U, len(free)] per-user scores when ``per_user``).
            The coordinates are log T and log decay for those two, natural units for the rest.
        """
        data = self.data
        a = 1.0 / values["temperature"]
        u0 = values["no_click_utility"]
        cb, pop = values["clickbait_appeal"], values["popularity_appeal"]
        table = self.scores.table(values["interest_drift"], values["interest_noise"])
        utility, logits, outside = self._logits(values, table)
        lse, prob, prob_out = self._softmax(logits, outside)
        chosen_utility = (
            table.chosen
            + (cb * self.chosen_clickbait + pop * self.chosen_popularity + self.chosen_offset)[:, None]
        )  # [n, R]
        chosen_logit = (
            a * chosen_utility
            + (np.log(values["position_decay"]) * self.chosen_position + self.chosen_weight)[:, None]
        )
        if data.outside:
            chosen_logit = np.where(self.clicked[:, None], chosen_logit, outside)
            chosen_utility = np.where(self.clicked[:, None], chosen_utility, u0)
        ll = chosen_logit - lse  # [n, R]
        ll_user = np.add.reduceat(ll, self.starts, axis=0)  # [U, R]
        r = ll_user.shape[1]
        total_user = logsumexp(ll_user, axis=1) - np.log(r)  # [U]
        # A user's score is the draws' scores weighted by each draw's posterior weight: Σ_r w_ur Σ_t g_tr.
        weights = np.exp(ll_user - logsumexp(ll_user, axis=1, keepdims=True))[self.row_user]  # [n, R]

        def expect(x: np.ndarray) -> np.ndarray:
            """Σ_j q_j x_j over the alternatives, x [n, K] or [n, R, K] → [n, R]."""
            if x.ndim == 2:
                return np.matmul(prob, x[:, :, None].astype(np.float64))[:, :, 0]
            return np.einsum("nrk,nrk->nr", prob, x)

        g_rows = np.zeros((data.size, len(free)))  # [n, P] draw-weighted row scores
        for i, name in enumerate(free):
            if name == "temperature":  # d/dlogT of a * U = -a * U
                expected = expect(utility) + (prob_out * u0 if data.outside else 0.0)
                g = -a * (chosen_utility - expected)
            elif name == "no_click_utility":
                g = a * ((~self.clicked)[:, None] - prob_out)
            elif name == "position_decay":
                g = self.chosen_position[:, None] - expect(self.position)
            elif name == "clickbait_appeal":
                g = a * (self.chosen_clickbait[:, None] - expect(self.clickbait))
            elif name == "popularity_appeal":
                g = a * (self.chosen_popularity[:, None] - expect(self.popularity))
            elif name == "interest_drift":
                g = a * (table.d_drift_chosen - expect(table.d_drift))
            elif name == "interest_noise":
                g = a * (table.d_noise_chosen - expect(table.d_noise))
            else:
                raise KeyError(name)
            g_rows[:, i] = np.einsum("nr,nr->n", g, weights)
        g_user = np.add.reduceat(g_rows, self.starts, axis=0) if free else np.zeros((len(total_user), 0))
        return float(total_user.sum()), g_user.sum(axis=0), g_user if per_user else None

    def per_user_log_likelihood(self, values: dict[str, float]) -> np.ndarray:
        """[U] simulated log-likelihood of each user's choices at ``values``."""
        data = self.data
        table = self.scores.table(values["interest_drift"], values["interest_noise"])
        _, logits, outside = self._logits(values, table)
        lse, _, _ = self._softmax(logits, outside)
        picked = logits[np.arange(data.size), :, np.maximum(data.chosen, 0)].astype(np.float64)  # [n, R]
        chosen = np.where(self.clicked[:, None], picked, outside)
        ll_user = np.add.reduceat(chosen - lse, self.starts, axis=0)  # [U, R]
        return logsumexp(ll_user, axis=1) - np.log(ll_user.shape[1])

    def fit(self, start: dict[str, float], free: list[str], max_iter: int = 300) -> ChoiceFit:
        """Maximise the simulated likelihood over ``free`` from ``start`` (the other parameters held)."""
        values = dict(start)
        if not free:
            total, _, _ = self.evaluate(values, [])
            return ChoiceFit(
                values=values, free=[], log_likelihood=total, choices=self.data.size, converged=True
            )
        scale = max(self.data.size, 1)

        def to_vector(vals: dict[str, float]) -> np.ndarray:
            return np.asarray([np.log(vals[n]) if n in LOG_SCALE else vals[n] for n in free], np.float64)

        def from_vector(vec: np.ndarray) -> dict[str, float]:
            out = dict(values)
            for name, v in zip(free, vec, strict=True):
                out[name] = float(np.exp(v)) if name in LOG_SCALE else float(v)
            return out

        bounds = [(np.log(BOUNDS[n][0]), np.log(BOUNDS[n][1])) if n in LOG_SCALE else BOUNDS[n] for n in free]
        low, high = np.asarray([b[0] for b in bounds]), np.asarray([b[1] for b in bounds])
        x0 = np.clip(to_vector(values), low, high)
        # Diagonal preconditioning: each coordinate in units of its standard error at the start (BHHH), so
        # that L-BFGS-B sees a problem of unit scale in every direction.
        _, _, scores0 = self.evaluate(from_vector(x0), free, per_user=True)
        information = np.einsum("up,up->p", scores0, scores0) if scores0 is not None else np.ones(len(free))
        unit = 1.0 / np.sqrt(np.maximum(information, 1e-12))

        def objective(z: np.ndarray) -> tuple[float, np.ndarray]:
            total, grad, _ = self.evaluate(from_vector(x0 + unit * z), free)
            return -total / scale, -grad * unit / scale

        result = minimize(
            objective,
            np.zeros(len(free)),
            jac=True,
            method="L-BFGS-B",
            bounds=list(zip((low - x0) / unit, (high - x0) / unit, strict=True)),
            options={"maxiter": max_iter, "ftol": 1e-12, "gtol": 1e-7},
        )
        result.x = x0 + unit * result.x
        fitted = from_vector(result.x)
        total, _, scores = self.evaluate(fitted, free, per_user=True)
        errors = bhhh_errors(scores, free, fitted)
        return ChoiceFit(
            values=fitted,
            free=list(free),
            std_errors=errors,
            log_likelihood=total,
            choices=self.data.size,
            converged=bool(result.success),
            iterations=int(result.nit),
        )


def bhhh_errors(scores: np.ndarray | None, free: list[str], values: dict[str, float]) -> dict[str, float]:
    """Standard errors from the outer product of per-user scores [U, P] (in the optimiser's coordinates),
    mapped to natural units by the delta method (``se(T) = T se(log T)``)."""
    if scores is None or len(scores) <= len(free):
        return dict.fromkeys(free, float("nan"))
    information = scores.T @ scores
    try:
        covariance = np.linalg.inv(information)
    except np.linalg.LinAlgError:
        return dict.fromkeys(free, float("nan"))
    se = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
    return {
        name: float(se[i] * values[name]) if name in LOG_SCALE else float(se[i])
        for i, name in enumerate(free)
    }


def choice_values(config: SlateEnvConfig) -> dict[str, float]:
    """The config's values of :data:`CHOICE_PARAMETERS`."""
    return {name: float(getattr(config, name)) for name in CHOICE_PARAMETERS}


def slate_choice_data(log, config: SlateEnvConfig) -> ChoiceData:
    """:class:`ChoiceData` of a :class:`envs.calibration_data.SlateLog`: the slates by position, no click observed."""
    starts = np.flatnonzero(np.r_[True, log.user[1:] != log.user[:-1]]) if log.size else np.zeros(0, np.int64)
    new_session = np.r_[False, log.session[1:] != log.session[:-1]] if log.size else np.zeros(0, bool)
    gap_days = np.r_[0.0, np.diff(log.time)] / 86_400.0
    fade = np.where(new_session, np.maximum(np.round(gap_days), 1.0), 0.0)
    fade[starts] = 0.0
    return ChoiceData(
        user_start=np.r_[starts, log.size].astype(np.int64),
        first_profile=log.profile[starts],
        profile=log.profile,
        alternatives=log.slate,
        chosen=log.click,
        clicked_item=log.clicked_items(),
        fade=fade,
        outside=True,
        positions=True,
        exposure="logged slates (impressions by position)",
    )


def _uniform_alternatives(
    catalog_size: int, blocked: np.ndarray, count: int, rng: np.random.Generator
) -> np.ndarray:
    """[n, count] distinct items per row drawn uniformly from the catalog minus the row's ``blocked`` [n, b]."""
    n = len(blocked)
    out = np.full((n, count), NO_ITEM, np.int64)
    todo = np.arange(n)
    while len(todo):
        draw = rng.integers(0, catalog_size, size=(len(todo), 3 * count))  # [m, 3M]
        bad = (draw[:, :, None] == blocked[todo][:, None, :]).any(axis=2)
        order = np.argsort(draw, axis=1, kind="stable")
        ranked = np.take_along_axis(draw, order, axis=1)
        repeat = np.zeros_like(bad)
        np.put_along_axis(repeat, order[:, 1:], ranked[:, 1:] == ranked[:, :-1], axis=1)
        bad |= repeat
        first = np.argsort(bad, axis=1, kind="stable")[:, :count]  # valid draws first, in draw order
        ok = (~np.take_along_axis(bad, first, axis=1)).all(axis=1)
        out[todo[ok]] = np.take_along_axis(draw, first, axis=1)[ok]
        todo = todo[~ok]
    return out


def exposure_choice_data(
    ilog,
    catalog: ItemCatalog,
    retriever,
    num_candidates: int,
    history_length: int,
    max_per_user: int = 100,
    uniform: int = 20,
    seed: int = 0,
    max_session_prefix: int = 50,
) -> ChoiceData:
    """:class:`ChoiceData` of plain interactions with *sampled exposure*.

    The slates are not logged, so each interaction's alternatives are a sample of what the user could have
    chosen: the ``num_candidates`` items retrieved for the user's profile just before it (the nearest by
    ``profile · e`` among the items not yet consumed, as the simulator's retrieval picks them) plus
    ``uniform`` items drawn uniformly from the rest of the unconsumed catalog, the chosen item taking the
    place of a random uniform draw when it is in neither. Under this protocol every alternative ``j`` has a
    positive probability ``π(C | j)`` of producing the same set, and the conditional logit on the sampled set
    with ``ln π(C | j)`` added to each logit — ``ln((N - K - consumed) / uniform)`` for a uniform draw, 0 for
    a retrieved item (:attr:`ChoiceData.log_weight`) — is consistent for the logit over the whole catalog
    (McFadden 1978, positive conditioning). Retrieved items make the sample informative about how sharply
    users choose among close items; the uniform ones about popularity and clickbait across the catalog.

    The profile is the normalised mean of the ``history_length`` items before the session plus the session's
    items so far, as in the simulator. Each user's first ``history_length`` interactions are history only;
    at most ``max_per_user`` choices per user are kept (heavy raters would dominate), and the consumed list
    holds at most ``max_session_prefix`` of the session's items. No outside option and no positions:
    non-clicks and display order are not logged.

    References:
        McFadden, D. (1978). "Modelling the choice of residential location." In Spatial Interaction Theory
        and Planning Models.
    """
    users, sessions, items = ilog.user, ilog.session, ilog.item
    emb = catalog.embeddings
    user_rows, profiles, excluded_lists, first_rows = [], [], [], []
    bounds = np.flatnonzero(np.r_[True, users[1:] != users[:-1], True])
    new_session = np.r_[True, sessions[1:] != sessions[:-1]]
    session_first = np.maximum.accumulate(np.where(new_session, np.arange(len(sessions)), 0))
    for lo, hi in itertools.pairwise(bounds):
        if hi - lo <= history_length:
            continue
        first_rows.append(len(user_rows))
        for row in range(lo + history_length, min(hi, lo + history_length + max_per_user)):
            session_lo = max(int(session_first[row]), lo)
            before = items[max(lo, session_lo - history_length) : session_lo]
            prefix = items[max(session_lo, row - max_session_prefix) : row]
            consumed = np.r_[before, prefix]
            profiles.append(emb[consumed].mean(axis=0))
            excluded_lists.append(consumed)
            user_rows.append(row)
    width_all = num_candidates + uniform
    if not user_rows:
        return ChoiceData(
            user_start=np.zeros(1, np.int64),
            first_profile=np.zeros((0, catalog.dim), np.float32),
            profile=np.zeros((0, catalog.dim), np.float32),
            alternatives=np.zeros((0, width_all), np.int64),
            chosen=np.zeros(0, np.int64),
            clicked_item=np.zeros(0, np.int64),
            fade=np.zeros(0),
            outside=False,
            positions=False,
            exposure="sampled exposure (no user has more interactions than the history length)",
            log_weight=np.zeros((0, width_all), np.float32),
        )
    rows = np.asarray(user_rows)
    profile = np.asarray(profiles, np.float32)
    profile /= np.maximum(np.linalg.norm(profile, axis=1, keepdims=True), 1e-12)
    width = max(len(e) for e in excluded_lists)
    excluded = np.full((len(rows), width), NO_ITEM, np.int64)
    for i, e in enumerate(excluded_lists):
        excluded[i, : len(e)] = e
    _, retrieved = retriever.search_excluding(profile, num_candidates, excluded)
    retrieved = np.asarray(retrieved, np.int64)
    rng = np.random.default_rng(seed)
    drawn = np.concatenate(
        [
            _uniform_alternatives(catalog.size, np.c_[retrieved[c], excluded[c]], uniform, rng)
            for c in np.array_split(np.arange(len(rows)), max(1, len(rows) // 4096))
        ]
    )
    alternatives = np.concatenate([retrieved, drawn], axis=1)  # [n, K + M]
    chosen_item = items[rows]
    in_retrieved = (retrieved == chosen_item[:, None]).any(axis=1)
    missed = ~(alternatives == chosen_item[:, None]).any(axis=1)
    slot = num_candidates + rng.integers(0, uniform, size=len(rows))
    alternatives[np.flatnonzero(missed), slot[missed]] = chosen_item[missed]
    chosen = (alternatives == chosen_item[:, None]).argmax(axis=1)
    consumed_count = (excluded >= 0).sum(axis=1)
    log_weight = np.zeros(alternatives.shape, np.float32)
    log_weight[:, num_candidates:] = np.log(
        np.maximum(catalog.size - num_candidates - consumed_count, uniform) / uniform
    )[:, None]
    start = np.asarray([*first_rows, len(rows)], np.int64)
    new_session = np.r_[False, sessions[rows][1:] != sessions[rows][:-1]]
    gap_days = np.r_[0.0, np.diff(ilog.time[rows].astype(np.float64))] / 86_400.0
    fade = np.where(new_session, np.maximum(np.round(gap_days), 1.0), 0.0)
    fade[start[:-1]] = 0.0
    return ChoiceData(
        user_start=start,
        first_profile=profile[start[:-1]],
        profile=profile,
        alternatives=alternatives,
        chosen=chosen.astype(np.int64),
        clicked_item=chosen_item,
        fade=fade,
        outside=False,
        positions=False,
        exposure=(
            f"sampled exposure: the {num_candidates} items retrieved for the profile before each interaction "
            f"plus {uniform} uniform draws from the unconsumed catalog, with McFadden's sampling correction "
            f"({float(in_retrieved.mean()):.0%} of the chosen items were among the retrieved ones)"
        ),
        log_weight=log_weight,
    )
