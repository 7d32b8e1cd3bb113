"""The recommendation pipeline as plain functions over an ``ItemIndex``: no Ray here.

request context (history → profile) → retrieval (FAISS, seen items excluded) → ranking (a SlatePolicy on
the :func:`rayrec.features.build_observation` observation). The Serve deployments in
:mod:`serving.deployments` batch these calls; the simulator builds its observation with the same function,
so a policy sees in production what it saw in training.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from rayrec.baselines import LinearRankerPolicy, SwitchRankerPolicy
from rayrec.errors import ArtifactError
from rayrec.explain import (
    FeatureAttribution,
    HistoryAttribution,
    explanation,
    feature_attribution,
    history_attribution,
)
from rayrec.features import (
    HIDDEN_FEATURE_NAMES,
    ITEM_LOG_FEATURES,
    ITEM_RATING,
    ITEM_STATISTICS,
    LAST_CLICK_RATING,
    LAST_ENGAGEMENT,
    LIFT_FEATURES,
    NUM_FEATURES,
    OBSERVE_SETTINGS,
    SATISFACTION_ESTIMATE,
    build_observation,
    estimated_satisfaction,
    feature_names,
    l2_normalize,
    popularity_feature,
    profile_vector,
    select_features,
)
from rayrec.index.item_index import index_has_item_log, index_has_ratings
from rayrec.rerank import innermost_policy, policy_feature_names
from rayrec.slate_policy import SlatePolicy

if TYPE_CHECKING:
    from rayrec.slate_scorer import ExportConfig
    from serving.user_model import UserModel

FALLBACK_POLICY = "popular-diverse"
"""The ``policy`` of cold-start answers (and of their impressions in the event log)."""
FAILOVER_POLICY = "retrieval-fallback"
"""The ``policy`` of answers whose arm's ranker failed or timed out: the candidates in retrieval order."""
UNRATED = 0.5
"""The ``last_click_rating`` of a clicked item the index does not hold: :func:`rayrec.features.rating_feature`
of an item without ratings."""
BASELINE_BUDGET = 1.0
"""Scale of the ``budget`` feature for a baseline policy, which ignores the feature (a trained policy's, and a
switch ranker's, is the session budget of the world it was trained in)."""


def index_version(index) -> str:
    """A short fingerprint of an index's metadata (its file checksums included)."""
    return hashlib.sha256(json.dumps(index.meta, sort_keys=True, default=str).encode()).hexdigest()[:16]


def trained_config(policy: SlatePolicy) -> ExportConfig | None:
    """What a trained policy was trained with (its export's K, k, feature names, budget); None for a baseline.
    A re-ranker (:mod:`rayrec.rerank`) answers for the policy it wraps."""
    policy = innermost_policy(policy)
    # Not imported here: rayrec.slate_scorer imports torch, which a baseline-only replica never needs; a
    # trained policy was loaded through it, so it is in sys.modules whenever the answer can be non-None.
    scorer = sys.modules.get("rayrec.slate_scorer")
    if scorer is not None and isinstance(policy, scorer.ExportedPolicy):
        return policy.config
    return None


