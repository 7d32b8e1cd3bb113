"""The typed config of ``rayrec compare`` (light: no Ray, RLlib or matplotlib import); :mod:`trainers.compare` runs it."""

from __future__ import annotations

from dataclasses import dataclass, field

from envs.spec import SimulatorOptions, parse_overrides
from rayrec.errors import ConfigError

ALGOS = ("ppo", "slateq")
BANDIT_SUFFIX = "-bandit"
LINEAR = "linear-cem"
"""The CEM-tuned linear ranker: a fitted baseline, so it gets seeds like a learning method."""
SWITCH = "switch-cem"
"""The CEM-tuned switch ranker (two linear rankers and a gate on the user): fitted per seed, too."""
FITTED = (LINEAR, SWITCH)


@dataclass(kw_only=True)
class CompareConfig(SimulatorOptions):
    """``rayrec compare``: multi-seed training of the learning methods and a paired held-out comparison."""

    out: str
    """Directory of the comparison (per-run results, the table, the plot); reused when run again."""
    methods: list[str] = field(default_factory=lambda: ["ppo", "slateq", "ppo-bandit"])
    """Learning methods (repeat the flag): ``ppo``, ``slateq``, or either with ``-bandit`` (gamma 0)."""
    seeds: int = 5
    """Training seeds per learning method (and CEM seeds of the linear ranker)."""
    iterations: int = 30
    """Training iterations per run."""
    baselines: list[str] = field(
        default_factory=lambda: [
            "random",
            "retrieval",
            "popularity",
            "greedy",
            LINEAR,
            SWITCH,
            "myopic-true",
            "oracle",
            "planner",
        ]
    )
    """Baselines (repeat the flag): names of ``rayrec simulate --policy``, policy directories, and
    ``linear-cem`` and ``switch-cem`` (fitted per seed); ``planner``, ``myopic-true`` and ``oracle`` read
    hidden state."""
    train: list[str] = field(default_factory=list)
    """Settings of every training run, KEY=VALUE (a field of ``rayrec train-policy``, e.g.
    train_batch_size=2048); repeatable."""
    test_users: int = 2000
    """Held-out users (``user_split=test``) every run and baseline plays once."""
    test_seed: int = 1_000_003
    """Seed of the held-out users (the training runs validate on ``test_seed + 1``, other users)."""
    cem_iterations: int = 10
    """CEM iterations of the linear and the switch ranker."""
    cem_population: int = 16
    """CEM population of the linear and the switch ranker."""
    cem_users: int = 128
    """Training users per CEM candidate evaluation."""
    cpus_per_run: float = 1.0
    """Ray CPUs each run holds (runs beyond the cluster's CPUs wait)."""
    bootstrap_reps: int = 2000
    """Bootstrap replicates of the intervals."""

    def __post_init__(self) -> None:
        problems = []
        for method in self.methods:
            if method.removesuffix(BANDIT_SUFFIX) not in ALGOS:
                problems.append(
                    f"unknown method {method!r} (use {', '.join(ALGOS)}, optionally with -bandit)"
                )
        if len(set(self.methods)) != len(self.methods) or len(set(self.baselines)) != len(self.baselines):
            problems.append("methods and baselines must not repeat")
        if set(self.methods) & set(self.baselines):
            problems.append("a name cannot be both a method and a baseline")
        for name in ("seeds", "iterations", "test_users", "cem_iterations", "cem_users", "bootstrap_reps"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.cem_population < 2 or self.cpus_per_run <= 0:
            problems.append("cem_population must be >= 2 and cpus_per_run > 0")
        parse_overrides(self.train)  # a malformed KEY=VALUE fails here
        if problems:
            raise ConfigError("CompareConfig: " + "; ".join(problems))
