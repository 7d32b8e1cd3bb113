"""Retrieval evaluation on the temporal split: leave-last-out, full catalog, seen items excluded.

Each user with a held-out (test) interaction is queried with the L2-normalised mean of the embeddings
of their last ``history`` train items; the catalog is ranked by inner product, items the user already
interacted with in train are excluded, and the held-out item is the one relevant answer. The popularity
baseline (train interaction counts, same exclusions) is always computed beside, and by default the
collaborative-filtering peers of :mod:`rayrec.cf_baselines` (item-kNN, ALS, BPR) fitted on the same train rows.

Targets are reported overall and apart for warm items (with train interactions) and cold ones (none). With
``cold_fraction`` > 0 the split is :func:`rayrec.data.split.cold_item_split`: that share of the held-out items
loses every train interaction, so the cold section has enough users to read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from rayrec import storage
from rayrec.cf_baselines import ItemKNN, MatrixFactorization, MFConfig, implicit_available, interaction_matrix
from rayrec.config import RayConfig, save_config
from rayrec.data.io import load_dataset
from rayrec.data.split import cold_item_split
from rayrec.errors import ConfigError, DataError
from rayrec.features import l2_normalize
from rayrec.index.exact import popularity_search
from rayrec.index.item_index import ItemIndex, item_categories
from rayrec.metrics.beyond import encode_categories, list_metrics, pad_lists
from rayrec.metrics.retrieval import ranking_metrics, target_ranks

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
    train_matrix: sp.csr_matrix | None = None
    """[train users, N] binary train interactions (the collaborative-filtering peers); None where not built."""
    user_rows: np.ndarray | None = None
    """[U] int64 row of each evaluated user in ``train_matrix``; None with it."""

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def cold(self) -> np.ndarray:
        """[U] bool: the held-out item has no train interaction (a cold item)."""
        return self.train_counts[self.targets] == 0

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
    matrix_row = {user: row for row, user in enumerate(by_user)}
    histories, seen, targets, user_rows = [], [], [], []
    for user, target in zip(
        test.column("user_id").to_pylist(), item_rows(test, position).tolist(), strict=True
    ):
        rows = by_user.get(str(user))
        if rows is None or not len(rows):
            continue
        histories.append(rows[-history:])
        seen.append(np.unique(rows))
        targets.append(target)
        user_rows.append(matrix_row[str(user)])
    counts = np.bincount(item_rows(train, position), minlength=len(position)).astype(np.int64)
    return EvalSet(
        histories=histories,
        seen=seen,
        targets=np.asarray(targets, dtype=np.int64),
        train_counts=counts,
        train_matrix=interaction_matrix(list(by_user.values()), len(position)),
        user_rows=np.asarray(user_rows, dtype=np.int64),
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
    cold_fraction: float = 0.0
    """Share of the distinct held-out items made cold (every train interaction with them removed); 0 is the
    plain temporal split. Warm and cold targets are reported apart either way."""
    split_seed: int = 0
    """Seed of the cold-item draw."""
    peers: bool = True
    """Also fit and rank with the collaborative-filtering peers: item-kNN and, when `implicit` is installed,
    ALS and BPR matrix factorisation."""
    mf_factors: int = 64
    """ALS/BPR latent dimensions."""
    als_iterations: int = 15
    """ALS sweeps."""
    bpr_iterations: int = 100
    """BPR epochs."""
    mf_seed: int = 0
    """Seed of the ALS/BPR initialisation."""
    user_model: str | None = None
    """Directory of a train-retrieval-model output: its user tower makes the queries (over the model's own
    history length) instead of the mean of the history embeddings; --index must be the index built from it."""

    def __post_init__(self) -> None:
        if self.k < 1 or self.history < 1:
            raise ConfigError(f"--k and --history must be >= 1, got k={self.k}, history={self.history}")
        if not 0.0 <= self.cold_fraction < 1.0:
            raise ConfigError(f"--cold-fraction must be in [0, 1), got {self.cold_fraction}")
        if self.mf_factors < 1 or self.als_iterations < 1 or self.bpr_iterations < 1:
            raise ConfigError("--mf-factors, --als-iterations and --bpr-iterations must be >= 1")


def ranked_lists(search, eval_set: EvalSet, k: int, recall_ks: tuple[int, ...] = RECALL_KS) -> np.ndarray:
    """[U, depth] item rows ranked by ``search(exclude, depth) -> indices [U, depth]``, depth the largest cut-off."""
    return search(eval_set.seen, max(*recall_ks, k))


def evaluate_rankings(
    search, eval_set: EvalSet, k: int, recall_ks: tuple[int, ...] = RECALL_KS
) -> dict[str, float]:
    """Metrics of ``search(exclude, depth) -> indices [U, depth]`` against ``eval_set``'s targets."""
    ranked = ranked_lists(search, eval_set, k, recall_ks)
    return ranking_metrics(ranked, eval_set.targets, recall_ks=(*recall_ks, k), ndcg_k=k)


