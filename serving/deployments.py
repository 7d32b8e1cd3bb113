"""The Serve deployments behind the ingress: query encoder, request context, retriever, rankers, event logger.

Plain classes (made deployments in :mod:`serving.app`), so the plain-uvicorn benchmark peer runs the very
same objects in one process. Artifacts come in through ``reconfigure(user_config)``: ``serve deploy`` of a
config with a new ``index`` or ``policy`` loads it next to the old one (checksums verified) and swaps
atomically while requests keep flowing; a request context built against the old index mid-swap is rebuilt
by the retriever (see :class:`serving.pipeline.Retrieval`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from rayrec import storage
from rayrec.baselines import BASELINES, LINEAR_RANKER_FILE
from rayrec.encoding import TextEncoder
from rayrec.errors import ArtifactError
from rayrec.events import EventLog, compact, quarantine_corrupt_parts, recent_slates, recover
from rayrec.index import ItemIndex
from rayrec.rerank import load_policy_for_index, parse_rerank_spec
from serving.batching import batched
from serving.metrics import EventMetrics, rollout_refused_counter
from serving.pipeline import (
    Candidates,
    LastClick,
    Ranked,
    RequestContext,
    Retrieval,
    check_servable,
    index_version,
    rank,
    request_contexts,
    trained_config,
)
from serving.user_model import UserModel, load_user_model

INDEX_MANIFEST = "index.json"
log = logging.getLogger("ray.serve")


class _Shown:
    """What the event logger remembers of an answered request: its slate, its arm and versions, and the
    feedback logged on it ((item, event) → None once written, or the future of its write under way)."""

    __slots__ = ("feedback", "items", "versions")

    def __init__(self, items: frozenset[str], versions: dict[str, Any]) -> None:
        self.items = items
        self.versions = versions
        self.feedback: dict[tuple[str, str], asyncio.Future | None] = {}


def read_index_manifest(index_uri: str) -> dict[str, Any]:
    """``index.json`` of an index directory (encoder, dim, item count, checksums)."""
    try:
        return json.loads(storage.read_text(storage.join(index_uri, INDEX_MANIFEST)))
    except Exception as exc:
        raise ArtifactError(f"{index_uri}: not an index directory ({INDEX_MANIFEST}: {exc})") from None


def load_index(uri: str):
    """An ``ItemIndex`` with its file checksums verified."""
    return ItemIndex.load(uri, verify=True)


def load_index_of_dim(uri: str, dim: int | None):
    """:func:`load_index`, refusing an index of another embedding dimension than the application's."""
    index = load_index(uri)
    if dim is not None and index.dim != dim:
        raise ArtifactError(
            f"index {uri} holds {index.dim}-d embeddings, this application serves {dim}-d (its policies "
            "and query encoder): deploy it in an application built for it"
        )
    return index


def check_candidate_count(policy, spec: str, num_candidates: int) -> None:
    """A trained policy is served the K it was trained with: the ``retrieval_rank`` feature is scaled by
    K - 1, so another K shows it features it never saw (a rollout to such a policy is refused)."""
    trained = trained_config(policy)
    if trained is not None and trained.num_candidates != num_candidates:
        raise ArtifactError(
            f"policy {spec} was trained on K={trained.num_candidates} candidates per request, this "
            f"application serves K={num_candidates}: deploy it in an application built for its K"
        )


