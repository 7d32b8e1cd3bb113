"""Reward functions: pure maps from what was chosen to a number per user."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from envs.catalog import ItemCatalog
from rayrec.errors import ConfigError


@dataclass(frozen=True)
class StepEvents:
    """What happened to B users in one step, as rewards read it.

    Attributes:
        chosen_items: [B] int64 catalog index clicked, -1 for no click.
        returned: [B] bool the session ended and the user will come back for another.
        return_days: [B] float32 days until that next session (0 where none).
    """

    chosen_items: np.ndarray
    returned: np.ndarray
    return_days: np.ndarray


RewardFn = Callable[[StepEvents, ItemCatalog], np.ndarray]
"""``reward(events, catalog) -> [B] float32``: a pure function of one step's events."""


def click_reward(events: StepEvents, catalog: ItemCatalog) -> np.ndarray:
    """1 for a click, 0 otherwise: the return is the number of clicks."""
    return (events.chosen_items >= 0).astype(np.float32)


def engagement_reward(events: StepEvents, catalog: ItemCatalog) -> np.ndarray:
    """The clicked item's quality in [0, 1] (0 without a click): quality-weighted engagement."""
    chosen = events.chosen_items
    return np.where(chosen >= 0, catalog.quality[np.maximum(chosen, 0)], 0.0).astype(np.float32)


def return_reward(events: StepEvents, catalog: ItemCatalog) -> np.ndarray:
    """``1 / days`` when the session ended and the user comes back ``days`` later, else 0 (retention)."""
    return np.where(events.returned, 1.0 / np.maximum(events.return_days, 1.0), 0.0).astype(np.float32)


REWARDS: dict[str, RewardFn] = {
    "clicks": click_reward,
    "engagement": engagement_reward,
    "return": return_reward,
}


def reward_function(name: str) -> RewardFn:
    try:
        return REWARDS[name]
    except KeyError:
        raise ConfigError(f"unknown reward {name!r}; choose from {sorted(REWARDS)}") from None