def check_servable(policy: SlatePolicy, spec: str, index_meta: dict | None) -> ExportConfig | None:
    """:func:`trained_config`, after refusing a policy that reads features this server does not build.

    Args:
        index_meta: the served index's ``index.json`` (None: no index), which says whether it stores each
            item's ``item_rating`` and log statistics (``rayrec build-index --item-log``).

    Raises:
        ArtifactError: the policy (an export or a fitted linear ranker, :func:`rayrec.rerank.policy_feature_names`)
            reads the simulator's hidden state (:data:`rayrec.features.HIDDEN_FEATURE_NAMES`,
            ``observe_hidden``), which no server has, or :data:`rayrec.features.ITEM_RATING`
            (``observe_rating``) or :data:`rayrec.features.LAST_CLICK_RATING` (``observe_last_click``, the
            rating of the request's ``last_click``) from an index that does not store ratings, or
            :data:`rayrec.features.ITEM_LOG_FEATURES` (``observe_item_log``) or :data:`rayrec.features.LIFT_FEATURES`
            (``observe_lift``) from an index built without an event log. The session feedback
            :data:`rayrec.features.LAST_ENGAGEMENT` comes with each request (``last_click``).
    """
    rated_index = index_meta is not None and index_has_ratings(index_meta)
    logged_index = index_meta is not None and index_has_item_log(index_meta)
    config = trained_config(policy)
    names = policy_feature_names(policy)
    appended = names[NUM_FEATURES:]
    hidden = [name for name in appended if name in HIDDEN_FEATURE_NAMES]
    tuned = isinstance(innermost_policy(policy), LinearRankerPolicy | SwitchRankerPolicy)
    kind = "a tuned ranker" if tuned else "trained"
    if hidden:
        what = (
            f"is {kind} on the simulator's hidden state {hidden}, which no server has: it is a diagnostic for "
            "`rayrec simulate --env observe_hidden=...`"
        )
    elif not logged_index and (
        logged := [name for name in (*ITEM_LOG_FEATURES, *LIFT_FEATURES) if name in appended]
    ):
        flags = " ".join(sorted({f"--env {OBSERVE_SETTINGS[name]}=true" for name in logged}))
        what = (
            f"reads {', '.join(map(repr, logged))} (trained with `{flags}`), per-item statistics of a log, "
            "which this index does not store: build the index with `rayrec build-index --item-log EVENTS`"
        )
    elif rated := [name for name in (ITEM_RATING, LAST_CLICK_RATING) if name in appended and not rated_index]:
        what = (
            f"reads {', '.join(map(repr, rated))}, which this index does not store: build the index "
            "(`rayrec build-index`) from data whose interactions.parquet has rating events"
        )
    else:
        return config
    raise ArtifactError(f"policy {spec} {what}, not a servable policy")


def budget_scale(policy: SlatePolicy) -> float:
    """The session budget that scales ``policy``'s ``budget`` feature (:func:`rayrec.features.budget_feature`)."""
    config = trained_config(policy)
    if config is not None:
        return float(config.budget)
    inner = innermost_policy(policy)  # a switch ranker's gate reads the clock of the world it was fitted in
    return inner.budget if isinstance(inner, SwitchRankerPolicy) else BASELINE_BUDGET


@dataclass(frozen=True)
class LastClick:
    """The session feedback a client sends with a request: the last item the user clicked (in this session
    or an earlier one) and the fraction of it they watched. It gives a policy trained with
    ``observe_feedback`` its :data:`rayrec.features.LAST_ENGAGEMENT` and, over a rated index, one trained
    with ``observe_last_click`` its :data:`rayrec.features.LAST_CLICK_RATING`."""

    item_id: str
    engagement: float


@dataclass(frozen=True)
class RequestContext:
    """What the server knows about a user for one request.

    Attributes:
        profile: [d] float32 normalised profile (zeros when nothing is known).
        history: [h] int64 catalog rows of the known history items (excluded from retrieval).
        history_ids: the known history item ids, to rebuild the context against another index version.
        query: [d] float32 embedded text query, or None.
        unknown: history ids not in the catalog.
        version: :func:`index_version` of the index the rows refer to.
        session_step: requests already answered in this user's session (as the client reports it).
        explain: the client asked for explanations (:mod:`rayrec.explain`).
        last_click: the user's last click as the client reports it, or None (none known: the user has
            not clicked yet, or the client does not track it).
    """

    profile: np.ndarray
    history: np.ndarray
    history_ids: tuple[str, ...]
    query: np.ndarray | None
    unknown: int
    version: str
    session_step: int = 0
    explain: bool = False
    last_click: LastClick | None = None

    @property
    def cold_start(self) -> bool:
        return not self.profile.any()


def request_context(
    index,
    version: str,
    history: list[str],
    query: np.ndarray | None = None,
    session_step: int = 0,
    explain: bool = False,
    user_model: UserModel | None = None,
    last_click: LastClick | None = None,
) -> RequestContext:
    """One request's :class:`RequestContext` (:func:`request_contexts` of a batch of one)."""
    return request_contexts(
        index, version, [history], [query], [session_step], [explain], user_model, [last_click]
    )[0]


