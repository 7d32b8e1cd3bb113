"""Importers: MovieLens (ml-latest-small layout and ml-100k) and any CSV/Parquet with a column mapping.

Every importer ends in the same place: a dataset directory with ``items.parquet`` and
``interactions.parquet`` that follows the data contract, user ids pseudonymized with the directory's
key (:mod:`rayrec.privacy`) and free text scrubbed. A bad row (a value that does not parse, a line
with too few fields, an interaction with an unknown item, a duplicate item id) stops the import with
one line naming the file and the row, or, with ``skip_bad_rows``, is dropped and counted in the
report. All work is column-wise (pyarrow compute); nothing loops over rows in Python.
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
from rayrec.data.schema import EVENT_TYPES, INTERACTIONS_SCHEMA, ITEMS_SCHEMA
from rayrec.data.validate import (
    Source,
    as_array,
    cast_column,
    duplicate_mask,
    parse_numbers,
    raise_first,
    unknown_mask,
)
from rayrec.errors import ConfigError, DataError
from rayrec.privacy import Pseudonymizer, load_or_create_key, scrub_array

Progress = Callable[[str], None]

ML_100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
"""ml-100k's genre flag columns, in ``u.item`` order, when the folder has no ``u.genre``."""
NO_GENRE = ("(no genres listed)", "unknown")
"""Genre labels that mean "none"."""
TAG_SEPARATOR = "|"
"""Separator of tags held in one text column (MovieLens genres use it too)."""


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


TEXT_SUFFIXES = (".csv", ".tsv", ".tab", ".txt")


def read_any_table(uri: str, *, skip_bad_rows: bool = False, delimiter: str | None = None) -> InputTable:
    """A CSV/TSV file (by suffix, or when ``delimiter`` is given), else Parquet (a file or a directory)."""
    if delimiter is None and not uri.lower().endswith(TEXT_SUFFIXES):
        table = read_parquet(uri)
        return InputTable(table, RowFilter(Source(uri), table.num_rows, skip_bad_rows))
    sep = delimiter or ("\t" if uri.lower().endswith((".tsv", ".tab")) else ",")
    return read_text_table(uri, delimiter=sep, skip_bad_rows=skip_bad_rows)


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


def compose_text(title: pa.Array, sections: Sequence[tuple[str, pa.ListArray]]) -> pa.Array:
    """``Title. Genres: a, b. Tags: x, y.``: what the encoder reads; empty sections are left out."""
    pieces = [pc.binary_join_element_wise(title, "", ".")]  # the title's own text, year included
    for label, lists in sections:
        joined = pc.fill_null(pc.binary_join(lists, ", "), "")
        piece = pc.binary_join_element_wise(f"{label}: ", joined, ".", "")
        pieces.append(pc.if_else(pc.greater(pc.utf8_length(joined), 0), piece, ""))
    return pc.utf8_trim_whitespace(pc.binary_join_element_wise(*pieces, " "))


def _split_tags(text: pa.Array) -> pa.ListArray:
    """``a|b|c`` → ``[a, b, c]`` with blanks and the "no genre" labels dropped."""
    lists = pc.split_pattern(pc.fill_null(text, ""), TAG_SEPARATOR)
    flat = pc.utf8_trim_whitespace(pc.list_flatten(lists))
    keep = pc.and_(pc.greater(pc.utf8_length(flat), 0), pc.invert(pc.is_in(flat, pa.array(NO_GENRE))))
    parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)[
        keep.to_numpy(zero_copy_only=False)
    ]
    return group_lists(parents, pc.filter(flat, keep), len(text))


def _tags_by_item(item_ids: pa.Array, tag_items: pa.Array, tags: pa.Array) -> pa.ListArray:
    """[n items] distinct scrubbed lower-case tags per item, most used first."""
    cleaned = pc.utf8_lower(scrub_array(tags))
    table = pa.table({"item": tag_items, "tag": cleaned}).filter(pc.greater(pc.utf8_length(cleaned), 0))
    counted = table.group_by(["item", "tag"]).aggregate([("tag", "count")])
    position = pc.index_in(counted.column("item"), value_set=item_ids)
    counted = counted.append_column("position", position).sort_by(
        [("position", "ascending"), ("tag_count", "descending"), ("tag", "ascending")]
    )
    parents = as_array(counted.column("position")).to_numpy(zero_copy_only=False)
    return group_lists(parents, as_array(counted.column("tag")), len(item_ids))


def _items_table(
    item_ids: pa.Array, titles: pa.Array, genres: pa.ListArray, tags: pa.ListArray | None
) -> pa.Table:
    sections = [("Genres", genres)] + ([("Tags", tags)] if tags is not None else [])
    return pa.table(
        {
            "item_id": item_ids,
            "title": titles,
            "text": compose_text(titles, sections),
            "category": first_of_lists(genres),
            "tags": genres,
        },
        schema=ITEMS_SCHEMA,
    )


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


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


