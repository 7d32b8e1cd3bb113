"""RLlib (new API stack) pieces of the slate policy: a Plackett–Luce action distribution and the RLModule.

The action space is ``MultiDiscrete([K] * k)``: k candidate positions in display order. RLlib has no
distribution over k *distinct* positions, so :class:`TorchPlackettLuce` provides one over the module's
[B, K] candidate scores (the math lives in :mod:`rayrec.plackett_luce`). :class:`SlateRLModule` wraps the
plain-torch :class:`rayrec.slate_scorer.SlateScorer` so that the exported policy is exactly the network PPO
trained.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchDeterministic, TorchDistribution
from ray.rllib.core.rl_module.apis import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule

from rayrec import plackett_luce
from rayrec.errors import ConfigError
from rayrec.slate_scorer import OBS_KEYS, ScorerConfig, SlateScorer


class TorchPlackettLuce(TorchDistribution):
    """Plackett–Luce over ordered slates of ``slate_size`` distinct candidates, from [B, K] logits.

    ``entropy()`` and ``kl()`` are the chain-rule Monte Carlo estimates of
    :func:`rayrec.plackett_luce.entropy_estimate` / :func:`~rayrec.plackett_luce.kl_estimate` with
    ``num_estimate_samples`` prefixes per row; ``logp`` is exact. Build it with
    ``TorchPlackettLuce.get_partial_dist_cls(slate_size=k)`` so RLlib can call ``from_logits(logits)``.
    """

    def __init__(self, logits: torch.Tensor, slate_size: int, num_estimate_samples: int = 1) -> None:
        self.logits = logits
        self.slate_size = slate_size
        super().__init__(logits=logits, slate_size=slate_size, num_estimate_samples=num_estimate_samples)

    def _get_torch_distribution(
        self, logits: torch.Tensor, slate_size: int, num_estimate_samples: int
    ) -> plackett_luce.PlackettLuce:
        return plackett_luce.PlackettLuce(logits, slate_size, num_estimate_samples)

    def logp(self, value: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self._dist.log_prob(value.long())

    def kl(self, other: TorchPlackettLuce) -> torch.Tensor:
        return self._dist.kl(other._dist)

    def rsample(self, *, sample_shape=None):
        raise NotImplementedError("Plackett-Luce slates are discrete: there is no reparameterised sample")

    @staticmethod
    def required_input_dim(space: gym.Space, **kwargs: Any) -> int:
        return int(space.nvec[0])

    def to_deterministic(self) -> TorchDeterministic:
        return TorchDeterministic(loc=plackett_luce.top_k(self.logits, self.slate_size))


def slate_scorer_for(
    module: str, obs_space: gym.Space, act_space: gym.Space, model_config: dict
) -> SlateScorer:
    """The scorer network of a slate module, after refusing spaces it cannot read.

    The observation must be a Dict with :data:`OBS_KEYS` and the action MultiDiscrete([K] * k); the network's
    shape comes from ``model_config`` (``hidden``, ``attention_layers``, ``attention_heads``).
    """
    if not isinstance(obs_space, gym.spaces.Dict) or set(OBS_KEYS) - set(obs_space.spaces):
        raise ConfigError(f"{module} needs a Dict observation with keys {list(OBS_KEYS)}, got {obs_space}")
    if not isinstance(act_space, gym.spaces.MultiDiscrete) or len(set(act_space.nvec.tolist())) != 1:
        raise ConfigError(f"{module} needs a MultiDiscrete([K] * k) action space, got {act_space}")
    return SlateScorer(
        ScorerConfig(
            dim=int(obs_space["profile"].shape[-1]),
            num_features=int(obs_space["features"].shape[-1]),
            hidden=int(model_config.get("hidden", 64)),
            attention_layers=int(model_config.get("attention_layers", 1)),
            attention_heads=int(model_config.get("attention_heads", 4)),
        )
    )


class SlateRLModule(TorchRLModule, ValueFunctionAPI):
    """PPO's policy and value function for the slate env: scores candidates, Plackett–Luce over them.

    ``model_config`` keys: ``hidden``, ``attention_layers``, ``attention_heads`` (see
    :class:`rayrec.slate_scorer.ScorerConfig`) and ``entropy_samples`` (prefixes per row for the entropy
    and KL estimates). The observation must be the Dict of :mod:`rayrec.features`; the action space
    ``MultiDiscrete([K] * k)``.
    """

    def setup(self) -> None:
        obs_space, act_space = self.observation_space, self.action_space
        config = dict(self.model_config or {})
        self.scorer = slate_scorer_for("SlateRLModule", obs_space, act_space, config)
        self.action_dist_cls = TorchPlackettLuce.get_partial_dist_cls(
            slate_size=len(act_space.nvec), num_estimate_samples=int(config.get("entropy_samples", 1))
        )

    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        return {Columns.ACTION_DIST_INPUTS: self.scorer.scores(batch[Columns.OBS])}  # [B, K]

    def compute_values(self, batch: dict[str, Any], embeddings: Any | None = None) -> torch.Tensor:
        # The critic has its own trunk (see SlateScorer), so there are no shared embeddings to reuse.
        return self.scorer.value(batch[Columns.OBS])  # [B]
