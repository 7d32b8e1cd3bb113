"""An item index directory: embeddings Parquet + FAISS index + ``index.json``, written and loaded with checks.

Layout: ``item_embeddings.parquet`` (``item_id`` string, ``embedding`` fixed-size list<float32>,
``popularity`` int64 interaction count, ``category`` string when the data's ``items.parquet`` has
one, ``rating`` float32 (:func:`rayrec.features.rating_feature`, the observable ``item_rating``) when
the data's interactions have rating events, and ``item_ctr``, ``item_watch``, ``item_lift`` float32
(:mod:`rayrec.item_stats`) when it was built with an event log (``--item-log``); an index without them loads
them as None), ``items.faiss`` (FAISS ids are the Parquet's row numbers) and ``index.json`` (encoder, dim,
metric, type and parameters, item count, what the item log held, sha256 of both files).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rayrec import storage
from rayrec.errors import ArtifactError, RayrecError
from rayrec.features import ITEM_STATISTICS
from rayrec.index.exact import exact_search
from rayrec.index.faiss_index import IndexSpec, apply_search_params

EMBEDDINGS_FILE = "item_embeddings.parquet"
FAISS_FILE = "items.faiss"
META_FILE = "index.json"
METRIC = "inner_product"
FORMAT_VERSION = 1


CATEGORY_COLUMN = "category"
RATING_COLUMN = "rating"


def item_categories(items: pa.Table, item_ids: np.ndarray | list[str]) -> np.ndarray | None:
    """[N] category of each of ``item_ids`` from an ``items.parquet`` table (``""`` for an item it lacks or
    leaves null); None when the table has no ``category`` column."""
    if CATEGORY_COLUMN not in items.column_names:
        return None
    by_id = dict(
        zip(items.column("item_id").to_pylist(), items.column(CATEGORY_COLUMN).to_pylist(), strict=True)
    )
    return np.asarray([by_id.get(str(item)) or "" for item in item_ids], dtype=object)


def embeddings_table(
    item_ids: list[str] | np.ndarray,
    embeddings: np.ndarray,
    popularity: np.ndarray,
    categories: np.ndarray | list[str] | None = None,
    rating: np.ndarray | None = None,
    item_log: np.ndarray | None = None,
) -> pa.Table:
    """The ``item_embeddings.parquet`` table for ``embeddings`` [N, d] float32, ``popularity`` [N] counts,
    optional ``categories`` [N] str, optional ``rating`` [N] float32 and optional ``item_log`` [N, 3] float32
    (:data:`rayrec.features.ITEM_STATISTICS`; no such columns when None)."""
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    columns = {
        "item_id": pa.array(list(map(str, item_ids)), type=pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
        "popularity": pa.array(np.asarray(popularity, dtype=np.int64)),
    }
    if categories is not None:
        if len(categories) != len(vectors):
            raise ArtifactError(f"index: {len(categories)} categories for {len(vectors)} items")
        columns[CATEGORY_COLUMN] = pa.array(["" if c is None else str(c) for c in categories], pa.string())
    if rating is not None:
        rating = np.asarray(rating, dtype=np.float32)
        if rating.shape != (len(vectors),) or not np.isfinite(rating).all():
            raise ArtifactError(f"index: ratings of shape {rating.shape} (finite) expected ({len(vectors)},)")
        columns[RATING_COLUMN] = pa.array(rating, pa.float32())
    if item_log is not None:
        item_log = np.asarray(item_log, dtype=np.float32)
        if item_log.shape != (len(vectors), len(ITEM_STATISTICS)) or not np.isfinite(item_log).all():
            raise ArtifactError(
                f"index: item log statistics of shape {item_log.shape} (finite) expected "
                f"({len(vectors)}, {len(ITEM_STATISTICS)})"
            )
        for name, values in zip(ITEM_STATISTICS, item_log.T, strict=True):
            columns[name] = pa.array(values, pa.float32())
    return pa.table(columns)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def write_index(
    out_dir: str,
    item_ids: list[str] | np.ndarray,
    embeddings: np.ndarray,
    popularity: np.ndarray,
    faiss_index,
    spec: IndexSpec,
    encoder: str,
    categories: np.ndarray | list[str] | None = None,
    rating: np.ndarray | None = None,
    item_log: np.ndarray | None = None,
    item_log_summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the three files of an index directory (local path or URI); returns the ``index.json`` content.

    ``categories`` [N], ``rating`` [N] and ``item_log`` [N, 3] (optional) become the embeddings file's
    ``category``, ``rating`` and :data:`rayrec.features.ITEM_STATISTICS` columns, covered by its sha256;
    ``item_log_summary`` (what the log held) goes in ``index.json`` as ``item_log``.
    """
    import faiss  # heavy (FAISS): rayrec.index loads at `rayrec --help` time

    parquet = _parquet_bytes(embeddings_table(item_ids, embeddings, popularity, categories, rating, item_log))
    index_bytes = faiss.serialize_index(faiss_index).tobytes()
    meta = {
        "format_version": FORMAT_VERSION,
        "encoder": encoder,
        "dim": int(embeddings.shape[1]),
        "metric": METRIC,
        "index_type": spec.type,
        "params": spec.params(),
        "items": len(item_ids),
        "rating": rating is not None,
        "item_log": None if item_log is None else dict(item_log_summary or {}),
        "files": {
            EMBEDDINGS_FILE: hashlib.sha256(parquet).hexdigest(),
            FAISS_FILE: hashlib.sha256(index_bytes).hexdigest(),
        },
    }
    storage.makedirs(out_dir)
    storage.write_bytes(storage.join(out_dir, EMBEDDINGS_FILE), parquet)
    storage.write_bytes(storage.join(out_dir, FAISS_FILE), index_bytes)
    storage.write_text(storage.join(out_dir, META_FILE), json.dumps(meta, indent=2) + "\n")
    return meta


