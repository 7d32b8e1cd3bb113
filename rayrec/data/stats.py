"""Descriptive statistics of a dataset: sizes, sparsity, popularity concentration, activity, mixes."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayrec.data.io import Dataset
from rayrec.data.validate import as_array
from rayrec.errors import DataError

TOP_CATEGORIES = 20
"""Categories listed by name in the category mix; the rest are summed under ``(other)``."""
QUANTILES = {"p10": 0.10, "p25": 0.25, "median": 0.5, "p75": 0.75, "p90": 0.90, "p99": 0.99}


def popularity_gini(counts: np.ndarray | list[float]) -> float:
    """Gini coefficient of item popularity: 0 when every item is equally popular, near 1 when a few take all.

    Args:
        counts: [N] non-negative interaction counts (or weights) per item; items never seen count as 0
            and belong in the array, since they are part of the concentration.

    Returns:
        The Gini coefficient in [0, 1 - 1/N]; 0 for an empty or all-zero array.
    """
    values = np.asarray(counts, dtype=np.float64).ravel()
    if not np.isfinite(values).all() or (values < 0).any():
        raise DataError("popularity counts must be finite and non-negative")
    n, total = len(values), values.sum()
    if n == 0 or total == 0:
        return 0.0
    ranks = np.arange(1, n + 1)
    return float(2.0 * np.dot(ranks, np.sort(values)) / (n * total) - (n + 1) / n)


def distribution(values: np.ndarray) -> dict[str, float]:
    """min, quantiles, mean and max of ``values`` [n]."""
    if len(values) == 0:
        return {}
    summary = {"min": float(values.min())}
    summary.update({name: float(np.quantile(values, q)) for name, q in QUANTILES.items()})
    summary.update(mean=float(values.mean()), max=float(values.max()))
    return summary


def _value_counts(values: pa.Array | pa.ChunkedArray) -> dict[str, int]:
    counts = pc.value_counts(as_array(values))
    pairs = zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
    return dict(sorted(pairs, key=lambda pair: (-pair[1], str(pair[0]))))


def _category_mix(categories: pa.ChunkedArray) -> dict[str, int]:
    counts = _value_counts(pc.fill_null(as_array(categories), "(none)"))
    top = dict(list(counts.items())[:TOP_CATEGORIES])
    rest = sum(counts.values()) - sum(top.values())
    return {**top, "(other)": rest} if rest else top


def _iso(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def dataset_stats(dataset: Dataset) -> dict:
    """Counts, sparsity, popularity Gini, interactions per user and item, event and category mixes.

    Sparsity counts distinct (user, item) pairs, so repeated events on one item do not make a
    dataset look denser than it is.
    """
    items, interactions = dataset.items, dataset.interactions
    item_ids = as_array(items.column("item_id"))
    users = pc.dictionary_encode(as_array(interactions.column("user_id"))).indices.to_numpy(
        zero_copy_only=False
    )
    # position in the catalog; load_dataset guarantees every interaction's item is there
    item_index = pc.index_in(as_array(interactions.column("item_id")), value_set=item_ids).to_numpy(
        zero_copy_only=False
    )
    n_items, n_users, n_interactions = len(item_ids), int(users.max()) + 1, interactions.num_rows
    pairs = len(np.unique(users.astype(np.int64) * n_items + item_index))
    per_item = np.bincount(item_index, minlength=n_items)
    per_user = np.bincount(users, minlength=n_users)
    timestamps = as_array(interactions.column("timestamp"))
    return {
        "items": n_items,
        "users": n_users,
        "interactions": n_interactions,
        "user_item_pairs": pairs,
        "sparsity": 1.0 - pairs / (n_users * n_items),
        "popularity_gini": popularity_gini(per_item),
        "items_without_interactions": int((per_item == 0).sum()),
        "interactions_per_user": distribution(per_user),
        "interactions_per_item": distribution(per_item),
        "events": _value_counts(interactions.column("event")),
        "categories": _category_mix(items.column("category")),
        "first_interaction": _iso(pc.min(timestamps).as_py()),
        "last_interaction": _iso(pc.max(timestamps).as_py()),
    }


def format_stats(stats: dict) -> str:
    """A plain-text table of :func:`dataset_stats` for the terminal."""
    lines = []

    def row(label: str, value: object, indent: int = 0) -> None:
        if isinstance(value, float):
            text = (
                f"{value:,.0f}"
                if value.is_integer()
                else f"{value:.4f}"
                if abs(value) < 10
                else f"{value:,.2f}"
            )
        elif isinstance(value, int):
            text = f"{value:,}"
        else:
            text = str(value)
        lines.append(f"{' ' * indent}{label:<{30 - indent}} {text:>16}")

    for key, value in stats.items():
        label = key.replace("_", " ")
        if isinstance(value, dict):
            lines.append(label)
            for name, inner in value.items():
                row(str(name), inner, indent=2)
        else:
            row(label, value)
    return "\n".join(lines)
