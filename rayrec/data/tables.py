"""Checked input tables: what every importer reads its files with, and how it writes the dataset.

An input file (CSV, TSV or Parquet) becomes an :class:`InputTable`: the table plus a :class:`RowFilter`
that knows each row's place in the file. A bad row (a value that does not parse, a line with too few
fields, an interaction with an unknown item, a duplicate item id) stops the import with one line naming
the file and the row, or, with ``skip_bad_rows``, is dropped and counted in the :class:`ImportReport`.
:func:`write_import` is the common end of every importer: a dataset directory with ``items.parquet`` and
``interactions.parquet`` that follows the data contract, user ids pseudonymized with the directory's key
(:mod:`rayrec.privacy`). All work is column-wise (pyarrow compute); nothing loops over rows in Python.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from rayrec import storage
from rayrec.data.io import read_parquet, write_interactions, write_items
from rayrec.data.schema import INTERACTIONS_SCHEMA
from rayrec.data.validate import (
    Source,
    as_array,
    cast_column,
    duplicate_mask,
    parse_numbers,
    raise_first,
    unknown_mask,
)
from rayrec.errors import DataError
from rayrec.privacy import Pseudonymizer, load_or_create_key

Progress = Callable[[str], None]

NO_GENRE = ("(no genres listed)", "unknown")
"""Genre labels that mean "none"."""
TAG_SEPARATOR = "|"
"""Separator of tags held in one text column (MovieLens genres use it too)."""
TEXT_SUFFIXES = (".csv", ".tsv", ".tab", ".txt")
"""File suffixes read as delimited text; anything else is read as Parquet."""

Interactions = tuple[pa.Array, pa.Array, pa.Array, pa.Array | str, pa.Array | float]
"""(user, item, timestamp, event, value) columns; a constant event or value may stand for a whole column."""


@dataclasses.dataclass(frozen=True)
class ImportReport:
    """What an import wrote."""

    format: str
    """Detected input layout (``ml-latest-small``, ``ml-100k``, ``table``)."""
    out: str
    """The dataset directory written."""
    items: int
    """Items written."""
    interactions: int
    """Interactions written."""
    users: int
    """Distinct (pseudonymized) users."""
    skipped: dict[str, int]
    """Bad rows skipped per input file (only with ``skip_bad_rows``)."""
    dropped_columns: tuple[str, ...] = ()
    """Interaction columns not mapped to the contract and left out: they may identify users."""


@dataclasses.dataclass
class RowFilter:
    """Bad rows of one input: the first one is an error, or with ``skip`` they are all dropped and counted."""

    source: Source
    """Where the rows come from, for messages."""
    size: int
    """Rows in the table."""
    skip: bool
    """Drop bad rows instead of failing."""
    malformed: int = 0
    """Lines dropped while parsing (wrong number of fields), already counted as skipped."""

    def __post_init__(self) -> None:
        self.bad = np.zeros(self.size, dtype=bool)

    def reject(self, mask: np.ndarray, column: str, problem: Callable[[int], str]) -> None:
        """Rows where ``mask`` [n] holds are bad: raise for the first, or remember them all."""
        mask = mask & ~self.bad  # a row already dropped is not judged again
        if not self.skip:
            raise_first(mask, self.source, column, problem)
        self.bad |= mask

    @property
    def skipped(self) -> int:
        return self.malformed + int(self.bad.sum())

    def keep(self, table: pa.Table) -> pa.Table:
        return table.filter(pa.array(~self.bad)) if self.bad.any() else table


@dataclasses.dataclass
class InputTable:
    """One input file read into a table, with a :class:`RowFilter` over its rows."""

    table: pa.Table
    """Text files: every column a string. Parquet: the file's own types."""
    rows: RowFilter
    """Bad-row bookkeeping for this file."""

    @property
    def name(self) -> str:
        return self.rows.source.name

    def column(self, name: str, field: str | None = None) -> pa.Array:
        if name not in self.table.column_names:
            mapped = f" (mapped to {field})" if field and field != name else ""
            raise DataError(
                f"{self.name}: missing column {name!r}{mapped} (found: {', '.join(self.table.column_names)})"
            )
        return as_array(self.table.column(name))

    def ids(
        self, name: str, *, field: str | None = None, integer: bool = False, private: bool = False
    ) -> pa.Array:
        """Non-empty string ids; ``integer`` ids are normalised (``007`` → ``7``); ``private`` ones never shown."""
        values = self.column(name, field)
        if integer and pa.types.is_integer(values.type):
            return pc.cast(values, pa.string())
        if integer:
            parsed, bad = parse_numbers(pc.cast(values, pa.string()), pa.int64())
            self.rows.reject(
                bad,
                name,
                lambda i: "not an integer id" if private else f"{values[i].as_py()!r} is not an integer id",
            )
            return pc.cast(parsed, pa.string())
        field_ = pa.field(name, pa.string())
        text = pc.utf8_trim_whitespace(cast_column(values, field_, self.rows.source, private=private))
        empty = pc.fill_null(pc.equal(pc.utf8_length(text), 0), True).to_numpy(zero_copy_only=False)
        self.rows.reject(empty, name, lambda _: "missing id")
        return text

    def numbers(self, name: str, type_: pa.DataType, *, field: str | None = None) -> pa.Array:
        """Numbers from text (bad ones rejected row by row) or from typed columns (cast losslessly)."""
        values = self.column(name, field)
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            parsed, bad = parse_numbers(values, type_)
            kind = "an integer" if pa.types.is_integer(type_) else "a number"
            self.rows.reject(bad, name, lambda i: f"{values[i].as_py()!r} is not {kind}")
            return parsed
        parsed = cast_column(values, pa.field(name, type_), self.rows.source)
        self.rows.reject(parsed.is_null().to_numpy(zero_copy_only=False), name, lambda _: "missing value")
        return parsed

    def texts(self, name: str, *, field: str | None = None) -> pa.Array:
        """Trimmed strings (other types converted where lossless)."""
        values = self.column(name, field)
        return pc.utf8_trim_whitespace(cast_column(values, pa.field(name, pa.string()), self.rows.source))

    def reject_unknown(self, values: pa.Array, known: pa.Array, column: str, known_name: str) -> None:
        self.rows.reject(
            unknown_mask(values, known),
            column,
            lambda i: f"unknown item {values[i].as_py()!r} (not in {known_name})",
        )

    def reject_duplicates(self, ids: pa.Array, column: str) -> None:
        self.rows.reject(duplicate_mask(ids), column, lambda i: f"duplicate item id {ids[i].as_py()!r}")


