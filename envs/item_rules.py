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

import numpy as np

from envs.simulator import SlateSimulator


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
    """[B, 1] the user's hidden satisfaction (what :class:`SatisfactionSwitch` reads)."""
    session_step: np.ndarray
    """[B, 1] steps already shown in the user's session: observable (the ``budget`` feature), what
    :class:`ClockSwitch` reads."""

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
            session_step=users.steps[:, None],
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


def switched(spending: np.ndarray, spend: ItemRule, build: ItemRule, terms: ItemTerms) -> np.ndarray:
    """[B, K] ``spend``'s scores in the rows where ``spending`` [B, 1] holds, ``build``'s in the others."""
    return np.where(spending, spend.scores(terms), build.scores(terms))


@dataclass(frozen=True)
class SatisfactionSwitch:
    """A state-aware rule: ``spend`` while the user's hidden satisfaction is above ``threshold``, ``build`` below.

    Not a fixed per-item rule: it reads the user's changing state. In a world where satisfaction is a stock
    (the ``long-term`` preset: RecSim's "chocolate vs kale"), spending it on what earns most now while it is
    high and rebuilding it with quality while it is low is what planning finds; as a base policy of the
    planner (:data:`envs.planner.LIBRARY`) it lets the rollouts start from that pattern instead of
    rediscovering it three steps at a time.
    """

    spend: ItemRule
    build: ItemRule
    threshold: float

    @property
    def name(self) -> str:
        return f"switch(satisfaction > {self.threshold:g}: {self.spend.name}, else {self.build.name})"

    def scores(self, terms: ItemTerms) -> np.ndarray:
        """[B, K] ``spend``'s scores for satisfied users, ``build``'s for the others."""
        return switched(terms.satisfaction > self.threshold, self.spend, self.build, terms)


@dataclass(frozen=True)
class ClockSwitch:
    """``build`` for the session's first ``step`` steps, ``spend`` from then on: a switch on the clock alone.

    It knows the items' hidden traits as the rules do, but of the user's changing state only what every
    observation holds, the session's step (the ``budget`` feature). Beside :class:`SatisfactionSwitch` it
    measures what knowing the user's satisfaction is worth to a spend-and-rebuild policy, so what a learner
    whose observation says nothing about satisfaction can hope for. Not in the planner's library.
    """

    spend: ItemRule
    build: ItemRule
    step: int

    @property
    def name(self) -> str:
        return f"clock(step >= {self.step}: {self.spend.name}, else {self.build.name})"

    def scores(self, terms: ItemTerms) -> np.ndarray:
        """[B, K] ``build``'s scores early in the session, ``spend``'s from step ``step`` on."""
        return switched(terms.session_step >= self.step, self.spend, self.build, terms)


Rule = ItemRule | SatisfactionSwitch | ClockSwitch
"""What :class:`envs.policies.ItemRulePolicy` follows and the planner's library holds."""

FIXED_RULES = tuple(ItemRule(p, ban) for p in (0.0, 1.0, 2.0, 4.0, 8.0) for ban in (False, True))
"""The fixed per-item rules a preset is measured against: "true logits", "true logits, never clickbait",
and the oracle's patient variants. None reads the user's changing state beyond the interest and satiation
that the true logit holds."""
