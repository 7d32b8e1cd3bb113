"""Checking tables against the data contract, with errors that name the file, the column and the row.

Rows are numbered from 1 in messages. For text files (CSV, TSV) a :class:`Source` also knows each
row's line in the file, so the message points where an editor would. Values of ``user_id`` never
appear in a message: before import they are raw ids, which must not reach a log.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayrec.data.schema import EVENT_TYPES, INTERACTIONS_SCHEMA, ITEMS_SCHEMA
from rayrec.errors import DataError

ID_COLUMNS = ("item_id", "user_id")
"""Non-empty strings: an empty id is as bad as a missing one."""

PRIVATE_COLUMNS = ("user_id",)
"""Columns whose values are never shown in an error message."""

_INT_PATTERN = r"^\s*[+-]?\d{1,18}\s*$"  # 18 digits always fit int64, so the cast after the match cannot fail
_FLOAT_PATTERN = r"^\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*$"


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a table's rows come from, so that messages can point at a row.

    ``rows`` [n] gives each table row's 1-based data row in the file when rows were dropped on the way
    (malformed lines, blank lines); ``header_lines`` turns data rows into line numbers for text files.
    """

    name: str
    """The file (path or URI) as the user named it."""
    rows: np.ndarray | None = None
    """[n] int64 data row in the file of each table row; ``None``: table row i is data row i + 1."""
    header_lines: int | None = None
    """Lines before the first data row of a text file; ``None`` for binary formats (Parquet)."""

    def row(self, index: int) -> str:
        """``row N`` (with ``(line M)`` for text files) of table row ``index``."""
        row = int(self.rows[index]) if self.rows is not None else index + 1
        line = f" (line {row + self.header_lines})" if self.header_lines is not None else ""
        return f"row {row}{line}"

    def where(self, index: int, column: str) -> str:
        return f"{self.name}, {self.row(index)}, column {column!r}"


def first_index(mask: np.ndarray) -> int:
    """Index of the first true entry of a boolean mask, -1 when there is none."""
    return int(np.argmax(mask)) if mask.any() else -1


def show(value: object, column: str, private: bool = False) -> str:
    """A value for an error message; values of private columns are never shown."""
    return "(value hidden)" if private or column in PRIVATE_COLUMNS else repr(value)


def raise_first(mask: np.ndarray, source: Source, column: str, problem: Callable[[int], str]) -> None:
    """Raise :class:`DataError` naming the first row where ``mask`` [n] holds, with the total count."""
    index = first_index(mask)
    if index < 0:
        return
    count = int(mask.sum())
    more = f" ({count:,} rows in all)" if count > 1 else ""
    raise DataError(f"{source.where(index, column)}: {problem(index)}{more}")


def as_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def parse_numbers(text: pa.Array | pa.ChunkedArray, type_: pa.DataType) -> tuple[pa.Array, np.ndarray]:
    """Parse strings into ``type_`` (an integer or floating type) without failing on bad values.

    Returns ``(values [n], bad [n] bool)``: ``values`` is null where ``bad`` holds (empty, null, not a
    number, or not finite), so callers decide whether a bad row is an error or is skipped.
    """
    text = as_array(text)
    pattern = _INT_PATTERN if pa.types.is_integer(type_) else _FLOAT_PATTERN
    ok = pc.fill_null(pc.match_substring_regex(text, pattern), False)
    trimmed = pc.if_else(ok, pc.utf8_trim_whitespace(text), pa.scalar(None, text.type))
    values = pc.cast(pc.cast(trimmed, pa.float64() if pa.types.is_floating(type_) else type_), type_)
    if pa.types.is_floating(type_):
        ok = pc.and_(ok, pc.fill_null(pc.is_finite(values), False))
        values = pc.if_else(ok, values, pa.scalar(None, type_))
    return values, ~ok.to_numpy(zero_copy_only=False)


def _first_failing_cast(values: pa.Array, type_: pa.DataType) -> int:
    """Bisect for the first value that does not cast losslessly (O(log n) casts on the error path)."""
    lo, hi = 0, len(values)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            pc.cast(values.slice(lo, mid - lo), type_, safe=True)
            lo = mid
        except pa.ArrowInvalid:
            hi = mid
    return lo


def _is_text(type_: pa.DataType) -> bool:
    return pa.types.is_string(type_) or pa.types.is_large_string(type_)


