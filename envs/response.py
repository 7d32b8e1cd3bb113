"""What a click (or its absence) does to a user: interest drift, satisfaction, time budget, leaving."""

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
    - satisfaction: ``s ← clip(s + gain * (q_i - 0.5) - penalty * c_i, 0, 1)`` (clickbait disappoints).

    A user who clicked nothing loses ``boredom`` satisfaction. Every step spends one unit of budget.
    Then the user leaves with probability ``leave_base + leave_scale * (1 - s) ** 2``: dissatisfied users
    quit early, which is what makes chasing clicks with clickbait cost session length.
    """

    def __init__(self, config: SlateEnvConfig) -> None:
        self.drift = config.interest_drift
        self.gain = config.satisfaction_gain
        self.penalty = config.clickbait_penalty
        self.boredom = config.boredom
        self.leave_base = config.leave_base
        self.leave_scale = config.leave_scale

    def leave_probability(self, satisfaction: np.ndarray) -> np.ndarray:
        """[B] probability of leaving after this step given the updated satisfaction [B]."""
        return np.clip(self.leave_base + self.leave_scale * np.square(1.0 - satisfaction), 0.0, 1.0)

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
        delta = np.full(len(chosen_items), -self.boredom, dtype=np.float32)
        delta[rows] = self.gain * (catalog.quality[items] - 0.5) - self.penalty * catalog.clickbait[items]
        users.satisfaction[:] = np.clip(users.satisfaction + delta, 0.0, 1.0)
        users.budget -= 1.0
        users.steps += 1
        users.consume(rows, items, catalog.embeddings)
        return rng.random(len(chosen_items)) < self.leave_probability(users.satisfaction)
