"""Retrieval evaluation on the temporal split: leave-last-out, full catalog, seen items excluded.

Each user with a held-out (test) interaction is queried with the L2-normalised mean of the embeddings
of their last ``history`` train items; the catalog is ranked by inner product, items the user already
interacted with in train are excluded, and the held-out item is the one relevant answer. The popularity
baseline (train interaction counts, same exclusions) is always computed beside.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from rayrec import storage
from rayrec.config import RayConfig, save_config
from rayrec.data.io import load_dataset
from rayrec.data.split import temporal_split
from rayrec.errors import ConfigError, DataError
from rayrec.features import l2_normalize
from rayrec.index.exact import popularity_search
from rayrec.index.item_index import ItemIndex
from rayrec.metrics.retrieval import ranking_metrics

RECALL_KS = (10, 50, 100)
HISTORY = 20
CONFIG_NAME = "eval-retrieval.config.yaml"


@dataclass(frozen=True)
class EvalSet:
    """Users to evaluate: their recent history, everything they have seen, and the held-out item.

    All ids are item rows of the catalog being ranked.
    """

    histories: list[np.ndarray]
    """[U] int64 arrays: each user's last ``history`` train items, oldest first."""
    seen: list[np.ndarray]
    """[U] int64 arrays: every item the user interacted with in train (excluded from the ranking)."""
    targets: np.ndarray
    """[U] int64 held-out item per user."""
    train_counts: np.ndarray
    """[N] int64 train interactions per item (the popularity baseline)."""

    def __len__(self) -> int:
        return len(self.targets)

    def queries(self, embeddings: np.ndarray) -> np.ndarray:
        """[U, d] normalised mean of each user's history embeddings (``embeddings`` [N, d])."""
        return np.stack([l2_normalize(embeddings[h].mean(axis=0)) for h in self.histories])


def item_rows(table: pa.Table, position: dict[str, int]) -> np.ndarray:
    """[M] int64 catalog row of each interaction's item; an item outside the catalog is a DataError."""
    ids = table.column("item_id").to_pylist()
    unknown = [i for i in ids if i not in position]
    if unknown:
        raise DataError(
            f"{len(unknown)} interactions name items absent from the catalog, e.g. {unknown[0]!r}"
        )
    return np.fromiter((position[i] for i in ids), dtype=np.int64, count=len(ids))


def user_sequences(interactions: pa.Table, position: dict[str, int]) -> dict[str, np.ndarray]:
    """Each user's item rows in time order (ties keep row order), keyed by user id."""
    rows = item_rows(interactions, position)
    users = np.asarray(interactions.column("user_id").to_pylist(), dtype=str)
    times = interactions.column("timestamp").to_numpy()
    order = np.lexsort((np.arange(len(rows)), times, users))  # user, then time, then row
    users_sorted = users[order]
    starts = np.flatnonzero(np.r_[True, users_sorted[1:] != users_sorted[:-1]]) if len(order) else []
    stops = np.r_[starts[1:], len(order)] if len(order) else []
    return {str(users_sorted[a]): rows[order[a:b]] for a, b in zip(starts, stops, strict=True)}


def make_eval_set(
    train: pa.Table, test: pa.Table, item_ids: list[str] | np.ndarray, history: int = HISTORY
) -> EvalSet:
    """Build an :class:`EvalSet` from a temporal split; users without train history are skipped."""
    position = {str(item): row for row, item in enumerate(list(item_ids))}
    by_user = user_sequences(train, position)
    histories, seen, targets = [], [], []
    for user, target in zip(
        test.column("user_id").to_pylist(), item_rows(test, position).tolist(), strict=True
    ):
        rows = by_user.get(str(user))
        if rows is None or not len(rows):
            continue
        histories.append(rows[-history:])
        seen.append(np.unique(rows))
        targets.append(target)
    counts = np.bincount(item_rows(train, position), minlength=len(position)).astype(np.int64)
    return EvalSet(
        histories=histories, seen=seen, targets=np.asarray(targets, dtype=np.int64), train_counts=counts
    )


@dataclass(kw_only=True)
class EvalRetrievalConfig(RayConfig):
    """Evaluate an item index on a dataset's temporal split."""

    index: str
    """Index directory written by build-index."""
    data: str
    """Data directory with items.parquet and interactions.parquet."""
    k: int = 10
    """Cut-off reported as recall@K and ndcg@K (Recall@10/50/100 and MRR are always reported)."""
    history: int = HISTORY
    """Most recent train items averaged into each user's query."""
    json: str | None = None
    """Write the metrics as JSON here (local path or URI)."""

    def __post_init__(self) -> None:
        if self.k < 1 or self.history < 1:
            raise ConfigError(f"--k and --history must be >= 1, got k={self.k}, history={self.history}")


def evaluate_rankings(
    search, eval_set: EvalSet, k: int, recall_ks: tuple[int, ...] = RECALL_KS
) -> dict[str, float]:
    """Metrics of ``search(exclude, depth) -> indices [U, depth]`` against ``eval_set``'s targets."""
    depth = max(*recall_ks, k)
    ranked = search(eval_set.seen, depth)
    return ranking_metrics(ranked, eval_set.targets, recall_ks=(*recall_ks, k), ndcg_k=k)


def evaluate_retrieval(config: EvalRetrievalConfig) -> dict:
    """Model and popularity metrics of ``config.index`` on ``config.data``; writes JSON when asked."""
    index = ItemIndex.load(config.index)
    dataset = load_dataset(config.data)
    missing = set(dataset.items.column("item_id").to_pylist()) - set(index.item_ids.tolist())
    if missing:
        raise DataError(
            f"{config.data}: {len(missing)} items are not in index {config.index} (e.g. {sorted(missing)[0]!r}); "
            "rebuild the index from this data"
        )
    train, test = temporal_split(dataset.interactions)
    eval_set = make_eval_set(train, test, index.item_ids, history=config.history)
    if not len(eval_set):
        raise DataError(f"{config.data}: no user has both train history and a held-out interaction")
    queries = eval_set.queries(index.embeddings)
    model = evaluate_rankings(
        lambda seen, depth: index.search(queries, depth, exclude=seen)[1], eval_set, config.k
    )
    popularity = evaluate_rankings(
        lambda seen, depth: popularity_search(eval_set.train_counts, len(eval_set), depth, exclude=seen)[1],
        eval_set,
        config.k,
    )
    result = {
        "k": config.k,
        "users": len(eval_set),
        **model,
        "index": {"type": index.index_type, "encoder": index.encoder, "items": len(index)},
        "baselines": {"popularity": popularity},
    }
    if config.json:
        storage.write_text(config.json, json.dumps(result, indent=2) + "\n")
        save_config(config, config.json.rsplit("/", 1)[0] if "/" in config.json else ".", name=CONFIG_NAME)
    return result
