"""Dataset statistics and the popularity Gini the simulator's calibration also uses."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from rayrec.data.io import load_dataset, write_interactions, write_items
from rayrec.data.stats import dataset_stats, format_stats, popularity_gini
from rayrec.errors import DataError


def test_gini_known_values():
    assert popularity_gini([5, 5, 5, 5]) == pytest.approx(0.0)
    assert popularity_gini([0, 0, 0, 10]) == pytest.approx(0.75)  # 1 - 1/n: one item takes everything
    assert popularity_gini(np.array([4, 1, 3, 2])) == pytest.approx(0.25)  # mean |xi - xj| / (2 mean)
    assert popularity_gini([]) == 0.0
    assert popularity_gini([0, 0]) == 0.0


def test_gini_grows_with_concentration():
    ranks = np.arange(1, 1001)
    assert popularity_gini(ranks**-0.5) < popularity_gini(ranks**-1.0) < popularity_gini(ranks**-2.0)


def test_gini_rejects_bad_counts():
    with pytest.raises(DataError):
        popularity_gini([1, -1])
    with pytest.raises(DataError):
        popularity_gini([1, np.nan])


def test_dataset_stats(tmp_path):
    items = pa.table(
        {
            "item_id": ["a", "b", "c", "d"],
            "title": list("ABCD"),
            "text": list("ABCD"),
            "category": ["x", "x", None, "y"],
            "tags": [[], [], [], []],
        }
    )
    interactions = pa.table(
        {
            "user_id": ["u1", "u1", "u1", "u2", "u3"],
            "item_id": ["a", "a", "b", "a", "c"],
            "timestamp": [0, 86_400, 2, 3, 4],
            "event": ["click", "click", "rating", "click", "view"],
            "value": [1.0, 1.0, 4.0, 1.0, 1.0],
        }
    )
    write_items(items, tmp_path)
    write_interactions(interactions, tmp_path)
    stats = dataset_stats(load_dataset(str(tmp_path)))
    assert (stats["items"], stats["users"], stats["interactions"]) == (4, 3, 5)
    assert stats["user_item_pairs"] == 4
    assert stats["sparsity"] == pytest.approx(1 - 4 / 12)
    assert stats["popularity_gini"] == pytest.approx(popularity_gini([3, 1, 1, 0]))
    assert stats["items_without_interactions"] == 1
    assert stats["interactions_per_user"]["max"] == 3 and stats["interactions_per_user"]["min"] == 1
    assert stats["events"] == {"click": 3, "rating": 1, "view": 1}
    assert stats["categories"] == {"x": 2, "(none)": 1, "y": 1}
    assert stats["first_interaction"] == "1970-01-01T00:00:00Z"
    assert stats["last_interaction"] == "1970-01-02T00:00:00Z"
    table = format_stats(stats)
    assert "popularity gini" in table and "interactions per user" in table