COLD_NOTE = (
    "item_knn, als and bpr learn only from train interactions: a cold item has none, so they never rank it "
    "and their cold recall is 0 by construction; popularity ranks it last (count 0)"
)

PER_USER_NOTE = (
    "target_rank[name]: [users] 0-based rank of each user's held-out item in that method's list, -1 when it is "
    "not in the list (the top max(100, k)); the users come in the same order in every run on the same data and "
    "split, for paired differences between runs; cold[u]: user u's held-out item is a cold item"
)


def peer_searches(config: EvalRetrievalConfig, eval_set: EvalSet) -> tuple[dict, dict[str, str]]:
    """``({name: search}, {name: why skipped})`` for popularity and the collaborative-filtering peers."""
    searches = {
        "popularity": lambda seen, depth: popularity_search(
            eval_set.train_counts, len(eval_set), depth, seen
        )[1]
    }
    skipped: dict[str, str] = {}
    if not config.peers:
        return searches, skipped
    knn = ItemKNN(eval_set.train_matrix)
    searches["item_knn"] = lambda seen, depth: knn.search(eval_set.histories, depth, seen)[1]
    if not implicit_available():
        reason = "the `implicit` library is not installed (pip install 'rayrec[baselines]')"
        return searches, {"als": reason, "bpr": reason}
    for kind, iterations in (("als", config.als_iterations), ("bpr", config.bpr_iterations)):
        mf = MatrixFactorization(
            eval_set.train_matrix,
            MFConfig(kind=kind, factors=config.mf_factors, iterations=iterations, seed=config.mf_seed),
        )
        searches[kind] = lambda seen, depth, mf=mf: mf.search(eval_set.user_rows, depth, seen)[1]
    return searches, skipped


def _section(ranked: dict[str, np.ndarray], eval_set: EvalSet, mask: np.ndarray, k: int) -> dict:
    """Metrics of every ranking restricted to the users in ``mask`` [U]."""

    def metrics(lists: np.ndarray) -> dict[str, float]:
        return ranking_metrics(lists[mask], eval_set.targets[mask], recall_ks=(*RECALL_KS, k), ndcg_k=k)

    return {
        "users": int(mask.sum()),
        "model": metrics(ranked["model"]),
        "baselines": {name: metrics(lists) for name, lists in ranked.items() if name != "model"},
    }