# ----------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------


def read_text_table(
    uri: str,
    *,
    delimiter: str = ",",
    encoding: str = "utf8",
    column_names: Sequence[str] | None = None,
    quoted: bool = True,
    skip_bad_rows: bool = False,
) -> InputTable:
    """A delimited text file as string columns, with each row's place in the file.

    ``column_names`` given: the file has no header line. Lines with the wrong number of fields are an
    error naming the line (their text is not shown: it may hold a raw user id), or are skipped and
    counted. Blank lines are ignored.
    """
    data = storage.read_bytes(uri)
    if not data.strip():
        raise DataError(f"{uri}: the file is empty")
    header_lines = 0 if column_names else 1
    if column_names is None:
        first = data.split(b"\n", 1)[0].decode(
            "utf-8-sig" if encoding.lower() in ("utf8", "utf-8") else encoding
        )
        first = first.rstrip("\r")
        names = next(csv.reader([first], delimiter=delimiter)) if quoted else first.split(delimiter)
    else:
        names = list(column_names)
    malformed: list[tuple[int, int, int]] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        malformed.append((row.number, row.expected_columns, row.actual_columns))
        return "skip"

    try:
        table = pacsv.read_csv(
            pa.BufferReader(data),
            # one thread: row numbers of invalid rows are only known when parsing in order
            read_options=pacsv.ReadOptions(use_threads=False, encoding=encoding, column_names=column_names),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter,
                quote_char='"' if quoted else False,
                invalid_row_handler=on_invalid,
                ignore_empty_lines=False,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in names},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise DataError(f"{uri}: cannot read as delimited text ({exc})") from None
    lines = np.arange(header_lines + 1, header_lines + 1 + table.num_rows + len(malformed))
    lines = np.setdiff1d(lines, [number for number, _, _ in malformed], assume_unique=True)
    source = Source(uri, rows=lines - header_lines, header_lines=header_lines)
    if malformed and not skip_bad_rows:
        number, expected, actual = malformed[0]
        raise DataError(
            f"{uri}, row {number - header_lines} (line {number}): expected {expected} fields, found {actual}"
        )
    blank = np.ones(table.num_rows, dtype=bool)
    for column in table.columns:
        blank &= pc.equal(pc.utf8_length(as_array(column)), 0).to_numpy(zero_copy_only=False)
    if blank.any():
        table = table.filter(pa.array(~blank))
        source = dataclasses.replace(source, rows=source.rows[~blank])
    return InputTable(table, RowFilter(source, table.num_rows, skip_bad_rows, malformed=len(malformed)))


