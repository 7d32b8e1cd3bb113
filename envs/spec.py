"""The simulator spec of every command that runs the simulator: options in, one :class:`SlateEnvConfig` out.

``rayrec simulate``, ``calibrate``, ``train-policy`` and ``ab`` all take :class:`SimulatorOptions` and resolve
them here, in one order: the ``--preset`` world (:mod:`envs.presets`), then the ``--env-config`` YAML (its
fields replace the preset's), then ``--index`` / ``--data``, then the shape flags (``--num-candidates``,
``--slate-size``, ``--candidates``), then ``--env KEY=VALUE`` overrides, each checked against
:class:`SlateEnvConfig`'s fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from envs.config import SlateEnvConfig, config_with
from envs.presets import DEFAULT_PRESET, preset
from rayrec import storage
from rayrec.config import RayConfig
from rayrec.errors import ConfigError


@dataclass(kw_only=True)
class SimulatorOptions(RayConfig):
    """The options that define the simulator a command runs (shared by every simulating command)."""

    preset: str = DEFAULT_PRESET
    """Simulator world (``rayrec simulate --list-presets``); --env-config and the other flags change it."""
    index: str | None = None
    """Item index directory (``rayrec build-index``); default: the simulator's built-in synthetic catalog."""
    data: str | None = None
    """Data directory whose logged users start the simulated sessions (their histories) and give item traits."""
    env_config: str | None = None
    """Simulator config YAML (fields of envs.config.SlateEnvConfig, e.g. ``env_config.yaml`` from
    ``rayrec calibrate``); the other simulator flags override it."""
    num_candidates: int | None = None
    """K: candidates retrieved per step (default: the env config's)."""
    slate_size: int | None = None
    """k: items shown per step (default: the env config's)."""
    candidates: str | None = None
    """Candidate generator: faiss, faiss-diverse or random (default: the env config's)."""
    env: list[str] = field(default_factory=list)
    """Override any simulator setting, KEY=VALUE (a field of envs.config.SlateEnvConfig, e.g. budget=30);
    repeatable, applied last."""


def parse_overrides(specs: list[str]) -> dict[str, object]:
    """``["budget=30", "reward=engagement"]`` → ``{"budget": 30, "reward": "engagement"}`` (YAML values)."""
    overrides = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--env {spec!r}: expected KEY=VALUE")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def read_yaml_fields(path: str) -> dict[str, object]:
    """The fields of a simulator YAML (all of them, as ``save_config`` writes, or only some)."""
    try:
        fields = yaml.safe_load(storage.read_text(path)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(fields, dict):
        raise ConfigError(f"{path}: expected a mapping of SlateEnvConfig fields")
    fields.pop("command", None)  # save_config records the command line beside the fields
    if "initial_satisfaction" in fields:
        fields["initial_satisfaction"] = tuple(fields["initial_satisfaction"])
    return fields


def resolve_env_config(options: SimulatorOptions, user_split: str | None = None) -> SlateEnvConfig:
    """The :class:`SlateEnvConfig` that ``options`` describe (see the module docstring for the order).

    Args:
        user_split: the logged users this run may meet (``train`` to train, ``validation`` to select,
            ``test`` to evaluate and A/B-test); ``--env user_split=...`` still overrides it.
    """
    base = preset(options.preset)
    if options.env_config:
        base = config_with(base, **read_yaml_fields(options.env_config))
    flags = {
        "index_dir": options.index,
        "data_dir": options.data,
        "num_candidates": options.num_candidates,
        "slate_size": options.slate_size,
        "candidates": options.candidates,
    }
    changes = {key: value for key, value in flags.items() if value is not None}
    if user_split is not None:
        changes["user_split"] = user_split
    try:
        return config_with(base, **{**changes, **parse_overrides(options.env)})
    except TypeError as exc:
        raise ConfigError(f"--env: {exc}") from None


def world_label(options: SimulatorOptions) -> str:
    """The simulator world of ``options`` as reports name it: the preset and whatever replaced or changed its
    fields (``--env-config``, ``--index``, ``--data``, ``--env``), in :func:`resolve_env_config`'s order."""
    changes = [
        f"{flag} `{value}`"
        for flag, value in (
            ("--env-config", options.env_config),
            ("--index", options.index),
            ("--data", options.data),
        )
        if value
    ] + [f"--env `{spec}`" for spec in options.env]
    return f"preset `{options.preset}`" + (f" with {', '.join(changes)}" if changes else "")


def users_used(config: SlateEnvConfig) -> str:
    """Which users a run meets, in words for reports: fresh synthetic users, or a split of the logged ones."""
    if config.data_dir is None:
        return "synthetic users drawn fresh by seed"
    return f"logged users of {config.data_dir}, split {config.user_split!r}"