def request_contexts(
    index,
    version: str,
    histories: list[list[str]],
    queries: list[np.ndarray | None],
    session_steps: list[int],
    explains: list[bool],
    user_model: UserModel | None = None,
    last_clicks: list[LastClick | None] | None = None,
) -> list[RequestContext]:
    """History ids (+ optional [d] query embedding, the session step, the last click) of a batch →
    :class:`RequestContext` each.

    The profile is :func:`rayrec.features.profile_vector` of the known history (each item once), as in the
    simulator; with a ``user_model`` it is the model's user tower over the known history in the order sent
    (:meth:`serving.user_model.UserModel.profiles`, one forward pass for the batch). Either way a user with
    no known history has a zero profile (a cold start). A query counts as much as the whole history (sum of
    two unit vectors, renormalised), so a search box steers the slate without discarding what the user did.
    """
    rows = [index.lookup(h) if h else np.empty(0, dtype=np.int64) for h in histories]
    in_order = [r[r >= 0] for r in rows]  # [h] known rows as sent
    if user_model is None:
        profiles = [profile_vector(index.embeddings[np.unique(r)]) for r in in_order]  # B × [d]
    else:
        profiles = list(user_model.profiles(index.embeddings, in_order))  # B × [d]
    last_clicks = last_clicks if last_clicks is not None else [None] * len(histories)
    contexts = []
    for history, row, known, profile, query, step, explain, last_click in zip(
        histories, rows, in_order, profiles, queries, session_steps, explains, last_clicks, strict=True
    ):
        if query is not None:
            profile = l2_normalize(profile + query)  # [d]
        known_ids = tuple(str(i) for i, r in zip(history, row, strict=True) if r >= 0)
        contexts.append(
            RequestContext(
                profile,
                np.unique(known),
                known_ids,
                query,
                int((row < 0).sum()),
                version,
                step,
                explain,
                last_click,
            )
        )
    return contexts


def popular_diverse(index, n: int, pool_factor: int = 10, redundancy: float = 0.5) -> np.ndarray:
    """[min(n, N)] catalog rows for cold-start users: popular items, greedily diversified (MMR).

    Each pick maximises ``popularity - redundancy * max cosine to the items already picked`` over the
    ``pool_factor * n`` most popular items, so a new user sees what many people like without ten
    near-duplicates.
    """
    pop = popularity_feature(index.popularity)  # [N]
    pool = np.argsort(-pop, kind="stable")[: max(n * pool_factor, n)]  # [P]
    emb = index.embeddings[pool]  # [P, d]
    chosen: list[int] = []
    max_sim = np.full(len(pool), -np.inf, dtype=np.float32)  # [P]
    gain = pop[pool].astype(np.float32)  # [P]
    for _ in range(min(n, len(pool))):
        score = gain - redundancy * np.maximum(max_sim, 0.0)
        score[chosen] = -np.inf
        best = int(np.argmax(score))
        chosen.append(best)
        max_sim = np.maximum(max_sim, emb @ emb[best])
    return pool[chosen].astype(np.int64)


@dataclass(frozen=True)
class Candidates:
    """Retrieved candidates for one request, ready for a ranker.

    Attributes:
        item_ids: [K] item ids in retrieval order.
        embeddings: [K, d] float32 candidate embeddings.
        scores: [K] float32 retrieval scores (inner product with the profile).
        popularity: [K] float32 :func:`rayrec.features.popularity_feature` of each candidate.
        profile: [d] float32 the user's profile.
        rating: [K] float32 each candidate's ``item_rating``, or None from an index without ratings.
        unknown: history ids that were not in the catalog.
        cold_start: True when the candidates are the popular-diverse fallback, in display order.
        session_step: requests already answered in this user's session.
        index_version: :func:`index_version` of the index they were retrieved from.
        explain: the client asked for explanations.
        history_ids: [n] ids of the known history items (each once), the columns of ``attribution``.
        attribution: with ``explain`` (and a history or query), the candidates' retrieval scores attributed
            to the history (:func:`rayrec.explain.history_attribution`, rows in retrieval order).
        has_query: the profile included a text query.
        last_engagement: the request's :data:`rayrec.features.LAST_ENGAGEMENT` (0 without a last click).
        last_click_rating: the request's :data:`rayrec.features.LAST_CLICK_RATING`: the index's
            ``item_rating`` of the last click (0 without one; an item the index does not hold gets an
            unrated item's 0.5), or None from an index without ratings.
        item_log: [K, 3] float32 each candidate's ``item_ctr``, ``item_watch``, ``item_lift``, or None from an
            index built without an event log.
        satisfaction_estimate: the request's :data:`rayrec.features.SATISFACTION_ESTIMATE`
            (:func:`rayrec.features.estimated_satisfaction` of the last click and its item's lift; an item the
            index does not hold has lift 0), or None from an index without an item log.
    """

    item_ids: np.ndarray
    embeddings: np.ndarray
    scores: np.ndarray
    popularity: np.ndarray
    profile: np.ndarray
    unknown: int
    cold_start: bool
    session_step: int = 0
    index_version: str = ""
    explain: bool = False
    history_ids: tuple[str, ...] = ()
    attribution: HistoryAttribution | None = None
    has_query: bool = False
    rating: np.ndarray | None = None
    last_engagement: float = 0.0
    last_click_rating: float | None = None
    item_log: np.ndarray | None = None
    satisfaction_estimate: float | None = None


