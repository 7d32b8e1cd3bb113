"""Fixed per-item rules read off the simulator's hidden state: the references a preset must beat by planning.

A per-item rule scores each candidate on its own, ``logit + patience * value``: the true choice logit (the
user's hidden interest and satiation, the item's appeal) plus what clicking the item would do to the user's
satisfaction. ``myopic-true`` (patience 0) and ``oracle`` (patience 2) are such rules; the planner
(:mod:`envs.planner`) chooses among them state by state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from envs.simulator import SlateSimulator


@dataclass(frozen=True)
class ItemTerms:
    """What every per-item rule is made of, for ``sim``'s current candidates ([B, K] each)."""

    logits: np.ndarray
    """The true choice logit (interest, satiation, appeal)."""
    value_classic: np.ndarray
    """What a click would do to satisfaction, classic harm: ``(gain * (q - 0.5) - penalty * c) / T``."""
    value_state: np.ndarray
    """The same with the clickbait harm the user's current fatigue implies (as the true response does)."""
    clickbait: np.ndarray

    @classmethod
    def of(cls, sim: SlateSimulator) -> ItemTerms:
        config, catalog, items, users = sim.config, sim.catalog, sim.candidate_items, sim.users
        logits = sim.choice_model.item_logits(users.interest, items, catalog, satiation=users.satiation)
        clickbait = catalog.clickbait[items]
        gain = config.satisfaction_gain * (catalog.quality[items] - 0.5)
        harm = config.clickbait_penalty * clickbait
        fatigue = users.fatigue[:, None] + clickbait
        return cls(
            logits=logits,
            value_classic=(gain - harm) / config.temperature,
            value_state=(gain - harm * (1.0 + config.clickbait_fatigue * fatigue)) / config.temperature,
            clickbait=clickbait,
        )


@dataclass(frozen=True)
class ItemRule:
    """A fixed per-item rule: ``logit + patience * value`` (value classic or state-aware), clickbait last if banned."""

    patience: float
    clickbait_ban: bool = False
    state_aware: bool = False

    @property
    def name(self) -> str:
        extras = [", no clickbait"] * self.clickbait_ban + [", fatigue-aware"] * self.state_aware
        return f"rule(p={self.patience:g}{''.join(extras)})"

    def scores(self, terms: ItemTerms) -> np.ndarray:
        """[B, K] this rule's score of every candidate."""
        value = terms.value_state if self.state_aware else terms.value_classic
        scores = terms.logits + self.patience * value
        return np.where(terms.clickbait > 0.5, scores - 1e6, scores) if self.clickbait_ban else scores


FIXED_RULES = tuple(ItemRule(p, ban) for p in (0.0, 1.0, 2.0, 4.0, 8.0) for ban in (False, True))
"""The fixed per-item rules a preset is measured against: "true logits", "true logits, never clickbait",
and the oracle's patient variants. None reads the user's changing state beyond the interest and satiation
that the true logit holds."""