def detect_movielens(src: str) -> str:
    """``ml-latest-small`` (movies.csv + ratings.csv; also ml-latest, ml-20m, ml-25m) or ``ml-100k``."""
    if storage.exists(storage.join(src, "movies.csv")) and storage.exists(storage.join(src, "ratings.csv")):
        return "ml-latest-small"
    if storage.exists(storage.join(src, "u.item")) and storage.exists(storage.join(src, "u.data")):
        return "ml-100k"
    if not storage.exists(src):
        raise DataError(f"{src}: no such directory")
    raise DataError(
        f"{src}: not a MovieLens folder (expected movies.csv and ratings.csv as in ml-latest-small, "
        "or u.item and u.data as in ml-100k)"
    )


def import_movielens(
    src: str, out: str, *, skip_bad_rows: bool = False, progress: Progress | None = None
) -> ImportReport:
    """Import a MovieLens folder into the dataset directory ``out`` (layout detected from its files)."""
    layout = detect_movielens(src)
    _say(progress, f"{src}: {layout} layout")
    reader = _read_ml_latest if layout == "ml-latest-small" else _read_ml_100k
    items, interactions, inputs = reader(src, skip_bad_rows, progress)
    return _finish(layout, out, items, interactions, inputs, progress)


def _finish(
    layout: str,
    out: str,
    items: pa.Table,
    interactions: tuple[pa.Array, pa.Array, pa.Array, pa.Array | str, pa.Array | float],
    inputs: Sequence[InputTable],
    progress: Progress | None,
    dropped: tuple[str, ...] = (),
) -> ImportReport:
    user_ids = interactions[0]
    if len(user_ids) == 0:
        raise DataError(f"{inputs[-1].name}: no interactions left to import")
    _say(progress, f"pseudonymizing {len(user_ids):,} interactions")
    table = _interactions_table(*interactions, out)
    users = pc.count_distinct(table.column("user_id")).as_py()
    write_items(items, out)
    write_interactions(table, out)
    skipped = {inp.name: inp.rows.skipped for inp in inputs if inp.rows.skipped}
    _say(
        progress,
        f"wrote {items.num_rows:,} items and {table.num_rows:,} interactions of {users:,} users to {out}",
    )
    return ImportReport(layout, out, items.num_rows, table.num_rows, users, skipped, dropped)


def _read_ml_latest(src: str, skip: bool, progress: Progress | None):
    movies = read_text_table(storage.join(src, "movies.csv"), skip_bad_rows=skip)
    _say(progress, f"read movies.csv: {movies.table.num_rows:,} rows")
    item_ids = movies.ids("movieId", integer=True)
    movies.reject_duplicates(item_ids, "movieId")
    titles, genres = movies.texts("title"), movies.column("genres")
    movies.rows.reject(
        pc.equal(pc.utf8_length(titles), 0).to_numpy(zero_copy_only=False), "title", lambda _: "empty title"
    )
    keep = pa.array(~movies.rows.bad)
    item_ids, titles, genres = pc.filter(item_ids, keep), pc.filter(titles, keep), pc.filter(genres, keep)
    inputs = [movies]
    tags = None
    tags_path = storage.join(src, "tags.csv")
    if storage.exists(tags_path):
        tag_rows = read_text_table(tags_path, skip_bad_rows=skip)
        tag_items = tag_rows.ids("movieId", integer=True)
        tag_rows.reject_unknown(tag_items, item_ids, "movieId", "movies.csv")
        tag_text = tag_rows.texts("tag")
        keep_tags = pa.array(~tag_rows.rows.bad)
        tags = _tags_by_item(item_ids, pc.filter(tag_items, keep_tags), pc.filter(tag_text, keep_tags))
        inputs.append(tag_rows)
        _say(progress, f"read tags.csv: {tag_rows.table.num_rows:,} tags folded into item text")
    items = _items_table(item_ids, titles, _split_tags(genres), tags)
    ratings = read_text_table(storage.join(src, "ratings.csv"), skip_bad_rows=skip)
    _say(progress, f"read ratings.csv: {ratings.table.num_rows:,} rows")
    inputs.append(ratings)
    return (
        items,
        _ratings(ratings, ("userId", "movieId", "rating", "timestamp"), item_ids, "movies.csv"),
        inputs,
    )


