"""What a service learns about its items by serving them: per-item statistics of a simulated log.

A catalog's hidden traits are what users react to; a service never reads them, but it logs how users
reacted and aggregates the log per item (:mod:`rayrec.item_stats`). :func:`item_log_features` makes such a
log in the simulator (users of its world shown uniformly random slates, the exploration traffic a service
keeps for its estimates) and returns, per item, its click-through rate and mean watch time per click (the
columns ``observe_item_log`` appends, :data:`rayrec.features.ITEM_LOG_FEATURES`) and its lift, what a click
on it does to the clicker's completion rate (``observe_lift``'s :data:`rayrec.features.ITEM_LIFT`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from envs.rollout import StepRecord, evaluate_policy
from envs.simulator import SlateSimulator
from rayrec.baselines import RandomPolicy
from rayrec.errors import ConfigError
from rayrec.features import LAST_ENGAGEMENT
from rayrec.item_stats import ItemCounts, lift_totals


@dataclass
class LiftLog:
    """Observer of a rollout: each click whose completion rate the observation shows, for
    :func:`rayrec.item_stats.lift_totals`.

    The completion rate of a click (``last_engagement``) appears in the observation of the user's step after
    it, so each click waits until that observation (as a server learns it from the user's next request).
    """

    num_users: int
    column: int
    """Index of :data:`rayrec.features.LAST_ENGAGEMENT` in the observation's features."""
    arrivals: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(init=False)
    """Per step: ([r] users, [r] items, [r] completion rates) of the clicks whose completion it showed
    (none yet: one empty step)."""

    def __post_init__(self) -> None:
        self.arrivals = [(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0))]
        self.pending = np.full(self.num_users, -1, np.int64)  # [U] click whose completion shows next step

    def __call__(self, step: StepRecord) -> None:
        users = step.users  # [R]
        completion = step.obs["features"][:, 0, self.column].astype(np.float64)  # [R] of the latest click
        pending = self.pending[users]
        arrived = pending >= 0  # the pending click's completion rate is in this observation
        self.arrivals.append((users[arrived], pending[arrived], completion[arrived]))
        self.pending[users] = step.chosen

    def totals(self, num_items: int) -> tuple[np.ndarray, np.ndarray]:
        """:func:`rayrec.item_stats.lift_totals` of the clicks seen so far: ([N] sums, [N] counts)."""
        users, items, completions = (np.concatenate(column) for column in zip(*self.arrivals, strict=True))
        return lift_totals(num_items, users, items, completions)


def item_log_features(sim: SlateSimulator, num_users: int, seed: int) -> np.ndarray:
    """[N, 3] float32 each item's click-through rate, scaled watch time per click and lift, in one session
    each of ``num_users`` users of ``sim`` shown uniformly random slates of their candidates.

    The same statistics a server's event log gives (:meth:`rayrec.item_stats.ItemCounts.statistics`): the
    first two shrunk to the log's mean, the lift, the mean change in completion rate from a click on the item
    to the same user's next click, shrunk toward what the first two predict.

    Args:
        sim: a simulator whose reward is the watch time (``reward="watch"``, no diversity bonus): a click's
            reward is then how long it was watched, ``satisfaction * (1 + clickbait_watch * c)``, which is
            divided by the longest watch, ``1 + clickbait_watch``. Its observation has
            :data:`rayrec.features.LAST_ENGAGEMENT` (``observe_feedback``), whose changes give the lift.
        num_users: users in the log.
        seed: seeds the log's users and dynamics (:func:`envs.rollout.run_sessions`).
    """
    config = sim.config
    if config.reward != "watch" or config.diversity_weight:
        raise ConfigError(
            "item_log_features reads watch time as the reward: the simulator has "
            f"reward={config.reward!r}, diversity_weight={config.diversity_weight}"
        )
    if LAST_ENGAGEMENT not in config.feature_names:
        raise ConfigError("item_log_features reads the completion rate: the simulator needs observe_feedback")
    impressions, clicks, watch = np.zeros((3, sim.catalog.size))  # [N] each
    lift = LiftLog(num_users, config.feature_names.index(LAST_ENGAGEMENT))

    def record(step: StepRecord) -> None:
        shown = step.shown.items[step.shown.items >= 0]
        clicked = step.chosen >= 0
        np.add.at(impressions, shown, 1.0)
        np.add.at(clicks, step.chosen[clicked], 1.0)
        np.add.at(watch, step.chosen[clicked], step.reward[clicked])

    evaluate_policy(RandomPolicy(), sim, num_users, seed, observers=[record, lift])
    if not clicks.any():
        raise ConfigError(f"observe_item_log: the exploration log of {num_users} users has no click")
    longest = 1.0 + config.clickbait_watch
    return ItemCounts(impressions, clicks, watch / longest, *lift.totals(sim.catalog.size)).statistics()