def cast_column(
    values: pa.Array | pa.ChunkedArray,
    field: pa.Field,
    source: Source,
    column: str | None = None,
    *,
    private: bool = False,
) -> pa.Array:
    """``values`` as ``field.type`` when the conversion loses nothing, else a :class:`DataError`.

    Text becomes numbers when every value parses; dates and timestamps become unix seconds;
    integers, floats and strings widen or narrow when no value changes (an integer float fits int64,
    a small integer fits float32). The error names the first row that does not convert; ``private``
    keeps its value out of the message, as for ``user_id``.
    """
    column = column or field.name
    values = as_array(values)
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    source_type, target = values.type, field.type
    if source_type == target:
        return values
    if _is_text(source_type) and (pa.types.is_integer(target) or pa.types.is_floating(target)):
        parsed, bad = parse_numbers(values, target)
        bad &= values.is_valid().to_numpy(zero_copy_only=False)  # nulls are judged by the null check
        kind = "an integer" if pa.types.is_integer(target) else "a number"
        raise_first(
            bad, source, column, lambda i: f"{show(values[i].as_py(), column, private)} is not {kind}"
        )
        return parsed
    if (pa.types.is_timestamp(source_type) or pa.types.is_date(source_type)) and pa.types.is_integer(target):
        seconds = pc.cast(values, pa.timestamp("s"), safe=False)
        return pc.cast(pc.cast(seconds, pa.int64()), target)
    try:
        cast = pc.cast(values, target, safe=True)
    except pa.ArrowNotImplementedError:
        raise DataError(
            f"{source.name}, column {column!r}: has type {source_type}, expected {target}"
        ) from None
    except pa.ArrowInvalid as exc:
        index = _first_failing_cast(values, target)
        value = show(values[index].as_py(), column, private)
        raise DataError(
            f"{source.where(index, column)}: {value} does not convert to {target} without loss ({exc})"
        ) from None
    if pa.types.is_floating(target) and pa.types.is_floating(source_type):
        # a float64 beyond float32's range turns into inf silently
        grew = pc.and_(pc.is_inf(cast), pc.invert(pc.is_inf(values))).to_numpy(zero_copy_only=False)
        raise_first(grew, source, column, lambda i: f"{values[i].as_py()!r} does not fit {target}")
    return cast


def conform(table: pa.Table, schema: pa.Schema, source: Source) -> pa.Table:
    """``table`` with the contract's columns first, in order and with the contract's types, then its extras.

    Raises :class:`DataError` on an empty table, missing or duplicate columns, values that do not
    convert losslessly, nulls in non-null columns and empty ids.
    """
    names = table.column_names
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise DataError(f"{source.name}: duplicate column(s) {', '.join(map(repr, duplicated))}")
    missing = [field.name for field in schema if field.name not in names]
    if missing:
        raise DataError(
            f"{source.name}: missing column(s) {', '.join(map(repr, missing))} "
            f"(found: {', '.join(names) or 'none'})"
        )
    if table.num_rows == 0:
        raise DataError(f"{source.name}: no rows (the file is empty)")
    columns = []
    for field in schema:
        values = cast_column(table.column(field.name), field, source)
        if not field.nullable:
            nulls = values.is_null().to_numpy(zero_copy_only=False)
            raise_first(nulls, source, field.name, lambda _: "missing value (null)")
        if field.name in ID_COLUMNS:
            empty = pc.equal(pc.utf8_length(values), 0).to_numpy(zero_copy_only=False)
            raise_first(empty, source, field.name, lambda _: "empty id")
        columns.append(values)
    extras = [name for name in names if name not in schema.names]
    fields = [*schema, *(table.schema.field(name) for name in extras)]
    return pa.Table.from_arrays(
        [*columns, *(table.column(name) for name in extras)],
        schema=pa.schema(fields, metadata=table.schema.metadata),
    )


def duplicate_mask(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """[n] bool: true on every occurrence of a value after its first."""
    codes = pc.dictionary_encode(as_array(values)).indices.to_numpy(zero_copy_only=False)
    first = np.zeros(len(codes), dtype=bool)
    _, first_positions = np.unique(codes, return_index=True)
    first[first_positions] = True
    return ~first


def unknown_mask(values: pa.Array | pa.ChunkedArray, known: Collection[str] | pa.Array) -> np.ndarray:
    """[n] bool: true where a value is not among ``known``."""
    value_set = known if isinstance(known, pa.Array | pa.ChunkedArray) else pa.array(list(known), pa.string())
    value_set = as_array(value_set)
    return ~pc.fill_null(pc.is_in(as_array(values), value_set=value_set), False).to_numpy(
        zero_copy_only=False
    )


def validate_items(table: pa.Table, source: Source) -> pa.Table:
    """``table`` conformed to ``ITEMS_SCHEMA`` with unique item ids."""
    table = conform(table, ITEMS_SCHEMA, source)
    ids = table.column("item_id")
    duplicates = duplicate_mask(ids)
    if duplicates.any():
        codes = pc.dictionary_encode(as_array(ids)).indices.to_numpy(zero_copy_only=False)

        def problem(i: int) -> str:
            first = first_index(codes == codes[i])
            return f"duplicate item id {ids[i].as_py()!r} (first at {source.row(first)})"

        raise_first(duplicates, source, "item_id", problem)
    return table


def validate_interactions(
    table: pa.Table,
    source: Source,
    item_ids: Collection[str] | pa.Array | pa.ChunkedArray | None = None,
    items_name: str = "the items",
) -> pa.Table:
    """``table`` conformed to ``INTERACTIONS_SCHEMA`` with known event types and, given ``item_ids``,
    only items among them (``items_name`` says where they come from in the message)."""
    table = conform(table, INTERACTIONS_SCHEMA, source)
    events = table.column("event")
    raise_first(
        unknown_mask(events, EVENT_TYPES),
        source,
        "event",
        lambda i: f"unknown event {events[i].as_py()!r} (expected one of {', '.join(EVENT_TYPES)})",
    )
    if item_ids is not None:
        items = table.column("item_id")
        raise_first(
            unknown_mask(items, item_ids),
            source,
            "item_id",
            lambda i: f"unknown item {items[i].as_py()!r} (not in {items_name})",
        )
    return table
