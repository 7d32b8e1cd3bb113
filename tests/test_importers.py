"""Importers: MovieLens (ml-latest-small and ml-100k layouts) and mapped CSV/Parquet tables."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from data_samples import ML100K_USERS, leaks, write_ml100k, write_ml_latest

from rayrec.data.io import load_dataset
from rayrec.data.mapped_import import import_table, parse_mapping
from rayrec.data.movielens import import_movielens
from rayrec.errors import ConfigError, DataError

PSEUDONYM = re.compile(r"^[0-9a-f]{32}$")


def test_movielens_small(movielens_small, tmp_path):
    out = tmp_path / "ml"
    report = import_movielens(str(movielens_small), str(out))
    assert (report.format, report.items, report.interactions, report.users) == (
        "ml-latest-small",
        9_125,
        100_004,
        671,
    )
    assert report.skipped == {}
    dataset = load_dataset(str(out))
    assert dataset.items.num_rows == 9_125 and dataset.interactions.num_rows == 100_004
    users = set(dataset.interactions.column("user_id").to_pylist())
    assert len(users) == 671
    assert all(PSEUDONYM.match(user) for user in users)
    raw_users = pacsv.read_csv(movielens_small / "ratings.csv").column("userId").unique().to_pylist()
    assert users.isdisjoint(str(user) for user in raw_users)
    toy_story = dataset.items.filter(pa.compute.equal(dataset.items.column("item_id"), "1")).to_pylist()[0]
    assert toy_story["title"] == "Toy Story (1995)"
    assert toy_story["category"] == "Adventure"
    assert toy_story["tags"] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert toy_story["text"].startswith("Toy Story (1995). Genres: Adventure, Animation")
    assert "Tags: pixar" in toy_story["text"]  # tags.csv folded into the text
    events = set(dataset.interactions.column("event").to_pylist())
    assert events == {"rating"}


def test_ml100k_layout_latin1(tmp_path):
    source = write_ml100k(tmp_path / "ml-100k")
    out = tmp_path / "out"
    report = import_movielens(str(source), str(out))
    assert (report.format, report.items, report.interactions, report.users) == ("ml-100k", 4, 5, 3)
    items = {row["item_id"]: row for row in load_dataset(str(out)).items.to_pylist()}
    assert items["2"]["title"] == "Café au lait (1994)"
    assert items["3"]["text"] == "Señor Blues (1996). Genres: Drama, Romance."
    assert items["1"]["tags"] == ["Animation", "Children's", "Comedy"]
    assert items["4"]["category"] is None and items["4"]["tags"] == []  # the "unknown" genre is no genre
    assert leaks(out, [str(user) for user in ML100K_USERS]) == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "987654301\t1\tfive\t881250960",
            r"u\.data, row 6 \(line 6\), column 'rating': 'five' is not a number",
        ),
        ("987654301\t1\t4", r"u\.data, row 6 \(line 6\): expected 4 fields, found 3"),
        ("987654301\t77\t4\t881250960", r"u\.data, row 6 \(line 6\), column 'item id': unknown item '77'"),
        (
            "987654301\t1\t4\tyesterday",
            r"u\.data, row 6 \(line 6\), column 'timestamp': 'yesterday' is not an integer",
        ),
    ],
)
def test_ml100k_corrupt_row_is_one_line_error_or_skipped(tmp_path, extra, message):
    source = write_ml100k(tmp_path / "src", extra_data_lines=(extra, "987654302\t1\t2\t881250999"))
    with pytest.raises(DataError, match=message) as excinfo:
        import_movielens(str(source), str(tmp_path / "out"))
    assert "\n" not in str(excinfo.value)
    assert not (tmp_path / "out" / "interactions.parquet").exists()
    report = import_movielens(str(source), str(tmp_path / "out"), skip_bad_rows=True)
    assert report.skipped == {str(source / "u.data"): 1}
    assert report.interactions == 6  # 5 good rows + the good line after the bad one


def test_ml_latest_corrupt_rows_skipped_and_counted(tmp_path):
    source = write_ml_latest(
        tmp_path / "src",
        ratings_lines=("13,1,abc,1260759200", "13,2,4.0", "13,99,4.0,1260759201", "", "14,2,5.0,1260759300"),
        tags_lines=("12,42,orphan tag,1138537773",),
    )
    with pytest.raises(DataError, match=r"tags\.csv, row 4 \(line 5\), column 'movieId': unknown item '42'"):
        import_movielens(str(source), str(tmp_path / "out"))
    report = import_movielens(str(source), str(tmp_path / "out"), skip_bad_rows=True)
    assert report.skipped == {str(source / "tags.csv"): 1, str(source / "ratings.csv"): 3}
    assert report.interactions == 4 and report.users == 3
    items = {row["item_id"]: row for row in load_dataset(str(tmp_path / "out")).items.to_pylist()}
    assert items["2"]["title"] == "American President, The (1995)"
    assert items["1"]["text"].endswith("Tags: pixar.")  # case-folded, counted once
    assert "example.com" not in items["2"]["text"] and "write me at" in items["2"]["text"]
    assert items["3"]["category"] is None and items["3"]["tags"] == []


def test_ml_latest_first_bad_row_error(tmp_path):
    source = write_ml_latest(tmp_path / "src", ratings_lines=("13,1,abc,1260759200",))
    with pytest.raises(
        DataError, match=r"ratings\.csv, row 4 \(line 5\), column 'rating': 'abc' is not a number"
    ):
        import_movielens(str(source), str(tmp_path / "out"))
    source = write_ml_latest(tmp_path / "src2", ratings_lines=("13,x7,4.0,1260759200",))
    with pytest.raises(
        DataError, match=r"ratings\.csv, row 4 \(line 5\), column 'movieId': 'x7' is not an integer id"
    ):
        import_movielens(str(source), str(tmp_path / "out"))


def test_missing_column_and_unknown_layout(tmp_path):
    source = write_ml_latest(tmp_path / "src")
    (source / "ratings.csv").write_text("userId,movieId,timestamp\n11,1,1260759144\n")
    with pytest.raises(
        DataError, match=r"ratings\.csv: missing column 'rating' \(found: userId, movieId, timestamp\)"
    ):
        import_movielens(str(source), str(tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a MovieLens folder"):
        import_movielens(str(tmp_path / "empty"), str(tmp_path / "out"))
    with pytest.raises(DataError, match="no such directory"):
        import_movielens(str(tmp_path / "nowhere"), str(tmp_path / "out"))


def test_generic_csv_with_mapping_and_parquet_items(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text(
        "uid,movie,ts,stars,kind,ip\n"
        "alice-raw,m1,100,4.5,rating,10.0.0.1\n"
        "bob-raw,m2,200,1,click,10.0.0.2\n"
        "alice-raw,m2,300,3,view,10.0.0.1\n"
    )
    items = tmp_path / "items.parquet"
    pq.write_table(
        pa.table(
            {
                "id": ["m1", "m2"],
                "name": ["First", "Second"],
                "blurb": ["great, see https://spam.example/x", "mail me: me@home.org"],
                "genres": [["drama"], ["comedy", "call 555-123-4567"]],
                "year": [1999, 2001],
            }
        ),
        items,
    )
    mapping = parse_mapping(
        [
            "user_id=uid",
            "item_id=movie",
            "items.item_id=id",
            "title=name",
            "text=blurb",
            "tags=genres",
            "timestamp=ts",
            "value=stars",
            "event=kind",
        ]
    )
    report = import_table(str(log), str(tmp_path / "out"), mapping=mapping, items=str(items))
    assert (report.items, report.interactions, report.users) == (2, 3, 2)
    assert report.dropped_columns == ("ip",)
    dataset = load_dataset(str(tmp_path / "out"))
    rows = dataset.items.to_pylist()
    assert rows[0]["text"] == "great, see" and rows[1]["text"] == "mail me:"
    assert rows[1]["tags"] == ["comedy", "call"]
    assert dataset.items.column("year").to_pylist() == [1999, 2001]  # extra item columns are kept
    assert dataset.interactions.column("event").to_pylist() == ["rating", "click", "view"]
    assert dataset.interactions.column("value").to_pylist() == [4.5, 1.0, 3.0]
    assert "ip" not in dataset.interactions.column_names
    assert leaks(tmp_path / "out", ["alice-raw", "bob-raw", "10.0.0.1"]) == []


def test_generic_parquet_log_without_items(tmp_path):
    log = tmp_path / "log.parquet"
    times = pa.array([1_000_000, 2_000_000], pa.timestamp("ms"))
    pq.write_table(pa.table({"user": ["x", "y"], "item_id": [7, 8], "when": times}), log)
    report = import_table(
        str(log),
        str(tmp_path / "out"),
        mapping=parse_mapping(["user_id=user", "timestamp=when"]),
        event="purchase",
    )
    assert (report.items, report.interactions) == (2, 2)
    dataset = load_dataset(str(tmp_path / "out"))
    assert dataset.interactions.column("timestamp").to_pylist() == [1_000, 2_000]
    assert dataset.interactions.column("item_id").to_pylist() == ["7", "8"]
    assert set(dataset.interactions.column("event").to_pylist()) == {"purchase"}
    assert dataset.items.column("title").to_pylist() == ["7", "8"]


def test_generic_errors(tmp_path):
    log = tmp_path / "log.tsv"
    log.write_text("uid\titem_id\ttimestamp\tevent\nu1\ta\t1\tclick\nu2\tb\t2\tlike\n")
    with pytest.raises(DataError, match=r"log\.tsv: missing column 'user' \(mapped to user_id\)"):
        import_table(str(log), str(tmp_path / "out"), mapping=parse_mapping(["user_id=user"]))
    with pytest.raises(DataError, match=r"log\.tsv, row 2 \(line 3\), column 'event': unknown event 'like'"):
        import_table(str(log), str(tmp_path / "out"), mapping=parse_mapping(["user_id=uid"]))
    report = import_table(
        str(log), str(tmp_path / "out"), mapping=parse_mapping(["user_id=uid"]), skip_bad_rows=True
    )
    assert report.interactions == 1 and report.skipped == {str(log): 1}
    with pytest.raises(ConfigError, match="unknown field 'user'"):
        parse_mapping(["user=uid"])
    with pytest.raises(ConfigError, match="expected FIELD=COLUMN"):
        parse_mapping(["user_id"])
