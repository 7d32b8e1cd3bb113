"""What a service learns about its items by serving them: per-item statistics of a simulated log.

A catalog's hidden traits are what users react to; a service never reads them, but it logs how users
reacted and aggregates the log per item. :func:`item_log_features` makes such a log in the simulator
(users of its world shown uniformly random slates, the exploration traffic a service keeps for its
estimates) and returns each item's click-through rate and mean watch time per click, the columns
``observe_item_log`` appends (:data:`rayrec.features.ITEM_LOG_FEATURES`).
"""

from __future__ import annotations

import numpy as np

from envs.rollout import StepRecord, evaluate_policy
from envs.simulator import SlateSimulator
from rayrec.baselines import RandomPolicy
from rayrec.errors import ConfigError
from rayrec.features import CLICK_PRIOR_COUNT, IMPRESSION_PRIOR_COUNT, shrunk_mean


def item_log_features(sim: SlateSimulator, num_users: int, seed: int) -> np.ndarray:
    """[N, 2] float32 each item's click-through rate and scaled watch time per click (both shrunk by
    :func:`rayrec.features.shrunk_mean`) in one session each of ``num_users`` users of ``sim`` shown
    uniformly random slates of their candidates.

    Args:
        sim: a simulator whose reward is the watch time (``reward="watch"``, no diversity bonus): a click's
            reward is then how long it was watched, ``satisfaction * (1 + clickbait_watch * c)``, which is
            divided by the longest watch, ``1 + clickbait_watch``.
        num_users: users in the log.
        seed: seeds the log's users and dynamics (:func:`envs.rollout.run_sessions`).
    """
    config = sim.config
    if config.reward != "watch" or config.diversity_weight:
        raise ConfigError(
            "item_log_features reads watch time as the reward: the simulator has "
            f"reward={config.reward!r}, diversity_weight={config.diversity_weight}"
        )
    impressions, clicks, watch = np.zeros((3, sim.catalog.size))  # [N] each

    def record(step: StepRecord) -> None:
        shown = step.shown.items[step.shown.items >= 0]
        clicked = step.chosen >= 0
        np.add.at(impressions, shown, 1.0)
        np.add.at(clicks, step.chosen[clicked], 1.0)
        np.add.at(watch, step.chosen[clicked], step.reward[clicked])

    evaluate_policy(RandomPolicy(), sim, num_users, seed, observers=[record])
    if not clicks.any():
        raise ConfigError(f"observe_item_log: the exploration log of {num_users} users has no click")
    longest = 1.0 + config.clickbait_watch
    features = np.stack(
        [
            shrunk_mean(clicks, impressions, IMPRESSION_PRIOR_COUNT),
            shrunk_mean(watch / longest, clicks, CLICK_PRIOR_COUNT),
        ],
        axis=1,
    )  # [N, 2]
    features.flags.writeable = False
    return features
