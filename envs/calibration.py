"""Calibrating the simulator to logs: fit the choice model and the session dynamics, validate on held-out users.

:func:`calibrate` fits, on the *train* users of the logs (:func:`envs.users.split_of_users`, the simulator's own split):

- **the choice model** — ``temperature``, ``no_click_utility``, ``position_decay``, ``clickbait_appeal``,
  ``popularity_appeal``, and the interest's ``interest_drift`` and ``interest_noise`` — by simulated
  maximum likelihood with the hidden interest integrated out (:mod:`envs.calibration_choice`). With logged
  impressions (rayrec's event log: ``--events``) the alternatives are the shown slates by position and the
  requests without a click are observed. With plain interactions (MovieLens) the alternatives are a
  *sampled exposure* — the items retrieved for the user's profile just before each interaction plus uniform
  draws from the catalog, with McFadden's sampling correction — so neither the outside option nor positions
  are observed and ``no_click_utility`` / ``position_decay`` keep their preset values.
- **the dynamics** — ``satisfaction_gain``, ``clickbait_penalty``, ``boredom``, ``leave_scale`` (and, where
  users have several sessions and the preset has returning users, ``return_bias``, ``return_slope``,
  ``return_delay``) — by the likelihood of the observed session ends with the satisfaction replayed from the
  clicks (:mod:`envs.calibration_dynamics`). Without impressions the no-click steps are unobserved: only
  ``leave_scale`` is fitted, by simulated moments of the interactions per session.

A parameter the data cannot identify (too few users, no impressions, one item per session, no clickbait
shown, ...) keeps its preset value; the report names it and says what the data lacks.

Then it validates on the held-out *validation* users (never used to fit): the log-likelihood of their
choices under the calibrated model beside a popularity model and a retrieval-score model (both fitted on
the train users by maximum likelihood), and the Kolmogorov–Smirnov distance between simulated and
held-out sessions' lengths and click positions; and runs a **sim-to-sim recovery check** — logs generated
with the calibrated parameters on a small synthetic world under a logging policy with exploration
(``random``), refitted — reporting each fitted parameter's relative error against the ±10% target.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from envs.calibration_choice import (
    CHOICE_PARAMETERS,
    ChoiceData,
    ChoiceLikelihood,
    FixedScores,
    InterestPaths,
    choice_values,
    exposure_choice_data,
    profile_scores,
    satiation_offsets,
    slate_choice_data,
)
from envs.calibration_data import (
    SESSION_GAP,
    InteractionLog,
    SlateLog,
    interaction_log,
    slate_log_from_events,
)
from envs.calibration_dynamics import (
    DYNAMICS_PARAMETERS,
    RETURN_PARAMETERS,
    DynamicsLikelihood,
    SessionSteps,
    dynamics_values,
    session_steps,
)
from envs.calibration_sim import logging_policy_name, simulate_log
from envs.catalog import ItemCatalog
from envs.config import SlateEnvConfig
from envs.factory import load_world
from envs.users import logged_columns, split_of_users
from rayrec.data.stats import popularity_gini
from rayrec.errors import DataError
from rayrec.synth import WorldConfig, write_world

CALIBRATED_PARAMETERS = (*CHOICE_PARAMETERS, *DYNAMICS_PARAMETERS)
TOP_CATEGORIES = 8
MIN_USERS = 20
"""Fewer train users than this: the data is too small to fit anything."""
MIN_CLICKS = 50
"""Fewer logged choices than this: the data is too small to fit the choice model."""
MIN_EVENTS = 10
"""Fewer informative events than this (clicks after a click, sessions that ended by leaving, clickbait
clicks, ...): the parameter they inform keeps its preset."""
RECOVERY_TOLERANCE = 0.10
"""Relative error within which the recovery check counts a parameter as recovered."""
NEAR_ZERO = 0.02
"""A true value closer to zero than this has no meaningful relative error: the recovery check reports its
absolute error and does not score it."""


@dataclass(kw_only=True)
class CalibrationOptions:
    """How :func:`calibrate` fits and checks (the simulator itself is the :class:`SlateEnvConfig`)."""

    events_dir: str | None = None
    """A rayrec event log (requests, impressions, click feedback) to fit the choice model and the dynamics
    to; without it the data directory's interactions are used (sampled exposure)."""
    users: int = 2000
    """Simulated users per simulation (validation against held-out users, simulated moments)."""
    draws: int = 16
    """Simulation draws of each user's interest noise in the likelihood (antithetic pairs)."""
    particles: int = 32
    """Stratified starting satisfactions per user in the dynamics' likelihood."""
    fit_interest_noise: bool = True
    """Also fit ``interest_noise`` (how far the hidden interest is from the observed profile); it needs
    several choices per user."""
    max_choices_per_user: int = 100
    """At most this many interactions per user enter the sampled-exposure likelihood (heavy users would
    dominate it)."""
    uniform_alternatives: int = 20
    """Uniformly drawn alternatives added to the retrieved ones in the sampled-exposure likelihood."""
    recovery_users: int = 3000
    """Users of the sim-to-sim recovery check's generated log (0: skip the check)."""
    recovery_requests: int = 140_000
    """Where sessions are short, the recovery check simulates more users (up to 8 times ``recovery_users``)
    until its log has this many requests."""
    seed: int = 0
    """Seed of the draws, simulations and the recovery world."""


