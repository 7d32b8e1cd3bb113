"""The typed config of ``rayrec train-policy`` / ``python -m trainers.policy`` (light: no Ray or RLlib import).

The command line reads it to build ``--help``; :mod:`trainers.policy` runs it.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from envs.spec import SimulatorOptions
from rayrec.errors import ConfigError


@dataclasses.dataclass(kw_only=True)
class TrainPolicyConfig(SimulatorOptions):
    """``rayrec train-policy``: PPO with a Plackett–Luce slate policy, export, held-out evaluation."""

    out: str
    """Run directory (local path or URI: s3://, gs://, file://): checkpoints, metrics, the exported policy and
    the evaluation. A remote run is written locally and uploaded after every checkpoint and at the end."""
    iterations: int = 30
    """PPO iterations (each samples ``train_batch_size`` env steps, then updates)."""
    env_runners: int = 0
    """Remote sampling actors (0: sample in the driver, fastest on a small machine)."""
    envs_per_runner: int = 128
    """Simulated users stepped together by each env runner (the native vector env)."""
    learners: int = 0
    """Remote learner actors (0: learn in the driver)."""
    gpus_per_learner: float = 0.0
    """GPUs per learner (with ``--learners 0``: 1 puts the driver's learner on a GPU)."""
    seed: int = 0
    """Seed of the env runners' users, the network initialisation and the sampling."""
    lr: float = 2e-3
    """Adam learning rate."""
    gamma: float = 0.95
    """Discount factor: how far ahead in the session the policy plans (1 / (1 - gamma) steps)."""
    gae_lambda: float = 0.95
    """GAE lambda: bias/variance trade-off of the advantage estimates."""
    entropy_coeff: float = 0.003
    """Weight of the Plackett–Luce entropy bonus (exploration)."""
    clip_param: float = 0.2
    """PPO's probability-ratio clip."""
    kl_coeff: float = 0.0
    """Initial weight of PPO's adaptive KL penalty (0 turns the penalty off; the clip already limits steps)."""
    vf_clip_param: float = 100.0
    """Clip of the squared value error per sample (session returns are in reward units, up to the budget)."""
    train_batch_size: int = 4096
    """Env steps sampled per iteration."""
    minibatch_size: int = 1024
    """Env steps per SGD minibatch."""
    num_epochs: int = 4
    """Passes over each iteration's batch."""
    hidden: int = 64
    """Width of the scorer network (per-candidate MLP, attention, value head)."""
    attention_layers: int = 1
    """Self-attention blocks across candidates."""
    attention_heads: int = 4
    """Heads per attention block."""
    entropy_samples: int = 1
    """Sampled prefixes per observation for the Plackett–Luce entropy and KL estimates."""
    checkpoint_every: int = 10
    """Save an RLlib checkpoint every this many iterations (and after the last)."""
    resume: bool = False
    """Continue from the latest checkpoint in ``--out`` (the run's env and network must be the same)."""
    validate_every: int = 5
    """Every this many iterations, evaluate the deterministic policy on ``validate_users`` held-out users (0: never)."""
    validate_users: int = 500
    """Users per periodic validation."""
    eval_users: int = 2000
    """Held-out simulated users (one session each) in the final evaluation against the baselines."""
    eval_seed: int = 1_000_003
    """Seed of the final evaluation's users (validation uses ``eval_seed + 1``; training never sees either)."""
    baselines: list[str] = dataclasses.field(
        default_factory=lambda: ["random", "retrieval", "greedy", "oracle"]
    )
    """Baselines of the final evaluation (repeat the flag to choose)."""
    export: Literal["best", "last"] = "best"
    """Which weights ``policy/`` holds: the best on the validation users (checked every ``validate_every``
    iterations, never the evaluation users) or the last iteration's."""
    policy_name: str = "ppo"
    """Name of the exported policy (reports and the event log's ``policy`` column)."""
    torch_threads: int = 1
    """Torch threads in the driver (which samples and learns with 0 runners/learners); 1 is fastest for this
    small network on a shared CPU. Ray gives remote actors one thread per CPU they hold."""

    def __post_init__(self) -> None:
        positive = (
            "iterations",
            "torch_threads",
            "envs_per_runner",
            "train_batch_size",
            "minibatch_size",
            "num_epochs",
        )
        problems = [f"{n} must be >= 1 (got {getattr(self, n)})" for n in positive if getattr(self, n) < 1]
        for name in (
            "env_runners",
            "learners",
            "gpus_per_learner",
            "checkpoint_every",
            "validate_every",
            "eval_users",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0 (got {getattr(self, name)})")
        if self.minibatch_size > self.train_batch_size:
            problems.append(
                f"minibatch_size {self.minibatch_size} exceeds train_batch_size {self.train_batch_size}"
            )
        if not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            problems.append(
                f"gamma must be in (0, 1] and gae_lambda in [0, 1] (got {self.gamma}, {self.gae_lambda})"
            )
        if self.lr <= 0 or self.entropy_coeff < 0 or self.kl_coeff < 0 or self.clip_param <= 0:
            problems.append("lr and clip_param must be > 0, entropy_coeff and kl_coeff >= 0")
        if problems:
            raise ConfigError("TrainPolicyConfig: " + "; ".join(problems))
        from rayrec.slate_scorer import ScorerConfig  # torch: lazy so that `rayrec --help` stays fast

        # A bad network shape fails here, before the simulator or Ray start (dim is checked later).
        ScorerConfig(
            dim=1,
            hidden=self.hidden,
            attention_layers=self.attention_layers,
            attention_heads=self.attention_heads,
        )
