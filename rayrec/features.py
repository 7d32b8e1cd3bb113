"""What a ranker observes about a user and the candidates: one definition shared by the simulator and the server.

The simulator's observation and the server's ranker input are built by the same functions, so a policy
trained in simulation sees exactly the features it will see in production.

Observation (batched; B requests, K candidates, d embedding dims, F = len(FEATURE_NAMES)):

- ``profile``    [B, d] float32: L2-normalised mean of the embeddings of the items the user engaged with
  (zeros for a user with no history).
- ``candidates`` [B, K, d] float32: the retrieved candidates' (normalised) embeddings, in retrieval order.
- ``features``   [B, K, F] float32: per-candidate features named by :data:`FEATURE_NAMES`.
- ``budget``     [B, 1] float32: remaining session budget as a fraction in [0, 1]:
  ``1 - session_step / budget`` (:func:`budget_feature`). The simulator knows each user's session step; the
  server is told it by the client (``session_step`` in ``/recommend``, 0 when absent) and takes ``budget``
  from the exported policy, so both compute the same number with the same function.

:func:`build_observation` assembles the whole observation; the simulator and the server both call it.

Observable where the logs have ratings: :data:`ITEM_RATING`, each candidate's mean logged rating
(:func:`rating_feature` of :func:`logged_rating_totals`), after :data:`FEATURE_NAMES`. A simulator built
with ``observe_rating`` appends it; an item index built from data with rating events stores it per item
(``rayrec build-index``), and a server over such an index builds it for the policies that read it and logs
it with every request (:func:`select_features` gives each reader the columns it reads).

Session feedback: a simulator built with ``observe_feedback`` appends :data:`LAST_ENGAGEMENT` after those, the
user's completion rate of their last click (the satisfaction it met), and one built with
``observe_last_click`` then :data:`LAST_CLICK_RATING`, the rating of that clicked item. They are observable:
a client sends the user's last click and its completion rate with each request (``last_click`` in
``/recommend``), and the server builds both columns from it (the rating from a rated index) for the
policies that read them and logs them with the request.

Per-item log statistics: a simulator built with ``observe_item_log`` then appends :data:`ITEM_LOG_FEATURES`,
each candidate's click-through rate and mean watch time per click in a log of exploration traffic
(:func:`shrunk_mean`). One built with ``observe_lift`` then appends :data:`LIFT_FEATURES`: what a click on
each candidate is logged to do to the clicker's completion rate, and the user's satisfaction estimated from
their last completion rate and that item's lift (:func:`estimated_satisfaction`). They are observable
wherever impressions, watch time and completion rates are logged: an index built with an event log
(``rayrec build-index --item-log``, :mod:`rayrec.item_stats`) stores the per-item ones, and a server over it
builds all of them (the estimate from the request's ``last_click``) for the policies that read them; over
any other index it refuses such a policy.

Simulation only: a simulator built with ``observe_hidden`` (:class:`envs.config.SlateEnvConfig`) appends some
or all of :data:`HIDDEN_FEATURE_NAMES` to each candidate's features, the hidden state that ``planner`` and
``oracle`` read. A policy trained on them measures how much of a learner's gap to the planner is missing
information, and which piece of it; no server has them, so the server refuses such a policy.
"""

from __future__ import annotations

import numpy as np

from rayrec.errors import ConfigError

Observation = dict[str, np.ndarray]

