"""``rayrec simulate`` and ``rayrec calibrate``: run policies in the slate simulator, fit it to logs.

rayrec simulate                                         # baselines on the built-in synthetic world
rayrec simulate --policy greedy --policy runs/policy --users 5000 --json sim.json
rayrec simulate --index runs/index --data data/ml --env-config runs/calib/env_config.yaml
rayrec calibrate --index runs/index --data data/ml --out runs/calib
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from rayrec import storage
from rayrec.cli import add_command
from rayrec.config import RayConfig, add_config_args, config_from_args, load_config, save_config
from rayrec.errors import ConfigError

DEFAULT_POLICIES = ["random", "retrieval", "greedy", "oracle"]
ENV_CONFIG_FILE = "env_config.yaml"
CALIBRATION_FILE = "calibration.json"


@dataclasses.dataclass(kw_only=True)
class SimulateConfig(RayConfig):
    """``rayrec simulate``: one session per simulated user for each policy; session return, CTR, length."""

    policy: list[str] | None = None
    """Policy to run (repeatable): random, retrieval, greedy, oracle or a trained policy directory
    (default: all four baselines)."""
    users: int = 2000
    """Simulated users (one session each) per policy."""
    seed: int = 0
    """Seed of the users and their choices (every policy meets the same users)."""
    index: str | None = None
    """Item index directory (default: the built-in synthetic catalog)."""
    data: str | None = None
    """Data directory: starts users from its logged histories, gives item traits."""
    env_config: str | None = None
    """Simulator config YAML (e.g. ``env_config.yaml`` from ``rayrec calibrate``); flags override it."""
    num_candidates: int | None = None
    """K candidates per step (default: the env config's)."""
    slate_size: int | None = None
    """k items per slate (default: the env config's)."""
    candidates: str | None = None
    """Candidate generator: faiss or random (default: the env config's)."""
    json: str | None = None
    """Also write the results as JSON here (the resolved config goes next to it)."""

    def __post_init__(self) -> None:
        if self.users < 2:
            raise ConfigError(f"--users must be >= 2 for confidence intervals, got {self.users}")


@dataclasses.dataclass(kw_only=True)
class CalibrateConfig(RayConfig):
    """``rayrec calibrate``: fit the simulator's choice model to logs and compare simulated with logged stats."""

    data: str
    """Data directory with the logs (items.parquet, interactions.parquet)."""
    out: str
    """Output directory: env_config.yaml (calibrated simulator), calibration.json (report), config.yaml."""
    index: str | None = None
    """Item index over the same items (needed unless the data dir is a synthetic world)."""
    env_config: str | None = None
    """Simulator config YAML to start from (default: the built-in defaults)."""
    users: int = 500
    """Simulated users per evaluation while fitting."""
    seed: int = 0
    """Seed of the fitting's simulations and negative samples."""


def env_config_for(base_path: str | None, **overrides):
    """A :class:`envs.config.SlateEnvConfig` from an optional YAML plus the non-None overrides."""
    from envs.config import SlateEnvConfig, config_with

    base = load_config(SlateEnvConfig, base_path) if base_path else None
    return config_with(base, **{k: v for k, v in overrides.items() if v is not None})


def format_table(results: dict[str, dict]) -> str:
    """Markdown table: per policy, mean and 95% CI of session return, CTR and session length."""
    lines = [
        "| policy | session return | CTR | session length |",
        "| --- | --- | --- | --- |",
    ]
    for name, metrics in results.items():
        cells = [
            f"{m['mean']:.3f} [{m['ci95_low']:.3f}, {m['ci95_high']:.3f}]"
            for m in (metrics["sim/session_return"], metrics["sim/ctr"], metrics["sim/session_length"])
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_simulate(args: argparse.Namespace) -> int:
    from envs import make_vector_env
    from envs.evaluation import run_sessions
    from envs.policies import make_policy

    config = config_from_args(SimulateConfig, args)
    env_config = env_config_for(
        config.env_config,
        index_dir=config.index,
        data_dir=config.data,
        num_candidates=config.num_candidates,
        slate_size=config.slate_size,
        candidates=config.candidates,
    )
    results = {}
    for spec in config.policy or DEFAULT_POLICIES:
        env = make_vector_env(env_config, config.users)
        policy = make_policy(spec, env=env)
        print(f"simulating {config.users} sessions with {spec} ...", flush=True)
        stats = run_sessions(policy, env_config, config.users, seed=config.seed, env=env)
        results[spec] = stats.summary()
    print(format_table(results))
    if config.json:
        directory = config.json.rsplit("/", 1)[0] if "/" in config.json else "."
        storage.write_text(
            config.json, json.dumps({"users": config.users, "policies": results}, indent=2) + "\n"
        )
        save_config(config, directory, name="simulate.config.yaml")
        save_config(env_config, directory, name=ENV_CONFIG_FILE)
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    from envs.calibration import calibrate

    config = config_from_args(CalibrateConfig, args)
    base = env_config_for(config.env_config, index_dir=config.index, data_dir=config.data)
    print(f"calibrating the simulator to {config.data} ...", flush=True)
    calibrated, report = calibrate(base, num_users=config.users, seed=config.seed)
    storage.makedirs(config.out)
    save_config(config, config.out)
    save_config(calibrated, config.out, name=ENV_CONFIG_FILE)
    storage.write_text(storage.join(config.out, CALIBRATION_FILE), json.dumps(report, indent=2) + "\n")
    print("| statistic | logged | simulated (before) | simulated (after) |")
    print("| --- | --- | --- | --- |")
    for key in ("interaction_rate", "interactions_per_session", "popularity_gini"):
        row = [report[part][key] for part in ("logged", "simulated_before", "simulated_after")]
        print(f"| {key} | " + " | ".join("n/a" if v is None else f"{v:.3f}" for v in row) + " |")
    fitted = report["fitted"]
    print(
        f"fitted temperature {fitted['temperature']['value']:.4f}, "
        f"no_click_utility {fitted['no_click_utility']['value']:.4f}; "
        f"wrote {storage.join(config.out, ENV_CONFIG_FILE)} and {CALIBRATION_FILE}"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    simulate = add_command(
        subparsers, "simulate", run_simulate, help="run policies in the slate simulator and compare them"
    )
    add_config_args(simulate, SimulateConfig)
    calibrate = add_command(
        subparsers,
        "calibrate",
        run_calibrate,
        help="fit the simulator's choice model to logs (temperature, no-click)",
    )
    add_config_args(calibrate, CalibrateConfig)
