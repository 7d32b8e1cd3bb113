"""The reward model of the direct-method, doubly robust and fitted-Q estimators: a slate click model.

A conditional logit over the shown slate plus a no-click option, on what the logs hold::

    P(click on the item at position p | slate) = exp(z_p) / (1 + sum_q exp(z_q)),
    z_p = bias + features · w + basis(embedding) · v + position_logit[p]

with the candidate's logged features (:data:`rayrec.features.FEATURE_NAMES`, and ``item_rating`` where
logged), its embedding projected on the leading principal directions of the logged items' embeddings (item
traits that attract clicks, clickbait among them, are directions in the embedding space) and one logit per
slate position. Items of a slate compete for the click, as they do for users (and in the simulator's
choice model): under strong competition the value of a slate is not the sum of its items' values, which is what the item-position
estimators assume, and a model of this form is what lets the doubly robust estimator stay close to the
truth there. A request with several clicks counts each as one choice (a pseudo-likelihood). The expected
reward of a position is its click probability times the mean logged reward of a click.

It sees only what the logs hold, so it is misspecified for any simulator with hidden user state; the
doubly robust estimators' importance-weighted corrections are what remove that bias.

References:
    - McFadden, D. (1973). "Conditional logit analysis of qualitative choice behavior."
    - Ie, E. et al. (2019). "SlateQ: A Tractable Decomposition for Reinforcement Learning with
      Recommendation Sets." IJCAI (the slate's choice model with a no-click option).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from rayrec.errors import DataError

BASIS_DIMS = 16
"""Principal directions of the item embeddings the click and value models see."""


@dataclass(frozen=True)
class EmbeddingBasis:
    """The leading principal directions of logged item embeddings (d dims → r).

    Attributes:
        mean: [d] mean embedding.
        components: [d, r] orthonormal directions, largest variance first.
    """

    mean: np.ndarray
    components: np.ndarray

    @classmethod
    def fit(cls, embeddings: np.ndarray, dims: int = BASIS_DIMS) -> EmbeddingBasis:
        """From embeddings [m, d] (the shown items'); ``r = min(dims, d, m)``."""
        mean = embeddings.mean(axis=0)
        _, _, vt = np.linalg.svd(embeddings - mean, full_matrices=False)
        return cls(mean=mean.astype(np.float64), components=vt[:dims].T.astype(np.float64))

    def project(self, embeddings: np.ndarray) -> np.ndarray:
        """[..., d] → [..., r]."""
        return (embeddings - self.mean) @ self.components


@dataclass(frozen=True)
class SlateRewardModel:
    """A fitted slate click model (module docstring): F features, r basis dims, k positions.

    Attributes:
        bias: item logit offset against no-click.
        feature_weights: [F].
        basis_weights: [r] weights of the projected embedding.
        position_logits: [k] additive logit per position (position 0 is 0).
        click_value: mean logged reward of a click (1.0 for click logs).
    """

    bias: float
    feature_weights: np.ndarray
    basis_weights: np.ndarray
    position_logits: np.ndarray
    click_value: float

    def candidate_logits(self, features: np.ndarray, projected: np.ndarray) -> np.ndarray:
        """[b, K] position-free logits of candidates with features [b, K, F] and projected embeddings [b, K, r]."""
        return self.bias + features @ self.feature_weights + projected @ self.basis_weights

    def click_probabilities(self, logits: np.ndarray, slates: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """[b, k] probability of a click at each position of slates [b, k] (0 where ``mask`` is False).

        Args:
            logits: [b, K] :meth:`candidate_logits`.
            slates: [b, k] candidate indices; mask: [b, k] bool positions shown.
        """
        k = slates.shape[1]
        z = np.take_along_axis(logits, slates, axis=1) + self.position_logits[:k]  # [b, k]
        z = np.where(mask, z, -np.inf)
        top = np.maximum(z.max(axis=1, keepdims=True), 0.0)  # the no-click option's logit is 0
        weight = np.exp(z - top)  # [b, k]
        return weight / (np.exp(-top) + weight.sum(axis=1, keepdims=True))


def _negative_log_likelihood(
    params: np.ndarray, x: np.ndarray, mask: np.ndarray, clicks: np.ndarray, l2: float
) -> tuple[float, np.ndarray]:
    """Mean pseudo-NLL and gradient. x: [n, k, P], mask/clicks: [n, k] bool (a click is one choice)."""
    n, _, p = x.shape
    w, positions = params[:p], np.concatenate([[0.0], params[p:]])  # [P], [k]
    z = np.where(mask, x @ w + positions, -np.inf)  # [n, k]
    top = np.maximum(z.max(axis=1, keepdims=True), 0.0)
    weight = np.exp(z - top)
    norm = np.exp(-top[:, 0]) + weight.sum(axis=1)  # [n]
    prob = weight / norm[:, None]  # [n, k]
    log_norm = np.log(norm) + top[:, 0]  # [n]
    choices = clicks.sum(axis=1) + (~clicks.any(axis=1))  # [n] choice events per request
    loglik = np.where(clicks, z, 0.0).sum() - (choices * log_norm).sum()
    resid = choices[:, None] * prob - clicks  # [n, k] d NLL / d z (times n)
    grad_w = np.einsum("nk,nkp->p", resid, x) / n + 2 * l2 * np.r_[0.0, w[1:]]
    grad_positions = resid.sum(axis=0)[1:] / n
    return -loglik / n + l2 * (w[1:] @ w[1:]), np.concatenate([grad_w, grad_positions])


def fit_reward_model(
    features: np.ndarray,
    projected: np.ndarray,
    reward: np.ndarray,
    mask: np.ndarray,
    *,
    l2: float = 1e-4,
) -> SlateRewardModel:
    """Maximum (pseudo-)likelihood :class:`SlateRewardModel` from logged slates (n requests, k positions).

    Args:
        features: [n, k, F] features of the shown items, in display order.
        projected: [n, k, r] their embeddings projected on an :class:`EmbeddingBasis`.
        reward: [n, k] logged reward of each shown item; a positive reward is a click.
        mask: [n, k] bool, False for positions a shorter slate did not have.
        l2: ridge penalty on the weights (not the bias).
    """
    n, k, f = features.shape
    if not mask.any():
        raise DataError("no logged impressions to fit the click model on")
    clicks = mask & (reward > 0)
    x = np.concatenate([np.ones((n, k, 1)), features, projected], axis=2)  # [n, k, P] bias, features, basis
    result = minimize(
        _negative_log_likelihood,
        np.zeros(x.shape[2] + k - 1),
        args=(x, mask, clicks, l2),
        jac=True,
        method="L-BFGS-B",
    )
    params, p = result.x, x.shape[2]
    return SlateRewardModel(
        bias=float(params[0]),
        feature_weights=params[1 : 1 + f],
        basis_weights=params[1 + f : p],
        position_logits=np.concatenate([[0.0], params[p:]]),
        click_value=float(reward[clicks].mean()) if clicks.any() else 1.0,
    )