class Retrieval:
    """Candidate retrieval from one loaded index.

    Args:
        index: an ``rayrec.index.ItemIndex``.
        num_candidates: K, candidates per request.
        fallback_size: length of the precomputed cold-start list (the largest slate served).
        user_model: the served retrieval model (``index`` holds its item vectors), or None: what a context
            built against another index version is rebuilt with.
    """

    def __init__(
        self, index, num_candidates: int, fallback_size: int, user_model: UserModel | None = None
    ) -> None:
        self.index = index
        self.user_model = user_model
        self.version = index_version(index)
        self.num_candidates = min(num_candidates, len(index.item_ids))
        self.popularity = popularity_feature(index.popularity)  # [N]
        self.rating = index.rating  # [N] or None
        self.item_log = index.item_log  # [N, 3] or None
        self.fallback = popular_diverse(index, fallback_size)  # [n]

    def context(
        self,
        history: list[str],
        query: np.ndarray | None = None,
        session_step: int = 0,
        explain: bool = False,
        last_click: LastClick | None = None,
    ) -> RequestContext:
        return request_context(
            self.index, self.version, history, query, session_step, explain, self.user_model, last_click
        )

    def retrieve(self, contexts: list[RequestContext]) -> list[Candidates]:
        """One :class:`Candidates` per request context; searches the warm users in one FAISS batch."""
        contexts = [self._current(c) for c in contexts]
        out: list[Candidates | None] = [None] * len(contexts)
        warm = [i for i, c in enumerate(contexts) if not c.cold_start]
        for i, c in enumerate(contexts):
            if c.cold_start:
                rows = self.fallback
                out[i] = self._candidates(rows, np.zeros(len(rows), np.float32), c, cold_start=True)
        if warm:
            profiles = np.stack([contexts[i].profile for i in warm])  # [B, d]
            scores, rows = self.index.search(
                profiles, self.num_candidates, exclude=[contexts[i].history for i in warm]
            )  # [B, K], [B, K]
            for j, i in enumerate(warm):
                valid = rows[j] >= 0  # -1 pads when exclusion leaves fewer than K items
                out[i] = self._candidates(rows[j][valid], scores[j][valid], contexts[i], cold_start=False)
        return out  # type: ignore[return-value]

    def _current(self, context: RequestContext) -> RequestContext:
        """A context built against another index version (mid-rollout) is rebuilt against this one."""
        if context.version == self.version:
            return context
        query = context.query
        query = query if query is not None and len(query) == self.index.dim else None
        return self.context(
            list(context.history_ids), query, context.session_step, context.explain, context.last_click
        )

    def _candidates(
        self, rows: np.ndarray, scores: np.ndarray, context: RequestContext, cold_start: bool
    ) -> Candidates:
        explained = {}
        if context.explain:  # only then: explanations cost nothing when they are off
            history = self.index.embeddings[context.history]  # [n, d]
            explained = {
                "explain": True,
                "history_ids": tuple(str(i) for i in self.index.item_ids[context.history]),
                "has_query": context.query is not None,
                # the attribution splits a mean-of-history profile; a user tower's query does not split so
                "attribution": None
                if cold_start or self.user_model is not None
                else history_attribution(history, self.index.embeddings[rows], context.query),
            }
        return Candidates(
            item_ids=self.index.item_ids[rows],
            embeddings=self.index.embeddings[rows],
            scores=scores.astype(np.float32),
            popularity=self.popularity[rows],
            profile=context.profile,
            rating=None if self.rating is None else self.rating[rows],
            item_log=None if self.item_log is None else self.item_log[rows],
            unknown=context.unknown,
            cold_start=cold_start,
            session_step=context.session_step,
            index_version=self.version,
            **explained,
            **self._feedback(context.last_click),
        )

    def _feedback(self, last_click: LastClick | None) -> dict[str, float | None]:
        """The :class:`Candidates` fields of a request's session feedback."""
        engagement = 0.0 if last_click is None else float(last_click.engagement)
        looked_up = last_click is not None and (self.rating is not None or self.item_log is not None)
        row = int(self.index.lookup([last_click.item_id])[0]) if looked_up else -1
        rating = estimate = None
        if self.rating is not None:
            rating = 0.0 if last_click is None else float(self.rating[row]) if row >= 0 else UNRATED
        if self.item_log is not None:
            lift = self.item_log[row, 2] if row >= 0 else 0.0
            estimate = float(estimated_satisfaction(np.float32(engagement), lift, last_click is not None))
        return {"last_engagement": engagement, "last_click_rating": rating, "satisfaction_estimate": estimate}


