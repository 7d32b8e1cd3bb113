"""Calibrating the simulator to logs: compare statistics, fit the choice model's temperature and no-click utility.

Two parameters of the conditional logit are fitted, each by the method the logs support:

- ``temperature`` by **maximum likelihood** of logged choices. For every logged user with at least two
  interactions, the last item is the choice and the normalised mean of the earlier ones stands in for
  the interest; the choice's likelihood is a softmax over it and ``negatives`` uniformly drawn catalog
  items (sampled softmax: uniform negatives leave the sharpness estimate consistent). Logs of
  positive interactions alone say how *sharply* users choose, not how often they decline.
- ``no_click_utility`` by **moment matching**: bisection (the mean clicks per session falls as the
  outside option gains utility) until simulated sessions under the ``retrieval`` policy have as many
  clicks as logged sessions have interactions (sessions split at gaps over ``session_gap`` seconds).

The report puts simulated statistics next to the logged ones: interaction rate (clicks per
impression, i.e. per shown item, when the logs have impressions), interactions per
session, popularity Gini (:func:`rayrec.data.stats.popularity_gini` of per-item counts over the
whole catalog) and the category mix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from envs.catalog import ItemCatalog
from envs.config import SlateEnvConfig
from envs.factory import build_simulator, load_world
from envs.rollout import StepRecord, evaluate_policy
from envs.users import logged_columns, logged_histories
from rayrec.baselines import RetrievalPolicy
from rayrec.data.stats import popularity_gini
from rayrec.errors import DataError
from rayrec.features import l2_normalize

SESSION_GAP = 30 * 60
"""Seconds of inactivity that end a logged session."""
TOP_CATEGORIES = 8


@dataclass(frozen=True)
class Statistics:
    """Comparable summary of logged or simulated behaviour.

    Attributes:
        interaction_rate: clicks per impression (one shown item); None when the logs have no
            impressions.
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


def simulated_statistics(config: SlateEnvConfig, num_users: int, seed: int) -> Statistics:
    """Statistics of ``num_users`` simulated sessions under the ``retrieval`` policy (the logging proxy)."""
    clicked_items: list[np.ndarray] = []

    def record(step: StepRecord) -> None:
        clicked_items.append(step.chosen[step.chosen >= 0])

    sim = build_simulator(config, batch=num_users)
    outcomes = evaluate_policy(RetrievalPolicy(), sim, num_users, seed, observers=[record])
    clicked = np.concatenate(clicked_items)
    return Statistics(
        interaction_rate=float(outcomes.values("ctr").mean()),
        interactions_per_session=float(outcomes.clicks.mean()),
        popularity_gini=popularity_gini(np.bincount(clicked, minlength=sim.catalog.size)),
        category_mix=category_mix(sim.catalog, clicked),
    )


def fit_temperature(
    catalog: ItemCatalog,
    interactions,
    popularity_appeal: float,
    history_length: int = 20,
    negatives: int = 100,
    seed: int = 0,
) -> tuple[float, float]:
    """Maximum-likelihood temperature of logged choices (see the module docstring).

    Returns:
        (temperature, mean log-likelihood per choice at that temperature).
    """
    histories = logged_histories(catalog, interactions, history_length + 1)  # [U, h + 1], oldest first
    last = (histories >= 0).sum(axis=1) - 1
    usable = last >= 1
    if usable.sum() < 2:
        raise DataError("fitting the temperature needs users with at least two interactions in the catalog")
    histories, last = histories[usable], last[usable]
    rows = np.arange(len(histories))
    chosen = histories[rows, last]  # [U]
    earlier = (np.arange(histories.shape[1])[None, :] < last[:, None]) & (histories >= 0)  # [U, h + 1]
    emb = catalog.embeddings[np.where(earlier, histories, 0)] * earlier[..., None]  # [U, h + 1, d]
    interest = l2_normalize(emb.sum(axis=1))  # [U, d]
    rng = np.random.default_rng(seed)
    options = np.concatenate(
        [chosen[:, None], rng.integers(0, catalog.size, size=(len(chosen), negatives))], axis=1
    )
    utility = np.einsum("und,ud->un", catalog.embeddings[options], interest)  # [U, 1 + M]
    utility += popularity_appeal * catalog.popularity[options]

    def negative_log_likelihood(log_t: float) -> float:
        logits = utility / np.exp(log_t)
        logits -= logits.max(axis=1, keepdims=True)
        return float(-(logits[:, 0] - np.log(np.exp(logits).sum(axis=1))).mean())

    result = minimize_scalar(negative_log_likelihood, bounds=(np.log(1e-3), np.log(10.0)), method="bounded")
    return float(np.exp(result.x)), float(-result.fun)


def fit_no_click_utility(
    config: SlateEnvConfig, target_per_session: float, num_users: int, seed: int, iterations: int = 12
) -> tuple[float, float]:
    """Bisection on ``no_click_utility`` until simulated clicks per session match ``target_per_session``.

    Returns:
        (no_click_utility, simulated clicks per session at it). When the target is out of reach (e.g.
        more logged interactions per session than the budget allows), the closest bound is returned.
    """
    low, high = -2.0, 3.0  # cosine units: from "always click" to "never click"

    def clicks(utility: float) -> float:
        stats = simulated_statistics(config.replace(no_click_utility=utility), num_users, seed)
        return stats.interactions_per_session

    for _ in range(iterations):
        mid = 0.5 * (low + high)
        if clicks(mid) > target_per_session:
            low = mid
        else:
            high = mid
    best = 0.5 * (low + high)
    return best, clicks(best)


def calibrate(config: SlateEnvConfig, num_users: int = 500, seed: int = 0) -> tuple[SlateEnvConfig, dict]:
    """Fit temperature and no-click utility to the logs of ``config.data_dir``; report before and after.

    Returns:
        (the calibrated config, with ``fitted`` provenance; a report dict with ``logged``, ``simulated
        _before``, ``simulated_after`` statistics and the fitted values).
    """
    if config.data_dir is None:
        raise DataError("calibration needs logs: give a data directory")
    world = load_world(config)
    logged = logged_statistics(world.catalog, world.interactions)
    before = simulated_statistics(config, num_users, seed)
    temperature, log_likelihood = fit_temperature(
        world.catalog, world.interactions, config.popularity_appeal, seed=seed
    )
    with_temperature = config.replace(temperature=temperature)
    utility, achieved = fit_no_click_utility(
        with_temperature, logged.interactions_per_session, num_users, seed
    )
    fitted = {
        "data_dir": config.data_dir,
        "index_dir": config.index_dir,
        "temperature": {
            "method": "maximum likelihood (sampled softmax)",
            "value": temperature,
            "mean_log_likelihood": log_likelihood,
        },
        "no_click_utility": {
            "method": "moment matching of interactions per session (bisection)",
            "value": utility,
            "target": logged.interactions_per_session,
            "achieved": achieved,
        },
    }
    calibrated = with_temperature.replace(no_click_utility=utility, fitted=fitted)
    after = simulated_statistics(calibrated, num_users, seed)
    report = {
        "logged": dataclasses.asdict(logged),
        "simulated_before": dataclasses.asdict(before),
        "simulated_after": dataclasses.asdict(after),
        "fitted": fitted,
    }
    return calibrated, report
