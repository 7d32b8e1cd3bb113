"""Fixed per-item rules read off the simulator's hidden state: the references a preset must beat by planning.

A per-item rule scores each candidate on its own, ``logit + log_reward + patience * value``: the true choice
logit (the user's hidden interest and satiation, the item's appeal), the log of what a click on it earns
relative to another click (0 except under the ``watch`` reward, where clickbait is watched longer), and what
clicking it would do to the user's satisfaction. Patience 0 ranks by the true immediate expected reward
(``myopic-true``: the click probability under the clicks reward); ``oracle`` is patience 2. The planner
(:mod:`envs.planner`) chooses among such rules state by state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from envs.simulator import SlateSimulator
from rayrec.errors import ConfigError


@dataclass(frozen=True)
class ItemTerms:
    """What every per-item rule is made of, for ``sim``'s current candidates ([B, K] each)."""

    logits: np.ndarray
    """The true choice logit (interest, satiation, appeal)."""
    log_reward: np.ndarray
    """Log of a click's reward on each item relative to another click's: ``log(1 + clickbait_watch * c)``
    under the ``watch`` reward (the user's satisfaction, common to all items, drops out), else 0."""
    value_classic: np.ndarray
    """What a click would do to satisfaction, classic harm: ``(gain * (q - 0.5) - penalty * c) / T``."""
    value_state: np.ndarray
    """The same with the clickbait harm the user's current fatigue implies (as the true response does)."""
    clickbait: np.ndarray
    satisfaction: np.ndarray
    """[B, 1] the user's hidden satisfaction (a :class:`Switch` on ``"satisfaction"`` reads it)."""
    last_engagement: np.ndarray
    """[B, 1] the satisfaction the user's last click met: observable, the ``last_engagement`` feature (a
    :class:`Switch` on ``"last_engagement"`` reads it)."""
    steps_left: np.ndarray
    """[B, 1] steps left in the user's session budget: observable (the ``budget`` feature), what a
    :class:`Switch`'s ``endgame`` reads."""

    @classmethod
    def of(cls, sim: SlateSimulator) -> ItemTerms:
        config, catalog, items, users = sim.config, sim.catalog, sim.candidate_items, sim.users
        logits = sim.choice_model.item_logits(users.interest, items, catalog, satiation=users.satiation)
        clickbait = catalog.clickbait[items]
        gain = config.satisfaction_gain * (catalog.quality[items] - 0.5)
        harm = config.clickbait_penalty * clickbait
        fatigue = users.fatigue[:, None] + clickbait
        watch = config.clickbait_watch if config.reward == "watch" else 0.0
        return cls(
            logits=logits,
            log_reward=np.log1p(watch * clickbait),
            value_classic=(gain - harm) / config.temperature,
            value_state=(gain - harm * (1.0 + config.clickbait_fatigue * fatigue)) / config.temperature,
            clickbait=clickbait,
            satisfaction=users.satisfaction[:, None],
            last_engagement=users.last_engagement[:, None],
            steps_left=users.budget[:, None],
        )


@dataclass(frozen=True)
class ItemRule:
    """A fixed per-item rule: ``logit + log_reward + patience * value`` (value classic or state-aware), clickbait
    last if banned."""

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
        scores = terms.logits + terms.log_reward + self.patience * value
        return np.where(terms.clickbait > 0.5, scores - 1e6, scores) if self.clickbait_ban else scores


SIGNALS = ("satisfaction", "last_engagement")
"""What a :class:`Switch` can read of the user: the hidden satisfaction, or its observable reading one click
late (the ``last_engagement`` feature)."""


@dataclass(frozen=True)
class Switch:
    """A state-aware rule: ``spend`` while the user's ``signal`` is above ``threshold`` or in the session's last
    ``endgame`` steps, ``build`` otherwise.

    Not a fixed per-item rule: it reads the user's changing state. In a world where satisfaction is a stock
    (the ``long-term`` preset: RecSim's "chocolate vs kale"), spending it on what earns most now while it is
    high and rebuilding it with quality while it is low is what planning finds, and so is spending whatever
    is left at the end of the session, when no later click can use it. As base policies of the planner
    (:data:`envs.planner.LIBRARY`) switches on the hidden satisfaction let the rollouts start from that
    pattern instead of rediscovering it three steps at a time. Switches on less measure what a learner whose
    observation holds less can hope for: ``signal=None`` switches on the session's clock alone (what every
    observation holds, the ``budget`` feature), ``"last_engagement"`` on the observable reading of the
    satisfaction one click late. Every switch knows the items' hidden traits as the rules do.
    """

    spend: ItemRule
    build: ItemRule
    signal: Literal["satisfaction", "last_engagement"] | None = "satisfaction"
    """One of :data:`SIGNALS`, or ``None``: the clock alone (``endgame`` steps)."""
    threshold: float = 0.0
    """Spend where the signal is above it (the threshold itself is not above it)."""
    endgame: int = 0
    """Spend in the session's last ``endgame`` steps whatever the signal (0: never on the clock)."""

    def __post_init__(self) -> None:
        if self.signal is not None and self.signal not in SIGNALS:
            raise ConfigError(f"Switch signal must be one of {SIGNALS} or None (got {self.signal!r})")

    @property
    def name(self) -> str:
        when = [f"{self.signal} > {self.threshold:g}"] * (self.signal is not None)
        when += [f"last {self.endgame} steps"] * (self.endgame > 0)
        return f"switch({' or '.join(when)}: {self.spend.name}, else {self.build.name})"

    def scores(self, terms: ItemTerms) -> np.ndarray:
        """[B, K] ``spend``'s scores in the rows where the switch spends, ``build``'s in the others."""
        spending = (terms.steps_left <= self.endgame) & (self.endgame > 0)  # [B, 1]
        if self.signal is not None:
            spending |= getattr(terms, self.signal) > self.threshold
        return np.where(spending, self.spend.scores(terms), self.build.scores(terms))


Rule = ItemRule | Switch
"""What :class:`envs.policies.ItemRulePolicy` follows and the planner's library holds."""

FIXED_RULES = tuple(ItemRule(p, ban) for p in (0.0, 1.0, 2.0, 4.0, 8.0) for ban in (False, True))
"""The fixed per-item rules a preset is measured against: "true logits", "true logits, never clickbait",
and the oracle's patient variants. None reads the user's changing state beyond the interest and satiation
that the true logit holds."""
