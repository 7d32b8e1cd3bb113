"""The event log: real Parquet part files, batching, durability of acknowledged rows, bad rows."""

from __future__ import annotations

import os
import threading
import time

import pyarrow as pa
import pytest

from rayrec.errors import DataError, RayrecError
from rayrec.events import (
    FEEDBACK_SCHEMA,
    IMPRESSIONS_SCHEMA,
    EventLog,
    read_feedback,
    read_impressions,
)


def impression(request_id: str, position: int, item_id: str = "i1") -> dict:
    return {
        "request_id": request_id,
        "ts": 1_700_000_000.5 + position,
        "user_id": "pseudo-u1",
        "arm": "control",
        "policy": "greedy",
        "item_id": item_id,
        "position": position,
        "score": 0.5 - 0.1 * position,
        "propensity": 1.0,
    }


def part_files(directory, kind: str) -> list[str]:
    path = directory / kind
    return sorted(os.listdir(path)) if path.exists() else []


def test_round_trip_keeps_rows_types_and_order(tmp_path):
    rows = [impression("r1", p, f"i{p}") for p in range(3)]
    with EventLog(str(tmp_path), max_delay_s=60) as log:
        assert log.log_impressions(rows) == 3
        assert log.log_feedback([{"request_id": "r1", "item_id": "i2", "event": "click"}]) == 1
        assert log.pending_rows() == 4
    impressions = read_impressions(str(tmp_path))
    feedback = read_feedback(str(tmp_path))
    assert impressions.schema == IMPRESSIONS_SCHEMA
    assert impressions.to_pylist() == [
        {**row, "score": pytest.approx(row["score"]), "propensity": 1.0} for row in rows
    ]
    assert feedback.schema == FEEDBACK_SCHEMA
    (fb,) = feedback.to_pylist()
    assert (fb["request_id"], fb["item_id"], fb["event"], fb["value"]) == ("r1", "i2", "click", 1.0)
    assert fb["ts"] > 1e9  # filled with the logging time


def test_empty_directory_reads_as_empty_tables(tmp_path):
    assert read_impressions(str(tmp_path / "nothing")).num_rows == 0
    assert read_feedback(str(tmp_path)).schema == FEEDBACK_SCHEMA


def test_size_based_flush_writes_parts_without_flush_call(tmp_path):
    log = EventLog(str(tmp_path), max_rows=4, max_delay_s=60)
    try:
        log.log_impressions([impression("r1", p) for p in range(5)])
        deadline = time.monotonic() + 20
        while log.pending_rows() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert log.pending_rows() == 0
        assert len(part_files(tmp_path, "impressions")) == 1
        assert read_impressions(str(tmp_path)).num_rows == 5
    finally:
        log.close()


def test_time_based_flush(tmp_path):
    log = EventLog(str(tmp_path), max_rows=10_000, max_delay_s=0.05)
    try:
        log.log_feedback([{"request_id": "r", "item_id": "i", "event": "skip", "value": 0.0}])
        deadline = time.monotonic() + 20
        while not part_files(tmp_path, "feedback") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert read_feedback(str(tmp_path)).column("event").to_pylist() == ["skip"]
    finally:
        log.close()


def test_every_acknowledged_row_is_on_disk_after_close_with_concurrent_writers(tmp_path):
    log = EventLog(str(tmp_path), max_rows=7, max_delay_s=0.01)
    acknowledged: list[str] = []
    lock = threading.Lock()

    def writer(thread: int) -> None:
        for i in range(50):
            request_id = f"t{thread}-{i}"
            log.log_impressions([impression(request_id, 0)])
            with lock:
                acknowledged.append(request_id)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    written = read_impressions(str(tmp_path)).column("request_id").to_pylist()
    assert sorted(written) == sorted(acknowledged)
    assert len(part_files(tmp_path, "impressions")) > 1  # batched, not one file per row
    assert not [f for f in part_files(tmp_path, "impressions") if f.startswith(".")]


def test_table_input_and_two_writers_share_a_directory(tmp_path):
    table = pa.Table.from_pylist([impression("a", 0), impression("a", 1)])
    with EventLog(str(tmp_path)) as first, EventLog(str(tmp_path)) as second:
        first.log_impressions(table)
        second.log_impressions([impression("b", 0)])
    assert sorted(read_impressions(str(tmp_path)).column("request_id").to_pylist()) == ["a", "a", "b"]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {k: v for k, v in impression("r", 0).items() if k != "arm"},
            "'arm' is missing or null in 1 row.*row 1",
        ),
        ({**impression("r", 0), "position": "first"}, "'position'"),
        ({**impression("r", 0), "score": None}, "'score'"),
    ],
)
def test_bad_rows_are_rejected_whole_with_the_column_named(tmp_path, row, message):
    with EventLog(str(tmp_path)) as log:
        with pytest.raises(DataError, match=message):
            log.log_impressions([impression("ok", 0), row])
        assert log.pending_rows() == 0
    assert read_impressions(str(tmp_path)).num_rows == 0


def test_failed_write_keeps_rows_and_reports(tmp_path):
    log = EventLog(str(tmp_path), max_delay_s=60)
    log.log_impressions([impression("r", 0)])
    (tmp_path / "impressions").rmdir()
    (tmp_path / "impressions").write_text("not a directory")  # every write now fails
    with pytest.raises(RayrecError, match="write failed"):
        log.flush()
    assert log.pending_rows() == 1
    with pytest.raises(RayrecError, match="earlier write failed"):
        log.log_impressions([impression("r2", 0)])
    (tmp_path / "impressions").unlink()
    (tmp_path / "impressions").mkdir()
    log.close()
    assert read_impressions(str(tmp_path)).column("request_id").to_pylist() == ["r"]


def test_closed_log_refuses_rows(tmp_path):
    log = EventLog(str(tmp_path))
    log.close()
    log.close()
    with pytest.raises(RayrecError, match="closed"):
        log.log_feedback([{"request_id": "r", "item_id": "i", "event": "click"}])