@dataclass(frozen=True)
class IndexItems:
    """The items of an index directory (its embeddings file), without the FAISS index."""

    item_ids: np.ndarray
    """[N] str item ids; row i is FAISS id i."""
    embeddings: np.ndarray
    """[N, d] float32 L2-normalised item embeddings."""
    popularity: np.ndarray
    """[N] int64 interaction counts from the data the index was built with (zeros when not stored)."""
    categories: np.ndarray | None
    """[N] str category of each item (``""`` unknown); None for an index built without categories."""
    rating: np.ndarray | None
    """[N] float32 each item's ``item_rating`` (:func:`rayrec.features.rating_feature`); None for an index
    built from data without rating events."""
    item_log: np.ndarray | None
    """[N, 3] float32 each item's ``item_ctr``, ``item_watch``, ``item_lift`` (:mod:`rayrec.item_stats`);
    None for an index built without an event log."""
    meta: dict[str, Any]
    """The content of ``index.json``."""


def load_index_items(uri: str, verify: bool = True) -> IndexItems:
    """The items of the index directory ``uri`` (``index.json`` and the embeddings file only: what needs
    the catalog but not the search, e.g. a serving ranker's category lookup, skips the FAISS file).

    ``verify`` checks the embeddings file against its sha256 in ``index.json``.
    """
    meta = _read_meta(uri)
    blob = _read_file(uri, meta, EMBEDDINGS_FILE, verify)
    table = pq.read_table(io.BytesIO(blob))
    column = table.column("embedding").combine_chunks()
    if not pa.types.is_fixed_size_list(column.type):
        raise ArtifactError(
            f"index {uri}: {EMBEDDINGS_FILE} column 'embedding' is {column.type}, not a fixed-size list"
        )
    dim = column.type.list_size
    embeddings = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    if dim != meta["dim"]:
        raise ArtifactError(
            f"index {uri}: {EMBEDDINGS_FILE} has dimension {dim} but {META_FILE} says {meta['dim']}"
        )
    if len(embeddings) != meta["items"]:
        raise ArtifactError(
            f"index {uri}: {EMBEDDINGS_FILE} holds {len(embeddings)} items but {META_FILE} says {meta['items']}"
        )
    popularity = (
        table.column("popularity").to_numpy().astype(np.int64)
        if "popularity" in table.column_names
        else np.zeros(len(embeddings), dtype=np.int64)
    )
    categories = None
    if CATEGORY_COLUMN in table.column_names:
        categories = np.array([c or "" for c in table.column(CATEGORY_COLUMN).to_pylist()], dtype=object)
    rating = None
    if RATING_COLUMN in table.column_names:
        rating = table.column(RATING_COLUMN).to_numpy().astype(np.float32)
    if (rating is not None) != index_has_ratings(meta):
        raise ArtifactError(
            f"index {uri}: {META_FILE} says rating={index_has_ratings(meta)} but {EMBEDDINGS_FILE} "
            f"{'has' if rating is not None else 'lacks'} a {RATING_COLUMN!r} column: rebuild the index"
        )
    item_log = None
    present = [name for name in ITEM_STATISTICS if name in table.column_names]
    if present:
        item_log = np.column_stack([table.column(name).to_numpy() for name in present]).astype(np.float32)
    if len(present) != (len(ITEM_STATISTICS) if index_has_item_log(meta) else 0):
        raise ArtifactError(
            f"index {uri}: {META_FILE} says item_log={meta.get('item_log')} but {EMBEDDINGS_FILE} has "
            f"columns {present} of {list(ITEM_STATISTICS)}: rebuild the index"
        )
    return IndexItems(
        item_ids=np.array(table.column("item_id").to_pylist(), dtype=object),
        embeddings=embeddings,
        popularity=popularity,
        categories=categories,
        rating=rating,
        item_log=item_log,
        meta=meta,
    )


