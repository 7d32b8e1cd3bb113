"""RLlib wiring of the slate policy: the env creator, the PPO config, the per-session metrics callback.

PPO runs with the per-position slate loss of :class:`trainers.slate_ppo.SlatePPOTorchLearner`; SlateQ's
config is in :mod:`trainers.slateq` (same env creator and callback).

The simulator reaches RLlib's env runners as a creator registered with ``ray.tune.register_env`` (an env
registered only in the driver is invisible to remote runners); each runner steps the native vector env.
"""

from __future__ import annotations

import math
from typing import Any

from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.tune.registry import register_env

from envs import make_env, make_vector_env
from envs.config import SlateEnvConfig
from rayrec.config import to_plain
from rayrec.slate_scorer import SlateScorer
from trainers.policy_config import TrainPolicyConfig
from trainers.rllib_module import SlateRLModule
from trainers.slate_ppo import CLIP_FRACTION_KEY, SlatePPOTorchLearner

RLLIB_ENV_NAME = "rayrec-slate-rllib"
MODULE_ID = "default_policy"


def scorer_model_config(cfg) -> dict:
    """The scorer network's shape (``hidden``, attention layers and heads) as an RLModule ``model_config``."""
    return {
        "hidden": cfg.hidden,
        "attention_layers": cfg.attention_layers,
        "attention_heads": cfg.attention_heads,
    }


def make_rllib_env(env_config: dict[str, Any]):
    """RLlib's env creator: the single env, or the native vector env when RLlib passes ``num_envs``."""

    fields = {k: v for k, v in dict(env_config).items() if k != "num_envs"}
    config = SlateEnvConfig(**fields)
    if "num_envs" in env_config:
        return make_vector_env(config, int(env_config["num_envs"]))
    return make_env(config)


def probe_env(env_config: SlateEnvConfig) -> tuple[int, int, int]:
    """Build the simulator once in the driver (clear errors before Ray starts): (dim, K, k)."""

    env = make_env(env_config)
    try:
        space = env.observation_space
        return int(space["profile"].shape[-1]), int(space["candidates"].shape[0]), len(env.action_space.nvec)
    finally:
        env.close()


class SessionMetrics(RLlibCallback):
    """Sums session returns, clicks, slates and sessions per iteration (:func:`iteration_metrics` divides)."""

    def on_episode_end(self, *, episode, prev_episode_chunks=None, metrics_logger=None, **kwargs) -> None:
        chunks = [*(prev_episode_chunks or []), episode]
        clicks = sum(bool(info.get("clicked", False)) for c in chunks for info in c.get_infos())
        # Sums, reset every iteration; iteration_metrics divides them into per-session means.
        metrics_logger.log_value("rayrec_return_sum", sum(c.get_return() for c in chunks), reduce="sum")
        metrics_logger.log_value("rayrec_clicks_sum", clicks, reduce="sum")
        metrics_logger.log_value("rayrec_steps_sum", sum(len(c) for c in chunks), reduce="sum")
        metrics_logger.log_value("rayrec_sessions_sum", 1, reduce="sum")


def with_slate_env(algo_config, cfg: TrainPolicyConfig, env_config: SlateEnvConfig, **runners):
    """``algo_config`` with the simulator registered as its env, vector envs per runner and the learners.

    ``runners`` adds env-runner settings (e.g. SlateQ's ``rollout_fragment_length``).
    """
    register_env(RLLIB_ENV_NAME, make_rllib_env)
    return (
        algo_config.environment(RLLIB_ENV_NAME, env_config=to_plain(env_config))
        .env_runners(
            num_env_runners=cfg.env_runners,
            num_envs_per_env_runner=cfg.envs_per_runner,
            gym_env_vectorize_mode="vector_entry_point",
            num_cpus_per_env_runner=1,
            **runners,
        )
        .learners(num_learners=cfg.learners, num_gpus_per_learner=cfg.gpus_per_learner)
    )


def build_algorithm_config(cfg: TrainPolicyConfig, env_config: SlateEnvConfig):
    """The PPOConfig: env creator, vector envs per runner, learners, PPO settings, the slate RLModule."""

    return (
        with_slate_env(PPOConfig(), cfg, env_config)
        .training(
            lr=cfg.lr,
            gamma=cfg.gamma,
            lambda_=cfg.gae_lambda,
            entropy_coeff=cfg.entropy_coeff,
            clip_param=cfg.clip_param,
            use_kl_loss=cfg.kl_coeff > 0,
            kl_coeff=cfg.kl_coeff,
            vf_clip_param=cfg.vf_clip_param,
            train_batch_size_per_learner=math.ceil(cfg.train_batch_size / max(cfg.learners, 1)),
            minibatch_size=cfg.minibatch_size,
            num_epochs=cfg.num_epochs,
            grad_clip=1.0,
            learner_class=SlatePPOTorchLearner,
        )
        .rl_module(
            rl_module_spec=RLModuleSpec(
                module_class=SlateRLModule,
                model_config=scorer_model_config(cfg) | {"entropy_samples": cfg.entropy_samples},
            )
        )
        .callbacks(SessionMetrics)
        .reporting(metrics_num_episodes_for_smoothing=1000)
        .debugging(seed=cfg.seed, log_level="ERROR")
    )


def iteration_metrics(result: dict[str, Any], slate_size: int) -> dict[str, float]:
    """Namespaced metrics of one ``algo.train()`` result: ``sim/*`` (this iteration's sessions under the
    *sampled* training policy, in the vocabulary of :mod:`rayrec.metrics.session`) and ``train/*`` (PPO:
    losses, slate entropy and each position's ``train/entropy_p{p}``, clip fraction; SlateQ: TD loss, mean
    Q, click rate of the replayed batch). Learner keys a method does not log are NaN."""
    runners = result.get("env_runners", {})
    sessions = float(runners.get("rayrec_sessions_sum", 0.0))
    steps = float(runners.get("rayrec_steps_sum", 0.0))
    learner = result.get("learners", {}).get(MODULE_ID, {})
    nan = float("nan")
    out = {
        "sim/session_return": float(runners.get("rayrec_return_sum", nan)) / sessions if sessions else nan,
        "sim/ctr": float(runners.get("rayrec_clicks_sum", nan)) / (steps * slate_size) if steps else nan,
        "sim/session_length": steps / sessions if sessions else nan,
        "sim/sessions": sessions,
        "train/env_steps": float(result.get("num_env_steps_sampled_lifetime", nan)),
    }
    for src, name in (
        ("policy_loss", "policy_loss"),
        ("vf_loss", "vf_loss"),
        ("entropy", "entropy"),
        ("mean_kl_loss", "kl"),
        ("vf_explained_var", "vf_explained_var"),
        (CLIP_FRACTION_KEY, "clip_fraction"),
        ("qf_loss", "qf_loss"),
        ("qf_mean", "q_mean"),
        ("click_rate", "replay_click_rate"),
    ):
        out[f"train/{name}"] = float(learner.get(src, nan))
    for p in range(slate_size):
        out[f"train/entropy_p{p}"] = float(learner.get(f"entropy_p{p}", nan))
    return out


def current_scorer(algo) -> SlateScorer:
    """The scorer with the learner's latest weights (the env runners get them after every update)."""
    return algo.get_module(MODULE_ID).scorer
