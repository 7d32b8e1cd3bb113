"""The event log: requests, impressions and feedback as Parquet part files, written by the server and the
A/B runner.

Layout under an events directory (a local path or URI)::

    DIR/requests/part-<time>-<uuid>.parquet      one row per answered request (REQUESTS_SCHEMA)
    DIR/impressions/part-<time>-<uuid>.parquet   one row per shown item (IMPRESSIONS_SCHEMA)
    DIR/feedback/part-<time>-<uuid>.parquet      one row per user reaction (FEEDBACK_SCHEMA)

The requests table holds what the ranker saw (candidate ids, features, profile, budget), so that
off-policy evaluation (``rayrec ope``) can replay another policy on the very same requests. It is
logged in the same call as the request's impressions (``log_impressions(rows, requests=...)``) and
written in the same flush, so a log never holds a request's impressions without its request row.

Writers only ever add new part files with unique names, so several writers (server replicas, A/B runs)
can share a directory and readers never see a half-written file: a local part is written under a
hidden temporary name, fsynced, renamed into place, and its directory fsynced; an object store
publishes a part atomically when its upload completes.

Usage::

    with EventLog("runs/events") as log:
        log.log_impressions([{"request_id": "r1", "ts": 1.7e9, "user_id": "u", "arm": "a",
                              "policy": "greedy", "item_id": "i9", "position": 0,
                              "score": 0.8, "propensity": 1.0}])
        log.log_feedback([{"request_id": "r1", "item_id": "i9", "event": "click", "value": 1.0}])
    impressions = read_impressions("runs/events")  # pa.Table
    requests = read_requests("runs/events")  # empty unless requests were logged

A ``log_*`` call returns once its rows are queued in memory; they are written in batches by a
background thread (every ``max_rows`` rows or ``max_delay_s`` seconds, whichever comes first), and
:meth:`EventLog.flush` / :meth:`EventLog.close` write everything queued before they return.
:meth:`EventLog.log_durably` is the group commit a server acknowledges on: its future completes once
the rows are on disk (every row queued meanwhile goes in the same write), or fails, and then the rows
were not kept. A failed write keeps the other rows queued; with ``on_write_error="raise"`` (batch
writers) it raises from the next call, with ``"keep"`` (the server) the log keeps taking rows up to
``max_pending_rows``, counts what it had to drop, and retries.

Readers skip a part file they cannot read (and say so in the log): one corrupt file never hides the
rest; :func:`quarantine_corrupt_parts` moves such files aside. :func:`compact` merges small part files
into one, crash-safely: a ``.compact-*.json`` intent names the merged part and its sources, readers that
see the merged part ignore the sources, and :func:`recover` finishes or rolls back what a crash
interrupted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayrec import storage
from rayrec.errors import DataError, RayrecError

REQUESTS_DIR = "requests"
IMPRESSIONS_DIR = "impressions"
FEEDBACK_DIR = "feedback"

VERSION_FIELDS = [
    pa.field("key_id", pa.string()),
    pa.field("index_version", pa.string()),
    pa.field("policy_version", pa.string()),
]
"""Columns that say which pseudonymization key and which index and policy artifacts produced a row."""

REQUESTS_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("ts", pa.float64(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("arm", pa.string(), nullable=False),
        pa.field("policy", pa.string(), nullable=False),
        pa.field("candidate_ids", pa.list_(pa.string()), nullable=False),
        pa.field("features", pa.list_(pa.float32()), nullable=False),
        pa.field("profile", pa.list_(pa.float32()), nullable=False),
        pa.field("budget", pa.float32(), nullable=False),
        pa.field("fallback", pa.bool_(), nullable=False),
        pa.field("last_engagement", pa.float32()),
        pa.field("last_click_rating", pa.float32()),
        *VERSION_FIELDS,
        pa.field("satisfaction_estimate", pa.float32()),
    ]
)
"""One row per answered request: ``candidate_ids`` [K] in retrieval order, ``features`` [K * F]
row-major in :data:`rayrec.features.FEATURE_NAMES` order, ``profile`` [d], ``budget`` the observation's
budget (1.0 where unknown, as in serving), ``fallback`` True when no arm's policy chose the slate (the
server's cold-start list or, when the arm's ranker failed, the retrieval-order fallback; ``policy`` then
names the fallback). Candidate embeddings are not logged: they are the index's, looked up by
``candidate_ids``. ``last_engagement`` and ``last_click_rating`` are the request's session feedback, the
:data:`rayrec.features.LAST_ENGAGEMENT` and :data:`rayrec.features.LAST_CLICK_RATING` the server built from
its ``last_click`` (0 without one; ``last_click_rating`` null over an index without ratings, and both null in
logs written before them; a simulated run, whose ``features`` hold whatever columns the simulator appended,
logs ``last_engagement`` where its simulator observes it and never ``last_click_rating``). The three version
columns (null in logs written before them, and in simulated runs) say which pseudonymization key made
``user_id`` (:func:`rayrec.privacy.key_id`) and which index and policy artifacts (content hashes) answered. ``satisfaction_estimate`` is the :data:`rayrec.features.SATISFACTION_ESTIMATE` a
server over an index with an item log (``rayrec build-index --item-log``) built from the ``last_click``
(null otherwise and in logs written before it)."""

IMPRESSIONS_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("ts", pa.float64(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("arm", pa.string(), nullable=False),
        pa.field("policy", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("propensity", pa.float32(), nullable=False),
        *VERSION_FIELDS,
    ]
)
"""One row per shown item: ``ts`` unix seconds, ``user_id`` pseudonymized, ``position`` 0-based,
``propensity`` the probability that ``policy`` shows this item at this position (1.0 if deterministic);
``key_id``, ``index_version``, ``policy_version`` as in :data:`REQUESTS_SCHEMA`."""

FEEDBACK_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("event", pa.string(), nullable=False),
        pa.field("value", pa.float32(), nullable=False),
        pa.field("ts", pa.float64(), nullable=False),
        pa.field("arm", pa.string()),
        *VERSION_FIELDS,
    ]
)
"""One row per reaction to an impression (``event`` e.g. ``click``, ``skip``); ``value`` defaults to 1.0
and ``ts`` (unix seconds) to the time of logging when a row leaves them out; the server adds the arm,
key id and versions of the request the feedback is about."""

FEEDBACK_EVENTS = ("click", "skip", "view", "purchase", "rating", "dismiss")
"""Feedback events the HTTP API accepts (the log itself takes any non-empty string)."""

FEEDBACK_VALUE_RANGES: dict[str, tuple[float, float, bool]] = {
    "click": (0.0, 1.0, False),
    "skip": (0.0, 1.0, False),
    "view": (0.0, 1.0, False),
    "dismiss": (0.0, 1.0, False),
    "rating": (0.0, 10.0, True),
    "purchase": (0.0, 1_000_000.0, True),
}
"""event → (lowest value, highest value, whether ``value`` is required) the HTTP API accepts. A click's
value is its reward weight (1.0, or an engagement weight in [0, 1]); a rating is on a 0-10 scale; a
purchase's value is its amount. Without bounds one client could outweigh every other in training and OPE."""

