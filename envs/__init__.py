"""Gymnasium slate simulators, the rollout engine and the policies that only run in simulation.

Public API: :class:`SlateEnvConfig`, :func:`make_env` / :func:`make_vector_env` (Gymnasium),
:func:`build_simulator` (the batched core), :func:`evaluate_policy` / :func:`run_sessions` (the rollout
engine), :func:`make_policy` (baselines, trained policies and ``oracle``), :class:`SimulatorOptions` /
:func:`resolve_env_config` (the simulator spec of every command).

Importing ``envs`` registers ``rayrec/SlateRec-v0``::

    import gymnasium as gym
    import envs  # noqa: F401

    env = gym.make("rayrec/SlateRec-v0", num_candidates=20, slate_size=5)
    vec = gym.make_vec("rayrec/SlateRec-v0", num_envs=64, vectorization_mode="vector_entry_point")
"""

from __future__ import annotations

import gymnasium as gym

from envs.config import SlateEnvConfig, config_with

ENV_ID = "rayrec/SlateRec-v0"
MAX_EPISODE_STEPS = SlateEnvConfig.__dataclass_fields__["max_episode_steps"].default

if ENV_ID not in gym.registry:
    gym.register(
        id=ENV_ID,
        entry_point="envs.slate_env:SlateRecEnv",
        vector_entry_point="envs.vector_env:SlateRecVectorEnv",
        max_episode_steps=MAX_EPISODE_STEPS,
    )


def make_env(config: SlateEnvConfig | None = None, *, choice_model=None, **overrides) -> gym.Env:
    """``gymnasium.make("rayrec/SlateRec-v0")`` for ``config`` (with the registered ``TimeLimit``).

    ``overrides`` are :class:`SlateEnvConfig` fields; ``choice_model`` swaps the user choice model.
    """
    config = config_with(config, **overrides)
    extra = {} if choice_model is None else {"choice_model": choice_model}
    return gym.make(ENV_ID, config=config, max_episode_steps=config.max_episode_steps, **extra)


def make_vector_env(
    config: SlateEnvConfig | None = None, num_envs: int = 1, *, choice_model=None, **overrides
) -> gym.vector.VectorEnv:
    """The native batched env for ``config`` with ``num_envs`` users (see :func:`make_env`)."""
    from envs.config import config_with

    config = config_with(config, **overrides)
    extra = {} if choice_model is None else {"choice_model": choice_model}
    return gym.make_vec(
        ENV_ID,
        num_envs=num_envs,
        vectorization_mode="vector_entry_point",
        config=config,
        max_episode_steps=config.max_episode_steps,
        **extra,
    )


# The rest of the public API (imported after the registration above, which they do not need).
from envs.factory import build_simulator  # noqa: E402
from envs.policies import make_policy  # noqa: E402
from envs.rollout import evaluate_policy, run_sessions  # noqa: E402
from envs.spec import SimulatorOptions, resolve_env_config  # noqa: E402

__all__ = [
    "ENV_ID",
    "SimulatorOptions",
    "SlateEnvConfig",
    "build_simulator",
    "evaluate_policy",
    "make_env",
    "make_policy",
    "make_vector_env",
    "resolve_env_config",
    "run_sessions",
]
