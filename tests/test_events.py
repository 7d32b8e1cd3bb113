"""The event log: real Parquet part files, batching, durability of acknowledged rows, bad rows."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pyarrow as pa
import pytest

from rayrec.errors import DataError, RayrecError
from rayrec.events import (
    FEEDBACK_SCHEMA,
    IMPRESSIONS_SCHEMA,
    REQUESTS_SCHEMA,
    EventLog,
    read_feedback,
    read_impressions,
    read_requests,
    requests_table,
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


def request(request_id: str, k: int = 4, d: int = 3) -> dict:
    return {
        "request_id": request_id,
        "ts": 1_700_000_000.5,
        "user_id": "pseudo-u1",
        "arm": "control",
        "policy": "greedy",
        "candidate_ids": [f"i{j}" for j in range(k)],
        "features": np.arange(k * 3, dtype=np.float32),  # [K * F]
        "profile": np.full(d, 0.5, dtype=np.float32),
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


def test_requests_are_logged_with_their_impressions(tmp_path):
    with EventLog(str(tmp_path), max_delay_s=60) as log:
        assert log.log_impressions([impression("r1", 0), impression("r1", 1)], requests=[request("r1")]) == 2
        assert log.pending_rows() == 3
    (row,) = read_requests(str(tmp_path)).to_pylist()
    assert row["candidate_ids"] == ["i0", "i1", "i2", "i3"]
    assert row["features"] == list(range(12)) and row["profile"] == [0.5] * 3
    assert row["budget"] == 1.0 and row["fallback"] is False  # the defaults
    assert read_requests(str(tmp_path / "nothing")).schema == REQUESTS_SCHEMA


def test_requests_table_builds_the_same_rows_from_arrays(tmp_path):
    obs = {
        "features": np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3),  # [B, K, F]
        "profile": np.ones((2, 3), dtype=np.float32),  # [B, d]
        "budget": np.array([[0.5], [1.0]], dtype=np.float32),  # [B, 1]
    }
    ids = np.array([[f"i{j}" for j in range(4)]] * 2)  # [B, K]
    table = requests_table(["a", "b"], np.array([1.0, 2.0]), ["u", "v"], ["x"] * 2, ["greedy"] * 2, ids, obs)
    with EventLog(str(tmp_path)) as log:
        log.log_impressions([impression("a", 0), impression("b", 0)], requests=table)
    rows = read_requests(str(tmp_path)).to_pylist()
    assert [r["request_id"] for r in rows] == ["a", "b"]
    assert rows[1]["features"] == list(range(12, 24)) and rows[0]["budget"] == 0.5
    assert not any(r["fallback"] for r in rows)


def test_bad_request_row_rejects_its_impressions_too(tmp_path):
    bad = {k: v for k, v in request("r").items() if k != "candidate_ids"}
    with EventLog(str(tmp_path)) as log:
        with pytest.raises(DataError, match="'candidate_ids'"):
            log.log_impressions([impression("r", 0)], requests=[bad])
        assert log.pending_rows() == 0
    assert read_impressions(str(tmp_path)).num_rows == 0 and read_requests(str(tmp_path)).num_rows == 0


def test_a_request_is_on_disk_no_later_than_its_impressions(tmp_path):
    """Concurrent writers and a reader: every impression a reader can see has its request row on disk."""
    log = EventLog(str(tmp_path), max_rows=5, max_delay_s=0.005)
    done = threading.Event()
    orphans: list[str] = []

    def writer(thread: int) -> None:
        for i in range(40):
            log.log_impressions([impression(f"t{thread}-{i}", 0)], requests=[request(f"t{thread}-{i}")])

    def reader() -> None:
        while not done.is_set():
            seen = set(read_impressions(str(tmp_path)).column("request_id").to_pylist())
            orphans.extend(seen - set(read_requests(str(tmp_path)).column("request_id").to_pylist()))

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(3)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    done.set()
    watcher.join()
    assert not orphans
    assert read_requests(str(tmp_path)).num_rows == read_impressions(str(tmp_path)).num_rows == 120
