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

from envs.presets import describe_presets
from envs.spec import SimulatorOptions, resolve_env_config, users_used, world_label
from rayrec import storage
from rayrec.cli import add_command
from rayrec.config import add_config_args, config_from_args, save_config
from rayrec.errors import ConfigError
from rayrec.metrics.session import BEYOND, METRICS, REPORTED, namespaced

DEFAULT_POLICIES = ["random", "retrieval", "greedy", "oracle", "myopic-true"]
ENV_CONFIG_FILE = "env_config.yaml"
CALIBRATION_FILE = "calibration.json"
ROLLOUT_SLOTS = 4096
"""Users simulated at once (simulator rows); more users arrive as sessions end."""


@dataclasses.dataclass(kw_only=True)
class SimulateConfig(SimulatorOptions):
    """``rayrec simulate``: one session per simulated user for each policy; the session metrics with intervals."""

    policy: list[str] | None = None
    """Policy to run (repeatable): random, retrieval, greedy, or a trained policy directory, or the
    simulation-only references oracle, myopic-true and planner (default: all of them but the planner),
    or a re-ranker around any of them: mmr[@λ]:BASE, dpp[@θ]:BASE, fair[@β]:BASE (e.g. mmr:retrieval)."""
    users: int = 2000
    """Simulated users (one session each) per policy."""
    seed: int = 0
    """Seed of the users and their choices (every policy meets the same users)."""
    json: str | None = None
    """Also write the results as JSON here (the resolved config goes next to it)."""
    list_presets: bool = False
    """Print the simulator presets (worlds) and exit."""

    def __post_init__(self) -> None:
        if self.users < 2:
            raise ConfigError(f"--users must be >= 2 for confidence intervals, got {self.users}")


@dataclasses.dataclass(kw_only=True)
class CalibrateConfig(SimulatorOptions):
    """``rayrec calibrate``: fit the simulator's choice model and dynamics to logs, validate on held-out users."""

    data: str | None = None
    """Data directory with the logs (items.parquet, interactions.parquet): its users start the simulated
    sessions, and without ``--events`` its interactions are what the simulator is fitted to."""
    events: str | None = None
    """A rayrec event log (``rayrec ab --events`` or a server's): its requests, impressions and clicks are
    fitted instead of the data directory's interactions (exact slates, positions and non-clicks)."""
    out: str
    """Output directory: env_config.yaml (calibrated simulator), calibration.json (report),
    calibration_users.json (which users were fitted and held out), calibration.png, config.yaml."""
    users: int = 2000
    """Simulated users per simulation (validation against held-out users, simulated moments)."""
    draws: int = 16
    """Simulation draws of each user's hidden interest in the likelihood."""
    particles: int = 32
    """Starting satisfactions per user integrated over in the dynamics' likelihood."""
    fit_interest_noise: bool = True
    """Also fit interest_noise (how far the hidden interest is from the observed profile)."""
    max_choices_per_user: int = 100
    """At most this many interactions per user enter the likelihood of plain interactions."""
    recovery_users: int = 3000
    """Users of the sim-to-sim recovery check on a small world (0: skip it)."""
    recovery_requests: int = 140_000
    """Where sessions are short the recovery check simulates more users, up to 8x, for this many requests."""
    seed: int = 0
    """Seed of the likelihood's draws, the simulations and the recovery world."""

    def __post_init__(self) -> None:
        if self.data is None and self.events is None:
            raise ConfigError("rayrec calibrate needs logs: --data DIR (interactions) and/or --events DIR")
        if self.users < 10 or self.draws < 2 or self.particles < 1 or self.recovery_users < 0:
            raise ConfigError(
                f"--users must be >= 10, --draws >= 2, --particles >= 1, --recovery-users >= 0 (got "
                f"{self.users}, {self.draws}, {self.particles}, {self.recovery_users})"
            )


