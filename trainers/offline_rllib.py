"""Behaviour cloning and MARWIL on RLlib's offline API (new API stack), over the slate RLModule.

RLlib's :class:`~ray.rllib.offline.offline_data.OfflineData` reads the Parquet transitions
(:func:`trainers.offline_data.write_transitions`) with Ray Data, its ``OfflinePreLearner`` turns each
row into a one-step episode, and the learner updates :class:`trainers.rllib_module.SlateRLModule` — the
same module PPO trains, so the result exports the same way. The action distribution is the module's
Plackett–Luce over candidate scores, so both losses use the exact log-probability of the logged ordered
slate.

- BC maximises ``log pi(slate | x)`` over the logged requests.
- MARWIL (Wang et al., "Exponentially Weighted Imitation Learning for Batched Reinforcement Learning",
  NeurIPS 2018) weights it by ``exp(beta A / c)``, ``A = G - V(x)`` with ``G`` the logged discounted
  return-to-go and ``c`` the running root mean square of ``A``; the value head regresses ``G``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from ray.rllib.algorithms.bc import BCConfig
from ray.rllib.algorithms.marwil import MARWILConfig
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from trainers.offline_data import TrainingArrays
from trainers.policy_config import TrainPolicyConfig
from trainers.rllib_module import SlateRLModule
from trainers.rllib_setup import scorer_model_config

MODULE_ID = "default_policy"


def spaces(data: TrainingArrays) -> tuple[gym.spaces.Dict, gym.spaces.MultiDiscrete]:
    """The observation and action spaces of the logged requests (those of ``rayrec/SlateRec-v0``)."""
    obs = gym.spaces.Dict(
        {
            key: gym.spaces.Box(-np.inf, np.inf, shape=value.shape[1:], dtype=np.float32)
            for key, value in data.obs.items()
        }
    )
    return obs, gym.spaces.MultiDiscrete([data.num_candidates] * data.slate_size)


def build_offline_config(
    algorithm: str, cfg: TrainPolicyConfig, data: TrainingArrays, paths: list[str]
) -> Any:
    """The BCConfig or MARWILConfig that reads ``paths`` and trains the slate module."""
    obs_space, action_space = spaces(data)
    config = BCConfig() if algorithm == "bc" else MARWILConfig()
    config = (
        config.environment(observation_space=obs_space, action_space=action_space)
        .offline_data(
            input_=paths,
            input_read_method="read_parquet",
            input_compress_columns=["obs", "actions"],
            ignore_final_observation=True,  # every row is a terminated one-step episode
            dataset_num_iters_per_learner=1,
            # One pre-learner actor on half a CPU: RLlib's default (2 actors, 1 CPU each) takes every CPU of a
            # 2-core Ray instance and starves Ray Data's own read tasks, which then never run.
            map_batches_kwargs={"concurrency": 1, "num_cpus": 0.5},
        )
        .learners(num_learners=0)
        .training(
            lr=cfg.lr,
            gamma=cfg.gamma,
            train_batch_size_per_learner=min(cfg.train_batch_size, data.size),
            grad_clip=1.0,
        )
        .rl_module(
            rl_module_spec=RLModuleSpec(
                module_class=SlateRLModule,
                model_config=scorer_model_config(cfg),
            )
        )
        .debugging(seed=cfg.seed, log_level="ERROR")
    )
    if algorithm == "marwil":
        config = config.training(
            beta=cfg.marwil_beta,
            vf_coeff=1.0,
            moving_average_sqd_adv_norm_start=1.0,
            moving_average_sqd_adv_norm_update_rate=1e-2,
        )
    return config


def learner_scorer_state(algo: Any) -> dict[str, torch.Tensor]:
    """The learner's current scorer weights, as a :class:`rayrec.slate_scorer.SlateScorer` state dict."""
    weights = algo.learner_group.get_weights(module_ids=[MODULE_ID])[MODULE_ID]
    prefix = "scorer."
    return {
        key[len(prefix) :]: torch.as_tensor(value) for key, value in weights.items() if key.startswith(prefix)
    }


def learner_metrics(result: dict[str, Any]) -> dict[str, float]:
    """``train/*`` metrics of one ``algo.train()`` result."""
    learner = result.get("learners", {}).get(MODULE_ID, {})
    nan = float("nan")
    return {
        "train/policy_loss": float(learner.get("policy_loss", nan)),
        "train/vf_loss": float(learner.get("vf_loss", nan)),
    }
