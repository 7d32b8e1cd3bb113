"""Validated Parquet I/O: contract types, casts, and errors naming file, column and row."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayrec.data.io import load_dataset, read_interactions, read_items, write_interactions, write_items
from rayrec.data.schema import INTERACTIONS_FILE, INTERACTIONS_SCHEMA, ITEMS_FILE, ITEMS_SCHEMA
from rayrec.errors import DataError


def items_table(**overrides) -> pa.Table:
    columns = {
        "item_id": ["a", "b", "c"],
        "title": ["A", "B", "C"],
        "text": ["about a", "about b", "about c"],
        "category": ["x", None, "y"],
        "tags": [["t1"], [], None],
    }
    columns.update(overrides)
    return pa.table(columns)


def interactions_table(**overrides) -> pa.Table:
    columns = {
        "user_id": ["u1", "u1", "u2"],
        "item_id": ["a", "b", "c"],
        "timestamp": [10, 20, 30],
        "event": ["click", "rating", "view"],
        "value": [1.0, 4.5, 1.0],
    }
    columns.update(overrides)
    return pa.table(columns)


def test_round_trip_keeps_contract_types_and_extra_columns(tmp_path):
    items = items_table(topic=[1, 2, 3])
    write_items(items, tmp_path)
    write_interactions(interactions_table(), tmp_path)
    dataset = load_dataset(str(tmp_path))
    assert dataset.items.schema.field("item_id").type == pa.string()
    assert dataset.items.column_names == [*ITEMS_SCHEMA.names, "topic"]
    assert dataset.items.column("topic").to_pylist() == [1, 2, 3]
    assert dataset.interactions.schema.field("value").type == pa.float32()
    assert dataset.interactions.schema.field("timestamp").type == pa.int64()
    assert dataset.interactions.column("value").to_pylist() == [1.0, 4.5, 1.0]
    assert dataset.path == str(tmp_path)


def test_lossless_casts_are_applied(tmp_path):
    table = interactions_table(
        timestamp=pa.array(["10", " 20", "30"]),
        value=pa.array([1, 4, 1], pa.int64()),
        user_id=pa.array([1, 1, 2]),
    )
    path = write_interactions(table, tmp_path / "log.parquet")
    read = read_interactions(path)
    assert read.column("timestamp").to_pylist() == [10, 20, 30]
    assert read.column("user_id").to_pylist() == ["1", "1", "2"]
    assert read.schema.field("value").type == pa.float32()


def test_timestamps_in_arrow_time_types_become_unix_seconds(tmp_path):
    ms = pa.array([10_000, 20_500, 30_000], pa.timestamp("ms"))
    read = read_interactions(write_interactions(interactions_table(timestamp=ms), tmp_path))
    assert read.column("timestamp").to_pylist() == [10, 20, 30]


def test_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / ITEMS_FILE
    pq.write_table(items_table().drop_columns(["text"]), path)
    with pytest.raises(DataError, match=r"items\.parquet: missing column\(s\) 'text'"):
        read_items(str(path))


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        ("timestamp", ["10", "20", "soon"], r"row 3, column 'timestamp': 'soon' is not an integer"),
        ("timestamp", [10.0, 20.5, 30.0], r"row 2, column 'timestamp': 20\.5 does not convert to int64"),
        ("value", [1.0, None, 1.0], r"row 2, column 'value': missing value \(null\)"),
        ("item_id", ["a", "", "c"], r"row 2, column 'item_id': empty id"),
        (
            "event",
            ["click", "like", "view"],
            r"row 2, column 'event': unknown event 'like' \(expected one of",
        ),
        ("value", [1.0, 1e300, 1.0], r"row 2, column 'value': 1e\+300 does not fit float"),
    ],
)
def test_bad_values_name_file_row_and_column(tmp_path, column, values, message):
    path = tmp_path / INTERACTIONS_FILE
    pq.write_table(interactions_table(**{column: values}), path)
    with pytest.raises(DataError, match=r"interactions\.parquet, " + message):
        read_interactions(str(path))


def test_wrong_type_that_cannot_convert(tmp_path):
    path = tmp_path / ITEMS_FILE
    pq.write_table(items_table(tags=[1, 2, 3]), path)
    with pytest.raises(DataError, match=r"column 'tags': has type int64, expected list<item: string>"):
        read_items(str(path))


def test_user_id_values_are_never_shown(tmp_path):
    path = tmp_path / INTERACTIONS_FILE
    pq.write_table(interactions_table(user_id=[b"ok", b"\xff\xfesecret-raw-id", b"ok"]), path)
    with pytest.raises(DataError) as excinfo:
        read_interactions(str(path))
    assert "row 2, column 'user_id'" in str(excinfo.value)
    assert "secret-raw-id" not in str(excinfo.value)


def test_duplicate_item_ids_name_both_rows(tmp_path):
    path = tmp_path / ITEMS_FILE
    pq.write_table(items_table(item_id=["a", "b", "a"]), path)
    with pytest.raises(DataError, match=r"row 3, column 'item_id': duplicate item id 'a' \(first at row 1\)"):
        read_items(str(path))


def test_unknown_items_are_refused_by_load_dataset(tmp_path):
    write_items(items_table(), tmp_path)
    write_interactions(interactions_table(item_id=["a", "zz", "zz"]), tmp_path)
    with pytest.raises(DataError) as excinfo:
        load_dataset(str(tmp_path))
    message = str(excinfo.value)
    assert "interactions.parquet, row 2, column 'item_id': unknown item 'zz'" in message
    assert "items.parquet" in message and "(2 rows in all)" in message
    assert "\n" not in message


def test_read_interactions_checks_given_item_ids(tmp_path):
    path = write_interactions(interactions_table(), tmp_path)
    assert read_interactions(path, {"a", "b", "c"}).num_rows == 3
    with pytest.raises(DataError, match=r"row 3, column 'item_id': unknown item 'c'"):
        read_interactions(path, {"a", "b"})


def test_empty_and_unreadable_files(tmp_path):
    pq.write_table(INTERACTIONS_SCHEMA.empty_table(), tmp_path / "none.parquet")
    with pytest.raises(DataError, match=r"none\.parquet: no rows"):
        read_interactions(str(tmp_path / "none.parquet"))
    (tmp_path / "zero.parquet").write_bytes(b"")
    with pytest.raises(DataError, match=r"zero\.parquet: the file is empty"):
        read_items(str(tmp_path / "zero.parquet"))
    (tmp_path / "text.parquet").write_text("item_id,title\n")
    with pytest.raises(DataError, match=r"text\.parquet: not a readable Parquet file"):
        read_items(str(tmp_path / "text.parquet"))
    with pytest.raises(DataError, match="no such dataset directory"):
        load_dataset(str(tmp_path / "missing"))
    with pytest.raises(DataError, match=r"items\.parquet: no such file"):
        load_dataset(str(tmp_path))


def test_bad_table_is_not_written(tmp_path):
    with pytest.raises(DataError, match="unknown event"):
        write_interactions(interactions_table(event=["click", "nope", "view"]), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_file_uris_and_directories_of_parts(tmp_path):
    uri = f"file://{tmp_path}/ds"
    write_items(items_table(), uri)
    assert read_items(uri).num_rows == 3
    parts = tmp_path / "parts" / INTERACTIONS_FILE
    parts.mkdir(parents=True)
    table = interactions_table()
    pq.write_table(table.slice(0, 2), parts / "part-0.parquet")
    pq.write_table(table.slice(2), parts / "part-1.parquet")
    assert read_interactions(str(tmp_path / "parts")).num_rows == 3