def index_has_ratings(meta: dict[str, Any]) -> bool:
    """Whether the index with ``index.json`` content ``meta`` stores each item's ``item_rating`` (an index
    written before ratings were stored has no such key, and no ratings)."""
    return bool(meta.get("rating", False))


def index_has_item_log(meta: dict[str, Any]) -> bool:
    """Whether the index with ``index.json`` content ``meta`` stores each item's
    :data:`rayrec.features.ITEM_STATISTICS` (built with ``--item-log``; an index written before they were
    stored has no such key)."""
    return meta.get("item_log") is not None


def _read_meta(uri: str) -> dict[str, Any]:
    try:
        meta = json.loads(storage.read_text(storage.join(uri, META_FILE)))
    except RayrecError as exc:
        raise ArtifactError(f"index {uri}: {exc} (not an index directory?)") from None
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"index {uri}: {META_FILE} is not valid JSON ({exc})") from None
    missing = [key for key in ("encoder", "dim", "index_type", "params", "items", "files") if key not in meta]
    if missing:
        raise ArtifactError(f"index {uri}: {META_FILE} lacks {', '.join(missing)}")
    return meta


def _read_file(uri: str, meta: dict[str, Any], name: str, verify: bool) -> bytes:
    """The bytes of file ``name`` of the index; ``verify``: checked against its sha256 in ``index.json``."""
    try:
        blob = storage.read_bytes(storage.join(uri, name))
    except RayrecError as exc:
        raise ArtifactError(f"index {uri}: {exc}") from None
    if verify:
        expected = meta["files"].get(name)
        actual = hashlib.sha256(blob).hexdigest()
        if actual != expected:
            raise ArtifactError(
                f"index {uri}: {name} does not match {META_FILE} (sha256 {actual[:12]}…, expected "
                f"{str(expected)[:12]}…): the file was changed or belongs to another index; rebuild it"
            )
    return blob