FEATURE_NAMES = ("retrieval_score", "popularity", "retrieval_rank")
NUM_FEATURES = len(FEATURE_NAMES)
ITEM_RATING = "item_rating"
"""The per-candidate column a simulator with ``observe_rating`` appends after :data:`FEATURE_NAMES`: the
item's mean logged rating as :func:`rating_feature` scales and shrinks it."""
RATING_PRIOR_COUNT = 5.0
"""Pseudo-ratings at the middle of the scale that every item's mean rating is shrunk with: an item with a
few ratings says little (the Bayesian average of the IMDb top list)."""
LAST_ENGAGEMENT = "last_engagement"
"""The per-candidate column a simulator with ``observe_feedback`` appends after the observable features and
:data:`ITEM_RATING`, before any hidden one (the same value in every row of a request): the fraction of its
length the user watched of the last item they clicked, their satisfaction when that click happened (0
before the user's first click). Video services log such completion rates; here it reads the hidden
satisfaction one click late. A server takes it from the request's ``last_click``."""
LAST_CLICK_RATING = "last_click_rating"
"""The per-candidate column a simulator with ``observe_last_click`` appends after :data:`LAST_ENGAGEMENT` (the
same value in every row of a request): the :data:`ITEM_RATING` of the last item the user clicked (0 before
their first click). Beside the completion rate it says what the user just consumed, which the completion
rate, read before the item was watched, does not; together they let a policy estimate the user's state
after the click. A server looks the request's ``last_click`` up in a rated index."""
ITEM_CTR = "item_ctr"
"""With ``observe_item_log``, the first of the two per-item columns appended after the session feedback: the
item's click-through rate (clicks per impression) in a log of exploration traffic, shrunk to the log's
mean by :func:`shrunk_mean` with :data:`IMPRESSION_PRIOR_COUNT`. Every service aggregates it per item; an
item clicked more often than others shown beside it has an appeal beyond the user's interest (here:
clickbait's)."""
ITEM_WATCH = "item_watch"
"""With ``observe_item_log``, the second per-item column: the item's mean watch time per click in the same
log, divided by the longest possible watch and shrunk to the log's mean (:func:`shrunk_mean` with
:data:`CLICK_PRIOR_COUNT`). How long an item is watched per click depends on the item (its length) and on
who clicks it (their satisfaction): the estimate is confounded by the clickers."""
ITEM_LOG_FEATURES = (ITEM_CTR, ITEM_WATCH)
"""The columns ``observe_item_log`` appends. A server builds them from an index built with an event log
(``rayrec build-index --item-log``)."""
ITEM_LIFT = "item_lift"
"""With ``observe_lift``, the per-item column appended after :data:`ITEM_LOG_FEATURES`: how much a click on
the item changes the clicker's completion rate, measured in the exploration log as the mean change from a
user's completion rate of that click to their completion rate of their next click, shrunk toward what the
item's logged click-through rate and watch time predict (:func:`envs.item_log.item_log_features`). It says
what consuming the item does to the user, which the item's own completion rate, read before it was
watched, cannot. Aggregated by :mod:`rayrec.item_stats`, in the simulator and from an event log alike."""
SATISFACTION_ESTIMATE = "satisfaction_estimate"
"""With ``observe_lift``, the per-user column after :data:`ITEM_LIFT` (the same value in every row of a
request): :data:`LAST_ENGAGEMENT` plus the :data:`ITEM_LIFT` of the item that click was on, clipped to
[0, 1], 0 before the user's first click. The completion rate reads the user's satisfaction one click late;
adding what the clicked item is logged to do brings the estimate up to now."""
ITEM_STATISTICS = (*ITEM_LOG_FEATURES, ITEM_LIFT)
"""The per-item columns of a log (:mod:`rayrec.item_stats`), in the order an index stores them and a server
appends them."""
LIFT_FEATURES = (ITEM_LIFT, SATISFACTION_ESTIMATE)
"""The columns ``observe_lift`` appends. Like :data:`ITEM_LOG_FEATURES` they need an index built with an
event log; the server builds the estimate from the request's ``last_click``."""
LIFT_PRIOR_COUNT = 5.0
"""Pseudo-pairs (a click and the same user's next click) at the prediction of the item's logged rates that
every item's measured lift is shrunk with."""
IMPRESSION_PRIOR_COUNT = 20.0
"""Pseudo-impressions at the log's mean click-through rate that every item's rate is shrunk with."""
CLICK_PRIOR_COUNT = 5.0
"""Pseudo-clicks at the log's mean watch time that every item's mean watch time is shrunk with."""
OBSERVE_SETTINGS = {
    ITEM_RATING: "observe_rating",
    LAST_ENGAGEMENT: "observe_feedback",
    LAST_CLICK_RATING: "observe_last_click",
    ITEM_CTR: "observe_item_log",
    ITEM_WATCH: "observe_item_log",
    ITEM_LIFT: "observe_lift",
    SATISFACTION_ESTIMATE: "observe_lift",
}
"""The simulator setting (``SlateEnvConfig``) that appends each observable column beyond :data:`FEATURE_NAMES`."""
HIDDEN_FEATURE_NAMES = ("true_click_logit", "quality", "clickbait", "satisfaction")
"""Per-candidate columns a simulator with ``observe_hidden`` appends after :data:`FEATURE_NAMES`: the true
click logit of the candidate for this user now (choice model, interest and satiation), the item's hidden
quality and clickbait trait, and the user's satisfaction (the same in every row of a request)."""
USER_COLUMNS = (LAST_ENGAGEMENT, LAST_CLICK_RATING, SATISFACTION_ESTIMATE, "satisfaction")
"""Feature columns that describe the user, not the candidate: one value per request, repeated in every row."""