Rows = Iterable[Mapping[str, Any]] | pa.Table


def requests_table(
    request_ids: list[str],
    ts: np.ndarray,
    user_ids: list[str],
    arm: list[str],
    policy: list[str],
    candidate_ids: np.ndarray,
    obs: Mapping[str, np.ndarray],
    last_engagement: np.ndarray | None = None,
) -> pa.Table:
    """A :data:`REQUESTS_SCHEMA` table for B requests that a policy ranked (``fallback`` False), built in
    array operations (the A/B runner logs thousands of requests per step).

    Args:
        request_ids, user_ids, arm, policy: [B] str each.
        ts: [B] float64 unix seconds.
        candidate_ids: [B, K] str item ids of the candidates.
        obs: the batched observation the requests were ranked on (:mod:`rayrec.features`).
        last_engagement: [B] float32 each request's :data:`rayrec.features.LAST_ENGAGEMENT` (null when None).
    """
    batch, k = candidate_ids.shape

    def rows(values: np.ndarray) -> pa.ListArray:
        values = np.ascontiguousarray(values, dtype=np.float32).reshape(batch, -1)  # [B, m]
        width = values.shape[1]
        return pa.ListArray.from_arrays(
            pa.array(np.arange(0, batch * width + 1, width, dtype=np.int32)), pa.array(values.ravel())
        )

    return pa.Table.from_arrays(
        [
            pa.array(request_ids, pa.string()),
            pa.array(np.asarray(ts, np.float64)),
            pa.array(user_ids, pa.string()),
            pa.array(arm, pa.string()),
            pa.array(policy, pa.string()),
            pa.ListArray.from_arrays(
                pa.array(np.arange(0, batch * k + 1, k, dtype=np.int32)),
                pa.array(np.asarray(candidate_ids, dtype=str).ravel().tolist(), pa.string()),
            ),
            rows(obs["features"]),
            rows(obs["profile"]),
            pa.array(np.asarray(obs["budget"], np.float32).reshape(batch)),
            pa.array(np.zeros(batch, dtype=bool)),
            pa.nulls(batch, pa.float32())
            if last_engagement is None
            else pa.array(np.asarray(last_engagement, np.float32).reshape(batch)),
            pa.nulls(batch, pa.float32()),
            *(pa.nulls(batch, pa.string()) for _ in VERSION_FIELDS),
            pa.nulls(batch, pa.float32()),
        ],
        schema=REQUESTS_SCHEMA,
    )