@dataclass(frozen=True)
class Statistics:
    """Comparable summary of logged or simulated behaviour.

    Attributes:
        interaction_rate: clicks per impression (one shown item); None when the logs have no impressions.
        interactions_per_session: mean interactions (clicks) per session.
        popularity_gini: Gini of per-item interaction counts over the whole catalog.
        category_mix: share of interactions per catalog category (top categories, rest as ``(other)``).
    """

    interaction_rate: float | None
    interactions_per_session: float
    popularity_gini: float
    category_mix: dict[str, float]


def category_mix(catalog: ItemCatalog, items: np.ndarray) -> dict[str, float]:
    """Share of ``items`` (catalog indices) per category, largest first."""
    if catalog.categories is None or len(items) == 0:
        return {}
    names, counts = np.unique(catalog.categories[items], return_counts=True)
    order = np.argsort(-counts, kind="stable")
    shares = {str(names[i]): float(counts[i] / counts.sum()) for i in order[:TOP_CATEGORIES]}
    rest = 1.0 - sum(shares.values())
    return {**shares, "(other)": rest} if rest > 1e-9 else shares


def logged_statistics(catalog: ItemCatalog, interactions, session_gap: int = SESSION_GAP) -> Statistics:
    """Statistics of logged interactions (impressions count only toward the interaction rate)."""
    idx, users, ts, events = logged_columns(catalog, interactions)
    impressions = events == "impression"
    engaged = ~impressions & (idx >= 0)
    if not engaged.any():
        raise DataError("logs have no interaction with an item of the catalog")
    rate = float(engaged.sum() / impressions.sum()) if impressions.any() else None
    _, user_code = np.unique(users[engaged], return_inverse=True)
    order = np.lexsort((ts[engaged], user_code))
    code, times = user_code[order], ts[engaged][order]
    new_session = np.r_[True, (code[1:] != code[:-1]) | (np.diff(times) > session_gap)]
    counts = np.bincount(idx[engaged], minlength=catalog.size)
    return Statistics(
        interaction_rate=rate,
        interactions_per_session=float(engaged.sum() / new_session.sum()),
        popularity_gini=popularity_gini(counts),
        category_mix=category_mix(catalog, idx[engaged]),
    )


def slate_statistics(catalog: ItemCatalog, log: SlateLog) -> Statistics:
    """Statistics of a slate log (logged or simulated)."""
    clicked = log.clicked_items()
    clicked = clicked[clicked >= 0]
    return Statistics(
        interaction_rate=float(len(clicked) / max((log.slate >= 0).sum(), 1)),
        interactions_per_session=float(len(clicked) / max(log.num_sessions, 1)),
        popularity_gini=popularity_gini(np.bincount(clicked, minlength=catalog.size)),
        category_mix=category_mix(catalog, clicked),
    )


def with_user_split(config: SlateEnvConfig, split: str) -> SlateEnvConfig:
    """``config`` simulating the logged users of ``split`` (their histories start the sessions) when the data
    has logged users in it; else ``config`` unchanged (synthetic users)."""
    splits = getattr(load_world(config), "history_splits", None)
    if splits is None or not (np.asarray(splits) == split).any():
        return config
    return config.replace(user_split=split)


# --- what the data can identify ---------------------------------------------------------------------


