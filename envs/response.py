"""What a click (or its absence) does to a user: interest drift, satiation, satisfaction, budget, leaving, returning.

References:
    - Ie, E. et al. (2019). "RecSim: A Configurable Simulation Platform for Recommender Systems" (interest
      evolution and satiation).
    - Zhao, K. et al. (2023). "KuaiSim: A Comprehensive Simulator for Recommender Systems" (users who leave
      and return; retention as an objective).
"""

from __future__ import annotations

import numpy as np

from envs.catalog import ItemCatalog
from envs.config import SlateEnvConfig
from envs.users import UserState
from rayrec.features import l2_normalize


class UserResponse:
    """Applies one step's outcome to B users in place and decides who leaves.

    For a user who clicked item i (quality q_i, clickbait c_i):

    - interest: ``x ← normalise((1 - drift) * x + drift * e_i)`` (tastes follow consumption);
    - satiation: ``σ ← (1 - recovery) σ + satiation_gain * e_i`` (what was just consumed appeals less for a
      while; without a click σ only fades);
    - clickbait fatigue: ``f ← (1 - fatigue_recovery) f + c_i``;
    - satisfaction: ``s ← clip(s + gain * (q_i - 0.5) - penalty * c_i * (1 + clickbait_fatigue * f), 0, 1)``
      (clickbait disappoints, and the more so the more of it the user has had lately: a first clickbait
      click is tolerated where a third in a row is not).

    A user who clicked nothing loses ``boredom`` satisfaction. Every step spends one unit of budget.
    Then the user leaves with probability ``leave_base + leave_scale * (1 - s) ** 2``: dissatisfied users
    quit early, which is what makes chasing clicks with clickbait cost session length.

    When a session ends (the user left or spent the budget) and the user has sessions left, the user comes
    back with probability ``sigmoid(return_bias + return_slope * (s - 0.5))`` after
    ``1 + Poisson(return_delay * (1 - s / 2) - 1)`` days (:meth:`end_sessions`): how the last session went
    decides whether and when there is a next one.
    """

    def __init__(self, config: SlateEnvConfig) -> None:
        self.drift = config.interest_drift
        self.gain = config.satisfaction_gain
        self.penalty = config.clickbait_penalty
        self.boredom = config.boredom
        self.leave_base = config.leave_base
        self.leave_scale = config.leave_scale
        self.config = config

    def leave_probability(self, satisfaction: np.ndarray) -> np.ndarray:
        """[B] probability of leaving after this step given the updated satisfaction [B]."""
        return np.clip(self.leave_base + self.leave_scale * np.square(1.0 - satisfaction), 0.0, 1.0)

    def click_change(self, quality: np.ndarray, clickbait: np.ndarray, fatigue: np.ndarray) -> np.ndarray:
        """[n] the satisfaction change of clicks on items of ``quality`` and ``clickbait`` [n] by users whose
        recent clickbait count, this click included, is ``fatigue`` [n] (before clipping to [0, 1])."""
        harm = self.penalty * clickbait * (1.0 + self.config.clickbait_fatigue * fatigue)
        return self.gain * (quality - 0.5) - harm

    def apply(
        self, users: UserState, chosen_items: np.ndarray, catalog: ItemCatalog, rng: np.random.Generator
    ) -> np.ndarray:
        """Update ``users`` after rows clicked ``chosen_items`` [B] (-1: no click); returns [B] bool left."""
        clicked = chosen_items >= 0
        rows = np.flatnonzero(clicked)
        items = chosen_items[rows]
        if len(rows):
            users.interest[rows] = l2_normalize(
                (1.0 - self.drift) * users.interest[rows] + self.drift * catalog.embeddings[items]
            )
        config = self.config
        if config.satiation_gain or config.satiation_recovery:
            users.satiation *= np.float32(1.0 - config.satiation_recovery)
            users.satiation[rows] += np.float32(config.satiation_gain) * catalog.embeddings[items]
        users.fatigue *= np.float32(1.0 - config.fatigue_recovery)
        clickbait = catalog.clickbait[items]
        users.fatigue[rows] += clickbait
        delta = np.full(len(chosen_items), -self.boredom, dtype=np.float32)
        delta[rows] = self.click_change(catalog.quality[items], clickbait, users.fatigue[rows])
        users.satisfaction[:] = np.clip(users.satisfaction + delta, 0.0, 1.0)
        users.budget -= 1.0
        users.steps += 1
        users.total_steps += 1
        users.consume(rows, items, catalog.embeddings)
        return rng.random(len(chosen_items)) < self.leave_probability(users.satisfaction)

    def return_probability(self, satisfaction: np.ndarray) -> np.ndarray:
        """[B] probability of coming back for another session, given the satisfaction a session ended with."""
        logits = self.config.return_bias + self.config.return_slope * (satisfaction - 0.5)
        return 1.0 / (1.0 + np.exp(-logits))

    def end_sessions(
        self, users: UserState, ended: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Users whose session ended [B] bool: who comes back, after how many days; starts their next session.

        Returns:
            (returned [B] bool, days [B] float32: days until the next session, 0 where none).
        """
        config = self.config
        more = ended & (users.session < config.sessions)
        satisfaction = users.satisfaction
        # Every draw is made for all B rows (used or not), so that copies of a user see the same numbers.
        returned = more & (rng.random(len(ended)) < self.return_probability(satisfaction))
        mean_delay = config.return_delay * (1.0 - satisfaction / 2.0)
        delay = rng.poisson(np.maximum(mean_delay - 1.0, 0.0))
        days = np.where(returned, 1.0 + delay, 0.0).astype(np.float32)
        low, high = config.initial_satisfaction
        start = rng.uniform(low, high, size=len(ended)).astype(np.float32)  # [B]
        rows = np.flatnonzero(returned)
        if len(rows):
            users.satisfaction[rows] += np.float32(config.satisfaction_recovery) * (
                start[rows] - satisfaction[rows]
            )
            fade = (1.0 - config.satiation_recovery) ** days[rows]  # [R] one day fades like one step
            users.satiation[rows] *= fade[:, None].astype(np.float32)
            users.fatigue[rows] *= ((1.0 - config.fatigue_recovery) ** days[rows]).astype(np.float32)
            users.budget[rows] = config.budget
            users.steps[rows] = 0
            users.session[rows] += 1
        return returned, days
