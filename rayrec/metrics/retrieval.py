"""Ranking metrics for leave-last-out retrieval: one held-out target item per user.

All functions take ``ranked`` [U, L] int64 (item rows, best first, ``-1`` padding) and ``targets`` [U]
int64 (the held-out item's row). With one relevant item per user, Recall@K is the hit rate at K,
NDCG@K is ``1 / log2(rank + 2)`` for a hit at 0-based ``rank`` (the ideal DCG is 1), and MRR is the mean of
``1 / (rank + 1)`` over users, 0 when the target is not in the ranked list (so MRR is truncated at L).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def target_ranks(ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """[U] 0-based position of each user's target in ``ranked`` [U, L], ``-1`` when absent."""
    ranked = np.asarray(ranked)
    targets = np.asarray(targets).reshape(-1, 1)  # [U, 1]
    if ranked.shape[0] != targets.shape[0]:
        raise ValueError(f"ranked has {ranked.shape[0]} rows but there are {targets.shape[0]} targets")
    hits = ranked == targets  # [U, L]
    return np.where(hits.any(axis=1), hits.argmax(axis=1), -1)


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Share of users whose target is in the top ``k``."""
    ranks = np.asarray(ranks)
    return float(np.mean((ranks >= 0) & (ranks < k))) if ranks.size else 0.0


def ndcg_at_k(ranks: np.ndarray, k: int) -> float:
    """Mean NDCG@k with one relevant item per user."""
    ranks = np.asarray(ranks)
    if not ranks.size:
        return 0.0
    hit = (ranks >= 0) & (ranks < k)
    return float(np.mean(np.where(hit, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)))


def mrr(ranks: np.ndarray) -> float:
    """Mean reciprocal rank, 0 for users whose target is not in the list."""
    ranks = np.asarray(ranks)
    if not ranks.size:
        return 0.0
    return float(np.mean(1.0 / (np.where(ranks >= 0, ranks, np.inf) + 1.0)))


def ranking_metrics(
    ranked: np.ndarray, targets: np.ndarray, recall_ks: Sequence[int] = (10, 50, 100), ndcg_k: int = 10
) -> dict[str, float]:
    """``recall@K`` for each K, ``ndcg@ndcg_k`` and ``mrr`` of ``ranked`` [U, L] against ``targets`` [U]."""
    if ranked.shape[1] < max(*recall_ks, ndcg_k):
        raise ValueError(f"ranked lists have {ranked.shape[1]} items, fewer than the largest cut-off")
    ranks = target_ranks(ranked, targets)
    out = {f"recall@{k}": recall_at_k(ranks, k) for k in sorted(set(recall_ks))}
    out[f"ndcg@{ndcg_k}"] = ndcg_at_k(ranks, ndcg_k)
    out["mrr"] = mrr(ranks)
    return out