@dataclass(frozen=True)
class Ranked:
    """A slate for one request and what it was chosen from.

    Attributes:
        item_ids, scores, propensities: [k] the slate in display order, the policy's score and
            item-position propensity of each item (1.0 for the deterministic fallback).
        policy: name of the policy that chose the slate.
        unknown: history ids that were not in the catalog.
        cold_start: True when the popular-diverse fallback answered.
        candidate_ids: [K] the candidates the slate was chosen from, in retrieval order.
        features: [K, F] float32 their features (:func:`observe`: with ``item_rating`` over a rated index,
            whatever the policy reads).
        profile: [d] float32 the user's profile.
        budget: the observation's ``budget`` feature (:func:`rayrec.features.budget_feature` of the
            request's session step on the arm's policy's scale).
        fallback: True when the arm's ranker failed and the candidates are shown in retrieval order.
        index_version, policy_version: content hashes of the index and policy artifact that answered.
        explanations: [k] with ``explain``, each shown item's :func:`rayrec.explain.explanation`.
        last_engagement, last_click_rating, satisfaction_estimate: the request's session feedback
            (:class:`Candidates`).

    ``candidate_ids``, ``features``, ``profile``, ``budget`` and the session feedback are the request's row
    of the event log's requests table (what off-policy evaluation replays another policy on).
    """

    item_ids: list[str]
    scores: list[float]
    propensities: list[float]
    policy: str
    unknown: int
    cold_start: bool
    candidate_ids: list[str]
    features: np.ndarray
    profile: np.ndarray
    budget: float
    fallback: bool = False
    index_version: str = ""
    policy_version: str = ""
    explanations: list[dict] | None = None
    last_engagement: float = 0.0
    last_click_rating: float | None = None
    satisfaction_estimate: float | None = None

    def versions(self) -> dict[str, str]:
        return {"index_version": self.index_version, "policy_version": self.policy_version}

    def impressions(self, request_id: str, ts: float, user_id: str, arm: str) -> list[dict]:
        """The slate's rows of :data:`rayrec.events.IMPRESSIONS_SCHEMA`, one per position."""
        return [
            {
                "request_id": request_id,
                "ts": ts,
                "user_id": user_id,
                "arm": arm,
                "policy": self.policy,
                "item_id": item_id,
                "position": position,
                "score": score,
                "propensity": propensity,
                **self.versions(),
            }
            for position, (item_id, score, propensity) in enumerate(
                zip(self.item_ids, self.scores, self.propensities, strict=True)
            )
        ]

    def request_row(self, request_id: str, ts: float, user_id: str, arm: str) -> dict:
        """The request's row of :data:`rayrec.events.REQUESTS_SCHEMA`."""
        return {
            "request_id": request_id,
            "ts": ts,
            "user_id": user_id,
            "arm": arm,
            "policy": self.policy,
            "candidate_ids": self.candidate_ids,
            "features": self.features.ravel(),  # [K * F]
            "profile": self.profile,
            "budget": self.budget,
            "fallback": self.cold_start or self.fallback,
            "last_engagement": self.last_engagement,
            "last_click_rating": self.last_click_rating,
            "satisfaction_estimate": self.satisfaction_estimate,
            **self.versions(),
        }


def observe(batch: list[Candidates], budget: float) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """The observation of requests with the same K: :func:`rayrec.features.build_observation` (the
    simulator's function), with each request's session step on the policy's ``budget`` scale, and
    ``item_rating`` appended when every request's candidates have one (a rated index); with the names of its
    features (:func:`rayrec.features.feature_names`)."""
    obs = build_observation(
        np.stack([c.profile for c in batch]),  # [B, d]
        np.stack([c.embeddings for c in batch]),  # [B, K, d]
        np.stack([c.scores for c in batch]),  # [B, K]
        np.stack([c.popularity for c in batch]),  # [B, K]
        np.array([c.session_step for c in batch], dtype=np.int64),  # [B]
        budget,
    )
    rated = all(c.rating is not None for c in batch)
    if rated:
        rating = np.stack([c.rating for c in batch])[..., None]  # [B, K, 1]
        obs["features"] = np.concatenate([obs["features"], rating.astype(np.float32)], axis=-1)
    return obs, feature_names(rating=rated)


