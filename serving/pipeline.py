"""The recommendation pipeline as plain functions over an ``ItemIndex``: no Ray here.

user state (history → profile) → retrieval (FAISS, seen items excluded) → ranking (a SlatePolicy on the
:mod:`rayrec.features` observation). The Serve deployments in :mod:`serving.deployments` batch these calls;
the simulator builds the same observation, so a policy sees in production what it saw in training.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from rayrec.features import candidate_features, l2_normalize, popularity_feature, profile_vector
from rayrec.policy import SlatePolicy

FALLBACK_POLICY = "popular-diverse"
"""The ``policy`` of cold-start answers (and of their impressions in the event log)."""


def index_version(index) -> str:
    """A short fingerprint of an index's metadata (its file checksums included)."""
    return hashlib.sha256(json.dumps(index.meta, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class UserState:
    """What the server knows about a user for one request.

    Attributes:
        profile: [d] float32 normalised profile (zeros when nothing is known).
        history: [h] int64 catalog rows of the known history items (excluded from retrieval).
        history_ids: the known history item ids, to rebuild the state against another index version.
        query: [d] float32 embedded text query, or None.
        unknown: history ids not in the catalog.
        version: :func:`index_version` of the index the rows refer to.
    """

    profile: np.ndarray
    history: np.ndarray
    history_ids: tuple[str, ...]
    query: np.ndarray | None
    unknown: int
    version: str

    @property
    def cold_start(self) -> bool:
        return not self.profile.any()


def user_state(index, version: str, history: list[str], query: np.ndarray | None = None) -> UserState:
    """History ids (+ optional [d] query embedding) → :class:`UserState`.

    The profile is :func:`rayrec.features.profile_vector` of the known history, as in the simulator;
    a query counts as much as the whole history (sum of two unit vectors, renormalised), so a search
    box steers the slate without discarding what the user did.
    """
    rows = index.lookup(history) if history else np.empty(0, dtype=np.int64)
    known = np.unique(rows[rows >= 0])
    known_ids = tuple(str(i) for i, row in zip(history, rows, strict=True) if row >= 0)
    profile = profile_vector(index.embeddings[known])  # [d]
    if query is not None:
        profile = l2_normalize(profile + query)  # [d]
    return UserState(profile, known, known_ids, query, int((rows < 0).sum()), version)


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
        unknown: history ids that were not in the catalog.
        cold_start: True when the candidates are the popular-diverse fallback, in display order.
    """

    item_ids: np.ndarray
    embeddings: np.ndarray
    scores: np.ndarray
    popularity: np.ndarray
    profile: np.ndarray
    unknown: int
    cold_start: bool


class Retrieval:
    """Candidate retrieval from one loaded index.

    Args:
        index: an ``rayrec.index.ItemIndex``.
        num_candidates: K, candidates per request.
        fallback_size: length of the precomputed cold-start list (the largest slate served).
    """

    def __init__(self, index, num_candidates: int, fallback_size: int) -> None:
        self.index = index
        self.version = index_version(index)
        self.num_candidates = min(num_candidates, len(index.item_ids))
        self.popularity = popularity_feature(index.popularity)  # [N]
        self.fallback = popular_diverse(index, fallback_size)  # [n]

    def state(self, history: list[str], query: np.ndarray | None = None) -> UserState:
        return user_state(self.index, self.version, history, query)

    def retrieve(self, states: list[UserState]) -> list[Candidates]:
        """One :class:`Candidates` per state; searches the warm users in one FAISS batch."""
        states = [self._current(s) for s in states]
        out: list[Candidates | None] = [None] * len(states)
        warm = [i for i, s in enumerate(states) if not s.cold_start]
        for i, s in enumerate(states):
            if s.cold_start:
                rows = self.fallback
                out[i] = self._candidates(rows, np.zeros(len(rows), np.float32), s, cold_start=True)
        if warm:
            profiles = np.stack([states[i].profile for i in warm])  # [B, d]
            scores, rows = self.index.search(
                profiles, self.num_candidates, exclude=[states[i].history for i in warm]
            )  # [B, K], [B, K]
            for j, i in enumerate(warm):
                valid = rows[j] >= 0  # -1 pads when exclusion leaves fewer than K items
                out[i] = self._candidates(rows[j][valid], scores[j][valid], states[i], cold_start=False)
        return out  # type: ignore[return-value]

    def _current(self, state: UserState) -> UserState:
        """A state built against another index version (mid-rollout) is rebuilt against this one."""
        if state.version == self.version:
            return state
        query = state.query if state.query is not None and len(state.query) == self.index.dim else None
        return self.state(list(state.history_ids), query)

    def _candidates(
        self, rows: np.ndarray, scores: np.ndarray, state: UserState, cold_start: bool
    ) -> Candidates:
        return Candidates(
            item_ids=self.index.item_ids[rows],
            embeddings=self.index.embeddings[rows],
            scores=scores.astype(np.float32),
            popularity=self.popularity[rows],
            profile=state.profile,
            unknown=state.unknown,
            cold_start=cold_start,
        )


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
        features: [K, F] float32 their :func:`rayrec.features.candidate_features`.
        profile: [d] float32 the user's profile.

    The last three are the request's row of the event log's requests table (what off-policy
    evaluation replays another policy on).
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
            "budget": 1.0,  # the budget the ranker was shown: unknown in serving (see rank)
            "fallback": self.cold_start,
        }


def _features(cands: Candidates) -> np.ndarray:
    """[K, F] candidate features of one request."""
    return candidate_features(cands.scores[None], cands.popularity[None])[0]


def rank(
    policy: SlatePolicy, requests: list[tuple[Candidates, int]], rng: np.random.Generator | None = None
) -> list[Ranked]:
    """Slates for (candidates, k) requests; rows with the same (K, k) share one ``policy.select`` call."""
    out: list[Ranked | None] = [None] * len(requests)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (cands, k) in enumerate(requests):
        if cands.cold_start:
            n = min(k, len(cands.item_ids))
            out[i] = Ranked(
                [str(x) for x in cands.item_ids[:n]],
                [float(x) for x in cands.popularity[:n]],
                [1.0] * n,
                FALLBACK_POLICY,
                cands.unknown,
                True,
                [str(x) for x in cands.item_ids],
                _features(cands),
                cands.profile,
            )
        elif len(cands.item_ids):
            groups.setdefault((len(cands.item_ids), min(k, len(cands.item_ids))), []).append(i)
        else:
            out[i] = Ranked(
                [], [], [], policy.name, cands.unknown, False, [], _features(cands), cands.profile
            )
    for (_, k), rows in groups.items():
        batch = [requests[i][0] for i in rows]
        obs = {
            "profile": np.stack([c.profile for c in batch]),  # [B, d]
            "candidates": np.stack([c.embeddings for c in batch]),  # [B, K, d]
            "features": candidate_features(
                np.stack([c.scores for c in batch]), np.stack([c.popularity for c in batch])
            ),  # [B, K, F]
            "budget": np.ones((len(batch), 1), dtype=np.float32),  # [B, 1]: unknown in serving
        }
        slate = policy.select(obs, k, rng=rng)
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
            )
    return out  # type: ignore[return-value]