def _to_table(rows: Rows, schema: pa.Schema, defaults: Mapping[str, Any]) -> pa.Table:
    """Rows (dicts or a table) → a table of exactly ``schema``; missing defaults filled, else DataError."""
    if isinstance(rows, pa.Table):
        columns = {name: rows.column(name) for name in rows.column_names}
        n = rows.num_rows
    else:
        rows = list(rows)
        n = len(rows)
        columns = {f.name: [row.get(f.name) for row in rows] for f in schema}
    if n == 0:
        return schema.empty_table()
    arrays = []
    for field in schema:
        values = columns.get(field.name)
        if field.nullable and values is None:
            arrays.append(pa.nulls(n, field.type))
            continue
        if values is None or (not isinstance(values, pa.ChunkedArray) and all(v is None for v in values)):
            if field.nullable:
                arrays.append(pa.nulls(n, field.type))
                continue
            if field.name not in defaults:
                raise DataError(f"event rows: column {field.name!r} is missing")
            values = [defaults[field.name]] * n
        elif field.name in defaults and not isinstance(values, pa.ChunkedArray):
            values = [defaults[field.name] if v is None else v for v in values]
        try:
            array = pa.array(values, type=field.type) if isinstance(values, list) else values.cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise DataError(f"event rows: column {field.name!r}: {exc}") from None
        if array.null_count and not field.nullable:
            first = array.is_null().to_pylist().index(True)
            raise DataError(
                f"event rows: column {field.name!r} is missing or null in {array.null_count} row(s), "
                f"first at row {first}"
            )
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=schema)


PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
INTENT_PREFIX = ".compact-"
QUARANTINE_DIR = "quarantine"
STALE_TMP_S = 3600.0
"""A hidden temporary part older than this was left by a writer that crashed mid-write: removed by
:func:`recover` (younger ones may belong to a live writer sharing the directory)."""

log = logging.getLogger(__name__)


