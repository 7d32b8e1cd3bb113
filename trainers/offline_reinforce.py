"""REINFORCE with the top-K off-policy correction, on logged slates (Chen et al., WSDM 2019).

Reference: Chen, M., Beutel, A., Covington, P., Jain, S., Belletti, F. & Chi, E. H. (2019). "Top-K
Off-Policy Correction for a REINFORCE Recommender System." WSDM.

The policy is a softmax over the K candidates' scores, ``pi(a | s) = softmax(scores(s))_a``
(:class:`rayrec.slate_scorer.SlateScorer`; served as its top-k). Every shown item ``a`` of a logged
request ``s_t`` is one logged action of the behaviour policy, with probability ``beta(a | s_t)`` — the
logged propensity of ``a`` at its position. The corrected gradient of Chen et al. (their eq. 6) is

    sum_{t, a shown} min(pi(a|s_t) / beta(a|s_t), c) * lambda_k(s_t, a) * (R_{t,a} - b) * grad log pi(a|s_t),

- ``pi / beta``: the off-policy importance weight, capped at ``c`` (``--topk-cap``; their weight capping);
- ``lambda_k = k (1 - pi(a|s))^(k-1)``: the top-K correction, since the served slate holds k items,
  ``a`` is in it with probability ``alpha = 1 - (1 - pi)^k`` and ``grad alpha = lambda_k pi grad log pi``;
- ``R_{t,a} = r_{t,a} + gamma G_{t+1}``: the item's own reward plus the discounted return of the user's
  later logged requests; ``b`` the mean of ``R`` over the batch (a baseline: lower variance, no bias).

Weights and ``lambda_k`` are held constant in each step (no gradient through them), as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from rayrec.slate_scorer import SlateScorer
from trainers.offline_data import TrainingArrays


@dataclass(frozen=True)
class TopKCorrection:
    """Settings of the corrected REINFORCE update."""

    gamma: float
    """Discount of later requests' rewards in ``R_{t,a}``."""
    cap: float
    """Cap ``c`` of the importance weight ``pi / beta``."""
    lr: float
    """Adam learning rate."""
    batch_size: int
    """Logged requests per gradient step."""


def item_returns(data: TrainingArrays, gamma: float) -> np.ndarray:
    """[n, k] ``R_{t,a} = r_{t,a} + gamma G_{t+1}``, ``G_{t+1}`` the return-to-go of the user's next request.

    ``G_t - r_t`` is ``gamma G_{t+1}`` (:func:`trainers.offline_data.discounted_return_to_go`).
    """
    later = data.return_to_go - data.reward.sum(axis=1)  # [n] gamma * G_{t+1}
    return data.reward + later[:, None]


def corrected_loss(
    scores: torch.Tensor, slate: torch.Tensor, beta: torch.Tensor, returns: torch.Tensor, cap: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """The surrogate loss whose gradient is the corrected policy gradient, and diagnostics.

    Shapes: ``scores`` [b, K], ``slate`` [b, k] shown candidates, ``beta`` [b, k] logged propensities,
    ``returns`` [b, k] ``R_{t,a}``.
    """
    k = slate.shape[1]
    log_pi = torch.log_softmax(scores, dim=-1).gather(1, slate)  # [b, k]
    with torch.no_grad():
        pi = log_pi.exp()
        raw = pi / beta
        weight = raw.clamp(max=cap)
        lam = k * (1.0 - pi) ** (k - 1)
        advantage = returns - returns.mean()
    loss = -(weight * lam * advantage * log_pi).mean()
    return loss, {
        "train/policy_loss": float(loss.detach()),
        "train/mean_weight": float(raw.mean()),
        "train/clipped_share": float((raw > cap).float().mean()),
    }


def train_topk_reinforce(
    scorer: SlateScorer,
    data: TrainingArrays,
    settings: TopKCorrection,
    iterations: int,
    seed: int,
    after_step: Callable[[int, dict[str, float]], None],
) -> None:
    """``iterations`` corrected REINFORCE steps on minibatches of ``data`` (drawn without replacement,
    reshuffled every pass); ``after_step(iteration, metrics)`` is called after each (1-based)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(scorer.parameters(), lr=settings.lr)
    returns = item_returns(data, settings.gamma)
    size = min(settings.batch_size, data.size)
    order, cursor = rng.permutation(data.size), 0
    scorer.train()
    for iteration in range(1, iterations + 1):
        if cursor + size > data.size:
            order, cursor = rng.permutation(data.size), 0
        rows = order[cursor : cursor + size]
        cursor += size
        obs = {key: torch.from_numpy(value) for key, value in data.rows(rows).items()}
        loss, metrics = corrected_loss(
            scorer.scores(obs),
            torch.from_numpy(data.slate[rows]),
            torch.from_numpy(data.propensity[rows]).float(),
            torch.from_numpy(returns[rows]).float(),
            settings.cap,
        )
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(scorer.parameters(), 1.0)
        optimizer.step()
        after_step(iteration, metrics)
    scorer.eval()