class _SafeRollout:
    """How a stage takes a new artifact (an index or a policy) from ``reconfigure``: it is loaded and
    checked next to the one serving, and swapped in only if that succeeds. A bad artifact (corrupt,
    tampered, of another dimension or K) is refused: the stage keeps serving the artifact it has, says so
    in ``info()["rollout_error"]`` and the ``rayrec_rollout_refused_total`` metric, and does not raise
    (under Ray Serve a raising ``reconfigure`` stops the replica, and its replacements get the same bad
    config). A fresh replica given a bad config serves the application's own artifact (from its build
    arguments) instead; only when that fails too does it fail to start.
    """

    stage = "stage"

    def _init_rollout(self, initial: str | None) -> None:
        self.initial = initial
        self.rollout_error: str | None = None
        self.refused = rollout_refused_counter()

    async def _roll_out(self, spec: str, load, serving: bool):
        """The loaded artifact of ``spec``; None when it is refused and the current one stays."""
        try:
            return await asyncio.to_thread(load, spec)
        except Exception as exc:
            message = f"{self.stage}: refused {spec}: {type(exc).__name__}: {exc}"
            self.refused.inc(1, tags={"stage": self.stage})
            if serving:
                log.error("%s; the current artifact keeps serving", message)
                self.rollout_error = message
                return None
            if self.initial is None or self.initial == spec:
                raise
            log.error("%s; serving the application's own %s instead", message, self.initial)
            loaded = await asyncio.to_thread(load, self.initial)
            self.rollout_error = message
            return loaded


class QueryEncoder:
    """Embeds free-text queries with the index's text encoder, in batches.

    Args:
        encoder: model name or directory (``rayrec.encoding.resolve_model`` verifies bundled weights).
        dim: the index's embedding dimension; a different encoder output is refused at start.
        int8: load the encoder with int8 dynamically quantised Linear layers (``AppConfig.query_int8``).
    """

    def __init__(self, encoder: str, dim: int, batch_wait_s: float | None = 0.0, int8: bool = False) -> None:
        self.name = encoder
        self.encoder = TextEncoder.load(encoder, int8=int8)
        if self.encoder.dim != dim:
            raise ArtifactError(
                f"encoder {encoder} gives {self.encoder.dim}-d vectors, the index holds {dim}-d"
            )
        self.encode = batched(self._encode, batch_wait_s)

    async def _encode(self, texts: list[str]) -> list[np.ndarray]:
        return list(self.encoder.encode(texts))  # [B, d] → B × [d]

    def info(self) -> dict[str, Any]:
        return {"encoder": self.name, "dim": self.encoder.dim, "int8": self.encoder.int8}


def load_served_index(uri: str, dim: int | None, user_model: UserModel | None):
    """:func:`load_index_of_dim`, and with a ``user_model`` refusing an index that does not hold exactly its
    item vectors (:meth:`serving.user_model.UserModel.check_index`)."""
    index = load_index_of_dim(uri, dim)
    if user_model is not None:
        user_model.check_index(index, uri)
    return index


class UserStep(_SafeRollout):
    """Histories (+ optional queries, session steps) → :class:`serving.pipeline.RequestContext` from the
    stored item embeddings, or with a user model from its user tower (:mod:`serving.user_model`).

    ``user_config``: ``{"index": URI}`` (a rollout: see :class:`_SafeRollout`; with a user model an index
    that does not hold the model's item vectors is refused).

    Args:
        encoder: handle of the query encoder, or None.
        dim: the application's embedding dimension (its policies' and encoder's): an index of another
            is refused.
        initial: the application's own index, served if a fresh replica's ``user_config`` is bad.
        user_model: directory of the served retrieval model (``AppConfig.user_model``), or None. Its user
            tower makes the profiles, and the query encoder's text embeddings go through its text path.
    """

    stage = "UserStep"

    def __init__(
        self,
        encoder=None,
        dim: int | None = None,
        initial: str | None = None,
        user_model: str | None = None,
    ) -> None:
        self.encoder = encoder
        self.dim = dim
        self.user_model = load_user_model(user_model) if user_model else None
        self.index = None
        self.version = ""
        self.uri = ""
        self._init_rollout(initial)

    async def reconfigure(self, config: dict[str, Any]) -> None:
        if config["index"] == self.uri:
            return
        loaded = await self._roll_out(config["index"], self._load, serving=self.index is not None)
        if loaded is not None:
            index, uri = loaded
            self.rollout_error = None if uri == config["index"] else self.rollout_error
            self.index, self.version, self.uri = index, index_version(index), uri

    def _load(self, uri: str):
        return load_served_index(uri, self.dim, self.user_model), uri

    async def __call__(
        self,
        histories: list[list[str]],
        queries: list[str | None],
        session_steps: list[int],
        explains: list[bool] | None = None,
        last_clicks: list[LastClick | None] | None = None,
    ) -> list[RequestContext]:
        """One context per request; the requests' queries are embedded in one encoder call. ``explains``:
        which requests asked for explanations (none when omitted); ``last_clicks``: their session feedback
        (none when omitted)."""
        asked = [i for i, query in enumerate(queries) if query is not None]
        vectors: list[np.ndarray | None] = [None] * len(queries)
        if asked:
            embedded = await self.encoder.encode.remote([queries[i] for i in asked])
            if self.user_model is not None:  # text space → the model's space (its item tower's text path)
                embedded = list(self.user_model.text_queries(np.stack(embedded)))  # B × [dim]
            for i, vector in zip(asked, embedded, strict=True):
                vectors[i] = vector
        index, version = self.index, self.version  # one index for the whole batch, even mid-rollout
        explains = explains if explains is not None else [False] * len(histories)
        return request_contexts(
            index, version, histories, vectors, session_steps, explains, self.user_model, last_clicks
        )

    def info(self) -> dict[str, Any]:
        return {
            "index": self.uri,
            "version": self.version,
            "rollout_error": self.rollout_error,
            "user_model": self.user_model.info() if self.user_model is not None else None,
        }


