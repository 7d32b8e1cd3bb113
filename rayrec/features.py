"""What a ranker observes about a user and the candidates: one definition shared by the simulator and the server.

The simulator's observation and the server's ranker input are built by the same functions, so a policy
trained in simulation sees exactly the features it will see in production.

Observation (batched; B requests, K candidates, d embedding dims, F = len(FEATURE_NAMES)):

- ``profile``    [B, d] float32: L2-normalised mean of the embeddings of the items the user engaged with
  (zeros for a user with no history).
- ``candidates`` [B, K, d] float32: the retrieved candidates' (normalised) embeddings, in retrieval order.
- ``features``   [B, K, F] float32: per-candidate features named by :data:`FEATURE_NAMES`.
- ``budget``     [B, 1] float32: remaining session budget as a fraction in [0, 1]:
  ``1 - session_step / budget`` (:func:`budget_feature`). The simulator knows each user's session step; the
  server is told it by the client (``session_step`` in ``/recommend``, 0 when absent) and takes ``budget``
  from the exported policy, so both compute the same number with the same function.

:func:`build_observation` assembles the whole observation; the simulator and the server both call it.
"""

from __future__ import annotations

import numpy as np

Observation = dict[str, np.ndarray]

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


def budget_feature(session_step: np.ndarray, budget: float) -> np.ndarray:
    """[B] steps already shown in each session → [B, 1] float32 remaining budget ``clip(1 - step / budget, 0, 1)``."""
    step = np.asarray(session_step, dtype=np.float32).reshape(-1, 1)  # [B, 1]
    return np.clip(1.0 - step / np.float32(budget), 0.0, 1.0).astype(np.float32)


def build_observation(
    profile: np.ndarray,
    candidates: np.ndarray,
    retrieval_scores: np.ndarray,
    popularity: np.ndarray,
    session_step: np.ndarray,
    budget: float,
) -> Observation:
    """The batched observation a ranker sees (module docstring), from what the simulator or server knows.

    Args:
        profile: [B, d] users' profiles.
        candidates: [B, K, d] candidate embeddings, retrieval order.
        retrieval_scores: [B, K] profile · candidate.
        popularity: [B, K] :func:`popularity_feature` of each candidate.
        session_step: [B] requests already answered in each user's session.
        budget: the session budget the policy was trained with (its ``budget`` feature's scale).
    """
    return {
        "profile": np.asarray(profile, dtype=np.float32),
        "candidates": np.asarray(candidates, dtype=np.float32),
        "features": candidate_features(np.clip(retrieval_scores, -1.0, 1.0), popularity),
        "budget": budget_feature(session_step, budget),
    }
