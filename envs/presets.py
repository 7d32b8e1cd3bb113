"""Named simulator worlds (``--preset NAME``; ``rayrec simulate --list-presets``).

A preset is a :class:`SlateEnvConfig` with a purpose. It earns its place only if a myopic policy is wrong
there for reasons that need planning: the best fixed per-item rule (:data:`envs.item_rules.FIXED_RULES`,
e.g. "true logits, never clickbait") should stay at or below 85% of the ``planner``. ``long-term`` does
(``python -m benchmarks.presets`` measures every preset; a slow test checks ``long-term``), so it is the
default world of every command; ``classic``, the first world and the default before it, does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from envs.config import SlateEnvConfig, config_with
from rayrec.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    """A named world: what it models, and the :class:`SlateEnvConfig` fields that make it."""

    name: str
    description: str
    fields: dict[str, Any] = field(default_factory=dict)

    def config(self) -> SlateEnvConfig:
        return SlateEnvConfig(**self.fields)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "long-term",
            "Engagement scales with satisfaction (RecSim's long-term satisfaction world, 'chocolate vs kale'): "
            "every click is watched for as long as the user's satisfaction allows, clickbait is clicked and "
            "watched more now and lowers satisfaction, quality raises it. Users arrive lukewarm and seldom "
            "leave. Satisfaction is a stock: the best slate builds it with quality while it is low and spends "
            "it on clickbait while it is high, which no fixed per-item rule can do: the best of them reaches "
            "about three quarters of the planner (python -m benchmarks.presets).",
            {
                "reward": "watch",
                "clickbait_watch": 3.0,
                "clickbait_penalty": 0.1,
                "satisfaction_gain": 0.8,
                "initial_satisfaction": (0.2, 0.5),
                "leave_scale": 0.2,
                "boredom": 0.0,
            },
        ),
        Preset(
            "classic",
            "The first world (the SlateEnvConfig defaults; named 'default' while it was the default): "
            "clickbait costs a fixed amount of satisfaction, dissatisfied users leave, one session per user. "
            "Its trade-off reduces to one item attribute: a fixed per-item rule ('true logits, never "
            "clickbait') is about as good as the planner, so it does not meet the bar this module states.",
        ),
        Preset(
            "satiation",
            "Users tire of what they just consumed (a satiation vector that recovers over time) and of "
            "clickbait (its harm grows with recent clickbait and fades): the best slate depends on what the "
            "user has had lately, not on the items alone.",
            {
                "satiation_gain": 0.3,
                "satiation_recovery": 0.1,
                "satiation_penalty": 0.3,
                "clickbait_appeal": 0.4,
                "clickbait_penalty": 0.06,
                "clickbait_fatigue": 3.0,
                "fatigue_recovery": 0.3,
            },
        ),
        Preset(
            "retention",
            "Users have up to five sessions; whether and how soon they come back depends on how satisfied "
            "the last session left them, and the objective is return (1 / days to come back), as in "
            "KuaiSim's retention task.",
            {
                "sessions": 5,
                "reward": "return",
                "return_bias": 0.0,
                "return_slope": 6.0,
                "return_delay": 4.0,
            },
        ),
    )
}
DEFAULT_PRESET = "long-term"
"""The world a command runs without ``--preset``: the one where planning pays (see the module docstring)."""


def preset(name: str) -> SlateEnvConfig:
    """The :class:`SlateEnvConfig` of preset ``name``; unknown names → ConfigError listing the presets."""
    if name not in PRESETS:
        raise ConfigError(
            f"unknown preset {name!r}; presets: {', '.join(PRESETS)} ({DEFAULT_PRESET} is the default; "
            "rayrec simulate --list-presets)"
        )
    return PRESETS[name].config()


def with_preset(name: str, **changes: Any) -> SlateEnvConfig:
    """Preset ``name`` with ``changes`` applied (validated)."""
    return config_with(preset(name), **changes)


def describe_presets() -> str:
    """One paragraph per preset: its name, what it models and the fields it sets."""
    lines = []
    for p in PRESETS.values():
        settings = ", ".join(f"{k}={v}" for k, v in p.fields.items()) or "the SlateEnvConfig defaults"
        lines.append(f"{p.name}: {p.description}\n    ({settings})")
    return "\n".join(lines)