class Retriever(_SafeRollout):
    """FAISS retrieval of K candidates per request context, batched; popular-diverse fallback for cold starts.

    ``user_config``: ``{"index": URI}`` (a rollout: see :class:`_SafeRollout`; ``dim``, ``initial`` and
    ``user_model`` as for :class:`UserStep`: contexts built against an older index are rebuilt with it).
    """

    stage = "Retriever"

    def __init__(
        self,
        num_candidates: int,
        fallback_size: int,
        batch_wait_s: float | None = 0.0,
        dim: int | None = None,
        initial: str | None = None,
        user_model: str | None = None,
    ) -> None:
        self.num_candidates = num_candidates
        self.fallback_size = fallback_size
        self.dim = dim
        self.user_model = load_user_model(user_model) if user_model else None
        self.retrieval: Retrieval | None = None
        self.uri = ""
        self.retrieve = batched(self._retrieve, batch_wait_s)
        self._init_rollout(initial)

    async def reconfigure(self, config: dict[str, Any]) -> None:
        if config["index"] == self.uri:
            return
        loaded = await self._roll_out(config["index"], self._load, serving=self.retrieval is not None)
        if loaded is not None:
            retrieval, uri = loaded
            self.rollout_error = None if uri == config["index"] else self.rollout_error
            self.retrieval, self.uri = retrieval, uri

    def _load(self, uri: str):
        index = load_served_index(uri, self.dim, self.user_model)
        return Retrieval(index, self.num_candidates, self.fallback_size, self.user_model), uri

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
            "rollout_error": self.rollout_error,
        }