def with_feedback(
    features: np.ndarray, names: tuple[str, ...], batch: list[Candidates]
) -> tuple[np.ndarray, tuple[str, ...]]:
    """``features`` [B, K, F] named ``names`` (:func:`observe`) with each request's session feedback
    appended, the same value in every candidate's row as in the simulator: :data:`rayrec.features.LAST_ENGAGEMENT`,
    then :data:`rayrec.features.LAST_CLICK_RATING` when every request has one (a rated index); over an index
    with an item log, then each candidate's :data:`rayrec.features.ITEM_LOG_FEATURES` and
    :data:`rayrec.features.ITEM_LIFT` and the request's :data:`rayrec.features.SATISFACTION_ESTIMATE`.

    Returns:
        ([B, K, F + m] float32, their names), m the columns appended (1 to 6).
    """
    columns = {LAST_ENGAGEMENT: [c.last_engagement for c in batch]}
    if all(c.last_click_rating is not None for c in batch):
        columns[LAST_CLICK_RATING] = [c.last_click_rating for c in batch]
    logged = all(c.item_log is not None for c in batch)
    if logged:
        columns[SATISFACTION_ESTIMATE] = [c.satisfaction_estimate for c in batch]
    values = np.asarray(list(columns.values()), dtype=np.float32).T  # [B, n]
    appended = np.broadcast_to(values[:, None, :], (*features.shape[:2], values.shape[1]))  # [B, K, n]
    parts, named = [features, appended], (*names, *columns)
    if logged:
        parts.append(np.stack([c.item_log for c in batch]).astype(np.float32))  # [B, K, 3]
        named = (*named, *ITEM_STATISTICS)
    return np.concatenate(parts, axis=-1), named


def _ranked_feedback(cands: Candidates) -> dict[str, float | None]:
    """The :class:`Ranked` fields of a request's session feedback."""
    return {
        "last_engagement": cands.last_engagement,
        "last_click_rating": cands.last_click_rating,
        "satisfaction_estimate": cands.satisfaction_estimate,
    }


def rank(
    policy: SlatePolicy,
    requests: list[tuple[Candidates, int]],
    rng: np.random.Generator | None = None,
    policy_version: str = "",
) -> list[Ranked]:
    """Slates for (candidates, k) requests; rows with the same (K, k) share one ``policy.select`` call.

    Cold starts (the popular-diverse fallback) and empty candidate lists are not shown to the policy;
    their requests-table rows still hold the observation it would have seen.

    Raises:
        ArtifactError: the policy chose an invalid slate (an index out of range, a repeated candidate,
            a non-finite score or propensity): a broken artifact must not reach users.
    """
    scale = budget_scale(policy)
    out: list[Ranked | None] = [None] * len(requests)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (cands, k) in enumerate(requests):
        if len(cands.item_ids) and not cands.cold_start:
            groups.setdefault((len(cands.item_ids), min(k, len(cands.item_ids))), []).append(i)
            continue
        obs, _ = observe([cands], scale)
        n = min(k, len(cands.item_ids))  # 0 for an empty candidate list
        out[i] = Ranked(
            [str(x) for x in cands.item_ids[:n]],
            [float(x) for x in cands.popularity[:n]],
            [1.0] * n,
            FALLBACK_POLICY if cands.cold_start else policy.name,
            cands.unknown,
            cands.cold_start,
            [str(x) for x in cands.item_ids],
            obs["features"][0],
            cands.profile,
            float(obs["budget"][0, 0]),
            index_version=cands.index_version,
            policy_version="" if cands.cold_start else policy_version,
            explanations=_fallback_explanations(cands, n, "popularity") if cands.explain else None,
            **_ranked_feedback(cands),
        )
    for (num_candidates, k), rows in groups.items():
        batch = [requests[i][0] for i in rows]
        obs, served = observe(batch, scale)  # what the log keeps, beside each request's session feedback
        built, names = with_feedback(obs["features"], served, batch)
        # the policy sees the columns it was trained on (a rated index adds item_rating for those that read
        # it, the session feedback is there for those that read it)
        seen = {**obs, "features": select_features(built, names, policy_feature_names(policy))}
        slate = policy.select(seen, k, rng=rng)
        check_slate(slate, len(rows), num_candidates, k, policy.name)
        explained = [j for j, c in enumerate(batch) if c.explain]
        features = None
        if explained:  # only then: explanations cost nothing when they are off
            features = feature_attribution(
                policy,
                {key: value[explained] for key, value in seen.items()},
                slate.indices[explained],
                slate.scores[explained],
            )
        for j, i in enumerate(rows):
            cands = batch[j]
            out[i] = Ranked(
                [str(x) for x in cands.item_ids[slate.indices[j]]],
                [float(x) for x in slate.scores[j]],
                [float(x) for x in slate.propensities[j]],
                policy.name,
                cands.unknown,
                False,
                [str(x) for x in cands.item_ids],
                obs["features"][j],
                cands.profile,
                float(obs["budget"][j, 0]),
                index_version=cands.index_version,
                policy_version=policy_version,
                explanations=_explanations(cands, slate.indices[j], features, explained.index(j))
                if cands.explain
                else None,
                **_ranked_feedback(cands),
            )
    return out  # type: ignore[return-value]


