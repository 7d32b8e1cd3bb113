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
can share a directory and readers never see a half-written file: a part is written under a hidden
temporary name and renamed into place once complete.

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
:meth:`EventLog.flush` / :meth:`EventLog.close` write everything queued before they return. A failed
write keeps its rows queued and raises from the next ``log_*``/``flush``/``close`` call, so nothing that
was acknowledged is silently dropped.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayrec import storage
from rayrec.errors import DataError, RayrecError

REQUESTS_DIR = "requests"
IMPRESSIONS_DIR = "impressions"
FEEDBACK_DIR = "feedback"

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
    ]
)
"""One row per answered request: ``candidate_ids`` [K] in retrieval order, ``features`` [K * F]
row-major in :data:`rayrec.features.FEATURE_NAMES` order, ``profile`` [d], ``budget`` the observation's
budget (1.0 where unknown, as in serving), ``fallback`` True when no arm's policy chose the slate (the
server's cold-start list; ``policy`` then names the fallback). Candidate embeddings are not logged: they
are the index's, looked up by ``candidate_ids``."""

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
    ]
)
"""One row per shown item: ``ts`` unix seconds, ``user_id`` pseudonymized, ``position`` 0-based,
``propensity`` the probability that ``policy`` shows this item at this position (1.0 if deterministic)."""

FEEDBACK_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("event", pa.string(), nullable=False),
        pa.field("value", pa.float32(), nullable=False),
        pa.field("ts", pa.float64(), nullable=False),
    ]
)
"""One row per reaction to an impression (``event`` e.g. ``click``, ``skip``); ``value`` defaults to 1.0
and ``ts`` (unix seconds) to the time of logging when a row leaves them out."""

FEEDBACK_EVENTS = ("click", "skip", "view", "purchase", "rating", "dismiss")
"""Feedback events the HTTP API accepts (the log itself takes any non-empty string)."""

Rows = Iterable[Mapping[str, Any]] | pa.Table


