"""SlateQ on RLlib's new API stack: a custom RLModule and a DQN-based Learner for the slate env.

SlateQ (Ie et al., IJCAI 2019) learns item-wise values ``Qbar(s, i)`` — the value of the user consuming
item i in state s — and gets a slate's value through the user's choice model (:mod:`rayrec.slate_q`).
Here the choice model is the observable conditional logit :class:`rayrec.click_logit.SlateClickModel`,
fitted to clicks on uniformly random slates in the training simulator (what a production team can fit
from exploration traffic; the simulator's true choice model stays hidden). No-click is an item too: the
scorer's value head is ``Qbar(s, ⊥)``, since a session goes on after a slate nobody clicks.

The TD target of a transition ``(s, A, clicked, r, s')`` updates only the option the user took (the
clicked item, or ⊥)::

    Qbar(s, clicked) <- r + gamma * Q_target(s', A*),   A* = greedy_slate(Qbar_online(s', .))

(the slate chosen by the online network, valued by the target network: double Q-learning, van Hasselt et
al. 2016). Which item was clicked comes from the env's ``click_position`` info through a learner
connector piece (:class:`AddClickPositions`). Exploration is epsilon-greedy over slates: with probability
epsilon a uniformly random slate, otherwise the greedy one. The network is the same
:class:`rayrec.slate_scorer.SlateScorer` as PPO's, so the export (with the choice model) is served,
simulated and A/B-tested like any other policy.

References:
    - Ie, E. et al. (2019). "SlateQ: A Tractable Decomposition for Reinforcement Learning with
      Recommendation Sets." IJCAI.
    - Mnih, V. et al. (2015). "Human-level control through deep reinforcement learning." Nature 518.
    - van Hasselt, H., Guez, A. & Silver, D. (2016). "Deep Reinforcement Learning with Double Q-learning." AAAI.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from ray.rllib.algorithms.dqn import DQNConfig
from ray.rllib.algorithms.dqn.dqn_learner import QF_LOSS_KEY, QF_MEAN_KEY, TD_ERROR_MEAN_KEY, DQNLearner
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.connectors.learner import AddNextObservationsFromEpisodesToTrainBatch
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.core.learner.utils import make_target_network
from ray.rllib.core.rl_module.apis import QNetAPI, TargetNetworkAPI
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.utils.schedules.scheduler import Scheduler

from envs.config import SlateEnvConfig
from rayrec import slate_q
from rayrec.click_logit import SlateClickModel
from rayrec.errors import ConfigError
from rayrec.slate_scorer import (
    SlateScorer,
    choice_model_from_json,
    choice_model_to_json,
    position_logits,
)
from trainers.policy_config import TrainPolicyConfig
from trainers.rllib_module import slate_scorer_for
from trainers.rllib_setup import (
    SessionMetrics,
    scorer_model_config,
    with_slate_env,
)

CLICK_POSITION = "click_position"
"""Train-batch column: the slate position the user clicked after the action, -1 for no click."""


class AddClickPositions(ConnectorV2):
    """Learner connector piece: the ``click_position`` info of every transition as a batch column.

    Reads ``info["click_position"]`` of the step each transition ends with (index t + 1 of the episode's
    infos; index 0 is the reset's). Transitions must be one step (``n_step=1``): with n > 1 the last info
    belongs to a later step than the action being valued.
    """

    def __call__(self, *, rl_module, batch, episodes, explore=None, shared_data=None, **kwargs) -> Any:
        for episode in self.single_agent_episode_iterator(episodes, agents_that_stepped_only=False):
            infos = episode.get_infos(slice(1, len(episode) + 1))
            self.add_n_batch_items(
                batch,
                CLICK_POSITION,
                items_to_add=[int(info.get(CLICK_POSITION, -1)) for info in infos],
                num_items=len(episode),
                single_agent_episode=episode,
            )
        return batch


class SlateQRLModule(TorchRLModule, TargetNetworkAPI, QNetAPI):
    """SlateQ's item values, target network and greedy/epsilon-greedy slates for ``MultiDiscrete([K] * k)``.

    ``model_config`` keys: ``hidden``, ``attention_layers``, ``attention_heads`` (the
    :class:`rayrec.slate_scorer.ScorerConfig`), ``choice_model`` (``choice_model_to_json`` of the
    :class:`SlateClickModel`) and ``epsilon`` (a constant or RLlib schedule ``[[t, value], ...]``, supplied
    by :class:`DQNConfig`).
    """

    def setup(self) -> None:
        obs_space, act_space = self.observation_space, self.action_space
        config = dict(self.model_config or {})
        if "choice_model" not in config:
            raise ConfigError("SlateQRLModule needs model_config['choice_model'] (a fitted SlateClickModel)")
        self.scorer = slate_scorer_for("SlateQRLModule", obs_space, act_space, config)
        self.slate_size = len(act_space.nvec)
        self.num_candidates = int(act_space.nvec[0])
        model = choice_model_from_json(config["choice_model"])
        self.choice_model = model
        # Fixed choice-model parameters (buffers: saved with the module, never trained).
        self.register_buffer("feature_weights", torch.as_tensor(model.feature_weights, dtype=torch.float32))
        self.register_buffer(
            "embedding_weights", torch.as_tensor(model.embedding_weights, dtype=torch.float32)
        )
        self.register_buffer("choice_bias", torch.tensor(float(model.bias)))
        self.register_buffer("position_logits", position_logits(model, self.slate_size))
        self.epsilon_schedule = Scheduler(
            fixed_value_or_schedule=config.get("epsilon", 0.0), framework="torch"
        )

    # -- the choice model and the slates ---------------------------------------------------------------
    def item_logits(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, K] position-free click logits ``v(s, j)`` of the fixed choice model."""
        logits = obs["features"] @ self.feature_weights + self.choice_bias  # [B, K]
        if self.embedding_weights.numel():
            logits = logits + obs["candidates"] @ self.embedding_weights  # [B, K]
        return logits

    def greedy(self, obs: dict[str, torch.Tensor], scorer: SlateScorer | None = None) -> torch.Tensor:
        """[B, k] the greedy SlateQ slate under ``scorer``'s values (default: the online network)."""
        scorer = scorer or self.scorer
        return slate_q.greedy_slate(
            scorer.scores(obs),
            scorer.value(obs),
            self.item_logits(obs),
            self.position_logits,
            self.slate_size,
        )

    def _forward_inference(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        with torch.no_grad():
            return {Columns.ACTIONS: self.greedy(batch[Columns.OBS])}

    def _forward_exploration(self, batch: dict[str, Any], t: int = 0, **kwargs: Any) -> dict[str, Any]:
        with torch.no_grad():
            greedy = self.greedy(batch[Columns.OBS])  # [B, k]
            self.epsilon_schedule.update(t)
            epsilon = float(self.epsilon_schedule.get_current_value())
            batch_size = greedy.shape[0]
            random = torch.argsort(torch.rand(batch_size, self.num_candidates), dim=1)[:, : self.slate_size]
            explore = torch.rand(batch_size) < epsilon  # [B]
            return {Columns.ACTIONS: torch.where(explore[:, None], random, greedy)}

    def _forward_train(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        obs = batch[Columns.OBS]
        return {"item_q": self.scorer.scores(obs), "null_q": self.scorer.value(obs)}

    # -- RLlib's Q-net and target-network APIs --------------------------------------------------------
    def compute_q_values(self, batch: dict[str, Any]) -> dict[str, Any]:
        obs = batch[Columns.OBS]
        return {"qf_preds": self.scorer.scores(obs)}  # [B, K] item values

    def make_target_networks(self) -> None:
        self._target_scorer = make_target_network(self.scorer)

    def get_target_network_pairs(self) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        return [(self.scorer, self._target_scorer)]

    def forward_target(self, batch: dict[str, Any]) -> dict[str, Any]:
        obs = batch[Columns.OBS]
        return {"item_q": self._target_scorer.scores(obs), "null_q": self._target_scorer.value(obs)}

    def get_non_inference_attributes(self) -> list[str]:
        return ["_target_scorer"]


def slateq_targets(
    module: SlateQRLModule, next_obs: dict[str, torch.Tensor], rewards: torch.Tensor, discounts: torch.Tensor
) -> torch.Tensor:
    """[B] TD targets ``r + discount * Q_target(s', greedy_online(s'))`` (no gradient).

    ``discounts`` [B] is ``gamma`` where the episode goes on (truncation bootstraps) and 0 where it terminated.
    """
    with torch.no_grad():
        best = module.greedy(next_obs)  # [B, k] chosen by the online network (double Q)
        target = module.forward_target({Columns.OBS: next_obs})
        value = slate_q.slate_value(
            target["item_q"], target["null_q"], module.item_logits(next_obs), module.position_logits, best
        )  # [B]
        return rewards + discounts * value


def taken_values(
    item_q: torch.Tensor, null_q: torch.Tensor, slate: torch.Tensor, click_position: torch.Tensor
) -> torch.Tensor:
    """[B] the value of the option the user took: ``Qbar(s, slate[click])``, or ``Qbar(s, ⊥)`` for no click.

    Args:
        item_q: [B, K]; null_q: [B]; slate: [B, k] shown candidates; click_position: [B] in -1..k-1.
    """
    clicked = slate.long().gather(1, click_position.clamp(min=0).long().unsqueeze(1))  # [B, 1]
    return torch.where(click_position >= 0, item_q.gather(1, clicked).squeeze(1), null_q)


class SlateQTorchLearner(DQNLearner, TorchLearner):
    """DQN's learner (target-network updates, replay wiring) with SlateQ's item-wise TD loss (Huber)."""

    def build(self) -> None:
        super().build()
        self._learner_connector.insert_after(AddNextObservationsFromEpisodesToTrainBatch, AddClickPositions())

    def compute_loss_for_module(
        self, *, module_id: str, config: Any, batch: dict[str, Any], fwd_out: dict[str, Any]
    ) -> torch.Tensor:
        module = self.module[module_id].unwrapped()
        steps = batch.get("n_step")
        gamma = (
            config.gamma ** steps.float()
            if steps is not None
            else torch.full_like(batch[Columns.REWARDS], config.gamma)
        )
        discounts = gamma * (1.0 - batch[Columns.TERMINATEDS].float())
        targets = slateq_targets(module, batch[Columns.NEXT_OBS], batch[Columns.REWARDS].float(), discounts)
        pred = taken_values(
            fwd_out["item_q"], fwd_out["null_q"], batch[Columns.ACTIONS], batch[CLICK_POSITION]
        )
        td_error = pred - targets
        loss = torch.nn.functional.huber_loss(pred, targets)
        self.metrics.log_dict(
            {
                QF_LOSS_KEY: loss,
                QF_MEAN_KEY: pred.mean(),
                TD_ERROR_MEAN_KEY: td_error.mean(),
                "click_rate": (batch[CLICK_POSITION] >= 0).float().mean(),
            },
            key=module_id,
            window=1,
        )
        return loss


def fit_choice_model(env_config: SlateEnvConfig, num_users: int, seed: int) -> SlateClickModel:
    """The observable conditional logit, fitted to clicks on uniformly random slates of ``num_users`` users."""
    from envs.policies import random_slate_log  # the exploration log of the greedy baseline
    from rayrec.click_logit import fit_slate_click_model

    return fit_slate_click_model(*random_slate_log(env_config, num_users, seed))


def build_slateq_config(cfg: TrainPolicyConfig, env_config: SlateEnvConfig, choice_model: SlateClickModel):
    """The DQNConfig running SlateQ: env creator, vector envs, replay, epsilon schedule, the SlateQ module."""
    runners = max(cfg.env_runners, 1)
    fragment = max(1, math.ceil(cfg.train_batch_size / (cfg.envs_per_runner * runners)))
    return (
        with_slate_env(DQNConfig(), cfg, env_config, rollout_fragment_length=fragment)
        .training(
            lr=cfg.lr,
            gamma=cfg.gamma,
            train_batch_size_per_learner=cfg.minibatch_size,
            training_intensity=float(cfg.num_epochs),
            n_step=1,
            double_q=True,
            dueling=False,
            num_atoms=1,
            epsilon=[(0, cfg.epsilon), (cfg.epsilon_steps, cfg.final_epsilon)],
            target_network_update_freq=cfg.target_update_steps,
            num_steps_sampled_before_learning_starts=cfg.learning_starts,
            replay_buffer_config={"type": "EpisodeReplayBuffer", "capacity": cfg.replay_capacity},
            grad_clip=1.0,
            learner_class=SlateQTorchLearner,
        )
        .rl_module(
            rl_module_spec=RLModuleSpec(
                module_class=SlateQRLModule,
                model_config=scorer_model_config(cfg)
                | {
                    "choice_model": choice_model_to_json(choice_model),
                    "epsilon": [(0, cfg.epsilon), (cfg.epsilon_steps, cfg.final_epsilon)],
                },
            )
        )
        .callbacks(SessionMetrics)
        .reporting(metrics_num_episodes_for_smoothing=1000)
        .debugging(seed=cfg.seed, log_level="ERROR")
    )