def hidden_feature_selection(value: object) -> tuple[str, ...]:
    """``observe_hidden``'s value → the hidden feature names it selects, in :data:`HIDDEN_FEATURE_NAMES` order.

    ``true`` or ``"all"``: all of them; ``false``, ``None`` or empty: none; a name or a list of names: those.

    Raises:
        ConfigError: an unknown name or another kind of value.
    """
    if value is True or value == "all":
        return HIDDEN_FEATURE_NAMES
    if value is False or value is None:
        return ()
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list | tuple) or not all(isinstance(name, str) for name in names):
        raise ConfigError(
            f"observe_hidden must be true, false, 'all' or names of {list(HIDDEN_FEATURE_NAMES)}"
        )
    unknown = sorted(set(names) - set(HIDDEN_FEATURE_NAMES))
    if unknown:
        raise ConfigError(
            f"observe_hidden: unknown {unknown}; the hidden features are {list(HIDDEN_FEATURE_NAMES)}"
        )
    return tuple(name for name in HIDDEN_FEATURE_NAMES if name in names)


def feature_names(
    hidden: tuple[str, ...] = (),
    rating: bool = False,
    feedback: bool = False,
    last_click: bool = False,
    item_log: bool = False,
    lift: bool = False,
) -> tuple[str, ...]:
    """The per-candidate feature names of an observation: :data:`FEATURE_NAMES`, then :data:`ITEM_RATING`
    with ``rating`` (``SlateEnvConfig.observe_rating``), :data:`LAST_ENGAGEMENT` with ``feedback``
    (``SlateEnvConfig.observe_feedback``), :data:`LAST_CLICK_RATING` with ``last_click``
    (``SlateEnvConfig.observe_last_click``), :data:`ITEM_LOG_FEATURES` with ``item_log``
    (``SlateEnvConfig.observe_item_log``), :data:`LIFT_FEATURES` with ``lift`` (``SlateEnvConfig.observe_lift``),
    then ``hidden``, a selection made by
    :func:`hidden_feature_selection` (``SlateEnvConfig.observe_hidden`` holds one)."""
    return (
        *FEATURE_NAMES,
        *((ITEM_RATING,) if rating else ()),
        *((LAST_ENGAGEMENT,) if feedback else ()),
        *((LAST_CLICK_RATING,) if last_click else ()),
        *(ITEM_LOG_FEATURES if item_log else ()),
        *(LIFT_FEATURES if lift else ()),
        *hidden,
    )


def is_simulation_feature_set(names: tuple[str, ...]) -> bool:
    """Whether ``names`` is a feature set some simulator provides: :func:`feature_names` of some selection."""
    observed = [name in names for name in (ITEM_RATING, LAST_ENGAGEMENT, LAST_CLICK_RATING)]
    item_log, lift = ITEM_WATCH in names, ITEM_LIFT in names
    appended = sum(observed) + item_log * len(ITEM_LOG_FEATURES) + lift * len(LIFT_FEATURES)
    hidden = names[NUM_FEATURES + appended :]
    selection = tuple(n for n in HIDDEN_FEATURE_NAMES if n in hidden)
    return names == feature_names(selection, *observed, item_log, lift)