def choice_identification(
    data: ChoiceData, catalog: ItemCatalog, fit_noise: bool
) -> tuple[list[str], dict[str, str]]:
    """(choice parameters the data can identify, {held parameter: what the data lacks})."""
    held: dict[str, str] = {}
    users, clicks = data.num_users, int((data.chosen >= 0).sum())
    if users < MIN_USERS or clicks < MIN_CLICKS:
        reason = (
            f"data too small: {users} train users with {clicks} choices "
            f"(needs at least {MIN_USERS} users and {MIN_CLICKS} choices)"
        )
        return [], dict.fromkeys(CHOICE_PARAMETERS, reason)
    mask = data.alternatives >= 0
    safe = np.maximum(data.alternatives, 0)

    def varies(trait: np.ndarray) -> bool:
        values = np.where(mask, trait[safe], np.nan)
        return bool((np.nanmax(values, axis=1) - np.nanmin(values, axis=1) > 1e-3).sum() >= MIN_EVENTS)

    if not data.outside:
        held["no_click_utility"] = (
            "no impressions: requests without a click are not logged, so the outside option is unobserved"
        )
    elif clicks == data.size:
        held["no_click_utility"] = "every logged request has a click: declining is never observed"
    if not data.positions:
        held["position_decay"] = "no impressions: the display positions of the alternatives are not logged"
    elif data.alternatives.shape[1] < 2 or len(np.unique(data.chosen[data.chosen >= 0])) < 2:
        held["position_decay"] = "slates show one item, or every click is at one position"
    if not varies(catalog.clickbait):
        held["clickbait_appeal"] = (
            f"no clickbait among the alternatives ({int((catalog.clickbait > 0.5).sum())} clickbait items in "
            "the catalog): its appeal cannot be told apart"
        )
    if not varies(catalog.popularity):
        held["popularity_appeal"] = "the alternatives' popularity does not vary"
    starts = data.user_start[:-1]
    after_click = np.r_[False, data.clicked_item[:-1] >= 0]
    after_click[starts] = False
    if after_click.sum() < MIN_EVENTS:
        held["interest_drift"] = (
            f"only {int(after_click.sum())} choices follow a click of the same user (one item per user or "
            "session): the interest's drift is not observed"
        )
    per_user = data.size / max(users, 1)
    if not fit_noise:
        held["interest_noise"] = "not fitted (calibration option fit_interest_noise is off)"
    elif per_user < 2.0:
        held["interest_noise"] = (
            f"{per_user:.1f} choices per user: with about one choice per user the interest noise cannot be "
            "told apart from the temperature"
        )
    return [name for name in CHOICE_PARAMETERS if name not in held], held


def dynamics_identification(
    steps: SessionSteps, config: SlateEnvConfig, days_known: bool
) -> tuple[list[str], dict[str, str]]:
    """(dynamics parameters the slate log can identify, {held parameter: what the data lacks})."""
    held: dict[str, str] = {}
    if steps.num_users < MIN_USERS:
        reason = f"data too small: {steps.num_users} train users (needs at least {MIN_USERS})"
        return [], dict.fromkeys(DYNAMICS_PARAMETERS, reason)
    left = np.nan_to_num(steps.left, nan=0.0)
    if left.sum() < MIN_EVENTS:
        reason = f"{int(left.sum())} sessions ended before the budget: leaving (and what drives it) is not observed"
        held.update(
            dict.fromkeys(("satisfaction_gain", "clickbait_penalty", "boredom", "leave_scale"), reason)
        )
    if steps.clicked.sum() < MIN_EVENTS or np.ptp(steps.quality[steps.clicked]) < 1e-3:
        held.setdefault("satisfaction_gain", "the clicked items' quality does not vary")
    if (steps.clickbait[steps.clicked] > 0.5).sum() < MIN_EVENTS:
        held.setdefault("clickbait_penalty", "fewer than 10 clickbait clicks logged")
    if (~steps.clicked).sum() < MIN_EVENTS:
        held.setdefault("boredom", "fewer than 10 steps without a click logged")
    returns = ~np.isnan(steps.returned)
    if config.sessions <= 1:
        reason = "the preset has one session per user (sessions=1): returning is not simulated"
        held.update(dict.fromkeys(RETURN_PARAMETERS, reason))
    elif returns.sum() < MIN_EVENTS or np.nansum(steps.returned) < MIN_EVENTS:
        reason = f"{int(np.nansum(steps.returned))} returns logged: users with several sessions are too few"
        held.update(dict.fromkeys(RETURN_PARAMETERS, reason))
    elif not days_known:
        held["return_delay"] = "the log does not say the days between a user's sessions"
    return [name for name in DYNAMICS_PARAMETERS if name not in held], held


# --- fitting -----------------------------------------------------------------------------------------


def _satiation(data: ChoiceData, catalog: ItemCatalog, config: SlateEnvConfig) -> tuple[np.ndarray, float]:
    return satiation_offsets(data, catalog, config), float(config.satiation_penalty)


