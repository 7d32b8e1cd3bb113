"""Reward functions: pure maps from what was chosen to a number per user."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from envs.catalog import ItemCatalog
from envs.config import REWARD_NAMES
from rayrec.errors import ConfigError
from rayrec.metrics.beyond import intra_list_diversity


@dataclass(frozen=True)
class StepEvents:
    """What happened to B users in one step, as rewards read it.

    Attributes:
        chosen_items: [B] int64 catalog index clicked, -1 for no click.
        returned: [B] bool the session ended and the user will come back for another.
        return_days: [B] float32 days until that next session (0 where none).
        slate_items: [B, k] int64 catalog rows shown, -1 padding (None: not given; diversity reads it).
        satisfaction: [B] float32 each user's satisfaction when the slate was shown, before the response
            (None: not given; watch time reads it).
    """

    chosen_items: np.ndarray
    returned: np.ndarray
    return_days: np.ndarray
    slate_items: np.ndarray | None = None
    satisfaction: np.ndarray | None = None


RewardFn = Callable[[StepEvents, ItemCatalog], np.ndarray]
"""``reward(events, catalog) -> [B] float32``: a pure function of one step's events."""


def click_reward(events: StepEvents, catalog: ItemCatalog) -> np.ndarray:
    """1 for a click, 0 otherwise: the return is the number of clicks."""
    return (events.chosen_items >= 0).astype(np.float32)


def engagement_reward(events: StepEvents, catalog: ItemCatalog) -> np.ndarray:
    """The clicked item's quality in [0, 1] (0 without a click): quality-weighted engagement."""
    chosen = events.chosen_items
    return np.where(chosen >= 0, catalog.quality[np.maximum(chosen, 0)], 0.0).astype(np.float32)


def watch_reward(events: StepEvents, catalog: ItemCatalog, clickbait_watch: float) -> np.ndarray:
    """Time watched: ``s * (1 + clickbait_watch * c_i)`` for a click on item i by a user of satisfaction s.

    Engagement scales with how satisfied the user is, and clickbait holds attention longer now while it
    lowers satisfaction (RecSim's long-term satisfaction world, "chocolate vs kale": Ie et al., 2019). So a
    click is worth more from a satisfied user, and satisfaction is a stock to build with quality and spend
    on clickbait.
    """
    if events.satisfaction is None:
        raise ConfigError("the watch reward needs the users' satisfaction (StepEvents.satisfaction)")
    chosen = events.chosen_items
    clickbait = catalog.clickbait[np.maximum(chosen, 0)]
    watched = events.satisfaction * (1.0 + clickbait_watch * clickbait)
    return np.where(chosen >= 0, watched, 0.0).astype(np.float32)


def return_reward(events: StepEvents, catalog: ItemCatalog) -> np.ndarray:
    """``1 / days`` when the session ended and the user comes back ``days`` later, else 0 (retention)."""
    return np.where(events.returned, 1.0 / np.maximum(events.return_days, 1.0), 0.0).astype(np.float32)


REWARDS: dict[str, RewardFn] = {
    "clicks": click_reward,
    "engagement": engagement_reward,
    "return": return_reward,
}
"""The rewards without parameters; ``watch`` (:func:`watch_reward`) takes ``clickbait_watch``."""


def diversity_bonus(events: StepEvents, catalog: ItemCatalog) -> np.ndarray:
    """[B] intra-list diversity of the slate shown (:func:`rayrec.metrics.beyond.intra_list_diversity`)."""
    if events.slate_items is None:
        raise ConfigError("a diversity reward needs the slate shown (StepEvents.slate_items)")
    items = events.slate_items
    return intra_list_diversity(catalog.embeddings[np.maximum(items, 0)], items >= 0).astype(np.float32)


def reward_function(name: str, diversity_weight: float = 0.0, clickbait_watch: float = 0.0) -> RewardFn:
    """The reward ``name``, plus ``diversity_weight`` times the slate's intra-list diversity when > 0."""
    rewards = {**REWARDS, "watch": functools.partial(watch_reward, clickbait_watch=clickbait_watch)}
    if name not in rewards:
        raise ConfigError(f"unknown reward {name!r}; choose from {sorted(REWARD_NAMES)}")
    base = rewards[name]
    if diversity_weight < 0:
        raise ConfigError(f"diversity_weight must be >= 0, got {diversity_weight}")
    if diversity_weight == 0:
        return base

    def with_diversity(events: StepEvents, catalog: ItemCatalog) -> np.ndarray:
        return (base(events, catalog) + diversity_weight * diversity_bonus(events, catalog)).astype(
            np.float32
        )

    return with_diversity