def requests_table(
    request_ids: list[str],
    ts: np.ndarray,
    user_ids: list[str],
    arm: list[str],
    policy: list[str],
    candidate_ids: np.ndarray,
    obs: Mapping[str, np.ndarray],
) -> pa.Table:
    """A :data:`REQUESTS_SCHEMA` table for B requests that a policy ranked (``fallback`` False), built in
    array operations (the A/B runner logs thousands of requests per step).

    Args:
        request_ids, user_ids, arm, policy: [B] str each.
        ts: [B] float64 unix seconds.
        candidate_ids: [B, K] str item ids of the candidates.
        obs: the batched observation the requests were ranked on (:mod:`rayrec.features`).
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
        if values is None or (not isinstance(values, pa.ChunkedArray) and all(v is None for v in values)):
            if field.name not in defaults:
                raise DataError(f"event rows: column {field.name!r} is missing")
            values = [defaults[field.name]] * n
        elif field.name in defaults and not isinstance(values, pa.ChunkedArray):
            values = [defaults[field.name] if v is None else v for v in values]
        try:
            array = pa.array(values, type=field.type) if isinstance(values, list) else values.cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise DataError(f"event rows: column {field.name!r}: {exc}") from None
        if array.null_count:
            first = array.is_null().to_pylist().index(True)
            raise DataError(
                f"event rows: column {field.name!r} is missing or null in {array.null_count} row(s), "
                f"first at row {first}"
            )
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=schema)


class _PartWriter:
    """Buffers the tables of one kind of event and writes them as Parquet part files under one directory."""

    def __init__(self, directory: str) -> None:
        self.fs, self.path = storage.resolve(directory)
        self.fs.create_dir(self.path, recursive=True)
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.oldest: float | None = None

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self.pending.append(table)
            self.pending_rows += table.num_rows
            self.oldest = self.oldest or time.monotonic()

    def take(self) -> list[pa.Table]:
        tables, self.pending, self.pending_rows, self.oldest = self.pending, [], 0, None
        return tables

    def restore(self, tables: list[pa.Table]) -> None:
        """Put back tables whose write failed, ahead of anything queued since."""
        self.pending[:0] = tables
        self.pending_rows += sum(t.num_rows for t in tables)
        self.oldest = time.monotonic()

    def write(self, tables: list[pa.Table]) -> None:
        table = pa.concat_tables(tables)
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.parquet"
        final = f"{self.path}/{name}"
        if isinstance(self.fs, pafs.LocalFileSystem):
            # Write-then-rename: readers never list a half-written part, and a crash leaves no torn file.
            tmp = f"{self.path}/.{name}.tmp"
            pq.write_table(table, tmp, filesystem=self.fs)
            self.fs.move(tmp, final)
        else:
            pq.write_table(table, final, filesystem=self.fs)  # object stores publish a part atomically


class EventLog:
    """Appends impression and feedback rows to Parquet part files under ``directory`` in batches.

    Args:
        directory: events directory (local path or URI); created if missing.
        max_rows: write a part once this many rows of one kind are queued.
        max_delay_s: write a part once its oldest queued row has waited this long.

    Thread-safe. ``log_*`` acknowledge by returning: from then on the rows are queued for a write that
    :meth:`flush`, :meth:`close` or the background thread performs.
    """

    def __init__(self, directory: str, *, max_rows: int = 2048, max_delay_s: float = 1.0) -> None:
        if max_rows < 1 or not max_delay_s > 0:
            raise ValueError(
                f"EventLog: max_rows ({max_rows}) and max_delay_s ({max_delay_s}) must be positive"
            )
        self.directory = str(directory)
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self._parts = {
            REQUESTS_DIR: _PartWriter(storage.join(self.directory, REQUESTS_DIR)),
            IMPRESSIONS_DIR: _PartWriter(storage.join(self.directory, IMPRESSIONS_DIR)),
            FEEDBACK_DIR: _PartWriter(storage.join(self.directory, FEEDBACK_DIR)),
        }
        self._lock = threading.Lock()  # guards the buffers
        self._write_lock = threading.Lock()  # one writer at a time keeps part order = log order
        self._wake = threading.Event()
        self._error: BaseException | None = None
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

    def flush(self) -> None:
        """Write every queued row; raises if a write fails (the rows stay queued)."""
        with self._write_lock:
            with self._lock:  # one snapshot of every kind: a request and its impressions leave together
                taken = [(part, part.take()) for part in self._parts.values()]
            for i, (part, tables) in enumerate(taken):
                if not tables:
                    continue
                try:
                    part.write(tables)
                except Exception as exc:
                    with self._lock:
                        for unwritten, rest in taken[i:]:
                            if rest:
                                unwritten.restore(rest)
                        self._error = exc
                    raise RayrecError(f"event log {self.directory}: write failed: {exc}") from exc
            self._error = None

    def close(self) -> None:
        """Stop the background writer and write everything queued. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._thread.join()
        self.flush()

    def pending_rows(self) -> int:
        """Rows acknowledged but not yet written."""
        with self._lock:
            return sum(part.pending_rows for part in self._parts.values())

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _add(self, tables: Mapping[str, pa.Table]) -> None:
        if self._closed:
            raise RayrecError(f"event log {self.directory} is closed")
        with self._lock:
            if self._error is not None:
                raise RayrecError(f"event log {self.directory}: earlier write failed: {self._error}")
            for kind, table in tables.items():
                self._parts[kind].add(table)
            full = any(self._parts[kind].pending_rows >= self.max_rows for kind in tables)
        if full:
            self._wake.set()

    def _due(self) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(
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
            except RayrecError:
                time.sleep(self.max_delay_s)  # the error is kept and surfaced to the callers; retry later


def _read(directory: str | Any, kind: str, schema: pa.Schema) -> pa.Table:
    fs, path = storage.resolve(storage.join(str(directory), kind))
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return schema.empty_table()
    infos = fs.get_file_info(pafs.FileSelector(path))
    files = sorted(
        info.path
        for info in infos
        if info.type == pafs.FileType.File
        and info.base_name.startswith("part-")
        and info.base_name.endswith(".parquet")
    )
    if not files:
        return schema.empty_table()
    try:
        tables = [pq.read_table(file, filesystem=fs, schema=schema) for file in files]
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"event log {directory}/{kind}: unreadable part file: {exc}") from None
    return pa.concat_tables(tables)


def read_impressions(directory: str) -> pa.Table:
    """All impression rows under ``directory`` in write order (:data:`IMPRESSIONS_SCHEMA`; empty if none)."""
    return _read(directory, IMPRESSIONS_DIR, IMPRESSIONS_SCHEMA)


def read_feedback(directory: str) -> pa.Table:
    """All feedback rows under ``directory`` in write order (:data:`FEEDBACK_SCHEMA`; empty if none)."""
    return _read(directory, FEEDBACK_DIR, FEEDBACK_SCHEMA)


def read_requests(directory: str) -> pa.Table:
    """All request rows under ``directory`` in write order (:data:`REQUESTS_SCHEMA`; empty if none)."""
    return _read(directory, REQUESTS_DIR, REQUESTS_SCHEMA)
