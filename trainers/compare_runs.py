"""One setting against another: finished ``rayrec compare`` runs of several directories, on the same test users.

``rayrec compare`` pairs every method with every baseline *within* one run directory. A question like "does
SlateQ learn better with a target sync every 2,000 env steps than every 500?" needs two directories (one
per setting, the same seeds and test users) compared with the same statistics:

    python -m trainers.compare_runs --group sync500=runs/compare-slateq-sync500/runs/slateq \\
        --group sync2000=runs/compare-slateq-sync2000/runs/slateq

Each group is one directory of ``seedS.json`` records (:mod:`trainers.compare`); every record must hold the
same test users (count and seed). Printed: each group's mean and IQM over its runs with stratified-bootstrap
95% intervals, its per-seed means, the paired difference of the first group minus each other one
(:func:`trainers.compare_stats.bootstrap_intervals`: runs resampled within each group, users with shared
indices, or the logged histories they start from in a world of logged users), and the run settings that
differ between the groups.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rayrec.config import add_config_args, config_from_args
from rayrec.errors import ConfigError, DataError, RayrecError
from trainers.compare_stats import bootstrap_intervals


@dataclass
class CompareRunsConfig:
    """``python -m trainers.compare_runs``: paired statistics of finished compare runs across directories."""

    group: list[str] = field(default_factory=list)
    """``NAME=DIR``, at least two: DIR holds one method's ``seedS.json`` records of a ``rayrec compare`` run."""
    bootstrap_reps: int = 2000
    """Bootstrap replicates."""

    def groups(self) -> dict[str, Path]:
        parsed = dict(spec.split("=", 1) for spec in self.group if "=" in spec)
        if len(parsed) != len(self.group) or len(parsed) < 2 or not all(parsed):
            raise ConfigError(f"--group NAME=DIR at least twice, with distinct names (got {self.group})")
        return {name: Path(path) for name, path in parsed.items()}


def load_group(path: Path) -> tuple[list[int], np.ndarray, tuple[int, int], dict]:
    """(seeds, per-user returns [runs, users], (test users, test seed), the first run's settings) of one
    directory of run records."""
    records = [json.loads(p.read_text()) for p in sorted(path.glob("seed*.json"))]
    if not records:
        raise DataError(f"{path}: no seed*.json run records (a `rayrec compare` run's runs/METHOD directory)")
    users = {(r["test_users"], r["test_seed"]) for r in records}
    if len(users) != 1:
        raise DataError(f"{path}: runs evaluated on different test users {sorted(users)}")
    records.sort(key=lambda r: r["seed"])
    returns = np.array([r["session_return"] for r in records])
    return [r["seed"] for r in records], returns, users.pop(), records[0].get("settings", {})


def setting_differences(settings: dict[str, dict]) -> list[str]:
    """``key: value per group`` for every setting (simulator flags flattened) that is not the same in all."""
    flat = {
        name: {**{k: v for k, v in s.items() if k != "simulator"}, **s.get("simulator", {})}
        for name, s in settings.items()
    }
    keys = sorted({key for values in flat.values() for key in values})
    return [
        f"{key}: " + ", ".join(f"{name} {values.get(key)!r}" for name, values in flat.items())
        for key in keys
        if len({json.dumps(values.get(key), sort_keys=True) for values in flat.values()}) > 1
    ]


def test_clusters(settings: dict, count: int, seed: int) -> np.ndarray | None:
    """The test sessions' clusters (:func:`trainers.policy_eval.session_clusters`) of a run's world, None for
    a record without its simulator settings."""
    if "simulator" not in settings:
        return None
    from envs.spec import SimulatorOptions, resolve_env_config
    from trainers.policy_eval import session_clusters  # heavy (plots): only once records are loaded

    config = resolve_env_config(SimulatorOptions(**settings["simulator"]), user_split="test")
    return session_clusters(config, count, seed)


def report(cfg: CompareRunsConfig) -> str:
    """The markdown comparison of :class:`CompareRunsConfig`'s groups."""
    loaded = {name: load_group(path) for name, path in cfg.groups().items()}
    users = {name: group[2] for name, group in loaded.items()}
    if len(set(users.values())) != 1:
        raise DataError(f"the groups were evaluated on different test users (count, seed): {users}")
    names = list(loaded)
    pairs = [(names[0], other) for other in names[1:]]
    count, seed = users[names[0]]
    clusters = test_clusters(loaded[names[0]][3], count, seed)
    stats = bootstrap_intervals(
        {name: group[1] for name, group in loaded.items()},
        pairs,
        reps=cfg.bootstrap_reps,
        seed=0,
        clusters=clusters,
    )
    resampled = (
        "users" if clusters is None else f"the {clusters.max() + 1} logged histories the sessions start from"
    )
    lines = [
        f"{count} test users (seed {seed}); stratified bootstrap over runs and {resampled}, 95% intervals",
        "",
        "| group | runs | mean return [95% CI] | IQM [95% CI] | per seed |",
        "| --- | ---: | --- | --- | --- |",
    ]
    for name, (seeds, returns, _, _) in loaded.items():
        m = stats["methods"][name]
        per_seed = ", ".join(f"{s}: {v:.2f}" for s, v in zip(seeds, returns.mean(axis=1), strict=True))
        lines.append(
            f"| {name} | {m['runs']} | {m['mean']:.2f} [{m['mean_ci'][0]:.2f}, {m['mean_ci'][1]:.2f}] | "
            f"{m['iqm']:.2f} [{m['iqm_ci'][0]:.2f}, {m['iqm_ci'][1]:.2f}] | {per_seed} |"
        )
    lines.append("")
    for key, d in stats["differences"].items():
        lines.append(f"- {key} (paired): {d['mean']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]")
    differences = setting_differences({name: group[3] for name, group in loaded.items()})
    lines += ["", "Settings that differ: " + ("; ".join(differences) if differences else "none")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainers.compare_runs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(parser, CompareRunsConfig)
    try:
        print(report(config_from_args(CompareRunsConfig, parser.parse_args(argv))), end="")
    except RayrecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