def fit_choice(
    data: ChoiceData, catalog: ItemCatalog, config: SlateEnvConfig, free: list[str], draws: int, seed: int
):
    """Simulated maximum likelihood over ``free`` (from a plug-in conditional logit start); a ChoiceFit."""
    start = choice_values(config)
    satiation = _satiation(data, catalog, config)
    linear = [n for n in free if n not in ("interest_drift", "interest_noise")]
    if linear:
        # Plug-in start: the profile in place of the interest (no draws: cheap and concave).
        plug_in = ChoiceLikelihood(data, catalog, FixedScores(data, profile_scores(data, catalog)), satiation)
        start.update(plug_in.fit({**start, "interest_drift": 0.0, "interest_noise": 0.0}, linear).values)
        start["interest_drift"] = config.interest_drift
        start["interest_noise"] = config.interest_noise
    model = ChoiceLikelihood(data, catalog, InterestPaths(data, catalog, draws, seed), satiation)
    return model.fit(start, free)


def baseline_likelihoods(
    train: ChoiceData, held: ChoiceData, catalog: ItemCatalog
) -> dict[str, dict[str, float]]:
    """Held-out log-likelihoods of two reference models fitted on ``train`` by maximum likelihood.

    - ``popularity``: the logit of the alternatives' popularity (plus the outside option and position decay
      where observed) — who clicks what, regardless of the user;
    - ``retrieval_score``: the logit of ``profile · e`` (the retriever's score) with a fitted temperature
      (plus outside option and positions) — the profile taken at face value, no noise, no drift, no appeal.
    """
    neutral = {
        "temperature": 1.0,
        "no_click_utility": 0.0,
        "position_decay": 1.0,
        "clickbait_appeal": 0.0,
        "popularity_appeal": 0.0,
        "interest_drift": 0.0,
        "interest_noise": 0.0,
    }
    extra = (["no_click_utility"] if train.outside else []) + (["position_decay"] if train.positions else [])
    out = {}
    for name, scores, free in (
        ("popularity", None, ["popularity_appeal", *extra]),
        ("retrieval_score", profile_scores, ["temperature", *extra]),
    ):

        def table(data: ChoiceData, scores=scores) -> FixedScores:
            values = (
                np.zeros(data.alternatives.shape, np.float32) if scores is None else scores(data, catalog)
            )
            return FixedScores(data, values)

        fitted = ChoiceLikelihood(train, catalog, table(train)).fit(neutral, free)
        held_ll = ChoiceLikelihood(held, catalog, table(held)).per_user_log_likelihood(fitted.values)
        out[name] = _likelihood_summary(held_ll, held.size)
        out[name]["parameters"] = {n: fitted.values[n] for n in free}
    return out


def _likelihood_summary(per_user: np.ndarray, choices: int) -> dict:
    total = float(per_user.sum())
    return {"total": total, "per_choice": total / max(choices, 1)}


def fit_leave_scale_by_moments(
    config: SlateEnvConfig, logged_clicks: np.ndarray, users: int, seed: int
) -> tuple[float, float]:
    """``leave_scale`` whose simulated sessions match the logged interactions per session (simulated moments).

    The moment is the distribution of interactions per session — over sessions with at least one
    interaction, the only ones a log of interactions shows — capped at the simulator's budget: the objective
    is the squared distance of the two CDFs over 1..budget (a Cramér–von Mises distance), minimised over
    log ``leave_scale`` (bounded Brent) with the same users and random numbers at every value (common random
    numbers). Sessions are simulated under the ``retrieval`` policy. (Fitting ``no_click_utility`` jointly
    from the same moments was tried and does not recover it: clicking less and leaving later look alike.)

    Returns:
        (leave_scale, the CDF distance at it).
    """
    cap = int(np.ceil(config.budget))
    grid = np.arange(1, cap + 1)
    logged = np.minimum(logged_clicks[logged_clicks > 0], cap)
    target = (logged[:, None] <= grid[None, :]).mean(axis=0)

    def distance(log_scale: float) -> float:
        sim_log, _ = simulate_log(
            config.replace(leave_scale=float(np.exp(log_scale))), "retrieval", users, seed
        )
        clicks = sim_log.session_clicks()
        clicks = clicks[clicks > 0]
        if len(clicks) == 0:
            return float(len(grid))
        cdf = (clicks[:, None] <= grid[None, :]).mean(axis=0)
        return float(np.sum(np.square(cdf - target)))

    result = minimize_scalar(
        distance, bounds=(np.log(1e-3), np.log(50.0)), method="bounded", options={"xatol": 0.02}
    )
    return float(np.exp(result.x)), float(result.fun)