def _ratings(ratings: InputTable, names: Sequence[str], item_ids: pa.Array, items_name: str) -> tuple:
    """(user, item, timestamp, event, value) columns of a MovieLens ratings table, bad rows dropped."""
    user, item, rating, timestamp = names
    columns = [
        ratings.ids(user, integer=True, private=True),
        ratings.ids(item, integer=True),
        ratings.numbers(timestamp, pa.int64()),
        "rating",
        ratings.numbers(rating, pa.float32()),
    ]
    ratings.reject_unknown(columns[1], item_ids, item, items_name)
    keep = pa.array(~ratings.rows.bad)
    return tuple(column if isinstance(column, str) else pc.filter(column, keep) for column in columns)


def _read_ml_100k(src: str, skip: bool, progress: Progress | None):
    """``u.item`` (latin-1, ``|``), ``u.data`` (tab); ``u.user`` holds demographics and is not imported."""
    genre_path = storage.join(src, "u.genre")
    genre_names = ML_100K_GENRES
    if storage.exists(genre_path):
        genre_table = read_text_table(
            genre_path, delimiter="|", encoding="latin-1", column_names=["name", "index"], quoted=False
        )
        genre_names = tuple(genre_table.table.column("name").to_pylist())
    flags = [f"genre:{name}" for name in genre_names]
    movies = read_text_table(
        storage.join(src, "u.item"),
        delimiter="|",
        encoding="latin-1",
        column_names=["movie id", "movie title", "release date", "video release date", "IMDb URL", *flags],
        quoted=False,
        skip_bad_rows=skip,
    )
    _say(progress, f"read u.item: {movies.table.num_rows:,} rows")
    item_ids = movies.ids("movie id", integer=True)
    movies.reject_duplicates(item_ids, "movie id")
    titles = movies.texts("movie title")
    matrix = np.zeros((movies.table.num_rows, len(flags)), dtype=bool)
    for j, flag in enumerate(flags):
        values = as_array(movies.table.column(flag))
        movies.rows.reject(
            ~pc.is_in(values, pa.array(["0", "1"])).to_numpy(zero_copy_only=False),
            flag,
            lambda i, values=values: f"genre flag {values[i].as_py()!r} is not 0 or 1",
        )
        if genre_names[j] not in NO_GENRE:
            matrix[:, j] = pc.equal(values, "1").to_numpy(zero_copy_only=False)
    keep = ~movies.rows.bad
    rows, cols = np.nonzero(matrix[keep])
    genres = group_lists(
        rows, pa.array(np.asarray(genre_names, dtype=object)[cols], pa.string()), int(keep.sum())
    )
    item_ids, titles = pc.filter(item_ids, pa.array(keep)), pc.filter(titles, pa.array(keep))
    items = _items_table(item_ids, titles, genres, None)
    ratings = read_text_table(
        storage.join(src, "u.data"),
        delimiter="\t",
        column_names=["user id", "item id", "rating", "timestamp"],
        quoted=False,
        skip_bad_rows=skip,
    )
    _say(progress, f"read u.data: {ratings.table.num_rows:,} rows")
    columns = _ratings(ratings, ("user id", "item id", "rating", "timestamp"), item_ids, "u.item")
    return items, columns, [movies, ratings]


def parse_mapping(pairs: Sequence[str]) -> dict[str, dict[str, str]]:
    """``["user_id=uid", "items.title=name"]`` → ``{"interactions": {"user_id": "uid"}, "items": {"title": "name"}}``.

    An unqualified field maps in every table that has it (``item_id`` in both).
    """
    tables = {"items": ITEMS_SCHEMA.names, "interactions": INTERACTIONS_SCHEMA.names}
    mapping: dict[str, dict[str, str]] = {"items": {}, "interactions": {}}
    for pair in pairs:
        field, sep, column = pair.partition("=")
        if not sep or not field.strip() or not column.strip():
            raise ConfigError(f"--map {pair!r}: expected FIELD=COLUMN (for example user_id=uid)")
        scope, _, name = field.strip().rpartition(".")
        targets = [scope] if scope else [t for t, names in tables.items() if name in names]
        if (scope and scope not in tables) or not targets or any(name not in tables[t] for t in targets):
            known = ", ".join(f"{t}.{n}" for t, names in tables.items() for n in names)
            raise ConfigError(f"--map {pair!r}: unknown field {field.strip()!r} (known: {known})")
        for target in targets:
            mapping[target][name] = column.strip()
    return mapping


