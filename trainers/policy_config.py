"""The typed config of ``rayrec train-policy`` / ``python -m trainers.policy`` (light: no Ray or RLlib import).

The command line reads it to build ``--help``; :mod:`trainers.policy` runs it.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from envs.spec import SimulatorOptions
from rayrec.errors import ConfigError

DEFAULT_BASELINES = ("random", "retrieval", "greedy", "oracle")
"""The baselines of ``train-policy``'s final evaluation unless ``--baselines`` names others."""


@dataclasses.dataclass(kw_only=True)
class TrainPolicyConfig(SimulatorOptions):
    """``rayrec train-policy``: a slate policy (PPO or SlateQ) in the simulator, export, held-out evaluation."""

    out: str
    """Run directory (local path or URI: s3://, gs://, file://): checkpoints, metrics, the exported policy and
    the evaluation. A remote run is written locally and uploaded after every checkpoint and at the end."""
    algo: Literal["ppo", "slateq"] = "ppo"
    """Learning method: ``ppo`` (Plackett–Luce policy, per-position clipped loss: trainers.slate_ppo) or
    ``slateq`` (item-wise Q through the fitted click model: trainers.slateq). ``--gamma 0`` makes either a
    contextual bandit (the immediate reward only)."""
    from_events: str | None = None
    """Learn offline from this event log (``rayrec serve --events`` / ``rayrec ab``'s ``events/``) instead of
    sampling the simulator: ``--offline-algo`` on the logged requests (trainers.offline); the simulator
    options give the catalog the log's candidates are looked up in (a simulated log's own
    ``simulator.yaml`` wins) and the held-out users of the final evaluation."""
    offline_algo: Literal["bc", "marwil", "reinforce-topk"] = "marwil"
    """With --from-events: behaviour cloning or MARWIL (RLlib's offline API, Ray Data reading the log as
    Parquet), or REINFORCE with the top-K off-policy correction (Chen et al. 2019)."""
    marwil_beta: float = 1.0
    """MARWIL: advantage temperature beta in [0, 1] (0 is behaviour cloning)."""
    topk_cap: float = 10.0
    """reinforce-topk: cap on the importance weight pi/beta of a logged item."""
    iterations: int = 30
    """Training iterations (each samples ``train_batch_size`` env steps, then updates)."""
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
    """Discount factor: how far ahead in the session the policy plans (1 / (1 - gamma) steps); 0 trains a
    contextual bandit (the same network, myopic)."""
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
    minibatch_size: int = 256
    """Env steps per SGD minibatch (PPO; SlateQ: transitions per replayed batch). Small minibatches give
    more Adam steps for the same compute: 256 learned faster than 1024 on ``classic``."""
    num_epochs: int = 4
    """PPO: passes over each iteration's batch. SlateQ: replay ratio (transitions trained per transition sampled)."""
    epsilon: float = 0.3
    """SlateQ: initial probability of a uniformly random slate (epsilon-greedy exploration)."""
    final_epsilon: float = 0.02
    """SlateQ: epsilon reached after ``epsilon_steps`` env steps (linear decay)."""
    epsilon_steps: int = 60_000
    """SlateQ: env steps of the epsilon decay."""
    replay_capacity: int = 100_000
    """SlateQ: transitions held in the replay buffer."""
    target_update_steps: int = 500
    """SlateQ: env steps between target-network syncs."""
    learning_starts: int = 2_000
    """SlateQ: env steps sampled before the first update."""
    choice_users: int = 1_000
    """SlateQ: users shown random slates to fit the click (choice) model, from the training users."""
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
    """Held-out simulated users (one session each) in the final evaluation against the baselines (0: no final
    evaluation, as in ``rayrec compare``, which evaluates every run on its own test users)."""
    eval_seed: int = 1_000_003
    """Seed of the final evaluation's users (validation uses ``eval_seed + 1``; training never sees either)."""
    baselines: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_BASELINES))
    """Baselines of the final evaluation (repeat the flag to choose)."""
    export: Literal["best", "last"] = "best"
    """Which weights ``policy/`` holds: the best on the validation users (checked every ``validate_every``
    iterations, never the evaluation users) or the last iteration's."""
    policy_name: str | None = None
    """Name of the exported policy (reports and the event log's ``policy`` column); default: ``--algo``."""
    torch_threads: int = 1
    """Torch threads in the driver (which samples and learns with 0 runners/learners); 1 is fastest for this
    small network on a shared CPU. Ray gives remote actors one thread per CPU they hold."""
    tracking_uri: str | None = None
    """MLflow tracking URI the run logs its parameters and metrics to (through Ray's ``setup_mlflow``):
    default a local file store, ``<out>/mlruns``; ``none``: no MLflow. TensorBoard events always go to
    ``<out>/tensorboard`` (see ``trainers/tracking.py``)."""

    def __post_init__(self) -> None:
        positive = (
            "iterations",
            "torch_threads",
            "envs_per_runner",
            "train_batch_size",
            "minibatch_size",
            "num_epochs",
            "replay_capacity",
            "target_update_steps",
            "choice_users",
        )
        problems = [f"{n} must be >= 1 (got {getattr(self, n)})" for n in positive if getattr(self, n) < 1]
        for name in (
            "env_runners",
            "learners",
            "gpus_per_learner",
            "checkpoint_every",
            "validate_every",
            "eval_users",
            "epsilon_steps",
            "learning_starts",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0 (got {getattr(self, name)})")
        if self.minibatch_size > self.train_batch_size:
            problems.append(
                f"minibatch_size {self.minibatch_size} exceeds train_batch_size {self.train_batch_size}"
            )
        if not 0 <= self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            problems.append(
                f"gamma must be in [0, 1] and gae_lambda in [0, 1] (got {self.gamma}, {self.gae_lambda})"
            )
        if not 0 <= self.final_epsilon <= 1 or not 0 <= self.epsilon <= 1:
            problems.append(
                f"epsilon and final_epsilon must be in [0, 1] (got {self.epsilon}, {self.final_epsilon})"
            )
        if self.lr <= 0 or self.entropy_coeff < 0 or self.kl_coeff < 0 or self.clip_param <= 0:
            problems.append("lr and clip_param must be > 0, entropy_coeff and kl_coeff >= 0")
        if self.policy_name is None and self.from_events is not None:
            self.policy_name = self.offline_algo
        if self.policy_name is None:
            self.policy_name = self.algo if self.gamma > 0 else f"{self.algo}-bandit"
        if not 0 <= self.marwil_beta <= 1 or self.topk_cap <= 0:
            problems.append(
                f"marwil_beta must be in [0, 1] and topk_cap > 0 (got {self.marwil_beta}, {self.topk_cap})"
            )
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