@dataclass
class FitResult:
    """Every parameter's outcome: values (fitted or preset), how, standard errors, and why some were held."""

    values: dict[str, float]
    methods: dict[str, str]
    std_errors: dict[str, float]
    held: dict[str, str]
    details: dict
    choice_data: ChoiceData
    """The train users' choices the model was fitted to (the baselines are fitted to them too)."""


def _fit_choice_part(
    data, catalog: ItemCatalog, config: SlateEnvConfig, options: CalibrationOptions, method: str
):
    """The choice-model half of a fit, shared by impressions and interactions: what the data identifies is
    fitted by ``method``; returns (held, values, methods, std errors, details)."""
    free, held = choice_identification(data, catalog, options.fit_interest_noise)
    values = {**choice_values(config), **dynamics_values(config)}
    methods: dict[str, str] = {}
    errors: dict[str, float] = {}
    details: dict = {"exposure": data.exposure}
    if free:
        fit = fit_choice(data, catalog, config, free, options.draws, options.seed)
        values.update({n: fit.values[n] for n in free})
        errors.update(fit.std_errors)
        methods.update(dict.fromkeys(free, method))
        details["choice"] = {
            "log_likelihood": fit.log_likelihood,
            "choices": fit.choices,
            "users": data.num_users,
            "converged": fit.converged,
            "iterations": fit.iterations,
        }
    return held, values, methods, errors, details


def fit_slate_log(
    log: SlateLog, catalog: ItemCatalog, config: SlateEnvConfig, options: CalibrationOptions
) -> FitResult:
    """Fit the choice model and the dynamics to a slate log (logged impressions)."""
    data = slate_choice_data(log, config)
    method = f"simulated maximum likelihood of logged slate choices ({options.draws} draws per user)"
    held, values, methods, errors, details = _fit_choice_part(data, catalog, config, options, method)
    steps = session_steps(log, catalog, config)
    dyn_free, dyn_held = dynamics_identification(steps, config, log.days_known)
    held.update(dyn_held)
    if dyn_free:
        likelihood = DynamicsLikelihood(steps, config, options.particles, options.seed)
        dyn = likelihood.fit(dynamics_values(config), dyn_free)
        values.update({n: dyn.values[n] for n in dyn_free})
        errors.update(dyn.std_errors)
        method = "maximum likelihood of session ends (and returns), satisfaction replayed from the clicks"
        methods.update(dict.fromkeys(dyn_free, method))
        details["dynamics"] = {
            "log_likelihood": dyn.log_likelihood,
            "users": steps.num_users,
            "converged": dyn.converged,
            "iterations": dyn.iterations,
        }
    return FitResult(values, methods, errors, held, details, data)


def _exposure(ilog: InteractionLog, world, config: SlateEnvConfig, options: CalibrationOptions) -> ChoiceData:
    return exposure_choice_data(
        ilog,
        world.catalog,
        world.retriever,
        config.num_candidates,
        max(config.history_length, 1),
        options.max_choices_per_user,
        options.uniform_alternatives,
        options.seed,
    )


def fit_interaction_log(
    ilog: InteractionLog, world, config: SlateEnvConfig, options: CalibrationOptions
) -> FitResult:
    """Fit what plain interactions identify: the choice model on sampled exposure, leave_scale by moments."""
    catalog = world.catalog
    data = _exposure(ilog, world, config, options)
    method = f"simulated maximum likelihood of interactions with sampled exposure ({options.draws} draws)"
    held, values, methods, errors, details = _fit_choice_part(data, catalog, config, options, method)
    lacks = (
        "no impressions: a session's steps without a click are unobserved, so satisfaction cannot be replayed"
    )
    held.update(dict.fromkeys(("satisfaction_gain", "clickbait_penalty", "boredom"), lacks))
    lengths = ilog.session_lengths()
    if len(np.unique(ilog.user)) < MIN_USERS:
        held["leave_scale"] = (
            f"data too small: {len(np.unique(ilog.user))} train users (needs at least {MIN_USERS})"
        )
    elif (lengths > 1).sum() < MIN_EVENTS:
        held["leave_scale"] = "one item per session: how long sessions last is not observed"
    else:
        calibrated = with_user_split(config.replace(**{n: values[n] for n in CALIBRATED_PARAMETERS}), "train")
        scale, distance = fit_leave_scale_by_moments(calibrated, lengths, options.users, options.seed)
        values["leave_scale"] = scale
        methods["leave_scale"] = (
            "simulated moments: the distribution of interactions per session (retrieval policy, common random numbers)"
        )
        details["leave_scale_cdf_distance"] = distance
    sessions_per_user = np.bincount(ilog.user[np.r_[True, ilog.session[1:] != ilog.session[:-1]]])
    if config.sessions <= 1:
        reason = (
            f"the preset has one session per user (sessions=1) while the data has "
            f"{sessions_per_user[sessions_per_user > 0].mean():.1f} sessions per user: returning is not simulated"
        )
    else:
        reason = "no impressions: the end-of-session satisfaction that drives returning cannot be replayed"
    held.update(dict.fromkeys(RETURN_PARAMETERS, reason))
    return FitResult(values, methods, errors, held, details, data)


