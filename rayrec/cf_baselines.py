"""Collaborative-filtering peers of the text encoder, measured on the same split: item-kNN and matrix factorisation.

Both learn from the binary train interaction matrix X [users, N] only. An item without a train interaction (a
cold item) has an empty column, so neither model has anything to score it with: they give cold items a score of
``-inf`` and never rank them. That is the honest reading of "cannot score cold items" — their cold-item recall is
0 by construction, which is what a text encoder (which embeds any item from its text) is there to beat.

- :class:`ItemKNN`: item-based kNN with cosine similarity between item columns of X (Sarwar et al.,
  "Item-based collaborative filtering recommendation algorithms", WWW 2001; Deshpande & Karypis, "Item-based
  top-N recommendation algorithms", TOIS 2004). A user's score for item j is the sum of cos(i, j) over the
  items i of their recent history — the same history the text model's query averages.
- :class:`MatrixFactorization`: implicit-feedback ALS (Hu, Koren & Volinsky, "Collaborative Filtering for
  Implicit Feedback Datasets", ICDM 2008) or BPR (Rendle et al., "BPR: Bayesian Personalized Ranking from
  Implicit Feedback", UAI 2009), both from the ``implicit`` library (the ``baselines`` extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

from rayrec.errors import ConfigError
from rayrec.index.exact import masked_topk

MFKind = Literal["als", "bpr"]
_CHUNK_USERS = 512


def interaction_matrix(sequences: Sequence[np.ndarray], n_items: int) -> sp.csr_matrix:
    """[len(sequences), n_items] binary float32 CSR matrix: row u has a 1 at every item of ``sequences[u]``."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    rows = np.repeat(np.arange(len(sequences), dtype=np.int64), lengths)
    cols = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences]) if len(sequences) else rows
    matrix = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(sequences), n_items)
    )
    matrix.data[:] = 1.0  # repeated interactions count once
    return matrix


def _top_k(scores: np.ndarray, cold: np.ndarray, exclude: list[np.ndarray] | None, k: int):
    scores[:, cold] = -np.inf  # no train interaction, nothing to score it with
    return masked_topk(scores, k, exclude)


def _chunked_search(score_fn, n_queries: int, exclude: list[np.ndarray] | None, cold: np.ndarray, k: int):
    out_scores, out_ids = [], []
    for start in range(0, n_queries, _CHUNK_USERS):
        stop = min(start + _CHUNK_USERS, n_queries)
        s, i = _top_k(score_fn(start, stop), cold, None if exclude is None else exclude[start:stop], k)
        out_scores.append(s)
        out_ids.append(i)
    if not out_ids:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate(out_scores), np.concatenate(out_ids)


class ItemKNN:
    """Item-based kNN, cosine similarity on the columns of the train matrix (all neighbours kept).

    Scores are computed as ``(H · Xn^T) · Xn`` with Xn the column-normalised matrix and H the users' history
    indicator, so the [N, N] similarity matrix is never materialised.
    """

    def __init__(self, matrix: sp.csr_matrix) -> None:
        """``matrix``: [users, N] binary train interactions."""
        matrix = sp.csr_matrix(matrix, dtype=np.float32)
        norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=0)).ravel())  # [N]
        self.cold = norms == 0
        """[N] bool: items without a train interaction (never ranked)."""
        self.normalized = sp.csr_matrix(
            matrix @ sp.diags(np.where(self.cold, 0.0, 1.0 / np.maximum(norms, 1e-12)))
        )
        self.normalized_t = sp.csr_matrix(self.normalized.T)

    def scores(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """[B, N] float32: sum over each history's items of their cosine similarity to every item."""
        queries = interaction_matrix(histories, self.normalized.shape[1])  # [B, N]
        via_users = queries @ self.normalized_t  # [B, users], sparse
        return np.asarray((via_users @ self.normalized).todense(), dtype=np.float32)  # [B, N]

    def search(
        self, histories: Sequence[np.ndarray], k: int, exclude: list[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` ``(scores [B, k], indices [B, k])`` per history, cold and excluded items removed."""
        return _chunked_search(
            lambda a, b: self.scores(histories[a:b]), len(histories), exclude, self.cold, k
        )


@dataclass(frozen=True)
class MFConfig:
    """Matrix factorisation from the ``implicit`` library."""

    kind: MFKind = "als"
    """als (weighted ALS, Hu et al. 2008) or bpr (Rendle et al. 2009)."""
    factors: int = 64
    """Latent dimensions."""
    regularization: float = 0.05
    """L2 penalty on the factors."""
    iterations: int = 15
    """ALS sweeps or BPR epochs."""
    alpha: float = 2.0
    """ALS confidence weight: c = 1 + alpha · x (ignored by BPR)."""
    learning_rate: float = 0.05
    """BPR SGD step (ignored by ALS)."""
    seed: int = 0
    """Seed of the factor initialisation (and BPR's sampling)."""

    def __post_init__(self) -> None:
        if self.factors < 1 or self.iterations < 1:
            raise ConfigError(
                f"MF needs factors >= 1 and iterations >= 1, got {self.factors}, {self.iterations}"
            )
        if self.kind not in ("als", "bpr"):
            raise ConfigError(f"MF kind must be 'als' or 'bpr', got {self.kind!r}")


def implicit_available() -> bool:
    """True when the ``implicit`` library (the ``baselines`` extra) can be imported."""
    try:
        import implicit  # noqa: F401  # optional extra: absent is a normal case
    except ImportError:
        return False
    return True


class MatrixFactorization:
    """User and item factors fitted on the train matrix; a user's score for item j is ``p_u · q_j``."""

    def __init__(self, matrix: sp.csr_matrix, config: MFConfig = MFConfig()) -> None:
        """Fit on ``matrix`` [users, N] (binary train interactions); single-threaded BLAS while fitting."""
        if not implicit_available():
            raise ConfigError(
                "matrix factorisation needs the `implicit` library: pip install 'rayrec[baselines]'"
            )
        from threadpoolctl import threadpool_limits

        matrix = sp.csr_matrix(matrix, dtype=np.float32)
        self.cold = np.asarray(matrix.getnnz(axis=0)).ravel() == 0
        """[N] bool: items without a train interaction (never ranked)."""
        with threadpool_limits(1, "blas"):  # implicit's own threads; multi-threaded BLAS only slows it down
            model = self._model(config)
            model.fit(matrix, show_progress=False)
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)
        """[users, f] (BPR: f = factors + 1, the item bias's column)."""
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)
        """[N, f]."""

    @staticmethod
    def _model(config: MFConfig):
        from implicit.cpu.als import AlternatingLeastSquares
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        if config.kind == "als":
            return AlternatingLeastSquares(
                factors=config.factors,
                regularization=config.regularization,
                alpha=config.alpha,
                iterations=config.iterations,
                random_state=config.seed,
            )
        return BayesianPersonalizedRanking(
            factors=config.factors,
            learning_rate=config.learning_rate,
            regularization=config.regularization,
            iterations=config.iterations,
            random_state=config.seed,
            num_threads=1,  # several threads update the factors Hogwild-style: not reproducible run to run
        )

    def search(
        self, user_rows: np.ndarray, k: int, exclude: list[np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` ``(scores [B, k], indices [B, k])`` for the matrix rows ``user_rows`` [B]."""
        users = self.user_factors[np.asarray(user_rows, dtype=np.int64)]
        return _chunked_search(
            lambda a, b: users[a:b] @ self.item_factors.T, len(users), exclude, self.cold, k
        )
