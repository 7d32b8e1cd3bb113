"""PPO for slates: each slate position is one choice with its own importance ratio and clipping.

A Plackett–Luce slate is k sequential choices without replacement, so its probability is the product of k
per-position factors ``pi(i_p | s, i_<p)``. Clipping the ratio of whole-slate probabilities (RLlib's
:class:`~ray.rllib.algorithms.ppo.torch.ppo_torch_learner.PPOTorchLearner` on our slate distribution)
clips a product of k ratios: once any one position moves, the whole slate's gradient is cut, and the
policy barely sharpens (docs/policy_results.md: 14.3 of a possible 14.4 nats after 30 iterations). Here
each position is one decision of a factored policy that shares the slate's advantage, as in multi-agent
PPO with a shared reward: the surrogate is ``sum_p min(r_p A, clip(r_p, 1 - eps, 1 + eps) A)`` with
``r_p = pi_new(i_p | s, i_<p) / pi_old(i_p | s, i_<p)``. At ``r = 1`` its gradient is exactly the slate's
policy gradient ``A ∇ log pi(slate)``; the clipping then bounds each position's step separately. The
entropy bonus and the KL penalty are per position too (exact conditional entropies and KLs along the
sampled prefix, whose sum over positions is the chain-rule estimate of the slate's), and each position's
entropy is logged (``entropy_p0`` .. ``entropy_p{k-1}``; a uniform position p has ``log(K - p)`` nats).

References:
    - Schulman, J. et al. (2017). "Proximal Policy Optimization Algorithms." arXiv:1707.06347.
    - de Witt, C. S. et al. (2020). "Is Independent Learning All You Need in the StarCraft Multi-Agent
      Challenge?" arXiv:2011.09533 (per-agent ratios and clipping with a shared advantage: IPPO).
    - Plackett, R. L. (1975). The Analysis of Permutations. Applied Statistics 24(2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from ray.rllib.algorithms.ppo.ppo import (
    LEARNER_RESULTS_KL_KEY,
    LEARNER_RESULTS_VF_EXPLAINED_VAR_KEY,
    LEARNER_RESULTS_VF_LOSS_UNCLIPPED_KEY,
)
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import ENTROPY_KEY, POLICY_LOSS_KEY, VF_LOSS_KEY
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.utils.torch_utils import explained_variance

from rayrec.plackett_luce import conditional_log_probs

CLIP_FRACTION_KEY = "clip_fraction"


def position_entropy_key(p: int) -> str:
    return f"entropy_p{p}"


@dataclass(frozen=True)
class PerPositionTerms:
    """The per-position pieces of the slate PPO loss for B slates of k positions.

    Attributes:
        surrogate: [B] clipped surrogate summed over positions (to maximise).
        ratio: [B, k] per-position importance ratios ``pi_new / pi_old`` of the shown items.
        clipped: [B, k] bool, True where the clip is active (the min picked the clipped term).
        entropy: [B, k] exact entropy of each position's conditional choice (new policy).
        kl: [B, k] exact ``KL(old || new)`` of each position's conditional choice.
    """

    surrogate: torch.Tensor
    ratio: torch.Tensor
    clipped: torch.Tensor
    entropy: torch.Tensor
    kl: torch.Tensor


def _xlogy_sum(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """``sum_j exp(p_log_j) * q_log_j`` over the last axis, skipping excluded (-inf in ``p_log``) entries."""
    finite = torch.isfinite(p_log)
    safe_q = torch.where(finite, q_log, torch.zeros_like(q_log))
    return (p_log.exp() * safe_q).sum(dim=-1)


def per_position_terms(
    new_logits: torch.Tensor,
    old_logits: torch.Tensor,
    slate: torch.Tensor,
    advantages: torch.Tensor,
    clip_param: float,
) -> PerPositionTerms:
    """The per-position ratios, clipped surrogate, entropies and KLs of a batch of sampled slates.

    Args:
        new_logits: [B, K] candidate scores of the policy being updated (with gradient).
        old_logits: [B, K] candidate scores of the policy that sampled the slates (no gradient needed).
        slate: [B, k] int64 sampled candidate indices in display order.
        advantages: [B] the slate's advantage estimate, shared by its positions.
        clip_param: PPO's ratio clip ``eps``.
    """
    slate = slate.long()
    new_cond = conditional_log_probs(new_logits, slate)  # [B, k, K]
    old_cond = conditional_log_probs(old_logits.detach(), slate)  # [B, k, K]
    new_lp = new_cond.gather(-1, slate.unsqueeze(-1)).squeeze(-1)  # [B, k]
    old_lp = old_cond.gather(-1, slate.unsqueeze(-1)).squeeze(-1)  # [B, k]
    ratio = torch.exp(new_lp - old_lp)  # [B, k]
    adv = advantages.unsqueeze(-1)  # [B, 1]
    unclipped = adv * ratio
    clipped = adv * torch.clamp(ratio, 1 - clip_param, 1 + clip_param)
    entropy = -_xlogy_sum(new_cond, new_cond)  # [B, k]
    kl = _xlogy_sum(old_cond, old_cond) - _xlogy_sum(old_cond, new_cond)  # [B, k]
    return PerPositionTerms(
        surrogate=torch.minimum(unclipped, clipped).sum(dim=-1),
        ratio=ratio,
        clipped=clipped < unclipped,
        entropy=entropy,
        kl=kl,
    )


class SlatePPOTorchLearner(PPOTorchLearner):
    """RLlib PPO learner (new API stack, torch) with the per-position slate loss of this module.

    Needs a module whose action-distribution inputs are [B, K] Plackett–Luce logits and whose actions are
    [B, k] candidate indices (:class:`trainers.rllib_module.SlateRLModule`). Logged per module:
    ``policy_loss``, ``vf_loss``, ``entropy`` (sum over positions: the chain-rule slate entropy),
    ``entropy_p{p}``, ``mean_kl_loss`` (sum over positions) and ``clip_fraction``.
    """

    def compute_loss_for_module(
        self, *, module_id: str, config: Any, batch: dict[str, Any], fwd_out: dict[str, Any]
    ) -> torch.Tensor:
        module = self.module[module_id].unwrapped()
        if Columns.LOSS_MASK in batch:
            mask = batch[Columns.LOSS_MASK]
            num_valid = torch.sum(mask)

            def masked_mean(data: torch.Tensor) -> torch.Tensor:
                return torch.sum(data[mask]) / num_valid

        else:
            masked_mean = torch.mean
        terms = per_position_terms(
            fwd_out[Columns.ACTION_DIST_INPUTS],
            batch[Columns.ACTION_DIST_INPUTS],
            batch[Columns.ACTIONS],
            batch[Postprocessing.ADVANTAGES],
            config.clip_param,
        )
        entropy = terms.entropy.sum(dim=-1)  # [B]
        kl = terms.kl.sum(dim=-1)  # [B]
        values = module.compute_values(batch)  # [B]
        vf_loss = torch.pow(values - batch[Postprocessing.VALUE_TARGETS], 2.0)
        vf_loss_clipped = torch.clamp(vf_loss, 0, config.vf_clip_param)
        entropy_coeff = self.entropy_coeff_schedulers_per_module[module_id].get_current_value()
        total = masked_mean(
            -terms.surrogate + config.vf_loss_coeff * vf_loss_clipped - entropy_coeff * entropy
        )
        mean_kl = masked_mean(kl)
        if config.use_kl_loss:
            total = total + self.curr_kl_coeffs_per_module[module_id] * mean_kl
        stats = {
            POLICY_LOSS_KEY: -masked_mean(terms.surrogate),
            VF_LOSS_KEY: masked_mean(vf_loss_clipped),
            LEARNER_RESULTS_VF_LOSS_UNCLIPPED_KEY: masked_mean(vf_loss),
            LEARNER_RESULTS_VF_EXPLAINED_VAR_KEY: explained_variance(
                batch[Postprocessing.VALUE_TARGETS], values
            ),
            ENTROPY_KEY: masked_mean(entropy),
            LEARNER_RESULTS_KL_KEY: mean_kl,
            CLIP_FRACTION_KEY: masked_mean(terms.clipped.float().mean(dim=-1)),
        }
        for p in range(terms.entropy.shape[1]):
            stats[position_entropy_key(p)] = masked_mean(terms.entropy[:, p])
        self.metrics.log_dict(stats, key=module_id, window=1)
        return total