# --- validation --------------------------------------------------------------------------------------


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov–Smirnov statistic ``sup_x |F_a(x) - F_b(x)|`` (discrete values allowed)."""
    a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    points = np.union1d(a, b)
    fa = np.searchsorted(a, points, side="right") / len(a)
    fb = np.searchsorted(b, points, side="right") / len(b)
    return float(np.abs(fa - fb).max())


def _histogram(values: np.ndarray, cap: int) -> list[float]:
    counts = np.bincount(np.minimum(values.astype(np.int64), cap), minlength=cap + 1)
    return (counts / max(counts.sum(), 1)).tolist()


def validate(
    calibrated: SlateEnvConfig,
    catalog: ItemCatalog,
    train: ChoiceData,
    held: ChoiceData,
    held_sessions: np.ndarray,
    held_log: SlateLog | None,
    policy: str,
    options: CalibrationOptions,
) -> dict:
    """Held-out log-likelihoods and KS distances (module docstring)."""
    report: dict = {"held_out_users": held.num_users, "choices": held.size, "policy": policy}
    if held.size == 0:
        report["message"] = "no held-out (validation) user has a choice to score"
    else:
        values = choice_values(calibrated)
        model = ChoiceLikelihood(
            held,
            catalog,
            InterestPaths(held, catalog, max(options.draws, 64), options.seed + 1),
            _satiation(held, catalog, calibrated),
        )
        likelihoods = {"model": _likelihood_summary(model.per_user_log_likelihood(values), held.size)}
        if train.size:
            likelihoods.update(baseline_likelihoods(train, held, catalog))
        report["log_likelihood"] = likelihoods
    simulating = with_user_split(calibrated, "validation")
    report["simulated_user_pool"] = (
        "the validation users' logged histories"
        if simulating.user_split == "validation"
        else "the simulator's users"
    )
    simulated, _ = simulate_log(simulating, policy, options.users, options.seed + 2)
    cap = int(np.ceil(calibrated.budget))
    if held_log is not None:
        real_lengths, sim_lengths = held_log.session_lengths(), simulated.session_lengths()
        unit = "requests per session"
        clicks_real = held_log.click[held_log.click >= 0]
        clicks_sim = simulated.click[simulated.click >= 0]
        report["ks"] = {
            "session_length": ks_distance(real_lengths, sim_lengths),
            "click_position": ks_distance(clicks_real, clicks_sim),
        }
        report["position_ctr"] = {
            "held_out": held_log.position_ctr().tolist(),
            "simulated": simulated.position_ctr()[: held_log.slate_size].tolist(),
        }
    else:
        real_lengths = held_sessions
        sim_lengths = simulated.session_clicks()
        sim_lengths = sim_lengths[sim_lengths > 0]
        unit = "interactions per session (sessions with at least one)"
        report["ks"] = {
            "session_length": ks_distance(np.minimum(real_lengths, cap), sim_lengths),
            "click_position": None,
        }
        report["ks_notes"] = {
            "session_length": f"logged sessions capped at the simulator's budget ({cap}); "
            f"{float((real_lengths > cap).mean()):.0%} of held-out sessions are longer",
            "click_position": "no impressions: click positions are not logged",
        }
    report["session_length"] = {
        "unit": unit,
        "held_out": _histogram(np.minimum(real_lengths, cap), cap),
        "simulated": _histogram(sim_lengths, cap),
        "held_out_mean": float(np.mean(real_lengths)) if len(real_lengths) else None,
        "simulated_mean": float(np.mean(sim_lengths)) if len(sim_lengths) else None,
    }
    report["simulated_users"] = options.users
    report["simulated_statistics"] = dataclasses.asdict(slate_statistics(catalog, simulated))
    return report


# --- sim-to-sim recovery -----------------------------------------------------------------------------


RECOVERY_WORLD = WorldConfig(items=1000, users=300, topics=8, dim=16, seed=0)
"""The small synthetic world of the recovery check (its users' histories start the simulated sessions)."""
RECOVERY_TRUTH = {
    "temperature": 0.1,
    "no_click_utility": 1.0,
    "position_decay": 0.85,
    "clickbait_appeal": 0.3,
    "popularity_appeal": 0.3,
    "interest_drift": 0.2,
    "satisfaction_gain": 0.4,
    "clickbait_penalty": 0.2,
    "boredom": 0.05,
    "leave_scale": 0.5,
}
"""True parameters of the recovery test's logs: the defaults, with popularity appeal, drift, gain and boredom
raised so that 5,000 users (about 70,000 requests) pin each to a standard error of at most about 3.5%. That
is ±10% at about 3 of them, which one of ten parameters misses in a fair share of draws: the check and the
test use twice that, where ±10% is about 4."""


def recovery_check(
    truth: SlateEnvConfig, fitted: list[str], options: CalibrationOptions, world: WorldConfig = RECOVERY_WORLD
) -> dict:
    """Generate a slate log with ``truth``'s parameters on a small world, refit ``fitted``, compare.

    The log comes from ``options.recovery_users`` users (more where sessions are short: at least
    ``options.recovery_requests`` requests, up to 8 times as many users) under the ``random`` logging policy (exploration:
    every retrieved candidate can be shown at every position); the refit holds every other parameter at its
    true value and starts from the preset (``SlateEnvConfig()``) values.
    """
    directory = tempfile.mkdtemp(prefix="rayrec-recovery-")
    try:
        write_world(dataclasses.replace(world, seed=world.seed + options.seed), directory)
        config = truth.replace(data_dir=directory, index_dir=None, dim=None, user_split="all", fitted={})
        users = options.recovery_users
        log, _ = simulate_log(config, "random", users, options.seed + 3)
        if log.size < options.recovery_requests:  # short sessions: more users, for a comparable log
            users = int(min(np.ceil(users * options.recovery_requests / max(log.size, 1)), 8 * users))
            log, _ = simulate_log(config, "random", users, options.seed + 3)
        catalog = load_world(config).catalog
        preset = SlateEnvConfig()
        start = config.replace(**{n: getattr(preset, n) for n in fitted if n in CALIBRATED_PARAMETERS})
        choice_free = [n for n in fitted if n in CHOICE_PARAMETERS]
        dyn_free = [n for n in fitted if n in DYNAMICS_PARAMETERS]
        estimates: dict[str, float] = {}
        errors: dict[str, float] = {}
        if choice_free:
            fit = fit_choice(
                slate_choice_data(log, config), catalog, start, choice_free, options.draws, options.seed
            )
            estimates.update({n: fit.values[n] for n in choice_free})
            errors.update(fit.std_errors)
        if dyn_free:
            likelihood = DynamicsLikelihood(
                session_steps(log, catalog, config), start, options.particles, options.seed
            )
            dyn = likelihood.fit(dynamics_values(start), dyn_free)
            estimates.update({n: dyn.values[n] for n in dyn_free})
            errors.update(dyn.std_errors)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    parameters = {}
    for name in choice_free + dyn_free:
        true = float(getattr(truth, name))
        near_zero = abs(true) < NEAR_ZERO
        relative = (estimates[name] - true) / abs(true) if true else float("nan")
        parameters[name] = {
            "true": true,
            "fitted": estimates[name],
            "std_error": errors.get(name, float("nan")),
            "relative_error": relative,
            "absolute_error": estimates[name] - true,
            # A relative error means nothing for a truth near zero: that parameter is not scored.
            "within_10pct": None if near_zero else bool(abs(relative) <= RECOVERY_TOLERANCE),
        }
    return {
        "world": dataclasses.asdict(world),
        "users": users,
        "requests": log.size,
        "policy": "random",
        "tolerance": RECOVERY_TOLERANCE,
        "parameters": parameters,
        "all_within_10pct": all(p["within_10pct"] is not False for p in parameters.values()),
    }


# --- the whole calibration ---------------------------------------------------------------------------


def calibrate(
    config: SlateEnvConfig, options: CalibrationOptions | None = None
) -> tuple[SlateEnvConfig, dict]:
    """Fit ``config``'s simulator to the logs, validate on held-out users, check recovery (module docstring).

    Returns:
        (the calibrated config, with ``fitted`` provenance; the report: data, users, parameters, messages,
        fit, validation, recovery, statistics).
    """
    options = options or CalibrationOptions()
    world = load_world(config)
    catalog = world.catalog
    slate_log = slate_log_from_events(catalog, options.events_dir) if options.events_dir else None
    ilog = interaction_log(catalog, world.interactions) if world.interactions is not None else None
    if slate_log is None and ilog is None:
        raise DataError(
            "calibration needs logs: a data directory with interactions, or an event log (--events)"
        )
    user_ids = slate_log.user_ids if slate_log is not None else ilog.user_ids
    split = np.asarray(split_of_users(user_ids))
    train, held = split == "train", split == "validation"
    users = {
        "rule": "users split by a stable hash of their id (envs.users.split_of_users, the simulator's "
        "user_split): 70% train, 10% validation, 20% test",
        "fit_on": "train",
        "validated_on": "validation",
        "unused": "test (kept for policy evaluation)",
        "counts": {name: int((split == name).sum()) for name in ("train", "validation", "test")},
        "train_ids": user_ids[train].tolist(),
        "validation_ids": user_ids[held].tolist(),
    }
    shape_note = None
    if slate_log is not None and slate_log.slate_size != config.slate_size:
        # The simulator shows slates of the log's shape (validation and recovery replay the log's policy).
        k = slate_log.slate_size
        shape_note = f"slate size set to the log's: k={k} (was {config.slate_size})"
        config = config.replace(
            slate_size=k, num_candidates=max(slate_log.num_candidates, k, config.num_candidates)
        )
    if slate_log is not None:
        train_log, held_log = slate_log.take_users(train), slate_log.take_users(held)
        result = fit_slate_log(train_log, catalog, config, options)
        train_data, held_data = result.choice_data, slate_choice_data(held_log, config)
        held_sessions = held_log.session_lengths()
        policy = logging_policy_name(slate_log.policy)
        source = {"kind": "impressions", "events_dir": options.events_dir, "logging_policy": slate_log.policy}
    else:
        train_ilog, held_ilog = ilog.take_users(train), ilog.take_users(held)
        result = fit_interaction_log(train_ilog, world, config, options)
        train_data, held_data = result.choice_data, _exposure(held_ilog, world, config, options)
        held_sessions = held_ilog.session_lengths()
        held_log = None
        policy = "retrieval"
        source = {"kind": "interactions", "logging_policy": "unknown (simulated as retrieval)"}
    source.update(
        data_dir=config.data_dir, index_dir=config.index_dir, exposure=result.details.get("exposure")
    )
    if shape_note:
        source["note"] = shape_note

    fitted_names = [n for n in CALIBRATED_PARAMETERS if n in result.methods]
    parameters = {}
    for name in CALIBRATED_PARAMETERS:
        preset = float(getattr(config, name))
        if name in result.methods:
            parameters[name] = {
                "value": result.values[name],
                "preset": preset,
                "status": "fitted",
                "method": result.methods[name],
                "std_error": result.std_errors.get(name),
            }
        else:
            parameters[name] = {
                "value": preset,
                "preset": preset,
                "status": "held",
                "reason": result.held.get(name, "not fitted"),
            }
    messages = [
        f"{name} keeps its preset value {p['preset']:g}: {p['reason']}"
        for name, p in parameters.items()
        if p["status"] == "held"
    ]
    provenance = {
        "data_dir": config.data_dir,
        "index_dir": config.index_dir,
        "events_dir": options.events_dir,
        "fitted": {n: {"value": result.values[n], "method": result.methods[n]} for n in fitted_names},
        "held": {n: parameters[n]["reason"] for n in CALIBRATED_PARAMETERS if n not in result.methods},
    }
    calibrated = config.replace(**{n: result.values[n] for n in fitted_names}, fitted=provenance)
    validation = validate(
        calibrated, catalog, train_data, held_data, held_sessions, held_log, policy, options
    )
    recovery = recovery_check(calibrated, fitted_names, options) if options.recovery_users > 0 else None
    statistics = {}
    if world.interactions is not None:
        statistics["logged"] = dataclasses.asdict(logged_statistics(catalog, world.interactions))
    if slate_log is not None:
        statistics["logged_slates"] = dataclasses.asdict(slate_statistics(catalog, slate_log))
    statistics["simulated_after"] = validation.pop("simulated_statistics")
    report = {
        "data": source,
        "users": users,
        "parameters": parameters,
        "messages": messages,
        "fit": result.details,
        "validation": validation,
        "recovery": recovery,
        "statistics": statistics,
    }
    return calibrated, report
