"""What a ranker observes about a user and the candidates: one definition shared by the simulator and the server.

The simulator's observation and the server's ranker input are built by the same functions, so a policy
trained in simulation sees exactly the features it will see in production.

Observation (batched; B requests, K candidates, d embedding dims, F = len(FEATURE_NAMES)):

- ``profile``    [B, d] float32: L2-normalised mean of the embeddings of the items the user engaged with
  (zeros for a user with no history).
- ``candidates`` [B, K, d] float32: the retrieved candidates' (normalised) embeddings, in retrieval order.
- ``features``   [B, K, F] float32: per-candidate features named by :data:`FEATURE_NAMES`.
- ``budget``     [B, 1] float32: remaining session budget as a fraction in [0, 1] (1.0 when unknown,
  as in serving).
"""

from __future__ import annotations

import numpy as np

FEATURE_NAMES = ("retrieval_score", "popularity", "retrieval_rank")
NUM_FEATURES = len(FEATURE_NAMES)


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """``x`` scaled to unit L2 norm along ``axis``; all-zero rows stay zero."""
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return (x / np.maximum(norm, eps)).astype(np.float32, copy=False)


def profile_vector(history_embeddings: np.ndarray) -> np.ndarray:
    """[n, d] embeddings of a user's history → [d] normalised mean (zeros when n == 0)."""
    if len(history_embeddings) == 0:
        return np.zeros(history_embeddings.shape[-1], dtype=np.float32)
    return l2_normalize(history_embeddings.mean(axis=0))


def popularity_feature(counts: np.ndarray) -> np.ndarray:
    """[N] interaction counts → [N] float32 in [0, 1]: ``log1p(count) / log1p(max count)``.

    Log-scaled because popularity is heavy-tailed; normalised by the catalog's maximum so that the
    feature means the same for a 10k and a 1M item catalog.
    """
    counts = np.asarray(counts, dtype=np.float64)
    top = np.log1p(counts.max()) if counts.size and counts.max() > 0 else 1.0
    return (np.log1p(np.maximum(counts, 0.0)) / top).astype(np.float32)


def candidate_features(retrieval_scores: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """Per-candidate features in :data:`FEATURE_NAMES` order.

    Args:
        retrieval_scores: [B, K] inner products of profile and candidate (retrieval order, best first).
        popularity: [B, K] :func:`popularity_feature` of each candidate.

    Returns:
        [B, K, F] float32.
    """
    batch, k = retrieval_scores.shape
    rank = np.broadcast_to(np.arange(k, dtype=np.float32) / max(k - 1, 1), (batch, k))  # [B, K]
    return np.stack([retrieval_scores, popularity, rank], axis=-1).astype(np.float32)  # [B, K, F]
