"""The reward model of the direct-method and doubly robust estimators: a logistic click model.

``P(click | candidate j at position p) = sigmoid(features_j · w + embedding_j · v + b_p)``: the
candidate's observed features (:data:`rayrec.features.FEATURE_NAMES`), its embedding (item traits
that attract clicks, clickbait among them, are directions in the embedding space) and one intercept per
slate position, which captures position bias the way the item-position model says it acts (a
per-position factor on the odds). It sees only what the logs hold, so it is misspecified for any
simulator with hidden user state; the doubly robust estimator's importance-weighted correction is what
removes that bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from rayrec.errors import DataError


@dataclass(frozen=True)
class PositionRewardModel:
    """A fitted logistic click model (F features, d embedding dims, k positions).

    Attributes:
        feature_weights: [F].
        embedding_weights: [d].
        position_bias: [k] intercept per slate position.
    """

    feature_weights: np.ndarray
    embedding_weights: np.ndarray
    position_bias: np.ndarray

    def predict(self, features: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
        """Click probability of every candidate at every position.

        Args:
            features: [n, K, F] candidate features.
            embeddings: [n, K, d] candidate embeddings.

        Returns:
            [n, k, K].
        """
        logits = features @ self.feature_weights + embeddings @ self.embedding_weights  # [n, K]
        return 1.0 / (1.0 + np.exp(-(logits[:, None, :] + self.position_bias[None, :, None])))  # [n, k, K]


def _loss(beta: np.ndarray, x: np.ndarray, y: np.ndarray, ridge: float) -> tuple[float, np.ndarray]:
    """Mean logistic loss with an L2 penalty and its gradient; x: [m, P], y: [m]."""
    z = x @ beta  # [m]
    # log(1 + e^z) - y z, computed stably.
    loss = np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * ridge * beta @ beta
    grad = x.T @ (1.0 / (1.0 + np.exp(-z)) - y) / len(y) + ridge * beta
    return float(loss), grad


def fit_reward_model(
    features: np.ndarray,
    embeddings: np.ndarray,
    shown: np.ndarray,
    clicks: np.ndarray,
    mask: np.ndarray,
    *,
    ridge: float = 1e-4,
) -> PositionRewardModel:
    """Fit :class:`PositionRewardModel` to logged slates by L-BFGS on the penalised logistic loss.

    Args:
        features: [n, K, F] candidate features per request.
        embeddings: [n, K, d] candidate embeddings per request.
        shown: [n, k] candidate index shown at each position.
        clicks: [n, k] 1.0 where the shown item was clicked (rewards above 1 count as a click).
        mask: [n, k] bool, False for positions a shorter slate did not have.
        ridge: L2 penalty (keeps the fit finite when a position never or always gets clicks).
    """
    n, k = shown.shape
    f, d = features.shape[-1], embeddings.shape[-1]
    rows = np.broadcast_to(np.arange(n)[:, None], (n, k))[mask]
    cols = shown[mask]
    x_pos = np.eye(k)[np.broadcast_to(np.arange(k), (n, k))[mask]]  # [m, k] position one-hot
    x = np.concatenate([features[rows, cols], embeddings[rows, cols], x_pos], axis=1).astype(
        np.float64
    )  # [m, P]
    y = np.minimum(clicks[mask], 1.0).astype(np.float64)  # [m]
    if len(y) == 0:
        raise DataError("no logged impressions to fit the click model on")
    beta = np.zeros(f + d + k)
    rate = np.clip(y.mean(), 1e-4, 1 - 1e-4)
    beta[f + d :] = np.log(rate / (1.0 - rate))
    result = minimize(_loss, beta, args=(x, y, ridge), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    beta = result.x
    return PositionRewardModel(
        feature_weights=beta[:f], embedding_weights=beta[f : f + d], position_bias=beta[f + d :]
    )
