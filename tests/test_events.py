"""The event log: real Parquet part files, batching, durability of acknowledged rows, bad rows."""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayrec.errors import DataError, RayrecError
from rayrec.events import (
    FEEDBACK_SCHEMA,
    IMPRESSIONS_SCHEMA,
    REQUESTS_SCHEMA,
    EventLog,
    compact,
    quarantine_corrupt_parts,
    read_feedback,
    read_impressions,
    read_requests,
    recent_slates,
    recover,
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
    unversioned = {"key_id": None, "index_version": None, "policy_version": None}
    assert impressions.to_pylist() == [
        {**row, "score": pytest.approx(row["score"]), "propensity": 1.0, **unversioned} for row in rows
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
        while (
            not [f for f in part_files(tmp_path, "feedback") if f.startswith("part-")]
            and time.monotonic() < deadline
        ):
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


# ---- durability, failures, corrupt parts, compaction ----------------------------------------------------


def feedback_row(request_id: str, item_id: str = "i1", event: str = "click") -> dict:
    return {"request_id": request_id, "item_id": item_id, "event": event, "value": 1.0}


def test_a_durable_write_is_on_disk_when_its_future_completes(tmp_path):
    log = EventLog(str(tmp_path), max_rows=100_000, max_delay_s=3600)  # only durable writes flush
    try:
        log.log_impressions([impression("r1", 0)], requests=[request("r1")])
        futures = [log.log_durably([feedback_row(f"r{i}")]) for i in range(20)]
        for i, future in enumerate(futures):
            assert future.result(timeout=60) == 1
            # acknowledged means written: a fresh reader sees it, and the request it is about
            assert f"r{i}" in read_feedback(str(tmp_path)).column("request_id").to_pylist()
        assert read_requests(str(tmp_path)).column("request_id").to_pylist() == ["r1"]
        assert not [f for f in part_files(tmp_path, "feedback") if f.startswith(".")]
    finally:
        log.close()
    assert read_feedback(str(tmp_path)).num_rows == 20


def break_dir(path) -> None:
    for child in path.iterdir():
        child.unlink()
    path.rmdir()
    path.write_text("not a directory")  # every write into it now fails, as a full or broken disk would


def mend_dir(path) -> None:
    path.unlink()
    path.mkdir()


def test_a_server_log_keeps_taking_rows_while_writes_fail_and_fails_only_durable_writes(tmp_path):
    log = EventLog(
        str(tmp_path), max_rows=100_000, max_delay_s=0.05, on_write_error="keep", max_pending_rows=7
    )
    try:
        break_dir(tmp_path / "feedback")
        failed = log.log_durably([feedback_row("lost")])
        with pytest.raises(RayrecError, match="write failed"):
            failed.result(timeout=60)
        for i in range(3):  # the server keeps answering: impressions are queued, not refused
            assert log.log_impressions([impression(f"kept{i}", 0)], requests=[request(f"kept{i}")]) == 1
        status = log.status()
        assert status["failing"] and status["write_failures"] >= 1 and status["pending"] == 6
        log.log_impressions([impression("over", 0), impression("over", 1)])  # past max_pending_rows
        assert log.status()["dropped"]["impressions"] == 2
        mend_dir(tmp_path / "feedback")
        ok = log.log_durably([feedback_row("kept0")])
        assert ok.result(timeout=60) == 1
    finally:
        log.close()
    assert read_feedback(str(tmp_path)).column("request_id").to_pylist() == ["kept0"]  # never "lost"
    assert sorted(read_impressions(str(tmp_path)).column("request_id").to_pylist()) == [
        "kept0",
        "kept1",
        "kept2",
    ]
    assert not log.status()["failing"]


def test_a_corrupt_part_is_skipped_by_readers_and_quarantined(tmp_path):
    with EventLog(str(tmp_path)) as log:
        log.log_impressions([impression("good", 0)])
    (tmp_path / "impressions" / "part-00000000000000000001-deadbeef0000.parquet").write_bytes(
        b"PAR1 torn write"
    )
    assert read_impressions(str(tmp_path)).column("request_id").to_pylist() == ["good"]
    moved = quarantine_corrupt_parts(str(tmp_path))
    assert [os.path.basename(m) for m in moved] == ["part-00000000000000000001-deadbeef0000.parquet"]
    assert (tmp_path / "quarantine" / "impressions").is_dir()
    assert len(part_files(tmp_path, "impressions")) == 1


def write_small_parts(directory, n: int) -> list[str]:
    ids = []
    for i in range(n):
        with EventLog(str(directory)) as log:
            log.log_impressions([impression(f"r{i:03d}", 0)], requests=[request(f"r{i:03d}")])
            log.log_feedback([feedback_row(f"r{i:03d}")])
        ids.append(f"r{i:03d}")
    return ids


def test_compaction_merges_small_parts_keeping_every_row_in_order(tmp_path):
    ids = write_small_parts(tmp_path, 20)
    assert len(part_files(tmp_path, "impressions")) == 20
    assert compact(str(tmp_path), min_parts=16) == {"requests": 20, "impressions": 20, "feedback": 20}
    for kind in ("requests", "impressions", "feedback"):
        assert len(part_files(tmp_path, kind)) == 1, kind
    assert read_impressions(str(tmp_path)).column("request_id").to_pylist() == ids
    assert read_requests(str(tmp_path)).column("request_id").to_pylist() == ids
    assert compact(str(tmp_path), min_parts=16) == {}  # nothing small left


def test_an_interrupted_compaction_never_shows_rows_twice_and_is_finished_by_recover(tmp_path):
    ids = write_small_parts(tmp_path, 4)
    sources = [f for f in part_files(tmp_path, "impressions") if not f.startswith(".")]
    directory = tmp_path / "impressions"
    merged = "part-00000000000000000000-cmerged00000.parquet"
    pq.write_table(read_impressions(str(tmp_path)), directory / merged)
    # a crash after the merged part appeared and before its sources were deleted
    (directory / ".compact-crashed.json").write_text(json.dumps({"merged": merged, "sources": sources}))
    assert read_impressions(str(tmp_path)).column("request_id").to_pylist() == ids
    # a crash before the merged part appeared: its intent names a part that is not there
    (tmp_path / "feedback" / ".compact-early.json").write_text(
        json.dumps({"merged": "part-9-cnever.parquet", "sources": part_files(tmp_path, "feedback")})
    )
    assert read_feedback(str(tmp_path)).num_rows == 4
    assert recover(str(tmp_path)) == {"compactions": 2, "temporary": 0}
    assert part_files(tmp_path, "impressions") == [merged] and len(part_files(tmp_path, "feedback")) == 4
    assert read_impressions(str(tmp_path)).column("request_id").to_pylist() == ids


def test_readers_during_compaction_see_every_row_once(tmp_path):
    ids = write_small_parts(tmp_path, 24)
    seen: list[list[str]] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            seen.append(read_impressions(str(tmp_path)).column("request_id").to_pylist())

    watcher = threading.Thread(target=reader)
    watcher.start()
    try:
        compact(str(tmp_path), min_parts=2)
    finally:
        done.set()
        watcher.join()
    assert seen and all(rows == ids for rows in seen)


def test_recent_slates_rebuild_what_a_restarted_server_remembers(tmp_path):
    with EventLog(str(tmp_path)) as log:
        for i in range(5):
            rows = [
                {**impression(f"r{i}", p, f"i{p}"), "index_version": "ix1", "policy_version": "pv1"}
                for p in range(3)
            ]
            log.log_impressions(rows, requests=[request(f"r{i}")])
        log.log_feedback([feedback_row("r4", "i2"), feedback_row("r0", "i0")])
    slates, seen = recent_slates(str(tmp_path), limit=3)
    assert list(slates) == ["r2", "r3", "r4"]
    assert slates["r4"]["items"] == {"i0", "i1", "i2"} and slates["r4"]["policy_version"] == "pv1"
    assert seen == {("r4", "i2", "click")}