def _part_name() -> str:
    return f"{PART_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:12]}{PART_SUFFIX}"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_part(fs: pafs.FileSystem, directory: str, table: pa.Table, name: str | None = None) -> str:
    """Write ``table`` as one part file under ``directory``, durably; returns its path.

    Local: written to a hidden temporary file, fsynced, renamed into place, the directory fsynced, so the
    part survives a crash or power loss once this returns, and no reader ever sees half of it. Object
    stores: one upload, published atomically when it completes.
    """
    final = f"{directory}/{name or _part_name()}"
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{directory}/.{os.path.basename(final)}.tmp"
        with open(tmp, "wb") as handle:
            pq.write_table(table, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        _fsync_dir(directory)
    else:
        pq.write_table(table, final, filesystem=fs)
    return final


class _PartWriter:
    """Buffers the tables of one kind of event and writes them as Parquet part files under one directory.

    Each queued table may carry a future (a durable write that someone waits for): it completes when the
    write that holds its table succeeds, or fails with the write's error (and its rows are then dropped,
    since the waiter was told they were not written).
    """

    def __init__(self, directory: str) -> None:
        self.fs, self.path = storage.resolve(directory)
        self.fs.create_dir(self.path, recursive=True)
        self.pending: list[tuple[pa.Table, Future | None]] = []
        self.pending_rows = 0
        self.oldest: float | None = None

    def add(self, table: pa.Table, future: Future | None = None) -> None:
        if table.num_rows or future is not None:
            self.pending.append((table, future))
            self.pending_rows += table.num_rows
            self.oldest = self.oldest or time.monotonic()

    def take(self) -> list[tuple[pa.Table, Future | None]]:
        taken, self.pending, self.pending_rows, self.oldest = self.pending, [], 0, None
        return taken

    def restore(self, taken: list[tuple[pa.Table, Future | None]]) -> None:
        """Put back the rows of a failed write that nobody waits for, ahead of anything queued since."""
        kept = [(table, None) for table, future in taken if future is None]
        self.pending[:0] = kept
        self.pending_rows += sum(t.num_rows for t, _ in kept)
        self.oldest = time.monotonic()

    def write(self, taken: list[tuple[pa.Table, Future | None]]) -> None:
        tables = [table for table, _ in taken if table.num_rows]
        if tables:
            write_part(self.fs, self.path, pa.concat_tables(tables))


class EventLog:
    """Appends request, impression and feedback rows to Parquet part files under ``directory`` in batches.

    Args:
        directory: events directory (local path or URI); created if missing.
        max_rows: write a part once this many rows of one kind are queued.
        max_delay_s: write a part once its oldest queued row has waited this long.
        on_write_error: ``raise``: a failed write raises from the next ``log_*``/``flush`` call (batch
            writers, which must stop); ``keep``: keep taking rows, retry, and drop (counting them) only
            what exceeds ``max_pending_rows`` (a server, which must keep answering).
        max_pending_rows: with ``keep``, the most rows held while writes fail.

    Thread-safe. ``log_*`` acknowledge by returning: from then on the rows are queued for a write that
    :meth:`flush`, :meth:`close` or the background thread performs; :meth:`log_durably` acknowledges
    once they are written.
    """

    def __init__(
        self,
        directory: str,
        *,
        max_rows: int = 2048,
        max_delay_s: float = 1.0,
        on_write_error: Literal["raise", "keep"] = "raise",
        max_pending_rows: int = 1_000_000,
    ) -> None:
        if max_rows < 1 or not max_delay_s > 0 or max_pending_rows < 1:
            raise ValueError(
                f"EventLog: max_rows ({max_rows}), max_delay_s ({max_delay_s}) and max_pending_rows "
                f"({max_pending_rows}) must be positive"
            )
        self.directory = str(directory)
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self.on_write_error = on_write_error
        self.max_pending_rows = max_pending_rows
        self._parts = {
            REQUESTS_DIR: _PartWriter(storage.join(self.directory, REQUESTS_DIR)),
            IMPRESSIONS_DIR: _PartWriter(storage.join(self.directory, IMPRESSIONS_DIR)),
            FEEDBACK_DIR: _PartWriter(storage.join(self.directory, FEEDBACK_DIR)),
        }
        self._lock = threading.Lock()  # guards the buffers and counters
        self._write_lock = threading.Lock()  # one writer at a time keeps part order = log order
        self._wake = threading.Event()
        self._urgent = False  # someone waits on a durable write: write at once
        self._error: BaseException | None = None
        self.dropped: dict[str, int] = dict.fromkeys(self._parts, 0)
        self.write_failures = 0
        self.writes = 0
        self._writing = 0
        """Rows taken for a write that has not finished (:meth:`pending_rows` counts them)."""
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="rayrec-event-log", daemon=True)
        self._thread.start()

    def log_impressions(self, rows: Rows, requests: Rows | None = None) -> int:
        """Queue impression rows (dicts or a table with :data:`IMPRESSIONS_SCHEMA`'s columns); returns the count.

        ``requests``: the rows (:data:`REQUESTS_SCHEMA`; ``budget`` defaults to 1.0, ``fallback`` to False)
        of the requests these impressions answer. Both are validated before either is queued, queued
        together and written by the same flush.
        """
        tables = {IMPRESSIONS_DIR: _to_table(rows, IMPRESSIONS_SCHEMA, {})}
        if requests is not None:
            tables[REQUESTS_DIR] = _to_table(requests, REQUESTS_SCHEMA, {"budget": 1.0, "fallback": False})
        self._add(tables)
        return tables[IMPRESSIONS_DIR].num_rows

    def log_feedback(self, rows: Rows) -> int:
        """Queue feedback rows (:data:`FEEDBACK_SCHEMA`; ``value`` and ``ts`` optional); returns the count."""
        table = _to_table(rows, FEEDBACK_SCHEMA, {"value": 1.0, "ts": time.time()})
        self._add({FEEDBACK_DIR: table})
        return table.num_rows

    def log_durably(self, feedback: Rows) -> Future:
        """Queue feedback rows for an immediate write: the returned future completes (with the row count)
        once they are on disk, together with everything queued before them, or fails with the write's
        error, and then these rows were not written (the caller must not acknowledge them).

        Calls made while a write is under way share the next write (group commit).
        """
        table = _to_table(feedback, FEEDBACK_SCHEMA, {"value": 1.0, "ts": time.time()})
        future: Future = Future()
        if self._closed:
            future.set_exception(RayrecError(f"event log {self.directory} is closed"))
            return future
        with self._lock:
            self._parts[FEEDBACK_DIR].add(table, future)
            self._urgent = True
        self._wake.set()
        return future

    def flush(self) -> None:
        """Write every queued row; raises if a write fails (rows nobody waits for stay queued)."""
        with self._write_lock:
            with self._lock:  # one snapshot of every kind: a request and its impressions leave together
                taken = [(part, part.take()) for part in self._parts.values()]
                self._urgent = False
                # Taken rows are still unwritten until their part is in place: pending_rows counts them.
                self._writing = sum(t.num_rows for _, tables in taken for t, _ in tables)
            for i, (part, tables) in enumerate(taken):
                if not tables:
                    continue
                try:
                    part.write(tables)
                except Exception as exc:
                    error = RayrecError(f"event log {self.directory}: write failed: {exc}")
                    with self._lock:
                        self.write_failures += 1
                        self._writing = 0  # the unwritten rows go back to their parts below
                        for unwritten, rest in taken[i:]:
                            unwritten.restore(rest)
                            for _, future in rest:
                                if future is not None:
                                    future.set_exception(error)
                        self._error = exc
                    raise error from exc
                with self._lock:
                    self._writing -= sum(t.num_rows for t, _ in tables)
                for _, future in tables:
                    if future is not None:
                        future.set_result(sum(t.num_rows for t, f in tables if f is future))
            with self._lock:
                self._error = None
                self.writes += 1

    def close(self) -> None:
        """Stop the background writer and write everything queued. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._thread.join()
        self.flush()

    def pending_rows(self) -> int:
        """Rows acknowledged but not yet written (queued, or in a write that has not finished)."""
        with self._lock:
            return sum(part.pending_rows for part in self._parts.values()) + self._writing

    def status(self) -> dict[str, Any]:
        """Pending rows, rows dropped while writes failed, failed and done writes, the last error (if the
        last write failed)."""
        with self._lock:
            return {
                "pending": sum(part.pending_rows for part in self._parts.values()) + self._writing,
                "dropped": dict(self.dropped),
                "write_failures": self.write_failures,
                "writes": self.writes,
                "failing": self._error is not None,
                "last_error": type(self._error).__name__ if self._error is not None else None,
            }

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _add(self, tables: Mapping[str, pa.Table]) -> None:
        if self._closed:
            raise RayrecError(f"event log {self.directory} is closed")
        with self._lock:
            if self._error is not None and self.on_write_error == "raise":
                raise RayrecError(f"event log {self.directory}: earlier write failed: {self._error}")
            pending = sum(part.pending_rows for part in self._parts.values())
            incoming = sum(table.num_rows for table in tables.values())
            if pending + incoming > self.max_pending_rows:  # only while writes fail: keep the oldest
                for kind, table in tables.items():
                    self.dropped[kind] += table.num_rows
                return
            for kind, table in tables.items():
                self._parts[kind].add(table)
            full = any(self._parts[kind].pending_rows >= self.max_rows for kind in tables)
        if full:
            self._wake.set()

    def _due(self) -> bool:
        now = time.monotonic()
        with self._lock:
            return self._urgent or any(
                part.pending_rows >= self.max_rows
                or (part.oldest is not None and now - part.oldest >= self.max_delay_s)
                for part in self._parts.values()
            )

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(timeout=min(self.max_delay_s, 0.25))
            self._wake.clear()
            if self._closed or not self._due():
                continue
            try:
                self.flush()
            except RayrecError as exc:
                log.warning("%s; retrying", exc)
                time.sleep(min(self.max_delay_s, 1.0))  # the error is kept and surfaced to the callers


# ---- reading, quarantine, compaction --------------------------------------------------------------------


def _kind_dir(directory: str, kind: str) -> tuple[pafs.FileSystem, str]:
    return storage.resolve(storage.join(str(directory), kind))


def _list_parts(fs: pafs.FileSystem, path: str) -> list[str]:
    """The part files a reader should read, in write order: without the sources of a finished compaction."""
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path))
    names = {
        info.base_name
        for info in infos
        if info.type == pafs.FileType.File
        and info.base_name.startswith(PART_PREFIX)
        and info.base_name.endswith(PART_SUFFIX)
    }
    for info in infos:
        if info.type == pafs.FileType.File and info.base_name.startswith(INTENT_PREFIX):
            intent = _read_intent(fs, info.path)
            if intent is not None and intent["merged"] in names:
                names -= set(intent["sources"])
    return [f"{path}/{name}" for name in sorted(names)]


def _read_intent(fs: pafs.FileSystem, path: str) -> dict | None:
    try:
        with fs.open_input_stream(path) as stream:
            intent = json.loads(stream.read())
        return intent if isinstance(intent, dict) and {"merged", "sources"} <= set(intent) else None
    except (OSError, ValueError):
        return None  # vanished (finished meanwhile) or half-written (never committed)


def _read(directory: str | Any, kind: str, schema: pa.Schema, columns: list[str] | None = None) -> pa.Table:
    fs, path = _kind_dir(directory, kind)
    for _attempt in range(5):
        files = _list_parts(fs, path)
        tables, vanished = [], False
        for file in files:
            try:
                tables.append(pq.read_table(file, filesystem=fs, schema=schema, columns=columns))
            except FileNotFoundError:
                vanished = True  # compacted away since the listing: list again
                break
            except (pa.ArrowInvalid, OSError) as exc:
                log.warning("event log %s/%s: skipping unreadable part %s (%s)", directory, kind, file, exc)
        if not vanished:
            target = schema if columns is None else pa.schema([schema.field(c) for c in columns])
            return pa.concat_tables(tables) if tables else target.empty_table()
    raise DataError(f"event log {directory}/{kind}: part files kept changing while being read")


def read_impressions(directory: str) -> pa.Table:
    """All impression rows under ``directory`` in write order (:data:`IMPRESSIONS_SCHEMA`; empty if none)."""
    return _read(directory, IMPRESSIONS_DIR, IMPRESSIONS_SCHEMA)


def read_feedback(directory: str) -> pa.Table:
    """All feedback rows under ``directory`` in write order (:data:`FEEDBACK_SCHEMA`; empty if none)."""
    return _read(directory, FEEDBACK_DIR, FEEDBACK_SCHEMA)


def read_requests(directory: str) -> pa.Table:
    """All request rows under ``directory`` in write order (:data:`REQUESTS_SCHEMA`; empty if none)."""
    return _read(directory, REQUESTS_DIR, REQUESTS_SCHEMA)


USER_TIME_ORDER = [("user_id", "ascending"), ("ts", "ascending"), ("budget", "descending")]
"""The requests table sorted per user in time order: ``ts``, then decreasing ``budget`` (the session's later
requests of one instant: the A/B runner logs a step's requests with one ``ts``)."""

SCHEMAS = {REQUESTS_DIR: REQUESTS_SCHEMA, IMPRESSIONS_DIR: IMPRESSIONS_SCHEMA, FEEDBACK_DIR: FEEDBACK_SCHEMA}


def quarantine_corrupt_parts(directory: str) -> list[str]:
    """Move every part file whose Parquet footer cannot be read to ``DIR/quarantine/<kind>/``; returns
    their new paths. Readers skip such files anyway; this keeps them for inspection and out of the way."""
    moved = []
    for kind in SCHEMAS:
        fs, path = _kind_dir(directory, kind)
        for file in _list_parts(fs, path):
            try:
                pq.read_metadata(file, filesystem=fs)
            except FileNotFoundError:
                continue
            except (pa.ArrowInvalid, OSError):
                target_dir = storage.resolve(storage.join(str(directory), QUARANTINE_DIR, kind))[1]
                fs.create_dir(target_dir, recursive=True)
                target = f"{target_dir}/{os.path.basename(file)}"
                fs.move(file, target)
                log.warning("event log %s: quarantined unreadable part %s", directory, target)
                moved.append(target)
    return moved


def compact(directory: str, *, min_parts: int = 16, small_bytes: int = 8 << 20) -> dict[str, int]:
    """Merge each kind's small part files (under ``small_bytes``) into one part, when there are at least
    ``min_parts`` of them; returns kind → number of parts merged. Rows and their order are kept.

    Crash-safe and safe for concurrent readers and writers: writers only add new parts (never touched
    here); the merged part is written durably next to a ``.compact-*.json`` intent naming it and its
    sources before the sources are deleted, readers that list the merged part skip the sources, and
    :func:`recover` finishes an interrupted compaction (or drops its intent if the merged part never
    appeared). Unreadable parts are quarantined, not merged.
    """
    merged = {}
    for kind, schema in SCHEMAS.items():
        fs, path = _kind_dir(directory, kind)
        files = _list_parts(fs, path)
        sizes = {info.path: info.size for info in fs.get_file_info(files)} if files else {}
        small = [f for f in files if sizes.get(f, 0) < small_bytes]
        if len(small) < min_parts:
            continue
        tables, sources = [], []
        for file in small:
            try:
                tables.append(pq.read_table(file, filesystem=fs, schema=schema))
                sources.append(file)
            except FileNotFoundError:
                continue
            except (pa.ArrowInvalid, OSError):
                continue  # quarantine_corrupt_parts moves it
        if len(sources) < 2:
            continue
        first = os.path.basename(sources[0])[len(PART_PREFIX) :].split("-")[0]
        name = (
            f"{PART_PREFIX}{first}-c{uuid.uuid4().hex[:11]}{PART_SUFFIX}"  # sorts where its first source did
        )
        intent_path = f"{path}/{INTENT_PREFIX}{uuid.uuid4().hex}.json"
        intent = {"merged": name, "sources": [os.path.basename(f) for f in sources]}
        local = isinstance(fs, pafs.LocalFileSystem)
        if local:  # the merged part in place (hidden), then the intent, then it appears
            tmp = f"{path}/.{name}.tmp"
            with open(tmp, "wb") as handle:
                pq.write_table(pa.concat_tables(tables), handle)
                handle.flush()
                os.fsync(handle.fileno())
            _write_small_file(fs, intent_path, json.dumps(intent).encode())
            os.replace(tmp, f"{path}/{name}")
            _fsync_dir(path)
        else:
            _write_small_file(fs, intent_path, json.dumps(intent).encode())
            write_part(fs, path, pa.concat_tables(tables), name)
        _finish_compaction(fs, path, intent_path, intent)
        merged[kind] = len(sources)
    return merged


def _write_small_file(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(path))
    else:
        with fs.open_output_stream(path) as stream:
            stream.write(data)


def _finish_compaction(fs: pafs.FileSystem, path: str, intent_path: str, intent: dict) -> None:
    for source in intent["sources"]:
        with contextlib.suppress(FileNotFoundError):
            fs.delete_file(f"{path}/{source}")
    if isinstance(fs, pafs.LocalFileSystem):
        _fsync_dir(path)
    fs.delete_file(intent_path)


def recover(directory: str) -> dict[str, int]:
    """Finish what a crash interrupted: compactions (delete the sources of a merged part that exists,
    else the intent) and temporary parts older than :data:`STALE_TMP_S`; returns counts of each."""
    done = {"compactions": 0, "temporary": 0}
    for kind in SCHEMAS:
        fs, path = _kind_dir(directory, kind)
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            continue
        infos = fs.get_file_info(pafs.FileSelector(path))
        names = {info.base_name for info in infos}
        for info in infos:
            if info.base_name.startswith(INTENT_PREFIX) and info.base_name.endswith(".json"):
                intent = _read_intent(fs, info.path)
                if intent is not None and intent["merged"] in names:
                    _finish_compaction(fs, path, info.path, intent)
                else:
                    fs.delete_file(info.path)
                done["compactions"] += 1
            elif info.base_name.startswith(".") and info.base_name.endswith(".tmp"):
                age = time.time() - info.mtime.timestamp() if info.mtime else 0.0
                if age > STALE_TMP_S:
                    fs.delete_file(info.path)
                    done["temporary"] += 1
    return done


def recent_slates(directory: str, limit: int) -> tuple[dict[str, dict[str, Any]], set[tuple[str, str, str]]]:
    """What a restarted server must remember of the last ``limit`` requests it answered, from the log.

    Returns:
        request id → {"items": set of shown item ids, "arm", "key_id", "index_version", "policy_version"},
        oldest first; and the (request id, item id, event) of the feedback already logged on them.
    """
    fs, path = _kind_dir(directory, IMPRESSIONS_DIR)
    columns = ["request_id", "item_id", "arm", "key_id", "index_version", "policy_version"]
    slates: dict[str, dict[str, Any]] = {}
    for file in reversed(_list_parts(fs, path)):
        try:
            table = pq.read_table(file, filesystem=fs, schema=IMPRESSIONS_SCHEMA, columns=columns)
        except (pa.ArrowInvalid, OSError):
            continue
        rows = table.to_pydict()
        newer: dict[str, dict[str, Any]] = {}
        for i, request_id in enumerate(rows["request_id"]):
            slate = newer.get(request_id)
            if slate is None:
                if request_id in slates:
                    continue
                slate = newer[request_id] = {
                    "items": set(),
                    **{c: rows[c][i] for c in ("arm", "key_id", "index_version", "policy_version")},
                }
            slate["items"].add(rows["item_id"][i])
        slates = {**newer, **slates}  # this (older) part's requests go first
        if len(slates) >= limit:
            break
    slates = dict(list(slates.items())[-limit:])
    feedback = _read(directory, FEEDBACK_DIR, FEEDBACK_SCHEMA, columns=["request_id", "item_id", "event"])
    seen = {
        (r, i, e)
        for r, i, e in zip(
            *(feedback.column(c).to_pylist() for c in ("request_id", "item_id", "event")), strict=True
        )
        if r in slates
    }
    return slates, seen