def import_table(
    src: str,
    out: str,
    *,
    mapping: dict[str, dict[str, str]] | None = None,
    items: str | None = None,
    event: str = "click",
    delimiter: str | None = None,
    skip_bad_rows: bool = False,
    progress: Progress | None = None,
) -> ImportReport:
    """Import an interactions file (CSV, TSV or Parquet) and optionally an items file into ``out``.

    ``mapping`` (see :func:`parse_mapping`) names each contract field's column where it differs.
    Interactions need ``user_id``, ``item_id`` and ``timestamp`` (integer seconds, or a Parquet date or
    timestamp); ``event`` defaults to the ``event`` argument and ``value`` to 1.0. Items need
    ``item_id`` and ``title``; ``text`` defaults to the title; ``tags`` is a list or ``a|b|c`` text.
    Without an items file the catalog is every item id seen, with the id as title. Extra item columns
    are kept (text ones scrubbed); extra interaction columns are dropped, since they may identify users.
    """
    if event not in EVENT_TYPES:
        raise ConfigError(f"event {event!r}: expected one of {', '.join(EVENT_TYPES)}")
    mapping = mapping or {"items": {}, "interactions": {}}
    inputs = []
    item_table = None
    if items is not None:
        item_input = read_any_table(items, skip_bad_rows=skip_bad_rows, delimiter=delimiter)
        _say(progress, f"read {items}: {item_input.table.num_rows:,} rows")
        item_table = _mapped_items(item_input, mapping["items"])
        inputs.append(item_input)
    log = read_any_table(src, skip_bad_rows=skip_bad_rows, delimiter=delimiter)
    _say(progress, f"read {src}: {log.table.num_rows:,} rows")
    inputs.append(log)
    names = {field: mapping["interactions"].get(field, field) for field in INTERACTIONS_SCHEMA.names}
    user_ids = log.ids(names["user_id"], field="user_id", private=True)
    item_ids = log.ids(names["item_id"], field="item_id")
    timestamps = log.numbers(names["timestamp"], pa.int64(), field="timestamp")
    events: pa.Array | str = event
    if names["event"] in log.table.column_names:
        events = log.texts(names["event"])
        log.rows.reject(
            unknown_mask(events, EVENT_TYPES),
            names["event"],
            lambda i: f"unknown event {events[i].as_py()!r} (expected one of {', '.join(EVENT_TYPES)})",
        )
    values: pa.Array | float = 1.0
    if names["value"] in log.table.column_names:
        values = log.numbers(names["value"], pa.float32())
    if item_table is not None:
        log.reject_unknown(item_ids, item_table.column("item_id"), names["item_id"], items)
    keep = pa.array(~log.rows.bad)
    columns = tuple(
        c if isinstance(c, str | float) else pc.filter(c, keep)
        for c in (user_ids, item_ids, timestamps, events, values)
    )
    if item_table is None:
        seen = pc.unique(columns[1])
        item_table = pa.table(
            {
                "item_id": seen,
                "title": seen,
                "text": seen,
                "category": pa.nulls(len(seen), pa.string()),
                "tags": pa.nulls(len(seen), pa.list_(pa.string())),
            }
        )
    dropped = tuple(name for name in log.table.column_names if name not in names.values())
    return _finish("table", out, item_table, columns, inputs, progress, dropped)


def _mapped_items(source: InputTable, mapping: dict[str, str]) -> pa.Table:
    """The contract's item columns from a mapped items file, free text scrubbed, extras kept."""
    names = {field: mapping.get(field, field) for field in ITEMS_SCHEMA.names}
    present = set(source.table.column_names)
    n = source.table.num_rows
    item_ids = source.ids(names["item_id"], field="item_id")
    source.reject_duplicates(item_ids, names["item_id"])
    titles = source.texts(names["title"], field="title")
    text = scrub_array(pc.fill_null(source.texts(names["text"]), "")) if names["text"] in present else titles
    category = (
        scrub_array(source.texts(names["category"]))
        if names["category"] in present
        else pa.nulls(n, pa.string())
    )
    tags = (
        _tag_lists(source, names["tags"]) if names["tags"] in present else pa.nulls(n, pa.list_(pa.string()))
    )
    extras = {}
    for name in source.table.column_names:
        if name not in names.values():
            column = as_array(source.table.column(name))
            extras[name] = scrub_array(column) if pa.types.is_string(column.type) else column
    table = pa.table(
        {"item_id": item_ids, "title": titles, "text": text, "category": category, "tags": tags, **extras}
    )
    return source.rows.keep(table)


def _tag_lists(source: InputTable, name: str) -> pa.Array:
    """A tags column (list, or ``a|b|c`` text) as scrubbed list<string>."""
    raw = source.column(name)
    if not (pa.types.is_list(raw.type) or pa.types.is_large_list(raw.type)):
        raw = _split_tags(source.texts(name))
    lists = cast_column(raw, ITEMS_SCHEMA.field("tags"), source.rows.source, name)
    return pa.ListArray.from_arrays(lists.offsets, scrub_array(lists.values), mask=lists.is_null())