def format_table(results: dict[str, dict], reported: tuple[str, ...] = REPORTED) -> str:
    """Markdown table: per policy, mean and 95% CI of every ``reported`` session metric."""
    names = [namespaced(name) for name in reported]
    lines = [
        "| policy | " + " | ".join(f"{name} ({METRICS[name].unit})" for name in reported) + " |",
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
    from envs.beyond import evaluate_beyond
    from envs.factory import build_simulator
    from envs.policies import make_policy

    config = config_from_args(SimulateConfig, args)
    if config.list_presets:
        print(describe_presets())
        return 0
    env_config = resolve_env_config(config, user_split="test")  # evaluation meets held-out users only
    results = {}
    for spec in config.policy or DEFAULT_POLICIES:
        sim = build_simulator(env_config, batch=min(config.users, ROLLOUT_SLOTS))
        policy = make_policy(spec, sim)
        outcomes, exposure = evaluate_beyond(
            policy, sim, config.users, config.seed, progress=f"simulate {spec}"
        )
        results[spec] = outcomes.summary() | exposure.summary(seed=config.seed)
    print(f"{world_label(config)}, {config.users} users ({users_used(env_config)})")
    print(format_table(results))
    print("\nBeyond accuracy (coverage and Gini: bootstrap over users; the rest: per-user means)")
    print(format_table(results, BEYOND))
    if config.json:
        directory = config.json.rsplit("/", 1)[0] if "/" in config.json else "."
        storage.write_text(
            config.json,
            json.dumps(
                {
                    "users": config.users,
                    "preset": config.preset,
                    "world": world_label(config),
                    "user_split": users_used(env_config),
                    "policies": results,
                },
                indent=2,
            )
            + "\n",
        )
        save_config(config, directory, name="simulate.config.yaml")
        save_config(env_config, directory, name=ENV_CONFIG_FILE)
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    # scipy, matplotlib and the simulator: heavy, imported when the command runs (`rayrec --help` stays fast).
    import tempfile

    from envs.calibration import CalibrationOptions, calibrate
    from envs.calibration_report import format_report, plot_report

    users_file, plot_file = "calibration_users.json", "calibration.png"

    config = config_from_args(CalibrateConfig, args)
    base = resolve_env_config(config)
    print(f"calibrating the simulator to {config.events or config.data} ...", flush=True)
    options = CalibrationOptions(
        events_dir=config.events,
        users=config.users,
        draws=config.draws,
        particles=config.particles,
        fit_interest_noise=config.fit_interest_noise,
        max_choices_per_user=config.max_choices_per_user,
        recovery_users=config.recovery_users,
        recovery_requests=config.recovery_requests,
        seed=config.seed,
    )
    calibrated, report = calibrate(base, options)
    storage.makedirs(config.out)
    save_config(config, config.out)
    save_config(calibrated, config.out, name=ENV_CONFIG_FILE)
    users = report["users"]
    ids = {"train": users.pop("train_ids"), "validation": users.pop("validation_ids")}
    users["file"] = users_file
    storage.write_text(storage.join(config.out, users_file), json.dumps(ids) + "\n")
    storage.write_text(storage.join(config.out, CALIBRATION_FILE), json.dumps(report, indent=2) + "\n")
    plot = storage.join(config.out, plot_file)
    with tempfile.TemporaryDirectory() as tmp:  # matplotlib writes local files; the output may be a URI
        plot_report(report, f"{tmp}/{plot_file}")
        with open(f"{tmp}/{plot_file}", "rb") as figure:
            storage.write_bytes(plot, figure.read())
    print(format_report(report))
    print(
        f"wrote {storage.join(config.out, ENV_CONFIG_FILE)}, {CALIBRATION_FILE}, {users_file} and {plot_file}"
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
        help="fit the simulator to logs: choice model (temperature, no-click, position, appeal) and dynamics (drift, satisfaction, leave, return)",
    )
    add_config_args(calibrate, CalibrateConfig)