def select_features(features: np.ndarray, have: tuple[str, ...], want: tuple[str, ...]) -> np.ndarray:
    """The columns ``want`` of ``features`` [..., len(have)], whose columns are named ``have``: [..., len(want)].

    A server over a rated index logs :data:`ITEM_RATING` with every request, and each policy reads the
    columns it was trained on; selecting by name (not by width) keeps a column from being read as another.

    Raises:
        ConfigError: ``want`` names a column that ``have`` lacks.
    """
    if want == have:
        return features
    missing = [name for name in want if name not in have]
    if missing:
        raise ConfigError(f"the observation lacks the features {missing} (it has {list(have)})")
    return features[..., [have.index(name) for name in want]]


def logged_rating_totals(
    item_ids: np.ndarray, interactions
) -> tuple[np.ndarray, np.ndarray, float, float] | None:
    """``(count [N], total [N], low, high)``: each item's number and sum of logged ratings, and the log's
    lowest and highest rating (the arguments of :func:`rating_feature`); None when the log has no rating of
    one of ``item_ids``.

    Args:
        item_ids: [N] item ids (a catalog's or an index's).
        interactions: pa.Table with the data contract's ``item_id``, ``event`` and ``value`` columns.
    """
    events = np.asarray(interactions.column("event").to_numpy(zero_copy_only=False)).astype(str)
    rated = events == "rating"
    position = {item: i for i, item in enumerate(np.asarray(item_ids).astype(str))}
    items = np.asarray(interactions.column("item_id").to_numpy(zero_copy_only=False)).astype(str)
    idx = np.fromiter((position.get(i, -1) for i in items[rated]), dtype=np.int64, count=int(rated.sum()))
    values = interactions.column("value").to_numpy(zero_copy_only=False)[rated].astype(np.float64)
    keep = idx >= 0
    if not keep.any():
        return None
    idx, values = idx[keep], values[keep]
    count = np.bincount(idx, minlength=len(item_ids)).astype(np.float64)
    total = np.bincount(idx, weights=values, minlength=len(item_ids))
    return count, total, float(values.min()), float(values.max())


def rating_feature(count: np.ndarray, total: np.ndarray, low: float, high: float) -> np.ndarray:
    """[N] float32 in [0, 1]: each item's mean rating scaled to the log's scale and shrunk to its middle.

    ``((total - low * count) / (high - low) + 0.5 * m) / (count + m)`` with m = :data:`RATING_PRIOR_COUNT`:
    an unrated item gets 0.5, an item rated ``high`` a thousand times about 1.

    Args:
        count: [N] ratings per item.
        total: [N] sum of each item's ratings.
        low, high: the lowest and highest rating of the log (its scale).
    """
    count = np.asarray(count, dtype=np.float64)
    scaled = (np.asarray(total, dtype=np.float64) - low * count) / max(high - low, 1e-9)  # [N] in [0, count]
    return ((scaled + 0.5 * RATING_PRIOR_COUNT) / (count + RATING_PRIOR_COUNT)).astype(np.float32)


def shrunk_mean(total: np.ndarray, count: np.ndarray, prior_count: float) -> np.ndarray:
    """[N] float32 each item's mean ``total / count`` shrunk to the log's overall mean.

    ``(total + mean * m) / (count + m)`` with ``mean = sum(total) / sum(count)`` and m = ``prior_count``:
    an item never seen gets the log's mean, one seen a thousand times about its own (the Bayesian average
    of :func:`rating_feature`, with the log's mean as the prior).

    Args:
        total: [N] sum of each item's values (clicks, scaled watch time).
        count: [N] how many times each item was measured (impressions, clicks).
    """
    total, count = np.asarray(total, dtype=np.float64), np.asarray(count, dtype=np.float64)
    mean = total.sum() / max(count.sum(), 1.0)
    return ((total + mean * prior_count) / (count + prior_count)).astype(np.float32)


