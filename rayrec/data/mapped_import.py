"""Import any interactions table (CSV, TSV or Parquet), and optionally an items table, with a column mapping.

``--map FIELD=COLUMN`` names the column holding each contract field where it differs (:func:`parse_mapping`).
Free text is scrubbed, user ids pseudonymized, and interaction columns outside the contract are dropped
since they may identify users. Bad rows follow :mod:`rayrec.data.tables`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from rayrec.data.schema import EVENT_TYPES, INTERACTIONS_SCHEMA, ITEMS_SCHEMA
from rayrec.data.tables import (
    ImportReport,
    InputTable,
    Progress,
    read_any_table,
    say,
    split_tags,
    write_import,
)
from rayrec.data.validate import as_array, cast_column, unknown_mask
from rayrec.errors import ConfigError
from rayrec.privacy import scrub_array


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
        say(progress, f"read {items}: {item_input.table.num_rows:,} rows")
        item_table = _mapped_items(item_input, mapping["items"])
        inputs.append(item_input)
    log = read_any_table(src, skip_bad_rows=skip_bad_rows, delimiter=delimiter)
    say(progress, f"read {src}: {log.table.num_rows:,} rows")
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
    return write_import("table", out, item_table, columns, inputs, progress, dropped)


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
        raw = split_tags(source.texts(name))
    lists = cast_column(raw, ITEMS_SCHEMA.field("tags"), source.rows.source, name)
    return pa.ListArray.from_arrays(lists.offsets, scrub_array(lists.values), mask=lists.is_null())