def model_queries(
    config: EvalRetrievalConfig, index: ItemIndex, eval_set: EvalSet, train: pa.Table, test: pa.Table
) -> np.ndarray:
    """[U, d] queries of ``eval_set``'s users from the user tower of ``config.user_model``.

    The model must have been trained on this split (same cold fraction and seed; a model trained on another
    split may have seen this split's cold items) and ``index`` must hold exactly its item vectors.
    """
    from rayrec.seqrec.artifact import load_model  # heavy (torch): only when a user model is asked for

    loaded = load_model(config.user_model)
    split = loaded.split
    trained_on = (split.get("cold_fraction"), split.get("split_seed") if split.get("cold_fraction") else None)
    wanted = (config.cold_fraction, config.split_seed if config.cold_fraction else None)
    if trained_on != wanted:
        raise ConfigError(
            f"user model {config.user_model} was trained on the split cold_fraction={trained_on[0]}, "
            f"split_seed={trained_on[1]} but this run uses cold_fraction={wanted[0]}, split_seed={wanted[1]}"
        )
    loaded.check_index(index, config.index, config.user_model)
    history = loaded.model.config.history
    # Same split, same users in the same order; only the history length may differ from the peers'.
    users = eval_set if history == config.history else make_eval_set(train, test, index.item_ids, history)
    return loaded.model.queries(index.embeddings, users.histories)


def evaluate_retrieval(config: EvalRetrievalConfig) -> dict:
    """Model, popularity and peer metrics of ``config.index`` on ``config.data``, overall and for warm and cold
    targets; writes JSON when asked."""
    index = ItemIndex.load(config.index)
    dataset = load_dataset(config.data)
    missing = set(dataset.items.column("item_id").to_pylist()) - set(index.item_ids.tolist())
    if missing:
        raise DataError(
            f"{config.data}: {len(missing)} items are not in index {config.index} (e.g. {sorted(missing)[0]!r}); "
            "rebuild the index from this data"
        )
    train, test, cold_items = cold_item_split(dataset.interactions, config.cold_fraction, config.split_seed)
    eval_set = make_eval_set(train, test, index.item_ids, history=config.history)
    if not len(eval_set):
        raise DataError(f"{config.data}: no user has both train history and a held-out interaction")
    queries = (
        model_queries(config, index, eval_set, train, test)
        if config.user_model
        else eval_set.queries(index.embeddings)
    )
    searches, skipped = peer_searches(config, eval_set)
    searches = {"model": lambda seen, depth: index.search(queries, depth, exclude=seen)[1], **searches}
    ranked = {name: ranked_lists(search, eval_set, config.k) for name, search in searches.items()}
    overall = {
        name: ranking_metrics(lists, eval_set.targets, recall_ks=(*RECALL_KS, config.k), ndcg_k=config.k)
        for name, lists in ranked.items()
    }
    codes, names = encode_categories(item_categories(dataset.items, index.item_ids), len(index))
    histories = pad_lists(eval_set.histories)
    for name, lists in ranked.items():  # beyond accuracy: what the top-k lists do to the catalog and users
        beyond = list_metrics(
            lists[:, : config.k], index.embeddings, eval_set.train_counts, codes, len(names), histories
        )
        overall[name].update({f"{metric}@{config.k}": value for metric, value in beyond.items()})
    cold = eval_set.cold
    result = {
        "k": config.k,
        "users": len(eval_set),
        **overall.pop("model"),
        "index": {"type": index.index_type, "encoder": index.encoder, "items": len(index)},
        **({"user_model": config.user_model} if config.user_model else {}),
        "baselines": overall,
        "split": {
            "kind": "cold-items" if config.cold_fraction else "temporal",
            "cold_fraction": config.cold_fraction,
            "seed": config.split_seed,
            "cold_items": len(cold_items),
        },
        "warm": _section(ranked, eval_set, ~cold, config.k),
        "cold": {**_section(ranked, eval_set, cold, config.k), "note": COLD_NOTE},
        # for paired comparisons between runs on the same split (same users, same order)
        "per_user": {
            "target_rank": {
                name: target_ranks(lists, eval_set.targets).tolist() for name, lists in ranked.items()
            },
            "cold": cold.tolist(),
            "note": PER_USER_NOTE,
        },
    }
    if skipped:
        result["skipped"] = skipped
    if config.json:
        storage.write_text(config.json, json.dumps(result, indent=2) + "\n")
        save_config(config, config.json.rsplit("/", 1)[0] if "/" in config.json else ".", name=CONFIG_NAME)
    return result
