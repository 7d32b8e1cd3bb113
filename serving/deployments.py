"""The Serve deployments behind the ingress: query encoder, request context, retriever, rankers, event logger.

Plain classes (made deployments in :mod:`serving.app`), so the plain-uvicorn benchmark peer runs the very
same objects in one process. Artifacts come in through ``reconfigure(user_config)``: ``serve deploy`` of a
config with a new ``index`` or ``policy`` loads it next to the old one (checksums verified) and swaps
atomically while requests keep flowing; a request context built against the old index mid-swap is rebuilt
by the retriever (see :class:`serving.pipeline.Retrieval`).
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from typing import Any

import numpy as np

from rayrec import storage
from rayrec.baselines import load_policy
from rayrec.encoding import TextEncoder
from rayrec.errors import ArtifactError
from rayrec.events import EventLog
from rayrec.index import ItemIndex
from serving.batching import batched
from serving.pipeline import (
    Candidates,
    Ranked,
    RequestContext,
    Retrieval,
    index_version,
    rank,
    request_context,
    trained_config,
)

INDEX_MANIFEST = "index.json"


def read_index_manifest(index_uri: str) -> dict[str, Any]:
    """``index.json`` of an index directory (encoder, dim, item count, checksums)."""
    try:
        return json.loads(storage.read_text(storage.join(index_uri, INDEX_MANIFEST)))
    except Exception as exc:
        raise ArtifactError(f"{index_uri}: not an index directory ({INDEX_MANIFEST}: {exc})") from None


def load_index(uri: str):
    """An ``ItemIndex`` with its file checksums verified."""
    return ItemIndex.load(uri, verify=True)


def check_candidate_count(policy, spec: str, num_candidates: int) -> None:
    """A trained policy is served the K it was trained with: the ``retrieval_rank`` feature is scaled by
    K - 1, so another K shows it features it never saw (a rollout to such a policy is refused)."""
    trained = trained_config(policy)
    if trained is not None and trained.num_candidates != num_candidates:
        raise ArtifactError(
            f"policy {spec} was trained on K={trained.num_candidates} candidates per request, this "
            f"application serves K={num_candidates}: deploy it in an application built for its K"
        )


class QueryEncoder:
    """Embeds free-text queries with the index's text encoder, in batches.

    Args:
        encoder: model name or directory (``rayrec.encoding.resolve_model`` verifies bundled weights).
        dim: the index's embedding dimension; a different encoder output is refused at start.
    """

    def __init__(self, encoder: str, dim: int, batch_wait_s: float | None = 0.0) -> None:
        self.name = encoder
        self.encoder = TextEncoder.load(encoder)
        if self.encoder.dim != dim:
            raise ArtifactError(
                f"encoder {encoder} gives {self.encoder.dim}-d vectors, the index holds {dim}-d"
            )
        self.encode = batched(self._encode, batch_wait_s)

    async def _encode(self, texts: list[str]) -> list[np.ndarray]:
        return list(self.encoder.encode(texts))  # [B, d] → B × [d]

    def info(self) -> dict[str, Any]:
        return {"encoder": self.name, "dim": self.encoder.dim}


class UserStep:
    """Histories (+ optional queries, session steps) → :class:`serving.pipeline.RequestContext` from the
    stored item embeddings.

    ``user_config``: ``{"index": URI}``.
    """

    def __init__(self, encoder=None) -> None:
        self.encoder = encoder
        self.index = None
        self.version = ""
        self.uri = ""

    async def reconfigure(self, config: dict[str, Any]) -> None:
        if config["index"] != self.uri:
            index = await asyncio.to_thread(load_index, config["index"])
            self.index, self.version, self.uri = index, index_version(index), config["index"]

    async def __call__(
        self, histories: list[list[str]], queries: list[str | None], session_steps: list[int]
    ) -> list[RequestContext]:
        """One context per request; the requests' queries are embedded in one encoder call."""
        asked = [i for i, query in enumerate(queries) if query is not None]
        vectors: list[np.ndarray | None] = [None] * len(queries)
        if asked:
            embedded = await self.encoder.encode.remote([queries[i] for i in asked])
            for i, vector in zip(asked, embedded, strict=True):
                vectors[i] = vector
        index, version = self.index, self.version  # one index for the whole batch, even mid-rollout
        return [
            request_context(index, version, h, v, step)
            for h, v, step in zip(histories, vectors, session_steps, strict=True)
        ]

    def info(self) -> dict[str, Any]:
        return {"index": self.uri, "version": self.version}


