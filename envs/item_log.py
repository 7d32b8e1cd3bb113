"""What a service learns about its items by serving them: per-item statistics of a simulated log.

A catalog's hidden traits are what users react to; a service never reads them, but it logs how users
reacted and aggregates the log per item. :func:`item_log_features` makes such a log in the simulator
(users of its world shown uniformly random slates, the exploration traffic a service keeps for its
estimates) and returns, per item, its click-through rate and mean watch time per click (the columns
``observe_item_log`` appends, :data:`rayrec.features.ITEM_LOG_FEATURES`) and its lift, what a click on it
does to the clicker's completion rate (``observe_lift``'s :data:`rayrec.features.ITEM_LIFT`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from envs.rollout import StepRecord, evaluate_policy
from envs.simulator import SlateSimulator
from rayrec.baselines import RandomPolicy
from rayrec.errors import ConfigError
from rayrec.features import (
    CLICK_PRIOR_COUNT,
    IMPRESSION_PRIOR_COUNT,
    LAST_ENGAGEMENT,
    LIFT_PRIOR_COUNT,
    shrunk_mean,
)


@dataclass
class LiftLog:
    """Observer of a rollout: per item, the changes in completion rate from a click on it to the same
    user's next click.

    The completion rate of a click (``last_engagement``) appears in the observation of the user's step after
    it, so each user's latest click waits until that observation, and pairs with the click before it.
    """

    num_items: int
    num_users: int
    column: int
    """Index of :data:`rayrec.features.LAST_ENGAGEMENT` in the observation's features."""
    total: np.ndarray = field(init=False)
    """[N] summed changes in completion rate after a click on each item."""
    count: np.ndarray = field(init=False)
    """[N] how many such changes were measured (clicks followed by another click of the same user)."""

    def __post_init__(self) -> None:
        self.total, self.count = np.zeros((2, self.num_items))
        self.last_item = np.full(self.num_users, -1, np.int64)  # [U] last click whose completion is known
        self.last_completion = np.zeros(self.num_users)  # [U] that click's completion rate
        self.pending = np.full(self.num_users, -1, np.int64)  # [U] click whose completion shows next step

    def __call__(self, step: StepRecord) -> None:
        users = step.users  # [R]
        completion = step.obs["features"][:, 0, self.column].astype(np.float64)  # [R] of the latest click
        pending = self.pending[users]
        arrived = pending >= 0  # the pending click's completion rate is in this observation
        paired = arrived & (self.last_item[users] >= 0)
        before = self.last_item[users][paired]
        np.add.at(self.total, before, completion[paired] - self.last_completion[users][paired])
        np.add.at(self.count, before, 1.0)
        self.last_item[users[arrived]] = pending[arrived]
        self.last_completion[users[arrived]] = completion[arrived]
        self.pending[users] = step.chosen


def shrunk_to_prediction(
    total: np.ndarray, count: np.ndarray, covariates: np.ndarray, prior_count: float
) -> np.ndarray:
    """[N] each item's mean ``total / count`` shrunk toward a linear prediction from ``covariates``.

    The prediction is least squares of the items' means on ``[1, covariates]``, each item weighted by its
    ``count``; an item is then ``(total + prediction * m) / (count + m)`` with m = ``prior_count``: an item
    never measured gets what items with its covariates show, one measured often about its own mean (the
    empirical-Bayes estimate with covariates, Efron & Morris 1975).

    Args:
        total: [N] summed measurements per item; count: [N] how many.
        covariates: [N, C] what is known of every item (here its logged rates).
    """
    x = np.column_stack([np.ones(len(total)), covariates])  # [N, 1 + C]
    weight = np.sqrt(count)[:, None]  # [N, 1]
    mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)  # [N]
    beta, *_ = np.linalg.lstsq(x * weight, mean * weight[:, 0], rcond=None)  # [1 + C]
    return ((total + (x @ beta) * prior_count) / (count + prior_count)).astype(np.float32)


def item_log_features(sim: SlateSimulator, num_users: int, seed: int) -> np.ndarray:
    """[N, 3] float32 each item's click-through rate, scaled watch time per click and lift, in one session
    each of ``num_users`` users of ``sim`` shown uniformly random slates of their candidates.

    The first two are shrunk to the log's mean (:func:`rayrec.features.shrunk_mean`); the lift, the mean
    change in completion rate from a click on the item to the same user's next click, is shrunk toward what
    the first two predict (:func:`shrunk_to_prediction`), since most items are clicked only a few times.

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
    lift = LiftLog(sim.catalog.size, num_users, config.feature_names.index(LAST_ENGAGEMENT))

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
    rates = np.stack(
        [
            shrunk_mean(clicks, impressions, IMPRESSION_PRIOR_COUNT),
            shrunk_mean(watch / longest, clicks, CLICK_PRIOR_COUNT),
        ],
        axis=1,
    )  # [N, 2]
    item_lift = shrunk_to_prediction(lift.total, lift.count, rates, LIFT_PRIOR_COUNT)  # [N]
    features = np.column_stack([rates, item_lift]).astype(np.float32)  # [N, 3]
    features.flags.writeable = False
    return features
