"""Exact inner-product top-k with per-query exclusion: the reference every approximate index is held to."""

from __future__ import annotations

import numpy as np

_CHUNK_BYTES = 256 << 20


def _check_exclude(exclude: list[np.ndarray] | None, n_queries: int) -> None:
    if exclude is not None and len(exclude) != n_queries:
        raise ValueError(f"exclude has {len(exclude)} entries for {n_queries} queries")


def masked_topk(
    scores: np.ndarray, k: int, exclude: list[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` columns of each row of ``scores`` [B, N] with each row's ``exclude`` ids masked out.

    Returns ``(scores [B, k] float32, indices [B, k] int64)``, best first; slots beyond the number of
    eligible items hold index ``-1`` and score ``-inf``.
    """
    batch, n = scores.shape
    _check_exclude(exclude, batch)
    scores = np.array(scores, dtype=np.float32, copy=True)  # masked in place below
    for row, ids in enumerate(exclude or ()):
        ids = np.asarray(ids, dtype=np.int64)
        scores[row, ids[(ids >= 0) & (ids < n)]] = -np.inf
    k_eff = min(k, n)
    top = (
        np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
        if k_eff < n
        else np.tile(np.arange(n), (batch, 1))
    )
    top_scores = np.take_along_axis(scores, top, axis=1)  # [B, k_eff]
    order = np.argsort(-top_scores, axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1).astype(np.int64)
    top_scores = np.take_along_axis(top_scores, order, axis=1)
    top[~np.isfinite(top_scores)] = -1
    out_scores = np.full((batch, k), -np.inf, dtype=np.float32)
    out_ids = np.full((batch, k), -1, dtype=np.int64)
    out_scores[:, :k_eff] = top_scores
    out_ids[:, :k_eff] = top
    return out_scores, out_ids


def exact_search(
    queries: np.ndarray, embeddings: np.ndarray, k: int, exclude: list[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact maximum-inner-product search of ``queries`` [B, d] over ``embeddings`` [N, d].

    Works through the queries in chunks so the [chunk, N] score matrix stays near 256 MiB.
    Returns ``(scores [B, k], indices [B, k])`` as :func:`masked_topk`.
    """
    queries = np.asarray(queries, dtype=np.float32)
    _check_exclude(exclude, len(queries))
    chunk = max(1, _CHUNK_BYTES // max(4 * len(embeddings), 1))
    scores_out, ids_out = [], []
    for start in range(0, len(queries), chunk):
        stop = start + chunk
        scores = queries[start:stop] @ embeddings.T  # [chunk, N]
        part = None if exclude is None else exclude[start:stop]
        s, i = masked_topk(scores, k, part)
        scores_out.append(s)
        ids_out.append(i)
    if not scores_out:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate(scores_out), np.concatenate(ids_out)


def popularity_search(
    counts: np.ndarray, n_queries: int, k: int, exclude: list[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The most popular items for each of ``n_queries`` users, each user's ``exclude`` removed.

    ``counts`` [N] interaction counts; ties go to the lower row (a stable order). Returns
    ``(scores [B, k], indices [B, k])`` with the counts as scores.
    """
    counts = np.asarray(counts, dtype=np.float32)
    _check_exclude(exclude, n_queries)
    order = np.argsort(-counts, kind="stable")
    extra = max((len(e) for e in exclude), default=0) if exclude is not None else 0
    head = order[: k + extra]  # the top k survives any exclusion of at most ``extra`` items
    scores = np.broadcast_to(counts[head], (n_queries, len(head)))
    # head is already sorted, so a rank-preserving score keeps ties stable
    ranks = np.broadcast_to(-np.arange(len(head), dtype=np.float32), (n_queries, len(head)))
    local_exclude = None
    if exclude is not None:
        position = {int(item): pos for pos, item in enumerate(head)}
        local_exclude = [
            np.array([position[int(i)] for i in e if int(i) in position], dtype=np.int64) for e in exclude
        ]
    _, local = masked_topk(ranks, k, local_exclude)
    ids = np.where(local >= 0, head[np.maximum(local, 0)], -1)
    out_scores = np.where(local >= 0, np.take_along_axis(scores, np.maximum(local, 0), axis=1), -np.inf)
    return out_scores.astype(np.float32), ids.astype(np.int64)
