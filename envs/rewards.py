"""Reward functions: pure maps from what was chosen to a number per user."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from envs.catalog import ItemCatalog
from rayrec.errors import ConfigError

RewardFn = Callable[[np.ndarray, ItemCatalog], np.ndarray]
"""``reward(chosen_items [B] int (-1 no click), catalog) -> [B] float32``."""


def click_reward(chosen_items: np.ndarray, catalog: ItemCatalog) -> np.ndarray:
    """1 for a click, 0 otherwise: the session return is the number of clicks."""
    return (chosen_items >= 0).astype(np.float32)


def engagement_reward(chosen_items: np.ndarray, catalog: ItemCatalog) -> np.ndarray:
    """The clicked item's quality in [0, 1] (0 without a click): quality-weighted engagement."""
    return np.where(chosen_items >= 0, catalog.quality[np.maximum(chosen_items, 0)], 0.0).astype(np.float32)


REWARDS: dict[str, RewardFn] = {"clicks": click_reward, "engagement": engagement_reward}


def reward_function(name: str) -> RewardFn:
    try:
        return REWARDS[name]
    except KeyError:
        raise ConfigError(f"unknown reward {name!r}; choose from {sorted(REWARDS)}") from None