class Ranker(_SafeRollout):
    """One A/B arm's slate policy over retrieved candidates, batched.

    ``user_config``: ``{"policy": SPEC}`` (a baseline name, an exported policy directory or a re-ranker
    around either, for :func:`rayrec.baselines.load_policy`; a rollout: see :class:`_SafeRollout`, with
    ``dim`` and ``initial`` as for :class:`UserStep`).

    A spec with a ``fair`` re-ranker (``fair@0.5:retrieval``, ``fair:greedy``) is given the category lookup
    of ``index`` (:func:`rayrec.rerank.index_category_lookup`); an index without categories makes it fail to load with a
    one-line error, so a rollout to it is refused and the current policy keeps serving. The fair
    re-ranker's amortised exposure lives in the replica's policy object, per replica: with N replicas
    there are N independent tallies, each evening out the exposure of the slates its replica chose over
    its own share of the arm's traffic (no replica sees the others'); a replica start or a rollout
    starts a fresh tally. The lookup is of the application's index: candidates from an index rolled out
    later through the UserStep/Retriever ``user_config`` whose embeddings it does not hold count as of
    no category (neither favoured nor counted) until the application is redeployed with that index.

    Args:
        num_candidates: K the retriever serves; a trained policy trained on another K is refused.
        index: the application's index (its ``category`` column is what ``fair`` re-ranks by), or None.
    """

    stage = "Ranker"

    def __init__(
        self,
        num_candidates: int,
        batch_wait_s: float | None = 0.0,
        dim: int | None = None,
        initial: str | None = None,
        index: str | None = None,
    ) -> None:
        self.num_candidates = num_candidates
        self.dim = dim
        self.index = index
        self.policy = None
        self.spec = ""
        self.version = ""
        self.rng = np.random.default_rng()
        self.rank = batched(self._rank, batch_wait_s)
        self._init_rollout(initial)

    async def reconfigure(self, config: dict[str, Any]) -> None:
        if config["policy"] == self.spec:
            return
        loaded = await self._roll_out(config["policy"], self._load, serving=self.policy is not None)
        if loaded is not None:
            policy, version, spec = loaded
            self.rollout_error = None if spec == config["policy"] else self.rollout_error
            self.policy, self.spec, self.version = policy, spec, version

    def _load(self, spec: str):
        policy = load_policy_for_index(spec, self.index)
        check_candidate_count(policy, spec, self.num_candidates)
        meta = None if self.index is None else read_index_manifest(self.index)
        trained = check_servable(policy, spec, meta)
        if trained is not None and self.dim is not None and trained.scorer.dim != self.dim:
            raise ArtifactError(
                f"policy {spec} was trained on {trained.scorer.dim}-d embeddings, this application serves "
                f"{self.dim}-d"
            )
        return policy, policy_version(spec), spec

    async def _rank(self, candidates: list[Candidates], ks: list[int]) -> list[Ranked]:
        return rank(
            self.policy, list(zip(candidates, ks, strict=True)), rng=self.rng, policy_version=self.version
        )

    def info(self) -> dict[str, Any]:
        return {
            "policy": self.policy.name,
            "spec": self.spec,
            "version": self.version,
            "rollout_error": self.rollout_error,
        }


def policy_version(spec: str) -> str:
    """Content hash of a policy: of an exported policy's ``policy.json`` (which holds its weights'
    sha256, checked at load), ``baseline-NAME`` for a baseline (code, no artifact), and for a re-ranker
    ``NAME@PARAM-`` followed by its base's version (``fair@0.5-baseline-retrieval``)."""
    wrapped = parse_rerank_spec(spec)
    if wrapped is not None:
        return f"{wrapped.name}@{wrapped.param:g}-{policy_version(wrapped.base)}"
    if spec in BASELINES:
        return f"baseline-{spec}"
    meta_file = "policy.json"
    if storage.exists(storage.join(spec, LINEAR_RANKER_FILE)):
        meta_file = LINEAR_RANKER_FILE  # a tuned linear ranker: its weights are in this file
    meta = storage.read_text(storage.join(spec, meta_file))
    return hashlib.sha256(meta.encode()).hexdigest()[:16]