class Retriever:
    """FAISS retrieval of K candidates per request context, batched; popular-diverse fallback for cold starts.

    ``user_config``: ``{"index": URI}``.
    """

    def __init__(self, num_candidates: int, fallback_size: int, batch_wait_s: float | None = 0.0) -> None:
        self.num_candidates = num_candidates
        self.fallback_size = fallback_size
        self.retrieval: Retrieval | None = None
        self.uri = ""
        self.retrieve = batched(self._retrieve, batch_wait_s)

    async def reconfigure(self, config: dict[str, Any]) -> None:
        if config["index"] != self.uri:
            index = await asyncio.to_thread(load_index, config["index"])
            self.retrieval = Retrieval(index, self.num_candidates, self.fallback_size)
            self.uri = config["index"]

    async def _retrieve(self, contexts: list[RequestContext]) -> list[Candidates]:
        return self.retrieval.retrieve(contexts)

    def info(self) -> dict[str, Any]:
        index = self.retrieval.index
        return {
            "index": self.uri,
            "version": self.retrieval.version,
            "items": len(index.item_ids),
            "dim": index.dim,
            "encoder": index.encoder,
        }


class Ranker:
    """One A/B arm's slate policy over retrieved candidates, batched.

    ``user_config``: ``{"policy": SPEC}`` (a baseline name or an exported policy directory, for
    :func:`rayrec.baselines.load_policy`).

    Args:
        num_candidates: K the retriever serves; a trained policy trained on another K is refused.
    """

    def __init__(self, num_candidates: int, batch_wait_s: float | None = 0.0) -> None:
        self.num_candidates = num_candidates
        self.policy = None
        self.spec = ""
        self.rng = np.random.default_rng()
        self.rank = batched(self._rank, batch_wait_s)

    async def reconfigure(self, config: dict[str, Any]) -> None:
        if config["policy"] != self.spec:
            policy = await asyncio.to_thread(load_policy, config["policy"])
            check_candidate_count(policy, config["policy"], self.num_candidates)
            self.policy, self.spec = policy, config["policy"]

    async def _rank(self, candidates: list[Candidates], ks: list[int]) -> list[Ranked]:
        return rank(self.policy, list(zip(candidates, ks, strict=True)), rng=self.rng)

    def info(self) -> dict[str, Any]:
        return {"policy": self.policy.name, "spec": self.spec}


class EventLogger:
    """Owns the event log and remembers recent slates so that feedback can be checked.

    One replica (the request registry lives in its memory). ``log_requests`` returns once the requests'
    rows and their impressions are queued for a durable write (together: one flush writes both); the
    replica's graceful stop (``serve shutdown``, SIGTERM of ``rayrec serve``) writes everything queued.
    The calls are coroutines, so Serve runs them on the replica's event loop rather than through a
    thread pool: they only queue rows (a background thread writes the Parquet parts), and the thread
    hop would cost more than the work.
    """

    def __init__(self, events: str, remembered: int, flush_rows: int, flush_seconds: float) -> None:
        self.log = EventLog(events, max_rows=flush_rows, max_delay_s=flush_seconds)
        self.remembered = remembered
        self.shown: OrderedDict[str, frozenset[str]] = OrderedDict()

    async def log_requests(self, requests: list[dict[str, Any]], impressions: list[dict[str, Any]]) -> int:
        """Queue answered requests (:data:`rayrec.events.REQUESTS_SCHEMA` rows) and their impressions."""
        shown: dict[str, set[str]] = {row["request_id"]: set() for row in requests}
        for row in impressions:
            shown[row["request_id"]].add(row["item_id"])
        count = self.log.log_impressions(impressions, requests=requests)
        for request_id, items in shown.items():
            self.shown[request_id] = frozenset(items)
        while len(self.shown) > self.remembered:
            self.shown.popitem(last=False)
        return count

    async def log_feedback(self, row: dict[str, Any]) -> str:
        """``accepted`` (queued), ``unknown-request`` or ``not-shown``."""
        shown = self.shown.get(row["request_id"])
        if shown is None:
            return "unknown-request"
        if row["item_id"] not in shown:
            return "not-shown"
        self.log.log_feedback([row])
        return "accepted"

    def info(self) -> dict[str, Any]:
        return {"events": self.log.directory, "pending": self.log.pending_rows()}

    def __del__(self) -> None:
        self.log.close()
