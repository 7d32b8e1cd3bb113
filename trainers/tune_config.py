"""Hyperparameter presets of ``rayrec train-policy`` (``--hparams``) and the ``--tune`` search (light: no Ray).

A preset is a YAML mapping of :class:`~trainers.policy_config.TrainPolicyConfig` fields, written by
``rayrec train-policy --tune`` (the best trial's searched settings and its ``algo``) and read back by
``--hparams FILE`` (or the name of a checked-in preset under ``trainers/presets/``, e.g. ``ppo-default``):
the file's values replace the defaults, flags given on the command line replace the file's.

The search spaces are deliberately small (:data:`SEARCH_SPACES`): the settings that most change what the
two learners do on this simulator, each over a range around the hand-set default; :mod:`trainers.policy_tune`
turns them into Ray Tune distributions.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from rayrec import storage
from rayrec.config import config_from_args
from rayrec.errors import ConfigError
from trainers.policy_config import TrainPolicyConfig

PRESET_DIR = Path(__file__).resolve().parent / "presets"
"""The checked-in presets (``ppo-default.yaml``, ``slateq-default.yaml``): ``--hparams NAME`` finds them."""
ALGOS = ("ppo", "slateq")


@dataclass(frozen=True)
class Distribution:
    """One searched setting: log-uniform over ``[low, high]`` or a uniform choice among ``values``."""

    kind: Literal["loguniform", "choice"]
    """``loguniform`` (a positive float, sampled uniformly in log space) or ``choice``."""
    low: float = 0.0
    """loguniform: the lower bound (> 0)."""
    high: float = 0.0
    """loguniform: the upper bound (> low)."""
    values: tuple[Any, ...] = ()
    """choice: the candidate values."""

    def describe(self) -> str:
        if self.kind == "loguniform":
            return f"log-uniform [{self.low:g}, {self.high:g}]"
        return "choice {" + ", ".join(str(v) for v in self.values) + "}"


SEARCH_SPACES: dict[str, dict[str, Distribution]] = {
    "ppo": {
        "lr": Distribution("loguniform", low=3e-4, high=1e-2),
        "entropy_coeff": Distribution("loguniform", low=3e-4, high=3e-2),
        "clip_param": Distribution("choice", values=(0.1, 0.2, 0.3)),
        "minibatch_size": Distribution("choice", values=(128, 256, 512)),
    },
    "slateq": {
        "lr": Distribution("loguniform", low=2e-4, high=5e-3),
        "target_update_steps": Distribution("choice", values=(250, 500, 1000, 2000)),
        "minibatch_size": Distribution("choice", values=(128, 256, 512)),
    },
}
"""The ``--tune`` search space of each algorithm: TrainPolicyConfig field → distribution. Minibatch sizes
larger than ``--train-batch-size`` are dropped from the choice (a minibatch cannot exceed the batch)."""


def search_space(cfg: TrainPolicyConfig) -> dict[str, Distribution]:
    """:data:`SEARCH_SPACES` of ``cfg.algo``, with the minibatch choices that fit ``cfg.train_batch_size``."""
    if cfg.algo not in SEARCH_SPACES:
        raise ConfigError(f"--tune: no search space for algo {cfg.algo!r} (use {', '.join(SEARCH_SPACES)})")
    space = dict(SEARCH_SPACES[cfg.algo])
    sizes = tuple(v for v in space["minibatch_size"].values if v <= cfg.train_batch_size)
    space["minibatch_size"] = Distribution("choice", values=sizes or (cfg.train_batch_size,))
    return space


@dataclass(kw_only=True)
class TuneOptions:
    """``rayrec train-policy`` options beside one run's settings: a hyperparameter preset, the --tune search."""

    hparams: str | None = None
    """YAML of train-policy settings (a preset written by --tune, or the name of a checked-in one:
    ``ppo-default``, ``slateq-default``, from trainers/presets/); flags given on the command line win."""
    tune: bool = False
    """Search hyperparameters with Ray Tune instead of one run: ``--tune-samples`` short training runs
    (trials) over the algorithm's small search space, the weaker ones stopped early by ASHA on the
    validation return (deterministic top-k on validation users; never the test users). ``--out`` gets the
    trials, ``tune.md``/``tune.json`` (every trial) and the best settings as a preset (``--tune-preset``)."""
    tune_samples: int = 8
    """--tune: trials (settings sampled at random from the search space)."""
    tune_iterations: int | None = None
    """--tune: training iterations of each trial (ASHA's max_t); default ``--iterations``."""
    tune_grace_period: int | None = None
    """--tune: iterations every trial trains before ASHA may stop it; default ``--validate-every`` (its
    first validation)."""
    tune_preset: str | None = None
    """--tune: write the best trial's settings here (YAML for ``--hparams``); default ``OUT/preset.yaml``."""
    tune_seed: int = 0
    """--tune: seed of the random search (which settings the trials get)."""

    def __post_init__(self) -> None:
        problems = []
        if self.tune_samples < 1:
            problems.append(f"tune_samples must be >= 1 (got {self.tune_samples})")
        for name in ("tune_iterations", "tune_grace_period"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"{name} must be >= 1 (got {value})")
        if problems:
            raise ConfigError("--tune: " + "; ".join(problems))


