"""A slate click model on observed features (a conditional logit): what a myopic (greedy) recommender maximises.

It sees only what a production ranker sees — the candidate's features and embedding — and is fitted by
maximum likelihood to clicks logged under uniformly random slates, like a CTR model trained on
exploration traffic. Because it learns whatever raises clicks, it learns to like clickbait.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rayrec.slate_policy import Observation


@dataclass(frozen=True)
class SlateClickModel:
    """Conditional logit over a slate plus no-click, on observed candidate features.

    ``logit(candidate) = bias + feature_weights · features + embedding_weights · embedding``;
    position p adds ``position_logits[p]``; the no-click option has logit 0.

    Attributes:
        feature_weights: [F] weights of :data:`rayrec.features.FEATURE_NAMES`.
        embedding_weights: [d] weights of the candidate embedding (empty: not used).
        bias: scalar item logit offset against no-click.
        position_logits: [k] additive logit per slate position (position 0 is 0).
    """

    feature_weights: np.ndarray
    embedding_weights: np.ndarray
    bias: float
    position_logits: np.ndarray

    @classmethod
    def default(cls) -> SlateClickModel:
        """Before any fitting: relevance (retrieval score) dominates, popularity breaks near-ties."""
        return cls(np.array([10.0, 1.0, 0.0]), np.zeros(0), 0.0, np.zeros(0))

    def candidate_logits(self, obs: Observation) -> np.ndarray:
        """[B, K] position-free click logits of every candidate."""
        logits = obs["features"] @ self.feature_weights.astype(np.float32) + self.bias  # [B, K]
        if len(self.embedding_weights):
            logits = logits + obs["candidates"] @ self.embedding_weights.astype(np.float32)  # [B, K]
        return logits


def _negative_log_likelihood(params: np.ndarray, x: np.ndarray, clicks: np.ndarray, l2: float):
    """NLL and gradient of the slate logit. x: [n, k, P] item design, clicks: [n] in -1..k-1."""
    n, _k, p = x.shape
    w, pos = params[:p], np.concatenate([[0.0], params[p:]])  # [P], [k]
    logits = x @ w + pos  # [n, k]
    full = np.concatenate([np.zeros((n, 1)), logits], axis=1)  # [n, k + 1], column 0 = no click
    full -= full.max(axis=1, keepdims=True)
    probs = np.exp(full)
    probs /= probs.sum(axis=1, keepdims=True)
    chosen = clicks + 1
    nll = -np.log(probs[np.arange(n), chosen] + 1e-12).mean() + l2 * (w[1:] @ w[1:])
    resid = probs[:, 1:].copy()  # [n, k] d NLL / d logit
    resid[clicks >= 0, clicks[clicks >= 0]] -= 1.0
    grad_w = np.einsum("nk,nkp->p", resid, x) / n
    grad_w[1:] += 2 * l2 * w[1:]
    grad_pos = resid.sum(axis=0)[1:] / n
    return nll, np.concatenate([grad_w, grad_pos])


def fit_slate_click_model(
    shown_features: np.ndarray,
    shown_embeddings: np.ndarray,
    clicks: np.ndarray,
    l2: float = 1e-4,
) -> SlateClickModel:
    """Maximum-likelihood :class:`SlateClickModel` from logged slates.

    Args:
        shown_features: [n, k, F] features of the shown candidates, in display order.
        shown_embeddings: [n, k, d] their embeddings.
        clicks: [n] clicked position, or -1 for no click.
        l2: ridge penalty on the weights (not the bias), keeps the embedding weights finite.
    """
    from scipy.optimize import minimize  # here, not at import: the CLI's parser imports this module

    n, k, f = shown_features.shape
    x = np.concatenate([np.ones((n, k, 1)), shown_features, shown_embeddings], axis=2).astype(np.float64)
    start = np.zeros(x.shape[2] + k - 1)
    result = minimize(
        _negative_log_likelihood, start, args=(x, clicks.astype(np.int64), l2), jac=True, method="L-BFGS-B"
    )
    params = result.x
    return SlateClickModel(
        feature_weights=params[1 : 1 + f],
        embedding_weights=params[1 + f : x.shape[2]],
        bias=float(params[0]),
        position_logits=np.concatenate([[0.0], params[x.shape[2] :]]),
    )