class EventLogger:
    """Owns the event log and remembers recent slates so that feedback can be checked.

    One replica (the request registry lives in its memory, and is rebuilt from the log when the replica
    starts, so that a restart forgets nothing that was written). ``log_requests`` returns once the
    requests' rows and their impressions are queued (written within ``flush_seconds``, or with the next
    feedback); it never fails for a write error: the server keeps answering, the rows stay queued (up to
    the log's bound, then they are counted as dropped). ``log_feedback`` returns ``accepted`` only once
    the row is on disk (a group commit: concurrent feedback shares one write and fsync), and
    ``unavailable`` when it could not be written, so that the ingress answers 503 and the client
    retries. The replica's graceful stop writes everything queued. The calls are coroutines, so Serve
    runs them on the replica's event loop rather than through a thread pool.

    On start the replica also finishes what a crash interrupted (:func:`rayrec.events.recover`),
    quarantines unreadable parts, and then compacts small part files every ``compact_every_s``.
    """

    def __init__(
        self,
        events: str,
        remembered: int,
        flush_rows: int,
        flush_seconds: float,
        compact_every_s: float = 300.0,
    ) -> None:
        recover(events)
        quarantine_corrupt_parts(events)
        self.log = EventLog(events, max_rows=flush_rows, max_delay_s=flush_seconds, on_write_error="keep")
        self.remembered = remembered
        self.metrics = EventMetrics()
        self.shown: OrderedDict[str, _Shown] = OrderedDict()
        slates, seen = recent_slates(events, remembered)
        for request_id, slate in slates.items():
            self.shown[request_id] = _Shown(frozenset(slate["items"]), _versions(slate))
        for request_id, item_id, event in seen:
            self.shown[request_id].feedback[(item_id, event)] = None
        self.compactions = 0
        self._stop = threading.Event()
        self._compactor = threading.Thread(
            target=self._compact_loop, args=(compact_every_s,), name="rayrec-event-compaction", daemon=True
        )
        self._compactor.start()

    async def log_requests(self, requests: list[dict[str, Any]], impressions: list[dict[str, Any]]) -> int:
        """Queue answered requests (:data:`rayrec.events.REQUESTS_SCHEMA` rows) and their impressions."""
        shown: dict[str, set[str]] = {row["request_id"]: set() for row in requests}
        arms: dict[str, int] = {}
        for row in impressions:
            shown[row["request_id"]].add(row["item_id"])
            arms[row["arm"]] = arms.get(row["arm"], 0) + 1
        count = self.log.log_impressions(impressions, requests=requests)
        for row in requests:
            self.shown[row["request_id"]] = _Shown(frozenset(shown[row["request_id"]]), _versions(row))
        while len(self.shown) > self.remembered:
            self.shown.popitem(last=False)
        for arm, n in arms.items():
            self.metrics.impressions.inc(n, tags={"arm": arm})
        self.metrics.backlog.set(self.log.pending_rows())
        return count

    async def log_feedback(self, row: dict[str, Any]) -> str:
        """``accepted`` (on disk), ``duplicate`` (this request, item and event were written before: nothing
        new is written, so a client may retry safely), ``unknown-request``, ``not-shown``, or
        ``unavailable`` (the write failed: nothing was kept, the client should retry later)."""
        shown = self.shown.get(row["request_id"])
        status = await self._feedback(shown, row)
        arm = shown.versions.get("arm") if shown is not None else None
        self.metrics.feedback.inc(1, tags={"arm": arm or "", "event": row["event"], "status": status})
        return status

    async def _feedback(self, shown: _Shown | None, row: dict[str, Any]) -> str:
        if shown is None:
            return "unknown-request"
        if row["item_id"] not in shown.items:
            return "not-shown"
        key = (row["item_id"], row["event"])
        if key in shown.feedback:
            first = shown.feedback[key]
            if first is None:
                return "duplicate"
            # the same feedback is being written right now: its outcome is this one's
            return "duplicate" if await _succeeded(first) else "unavailable"
        future = asyncio.wrap_future(self.log.log_durably([{**row, **shown.versions}]))
        shown.feedback[key] = future
        if await _succeeded(future):
            shown.feedback[key] = None
            return "accepted"
        del shown.feedback[key]
        self.metrics.write_failures.inc(1)
        self.metrics.unlogged.inc(1, tags={"kind": "feedback"})
        return "unavailable"

    def info(self) -> dict[str, Any]:
        status = self.log.status()
        self.metrics.backlog.set(status["pending"])
        return {
            "events": self.log.directory,
            "remembered_requests": len(self.shown),
            "compactions": self.compactions,
            **status,
        }

    def _compact_loop(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                self.compactions += sum(compact(self.log.directory).values()) > 0
            except Exception as exc:  # compaction is housekeeping: never fatal
                log.warning("event log compaction failed: %s", exc)

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
        if hasattr(self, "log"):
            self.log.close()


async def _succeeded(future) -> bool:
    try:
        await asyncio.shield(future)
    except Exception:
        return False
    return True


def _versions(row: dict[str, Any]) -> dict[str, Any]:
    """What a feedback row inherits from its request: the arm, the key id, the index and policy versions."""
    return {k: row.get(k) for k in ("arm", "key_id", "index_version", "policy_version")}