def read_any_table(uri: str, *, skip_bad_rows: bool = False, delimiter: str | None = None) -> InputTable:
    """A CSV/TSV file (by suffix, or when ``delimiter`` is given), else Parquet (a file or a directory)."""
    if delimiter is None and not uri.lower().endswith(TEXT_SUFFIXES):
        table = read_parquet(uri)
        return InputTable(table, RowFilter(Source(uri), table.num_rows, skip_bad_rows))
    sep = delimiter or ("\t" if uri.lower().endswith((".tsv", ".tab")) else ",")
    return read_text_table(uri, delimiter=sep, skip_bad_rows=skip_bad_rows)


# ----------------------------------------------------------------------------------------------------------
# List columns
# ----------------------------------------------------------------------------------------------------------


def group_lists(parents: np.ndarray, values: pa.Array, size: int) -> pa.ListArray:
    """[size] lists: ``values[j]`` goes to list ``parents[j]`` (``parents`` sorted ascending)."""
    offsets = np.zeros(size + 1, dtype=np.int32)
    np.cumsum(np.bincount(parents, minlength=size), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def first_of_lists(lists: pa.ListArray) -> pa.Array:
    """[n] first element of each list, null for empty lists."""
    offsets = lists.offsets.to_numpy()
    lengths = np.diff(offsets)
    firsts = pc.take(lists.values, pa.array(np.minimum(offsets[:-1], max(len(lists.values) - 1, 0))))
    return pc.if_else(pa.array(lengths > 0), firsts, pa.scalar(None, lists.type.value_type))


def split_tags(text: pa.Array) -> pa.ListArray:
    """``a|b|c`` → ``[a, b, c]`` with blanks and the "no genre" labels dropped."""
    lists = pc.split_pattern(pc.fill_null(text, ""), TAG_SEPARATOR)
    flat = pc.utf8_trim_whitespace(pc.list_flatten(lists))
    keep = pc.and_(pc.greater(pc.utf8_length(flat), 0), pc.invert(pc.is_in(flat, pa.array(NO_GENRE))))
    parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)[
        keep.to_numpy(zero_copy_only=False)
    ]
    return group_lists(parents, pc.filter(flat, keep), len(text))


# ----------------------------------------------------------------------------------------------------------
# Writing the dataset
# ----------------------------------------------------------------------------------------------------------


def say(progress: Progress | None, message: str) -> None:
    """Pass ``message`` to ``progress`` when there is one."""
    if progress is not None:
        progress(message)


def _interactions_table(
    user_ids: pa.Array,
    item_ids: pa.Array,
    timestamps: pa.Array,
    events: pa.Array | str,
    values: pa.Array | float,
    out: str,
) -> pa.Table:
    """The contract's interactions with user ids pseudonymized under ``out``'s key."""
    n = len(user_ids)
    pseudonyms = Pseudonymizer(load_or_create_key(out)).pseudonymize_array(user_ids)
    return pa.table(
        {
            "user_id": pseudonyms,
            "item_id": item_ids,
            "timestamp": timestamps,
            "event": events if not isinstance(events, str) else pa.array([events] * n, pa.string()),
            "value": values if not isinstance(values, float) else pa.array(np.full(n, values, np.float32)),
        },
        schema=INTERACTIONS_SCHEMA,
    )


def write_import(
    layout: str,
    out: str,
    items: pa.Table,
    interactions: Interactions,
    inputs: Sequence[InputTable],
    progress: Progress | None,
    dropped: tuple[str, ...] = (),
) -> ImportReport:
    """Pseudonymize the interactions, write both tables to ``out`` and report what was written and skipped."""
    user_ids = interactions[0]
    if len(user_ids) == 0:
        raise DataError(f"{inputs[-1].name}: no interactions left to import")
    say(progress, f"pseudonymizing {len(user_ids):,} interactions")
    table = _interactions_table(*interactions, out)
    users = pc.count_distinct(table.column("user_id")).as_py()
    write_items(items, out)
    write_interactions(table, out)
    skipped = {inp.name: inp.rows.skipped for inp in inputs if inp.rows.skipped}
    say(
        progress,
        f"wrote {items.num_rows:,} items and {table.num_rows:,} interactions of {users:,} users to {out}",
    )
    return ImportReport(layout, out, items.num_rows, table.num_rows, users, skipped, dropped)