def estimated_satisfaction(
    last_engagement: np.ndarray, last_click_lift: np.ndarray, clicked: np.ndarray
) -> np.ndarray:
    """[B] float32 :data:`SATISFACTION_ESTIMATE`: the last completion rate plus the lift of the clicked item,
    clipped to [0, 1]; 0 for a user who has not clicked.

    Args:
        last_engagement: [B] each user's :data:`LAST_ENGAGEMENT`.
        last_click_lift: [B] the :data:`ITEM_LIFT` of the item that click was on.
        clicked: [B] bool, the user has a last click.
    """
    estimate = np.clip(last_engagement + last_click_lift, 0.0, 1.0)
    return np.where(clicked, estimate, 0.0).astype(np.float32)


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """``x`` scaled to unit L2 norm along ``axis``; all-zero rows stay zero."""
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return (x / np.maximum(norm, eps)).astype(np.float32, copy=False)


def profile_vector(history_embeddings: np.ndarray) -> np.ndarray:
    """[n, d] embeddings of a user's history → [d] normalised mean (zeros when n == 0)."""
    if len(history_embeddings) == 0:
        return np.zeros(history_embeddings.shape[-1], dtype=np.float32)
    return l2_normalize(history_embeddings.mean(axis=0))


def popularity_feature(counts: np.ndarray) -> np.ndarray:
    """[N] interaction counts → [N] float32 in [0, 1]: ``log1p(count) / log1p(max count)``.

    Log-scaled because popularity is heavy-tailed; normalised by the catalog's maximum so that the
    feature means the same for a 10k and a 1M item catalog.
    """
    counts = np.asarray(counts, dtype=np.float64)
    top = np.log1p(counts.max()) if counts.size and counts.max() > 0 else 1.0
    return (np.log1p(np.maximum(counts, 0.0)) / top).astype(np.float32)


def candidate_features(retrieval_scores: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """Per-candidate features in :data:`FEATURE_NAMES` order.

    Args:
        retrieval_scores: [B, K] inner products of profile and candidate (retrieval order, best first).
        popularity: [B, K] :func:`popularity_feature` of each candidate.

    Returns:
        [B, K, F] float32.
    """
    batch, k = retrieval_scores.shape
    rank = np.broadcast_to(np.arange(k, dtype=np.float32) / max(k - 1, 1), (batch, k))  # [B, K]
    return np.stack([retrieval_scores, popularity, rank], axis=-1).astype(np.float32)  # [B, K, F]


def budget_feature(session_step: np.ndarray, budget: float) -> np.ndarray:
    """[B] steps already shown in each session → [B, 1] float32 remaining budget ``clip(1 - step / budget, 0, 1)``."""
    step = np.asarray(session_step, dtype=np.float32).reshape(-1, 1)  # [B, 1]
    return np.clip(1.0 - step / np.float32(budget), 0.0, 1.0).astype(np.float32)


def build_observation(
    profile: np.ndarray,
    candidates: np.ndarray,
    retrieval_scores: np.ndarray,
    popularity: np.ndarray,
    session_step: np.ndarray,
    budget: float,
) -> Observation:
    """The batched observation a ranker sees (module docstring), from what the simulator or server knows.

    Args:
        profile: [B, d] users' profiles.
        candidates: [B, K, d] candidate embeddings, retrieval order.
        retrieval_scores: [B, K] profile · candidate.
        popularity: [B, K] :func:`popularity_feature` of each candidate.
        session_step: [B] requests already answered in each user's session.
        budget: the session budget the policy was trained with (its ``budget`` feature's scale).
    """
    return {
        "profile": np.asarray(profile, dtype=np.float32),
        "candidates": np.asarray(candidates, dtype=np.float32),
        "features": candidate_features(np.clip(retrieval_scores, -1.0, 1.0), popularity),
        "budget": budget_feature(session_step, budget),
    }
