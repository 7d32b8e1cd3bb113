"""Validated Parquet I/O for items and interactions, on local paths and URIs.

Every read and write goes through :mod:`rayrec.data.validate`, so a table that leaves or enters this
module follows the data contract (extra columns ride along). A path may name the Parquet file itself
or the dataset directory holding ``items.parquet`` / ``interactions.parquet``; a directory of Parquet
parts (as chunked writers leave them) reads as one table.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Collection

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayrec import storage
from rayrec.data.schema import INTERACTIONS_FILE, ITEMS_FILE
from rayrec.data.validate import Source, validate_interactions, validate_items
from rayrec.errors import DataError

ROW_GROUP_SIZE = 256 * 1024
"""Rows per Parquet row group: readers stream in pieces this big."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A validated dataset: every interaction points at a known item."""

    items: pa.Table
    """[N items] ``ITEMS_SCHEMA`` columns first, then any extras."""
    interactions: pa.Table
    """[M interactions] ``INTERACTIONS_SCHEMA`` columns first, then any extras."""
    path: str
    """The directory (path or URI) it was loaded from."""


def dataset_file(uri: str, name: str) -> str:
    """``uri`` itself when it names a file (or a directory of parts), else ``uri/name``."""
    candidate = storage.join(uri, name)
    return candidate if storage.exists(candidate) else uri


def read_parquet(uri: str) -> pa.Table:
    fs, path = storage.resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{uri}: no such file")
    if info.type == pafs.FileType.File and info.size == 0:
        raise DataError(f"{uri}: the file is empty (0 bytes)")
    try:
        return pq.read_table(path, filesystem=fs)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{uri}: not a readable Parquet file ({exc})") from None


def _write_parquet(table: pa.Table, uri: str) -> str:
    """Write to a temporary name, then move into place: a failed write leaves no half file behind."""
    fs, path = storage.resolve(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    temporary = f"{parent}/.{path.rsplit('/', 1)[-1]}.{uuid.uuid4().hex}.tmp"
    try:
        pq.write_table(table, temporary, filesystem=fs, row_group_size=ROW_GROUP_SIZE, compression="zstd")
        fs.move(temporary, path)
    finally:
        if fs.get_file_info(temporary).type != pafs.FileType.NotFound:
            fs.delete_file(temporary)
    return uri


def read_items(uri: str) -> pa.Table:
    """The items of ``uri`` (``items.parquet`` or a dataset directory), validated."""
    path = dataset_file(str(uri), ITEMS_FILE)
    return validate_items(read_parquet(path), Source(path))


def read_interactions(
    uri: str, item_ids: Collection[str] | pa.Array | pa.ChunkedArray | None = None
) -> pa.Table:
    """The interactions of ``uri``, validated; with ``item_ids``, an unknown item is a :class:`DataError`."""
    path = dataset_file(str(uri), INTERACTIONS_FILE)
    return validate_interactions(read_parquet(path), Source(path), item_ids)


def _target(uri: str, name: str) -> str:
    """A ``.parquet`` path is the file; anything else is the directory that gets ``name``."""
    uri = str(uri)
    return uri if uri.endswith(".parquet") else storage.join(uri, name)


def write_items(table: pa.Table, uri: str) -> str:
    """Validate and write items to ``uri`` (a ``.parquet`` file or a directory); returns the file's URI."""
    path = _target(uri, ITEMS_FILE)
    return _write_parquet(validate_items(table, Source(f"items written to {path}")), path)


def write_interactions(table: pa.Table, uri: str) -> str:
    """Validate and write interactions to ``uri`` (a ``.parquet`` file or a directory); returns the file's URI."""
    path = _target(uri, INTERACTIONS_FILE)
    return _write_parquet(validate_interactions(table, Source(f"interactions written to {path}")), path)


def load_dataset(data_dir: str) -> Dataset:
    """Items and interactions of ``data_dir``, validated, with every interaction's item checked."""
    data_dir = str(data_dir)
    if not storage.exists(data_dir):
        raise DataError(f"{data_dir}: no such dataset directory")
    items_path = storage.join(data_dir, ITEMS_FILE)
    interactions_path = storage.join(data_dir, INTERACTIONS_FILE)
    items = validate_items(read_parquet(items_path), Source(items_path))
    interactions = validate_interactions(
        read_parquet(interactions_path), Source(interactions_path), items.column("item_id"), items_path
    )
    return Dataset(items=items, interactions=interactions, path=data_dir)
