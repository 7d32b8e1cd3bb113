"""The requests table: what a ranker saw for each logged request, so a different policy can be replayed.

Additive to the event log of :mod:`rayrec.events` (its impressions and feedback are unchanged)::

    DIR/requests/part-<time>-<uuid>.parquet   one row per request (REQUESTS_SCHEMA)

Off-policy evaluation needs the target policy's item-position propensities for the *logged* candidate
sets, so it needs the observation each request was ranked on. Candidate embeddings are not logged (they
are the index's, looked up by ``candidate_ids``); the per-request parts that are not in the index are.
"""

from __future__ import annotations

import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayrec import storage
from rayrec.errors import DataError
from rayrec.features import NUM_FEATURES

REQUESTS_DIR = "requests"

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
    ]
)
"""One row per request: ``candidate_ids`` [K] in retrieval order, ``features`` [K * F] row-major in
:data:`rayrec.features.FEATURE_NAMES` order, ``profile`` [d], ``budget`` the observation's budget."""


def requests_table(
    request_ids: list[str],
    ts: np.ndarray,
    user_ids: list[str],
    arm: list[str],
    policy: list[str],
    candidate_ids: np.ndarray,
    obs: dict[str, np.ndarray],
) -> pa.Table:
    """A :data:`REQUESTS_SCHEMA` table for B requests.

    Args:
        request_ids, user_ids, arm, policy: [B] str each.
        ts: [B] float64 unix seconds.
        candidate_ids: [B, K] str item ids of the candidates.
        obs: the batched observation the requests were ranked on (:mod:`rayrec.features`).
    """
    batch, k = candidate_ids.shape
    flat_ids = pa.array(np.asarray(candidate_ids, dtype=str).ravel().tolist(), pa.string())
    offsets = pa.array(np.arange(0, batch * k + 1, k, dtype=np.int32))

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
            pa.ListArray.from_arrays(offsets, flat_ids),
            rows(obs["features"]),
            rows(obs["profile"]),
            pa.array(np.asarray(obs["budget"], np.float32).reshape(batch)),
        ],
        schema=REQUESTS_SCHEMA,
    )


def write_requests(events_dir: str, table: pa.Table) -> str:
    """Add ``table`` as a new part under ``events_dir/requests`` (write-then-rename locally); returns it."""
    fs, path = storage.resolve(storage.join(events_dir, REQUESTS_DIR))
    fs.create_dir(path, recursive=True)
    name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.parquet"
    if isinstance(fs, pafs.LocalFileSystem):
        pq.write_table(table, f"{path}/.{name}.tmp", filesystem=fs)
        fs.move(f"{path}/.{name}.tmp", f"{path}/{name}")
    else:
        pq.write_table(table, f"{path}/{name}", filesystem=fs)
    return f"{path}/{name}"


def read_requests(events_dir: str) -> pa.Table:
    """Every request row under ``events_dir`` (DataError if there are none: OPE cannot run without them)."""
    fs, path = storage.resolve(storage.join(events_dir, REQUESTS_DIR))
    files = []
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        files = sorted(
            info.path
            for info in fs.get_file_info(pafs.FileSelector(path))
            if info.base_name.startswith("part-") and info.base_name.endswith(".parquet")
        )
    if not files:
        raise DataError(
            f"{events_dir}: no requests table ({REQUESTS_DIR}/part-*.parquet) with the logged candidates; "
            "off-policy evaluation needs the candidate set of each request (written by `rayrec ab`)"
        )
    try:
        return pa.concat_tables([pq.read_table(f, filesystem=fs, schema=REQUESTS_SCHEMA) for f in files])
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{events_dir}/{REQUESTS_DIR}: unreadable part file: {exc}") from None


def list_column(table: pa.Table, name: str, width: int | None = None) -> np.ndarray:
    """A list column of equal-length rows as a [n, width] array (DataError naming the column otherwise)."""
    column = table.column(name).combine_chunks()
    lengths = column.value_lengths().to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths.min() != lengths.max() or (width is not None and lengths[0] != width)):
        want = f"{width}" if width is not None else "equal"
        raise DataError(
            f"requests table: column {name!r} needs {want} lengths per row, found {lengths.min()}..{lengths.max()}"
        )
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(len(table), int(lengths[0]) if len(lengths) else 0)


def feature_tensor(table: pa.Table, num_candidates: int) -> np.ndarray:
    """[n, K, F] candidate features of every request."""
    return list_column(table, "features", num_candidates * NUM_FEATURES).reshape(
        len(table), num_candidates, NUM_FEATURES
    )
