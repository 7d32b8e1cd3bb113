"""Temporal leave-last-out split."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from rayrec.data.split import cold_item_split, temporal_split


def log(rows: list[tuple[str, str, int]]) -> pa.Table:
    users, items, times = zip(*rows, strict=True)
    return pa.table(
        {"user_id": list(users), "item_id": list(items), "timestamp": pa.array(times, pa.int64())}
    )


def test_last_interaction_per_user_is_held_out():
    table = log(
        [("u1", "a", 30), ("u2", "x", 5), ("u1", "b", 10), ("u3", "p", 1), ("u1", "c", 20), ("u3", "q", 2)]
    )
    train, test = temporal_split(table)
    assert test.to_pylist() == [
        {"user_id": "u1", "item_id": "a", "timestamp": 30},
        {"user_id": "u3", "item_id": "q", "timestamp": 2},
    ]
    # a user with one interaction stays in train; train keeps the input order
    assert [(r["user_id"], r["item_id"]) for r in train.to_pylist()] == [
        ("u2", "x"), ("u1", "b"), ("u3", "p"), ("u1", "c"),
    ]  # fmt: skip


def test_ties_break_by_row_order_the_same_way_every_time():
    table = log([("u1", "a", 7), ("u1", "b", 7), ("u1", "c", 3)])
    for _ in range(3):
        _, test = temporal_split(table)
        assert test.column("item_id").to_pylist() == ["b"]


def test_split_partitions_rows_and_does_not_depend_on_input_order():
    rng = np.random.default_rng(0)
    n = 2_000
    users = rng.integers(0, 150, n).astype(str)
    times = rng.permutation(n)  # distinct times: the held-out row is unique per user
    table = pa.table({"user_id": users, "item_id": np.arange(n).astype(str), "timestamp": times})
    train, test = temporal_split(table)
    assert train.num_rows + test.num_rows == n
    assert set(train.column("item_id").to_pylist()).isdisjoint(test.column("item_id").to_pylist())
    counts = np.unique(users, return_counts=True)
    assert test.num_rows == int((counts[1] >= 2).sum())
    for row in test.to_pylist():
        assert row["timestamp"] == times[users == row["user_id"]].max()
    shuffled = table.take(rng.permutation(n))
    _, test_shuffled = temporal_split(shuffled)
    assert sorted(test_shuffled.column("item_id").to_pylist()) == sorted(test.column("item_id").to_pylist())


def test_empty_log():
    train, test = temporal_split(log([("u", "i", 1)]).slice(0, 0))
    assert train.num_rows == test.num_rows == 0


def test_cold_item_split_removes_cold_items_from_every_train_row():
    rng = np.random.default_rng(1)
    n = 3_000
    users = rng.integers(0, 200, n).astype(str)
    items = rng.integers(0, 120, n).astype(str)
    table = pa.table({"user_id": users, "item_id": items, "timestamp": rng.permutation(n)})
    plain_train, plain_test = temporal_split(table)
    train, test, cold = cold_item_split(table, 0.3, seed=4)
    held_out = set(plain_test.column("item_id").to_pylist())
    assert test.equals(plain_test)  # the held-out rows are the temporal split's
    assert len(cold) == round(0.3 * len(held_out)) and set(cold) <= held_out
    assert set(cold).isdisjoint(train.column("item_id").to_pylist())
    # only cold rows left train: every other train row is still there, in order
    kept = [r for r in plain_train.to_pylist() if r["item_id"] not in set(cold)]
    assert train.to_pylist() == kept and len(kept) < plain_train.num_rows
    _, _, again = cold_item_split(table, 0.3, seed=4)
    assert again.tolist() == cold.tolist()


def test_cold_item_split_with_no_cold_share_is_the_temporal_split():
    table = log([("u1", "a", 3), ("u1", "b", 4), ("u2", "b", 1), ("u2", "c", 2)])
    train, test, cold = cold_item_split(table, 0.0)
    assert (train, test) == temporal_split(table) and len(cold) == 0
    with pytest.raises(ValueError, match=r"cold_fraction must be in \[0, 1\]"):
        cold_item_split(table, 1.5)