def _explanations(
    cands: Candidates, indices: np.ndarray, features: FeatureAttribution | None, row: int
) -> list[dict]:
    """Each shown item's explanation: its retrieval score attributed to the history (and query), and the
    ranker's score to its features (``features`` row ``row``)."""
    return [
        explanation(
            cands.history_ids, cands.attribution, int(j), features, row, slot, has_query=cands.has_query
        )
        for slot, j in enumerate(indices)
    ]


def _fallback_explanations(cands: Candidates, n: int, feature: str) -> list[dict]:
    """Explanations of a fallback slate (cold start: popularity; failover: retrieval order), whose score
    is that one feature."""
    values = cands.popularity if feature == "popularity" else cands.scores
    return [
        {
            **explanation(cands.history_ids, cands.attribution, i, None, 0, 0, has_query=cands.has_query),
            "ranker": {"method": "fallback", "base": 0.0, "features": {feature: float(values[i])}},
        }
        for i in range(n)
    ]


def check_slate(slate, rows: int, num_candidates: int, k: int, name: str) -> None:
    """A policy's slate for ``rows`` requests of K candidates and slate size k must be a valid choice."""
    indices = np.asarray(slate.indices)
    problem = None
    if indices.shape != (rows, k):
        problem = f"slate shape {indices.shape}, expected {(rows, k)}"
    elif ((indices < 0) | (indices >= num_candidates)).any():
        problem = "a candidate index out of range"
    elif k > 1 and (np.diff(np.sort(indices, axis=1), axis=1) == 0).any():
        problem = "a candidate shown twice in one slate"
    elif not (np.isfinite(slate.scores).all() and np.isfinite(slate.propensities).all()):
        problem = "non-finite scores or propensities"
    if problem is not None:
        raise ArtifactError(f"policy {name} chose an invalid slate: {problem}")


def failover(requests: list[tuple[Candidates, int]], policy_version: str = "") -> list[Ranked]:
    """Slates for an arm whose ranker failed: each request's first k candidates in retrieval order
    (propensity 1.0, ``policy`` :data:`FAILOVER_POLICY`, ``fallback`` True; cold starts keep their list)."""
    out = []
    for cands, k in requests:
        obs, _ = observe([cands], BASELINE_BUDGET)
        n = min(k, len(cands.item_ids))
        out.append(
            Ranked(
                [str(x) for x in cands.item_ids[:n]],
                [float(x) for x in (cands.popularity if cands.cold_start else cands.scores)[:n]],
                [1.0] * n,
                FALLBACK_POLICY if cands.cold_start else FAILOVER_POLICY,
                cands.unknown,
                cands.cold_start,
                [str(x) for x in cands.item_ids],
                obs["features"][0],
                cands.profile,
                float(obs["budget"][0, 0]),
                fallback=not cands.cold_start,
                index_version=cands.index_version,
                policy_version=policy_version,
                explanations=_fallback_explanations(
                    cands, n, "popularity" if cands.cold_start else "retrieval_score"
                )
                if cands.explain
                else None,
                **_ranked_feedback(cands),
            )
        )
    return out