def preset_path(name_or_path: str) -> str:
    """A preset file: the path itself, or ``trainers/presets/NAME.yaml`` for a bare name that is no file."""
    if storage.is_remote(name_or_path) or Path(name_or_path).exists():
        return name_or_path
    candidate = PRESET_DIR / f"{name_or_path}.yaml"
    if "/" not in name_or_path and candidate.exists():
        return str(candidate)
    names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
    raise ConfigError(
        f"--hparams {name_or_path}: no such file and no checked-in preset of that name "
        f"(presets: {', '.join(names) or 'none'})"
    )


def read_hparams(name_or_path: str) -> dict[str, Any]:
    """The settings of a preset, checked against :class:`TrainPolicyConfig`'s fields (``out`` excluded)."""
    path = preset_path(name_or_path)
    try:
        data = yaml.safe_load(storage.read_text(path))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())
        raise ConfigError(f"--hparams {path}: cannot read it as YAML ({reason})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--hparams {path}: expected a mapping of train-policy settings, got {data!r}")
    known = {f.name for f in dataclasses.fields(TrainPolicyConfig)} - {"out"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"--hparams {path}: unknown train-policy settings {unknown}")
    if "algo" in data and data["algo"] not in ALGOS:
        raise ConfigError(f"--hparams {path}: unknown algo {data['algo']!r} (use {', '.join(ALGOS)})")
    return {key: _as_float_if_declared(path, key, value) for key, value in data.items()}


def _as_float_if_declared(path: str, key: str, value: Any) -> Any:
    """YAML 1.1 reads ``3e-4`` (no dot) as a string: a float setting written that way is read as the float."""
    declared = {f.name: str(f.type) for f in dataclasses.fields(TrainPolicyConfig)}[key]
    if isinstance(value, str) and declared.startswith("float"):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"--hparams {path}: {key} must be a number, got {value!r}") from None
    return value


def write_hparams(path: str, settings: dict[str, Any], header: list[str]) -> None:
    """Write a preset: ``header`` lines as YAML comments (where it came from), then ``settings``."""
    comments = "".join(f"# {line}\n" for line in header)
    storage.write_text(path, comments + yaml.safe_dump(settings, sort_keys=False))


def train_config_from_args(args: argparse.Namespace) -> TrainPolicyConfig:
    """The run's :class:`TrainPolicyConfig`: defaults, then ``--hparams``' settings, then the flags given.

    A preset trained for one algorithm refuses another: ``--hparams ppo-default --algo slateq`` is an error.
    """
    name = getattr(args, "hparams", None)
    preset = read_hparams(name) if name else {}
    given_algo = getattr(args, "algo", None)
    if given_algo is not None and "algo" in preset and preset["algo"] != given_algo:
        raise ConfigError(f"--hparams {name} holds {preset['algo']} settings, but --algo is {given_algo}")
    from_file = {k: v for k, v in preset.items() if getattr(args, k, None) is None}
    return config_from_args(TrainPolicyConfig, args, **from_file)


def tune_options_from_args(args: argparse.Namespace) -> TuneOptions:
    return config_from_args(TuneOptions, args)
