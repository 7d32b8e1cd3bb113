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

from envs.spec import SimulatorOptions, resolve_env_config
from rayrec import storage
from rayrec.cli import add_command
from rayrec.config import add_config_args, config_from_args, save_config
from rayrec.errors import ConfigError
from rayrec.metrics.session import METRICS, REPORTED, namespaced

DEFAULT_POLICIES = ["random", "retrieval", "greedy", "oracle"]
ENV_CONFIG_FILE = "env_config.yaml"
CALIBRATION_FILE = "calibration.json"
ROLLOUT_SLOTS = 4096
"""Users simulated at once (simulator rows); more users arrive as sessions end."""


@dataclasses.dataclass(kw_only=True)
class SimulateConfig(SimulatorOptions):
    """``rayrec simulate``: one session per simulated user for each policy; the session metrics with intervals."""

    policy: list[str] | None = None
    """Policy to run (repeatable): random, retrieval, greedy, oracle or a trained policy directory
    (default: all four baselines)."""
    users: int = 2000
    """Simulated users (one session each) per policy."""
    seed: int = 0
    """Seed of the users and their choices (every policy meets the same users)."""
    json: str | None = None
    """Also write the results as JSON here (the resolved config goes next to it)."""

    def __post_init__(self) -> None:
        if self.users < 2:
            raise ConfigError(f"--users must be >= 2 for confidence intervals, got {self.users}")


@dataclasses.dataclass(kw_only=True)
class CalibrateConfig(SimulatorOptions):
    """``rayrec calibrate``: fit the simulator's choice model to logs and compare simulated with logged stats."""

    data: str
    """Data directory with the logs (items.parquet, interactions.parquet)."""
    out: str
    """Output directory: env_config.yaml (calibrated simulator), calibration.json (report), config.yaml."""
    users: int = 500
    """Simulated users per evaluation while fitting."""
    seed: int = 0
    """Seed of the fitting's simulations and negative samples."""


def format_table(results: dict[str, dict]) -> str:
    """Markdown table: per policy, mean and 95% CI of every reported session metric."""
    names = [namespaced(name) for name in REPORTED]
    lines = [
        "| policy | " + " | ".join(f"{name} ({METRICS[name].unit})" for name in REPORTED) + " |",
        "| --- |" + " --- |" * len(names),
    ]
    for policy, metrics in results.items():
        cells = [
            f"{m['mean']:.3f} [{m['ci95_low']:.3f}, {m['ci95_high']:.3f}]"
            for m in (metrics[n] for n in names)
        ]
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_simulate(args: argparse.Namespace) -> int:
    # The simulator stack (scipy, FAISS): imported when the command runs, so that `rayrec --help` stays fast.
    from envs.factory import build_simulator
    from envs.policies import make_policy
    from envs.rollout import evaluate_policy

    config = config_from_args(SimulateConfig, args)
    env_config = resolve_env_config(config)
    results = {}
    for spec in config.policy or DEFAULT_POLICIES:
        sim = build_simulator(env_config, batch=min(config.users, ROLLOUT_SLOTS))
        policy = make_policy(spec, sim)
        outcomes = evaluate_policy(policy, sim, config.users, config.seed, progress=f"simulate {spec}")
        results[spec] = outcomes.summary()
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
    from envs.calibration import calibrate  # scipy and the simulator: heavy, keeps `rayrec --help` fast

    config = config_from_args(CalibrateConfig, args)
    base = resolve_env_config(config)
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