@dataclass
class ItemIndex:
    """A loaded item index: ids, embeddings, popularity, optional categories and ratings, and the FAISS index
    over them."""

    item_ids: np.ndarray
    """[N] str item ids; row i is FAISS id i."""
    embeddings: np.ndarray
    """[N, d] float32 L2-normalised item embeddings."""
    popularity: np.ndarray
    """[N] int64 interaction counts from the data the index was built with."""
    meta: dict[str, Any]
    """The content of ``index.json``."""
    faiss_index: Any = field(repr=False)
    """The FAISS index (ids = rows)."""
    categories: np.ndarray | None = field(default=None, repr=False)
    """[N] str category of each item (``""`` unknown); None for an index built without categories."""
    rating: np.ndarray | None = field(default=None, repr=False)
    """[N] float32 each item's ``item_rating`` (:func:`rayrec.features.rating_feature`); None for an index
    built from data without rating events."""
    item_log: np.ndarray | None = field(default=None, repr=False)
    """[N, 3] float32 each item's ``item_ctr``, ``item_watch``, ``item_lift``; None for an index built
    without an event log."""
    _positions: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._positions = {item: row for row, item in enumerate(self.item_ids.tolist())}

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def encoder(self) -> str:
        """The encoder (hub name or model directory) that made the embeddings: queries must use it too."""
        return str(self.meta["encoder"])

    @property
    def index_type(self) -> str:
        return str(self.meta["index_type"])

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    def load(cls, uri: str, verify: bool = True) -> ItemIndex:
        """Load an index directory; ``verify`` checks both files against the sha256 in ``index.json``."""
        import faiss  # heavy (FAISS): rayrec.index loads at `rayrec --help` time

        items = load_index_items(uri, verify)
        blob = _read_file(uri, items.meta, FAISS_FILE, verify)
        faiss_index = faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))
        if faiss_index.d != items.meta["dim"]:
            raise ArtifactError(
                f"index {uri}: {FAISS_FILE} has dimension {faiss_index.d} but {META_FILE} says {items.meta['dim']}"
            )
        if faiss_index.ntotal != items.meta["items"]:
            raise ArtifactError(
                f"index {uri}: {FAISS_FILE} holds {faiss_index.ntotal} items but {META_FILE} says "
                f"{items.meta['items']}"
            )
        spec = IndexSpec(type=items.meta["index_type"], **items.meta["params"])
        apply_search_params(faiss_index, spec)
        return cls(
            item_ids=items.item_ids,
            embeddings=items.embeddings,
            popularity=items.popularity,
            meta=items.meta,
            faiss_index=faiss_index,
            categories=items.categories,
            rating=items.rating,
            item_log=items.item_log,
        )

    def check_queries(self, queries: np.ndarray) -> np.ndarray:
        """``queries`` as contiguous float32 [B, d], or an error naming both dimensions."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ArtifactError(
                f"query vectors have shape {queries.shape[1:]} but the index holds {self.dim}-d embeddings "
                f"from encoder {self.encoder!r}"
            )
        return queries

    def search(
        self, queries: np.ndarray, k: int, exclude: list[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items by inner product for each of ``queries`` [B, d].

        ``exclude`` gives item rows to leave out per query (seen items); it is applied exactly: the index is
        asked for ``k`` + the longest exclusion list, and a query still short of ``k`` eligible items (an
        approximate index can return fewer) is answered by exact masked search. Returns ``(scores [B, k]
        float32, indices [B, k] int64)``, best first, ``-1`` / ``-inf`` where fewer than ``k`` items remain.
        """
        queries = self.check_queries(queries)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        n, batch = len(self), len(queries)
        extra = max((len(e) for e in exclude), default=0) if exclude is not None else 0
        if exclude is not None and len(exclude) != batch:
            raise ValueError(f"exclude has {len(exclude)} entries for {batch} queries")
        fetch = min(k + extra, n)
        raw_scores, raw_ids = self.faiss_index.search(queries, fetch)  # [B, fetch]
        if exclude is None:
            scores = np.full((batch, k), -np.inf, dtype=np.float32)
            ids = np.full((batch, k), -1, dtype=np.int64)
            scores[:, :fetch], ids[:, :fetch] = raw_scores, raw_ids
            ids[ids < 0] = -1
            scores[ids < 0] = -np.inf
            if self.index_type == "flat" or (ids >= 0).sum(axis=1).min(initial=k) >= min(k, n):
                return scores, ids
            exclude = [np.zeros(0, dtype=np.int64)] * batch
        scores = np.full((batch, k), -np.inf, dtype=np.float32)
        ids = np.full((batch, k), -1, dtype=np.int64)
        short = []
        for row in range(batch):
            banned = np.unique(np.asarray(exclude[row], dtype=np.int64))
            keep = (raw_ids[row] >= 0) & ~np.isin(raw_ids[row], banned)
            found = raw_ids[row][keep][:k]
            eligible = n - int(((banned >= 0) & (banned < n)).sum())
            if len(found) < min(k, eligible):
                short.append(row)
                continue
            ids[row, : len(found)] = found
            scores[row, : len(found)] = raw_scores[row][keep][:k]
        if short:
            exact_scores, exact_ids = exact_search(
                queries[short], self.embeddings, k, [exclude[r] for r in short]
            )
            scores[short], ids[short] = exact_scores, exact_ids
        return scores, ids

    def lookup(self, item_ids) -> np.ndarray:
        """[n] int64 rows of ``item_ids`` in this index, ``-1`` for unknown ids."""
        return np.array([self._positions.get(str(item), -1) for item in item_ids], dtype=np.int64)
