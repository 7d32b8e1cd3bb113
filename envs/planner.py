"""``planner``: model-predictive control with rollouts on copies of the hidden state (simulation only).

The rollout algorithm (Bertsekas) over a library of base policies. At the planner's first plan, every base
policy of the library is evaluated by ``rollouts`` simulated continuations of the whole episode from copies
of the users' hidden state (every session the user has left, up to the episode's ``max_episode_steps``), run
with the true model (choices, satiation, fatigue, satisfaction, leaving and returning); the one with the best
mean return over all users becomes the *base policy*. Whole episodes matter where users return: a rule's
effect on the next sessions is part of its return (``retention``). From then on, every
``replan_every`` steps, each library rule is scored as a first move: it is followed for ``replan_every``
steps and the base policy for the rest of the horizon. The user follows the best first move. This is one
step of policy improvement on the best fixed rule: it does at least as well as the base policy in every
state, up to the rollouts' noise and horizon, and better wherever another rule is the better thing to do
*now* — for example spending a satisfied user's satisfaction on clickbait and rebuilding it with quality
when it is low, which no fixed rule can do and which scoring each rule as if it were followed for the whole
horizon finds only in part. To keep the rollouts' noise from costing more than switching gains, a user
leaves the base policy only where another first move's advantage is clear (:meth:`PlannerPolicy.choose`).
Copies of one user share their random numbers (common random numbers), so two first moves that would show
the same slates are scored the same, and the comparison is between policies, not between lucky draws. The
library is the fixed per-item rules (:data:`envs.item_rules.FIXED_RULES`), their state-aware versions
(clickbait harm read from the user's fatigue) and switches on the user's satisfaction
(:class:`envs.item_rules.Switch`): one step of improvement finds only part of a spend-and-rebuild
pattern that a switch follows from the start, so the planner is only as good as its best base policy.

References:
    - Chang, H. S., Givan, R. & Chong, E. K. P. (2004). "Parallel rollout for online solution of partially
      observable Markov decision processes." Discrete Event Dynamic Systems 14.
    - Bertsekas, D. P. (2019). "Reinforcement Learning and Optimal Control", ch. 2 (rollout, MPC).
    - Ie, E. et al. (2019). "RecSim: A Configurable Simulation Platform for Recommender Systems" (the
      long-term satisfaction world where this matters).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from envs.factory import build_simulator
from envs.item_rules import FIXED_RULES, ItemRule, ItemTerms, Rule, Switch
from envs.simulator import SlateSimulator
from rayrec.baselines import ScoringPolicy
from rayrec.errors import ConfigError
from rayrec.slate_policy import Observation

REVISION = 5
"""The planner's algorithm (1: each rule scored as if followed for the whole horizon, 6 rollouts; 2: rules
scored as first moves before the base policy, 12 rollouts; 3: the library adds satisfaction switches, which
on ``long-term`` beat revision 2 outright; 4: the base policy is chosen on whole episodes, not ``horizon``
steps, which changes only worlds whose episodes outlast the horizon: several sessions, or a session budget
above it; 5: the library adds switches that also spend in the session's last two steps, which on
``long-term`` scored above revision 4): results of another revision are not reused."""

LIBRARY: tuple[Rule, ...] = (
    *FIXED_RULES,
    *(ItemRule(p, ban, state_aware=True) for p in (1.0, 2.0, 4.0) for ban in (False, True)),
    *(
        Switch(spend=ItemRule(0.0), build=ItemRule(p, clickbait_ban=True), threshold=t)
        for p in (1.0, 4.0)
        for t in (0.75, 0.9)
    ),
    *(
        Switch(spend=ItemRule(0.5), build=ItemRule(p, clickbait_ban=True), threshold=t, endgame=2)
        for p in (1.0, 4.0)
        for t in (0.8, 0.9)
    ),
)
"""The base policies the planner chooses among, state by state: every fixed per-item rule (so it is at least
as good as the best of them), patient rules that read the user's clickbait fatigue, and switches that spend
a satisfied user's satisfaction on the immediately best items and rebuild it with quality below a threshold
(on ``long-term`` a switch alone scored above revision 2's planner on the same users), some of them also
spending whatever is left in the session's last two steps and spending with a little patience (such
switches scored above revision 4's planner; chosen on other users than any published table's)."""


class CommonRandomNumbers:
    """A random source for N copies in G groups: copies of one group draw the same numbers.

    Implements the few ``numpy.random.Generator`` methods the simulator's step uses. A draw whose leading
    size is N is made once per group and repeated to its copies; any other draw is independent.
    """

    def __init__(self, group: np.ndarray, rng: np.random.Generator) -> None:
        self.group, self.rng = group, rng
        self.groups = int(group.max()) + 1

    def _shared(self, size) -> bool:
        shape = (size,) if np.isscalar(size) else tuple(size or ())
        return len(shape) >= 1 and shape[0] == len(self.group)

    def random(self, size=None) -> np.ndarray:
        if not self._shared(size):
            return self.rng.random(size)
        shape = (size,) if np.isscalar(size) else tuple(size)
        return self.rng.random((self.groups, *shape[1:]))[self.group]

    def uniform(self, low=0.0, high=1.0, size=None) -> np.ndarray:
        return low + (high - low) * self.random(size)

    def poisson(self, lam) -> np.ndarray:
        lam = np.asarray(lam, dtype=np.float64)
        if not self._shared(lam.shape):
            return self.rng.poisson(lam)
        # Inversion from one shared uniform per group: small means, so a short running sum is exact enough.
        u = self.random(lam.shape)
        count = np.zeros(lam.shape)
        term = np.exp(-lam)
        cdf = term.copy()
        for n in range(1, 64):
            below = u > cdf
            if not below.any():
                break
            count += below
            term = term * lam / n
            cdf += term
        return count

    def integers(self, low, high=None, size=None):
        return self.rng.integers(low, high, size=size)


class PlannerPolicy(ScoringPolicy):
    """Simulation-only upper bound: the rollout algorithm over :data:`LIBRARY` on copies of each user (module doc)."""

    name = "planner"

    def __init__(
        self,
        sim: SlateSimulator,
        horizon: int = 20,
        rollouts: int = 12,
        replan_every: int = 3,
        confidence: float = 2.0,
        library: tuple[Rule, ...] = LIBRARY,
        seed: int = 0,
    ) -> None:
        if min(horizon, rollouts, replan_every) < 1:
            raise ConfigError(
                f"planner: horizon, rollouts and replan_every must be >= 1 (got {horizon}, {rollouts}, {replan_every})"
            )
        self.sim, self.horizon, self.rollouts, self.library = sim, horizon, rollouts, library
        self.replan_every, self.confidence = replan_every, confidence
        self.rng = np.random.default_rng(seed)
        self._copies: SlateSimulator | None = None
        self._plan = np.zeros(sim.batch, dtype=np.int64)  # [B] the library rule each user follows
        self.base: int | None = None
        """Index into the library of the base policy (chosen at the first plan, kept for the run)."""

    @property
    def base_name(self) -> str:
        """The name of the base policy ("none yet" before the first plan)."""
        return "none yet" if self.base is None else self.library[self.base].name

    def scores(self, obs: Observation) -> np.ndarray:
        sim = self.sim
        if obs["features"].shape[:2] != sim.candidate_items.shape:
            raise ConfigError("planner: it only ranks its own simulator's current candidates")
        # A user's plan is made at the start of its session and remade every `replan_every` steps after.
        replan = sim.users.steps % self.replan_every == 0
        if replan.any():
            self._plan[replan] = self.best_rules()[replan]
        best = self._plan
        terms = ItemTerms.of(sim)
        out = np.empty(sim.candidate_items.shape, dtype=np.float64)
        for index in np.unique(best):
            rows = best == index
            out[rows] = self.library[index].scores(terms)[rows]
        return out

    def best_rules(self) -> np.ndarray:
        """[B] index into the library of the best first move for each user (module doc)."""
        if self.base is None:
            episode = self.sim.config.max_episode_steps  # every rule followed to the end of the episode
            whole = self.rollout_returns(first_steps=episode, steps=episode)
            self.base = int(whole.mean(axis=(0, 2)).argmax())
        return self.choose(self.rollout_returns(first_steps=self.replan_every), self.base)

    def rollout_returns(self, first_steps: int, steps: int | None = None) -> np.ndarray:
        """[B, M, R] simulated returns: library rule m for ``first_steps`` steps, then the base policy, for
        ``steps`` steps (default ``horizon``) or until every copy's episode is over."""
        sim = self.sim
        batch, m, r, k = sim.batch, len(self.library), self.rollouts, sim.config.slate_size
        copies = self._scratch(batch * m * r)
        source = np.repeat(np.arange(batch), m * r)  # [N] the user each copy continues
        rule = np.tile(np.repeat(np.arange(m), r), batch)  # [N] the first move each copy makes
        group = np.repeat(np.arange(batch * r).reshape(batch, 1, r), m, axis=1).ravel()  # [N] (user, rollout)
        random = CommonRandomNumbers(group, self.rng)
        copies.users = sim.users.take(source)
        copies.candidate_items = sim.candidate_items[source]
        copies.candidate_scores = sim.candidate_scores[source]
        value = np.zeros(len(source))
        alive = np.ones(len(source), dtype=bool)
        for step in range(self.horizon if steps is None else steps):
            if step == first_steps:
                rule = np.full_like(rule, self.base)
            terms = ItemTerms.of(copies)
            scores = np.empty(copies.candidate_items.shape)
            for i in np.unique(rule):
                rows = np.flatnonzero(rule == i)
                scores[rows] = self.library[i].scores(_rows(terms, rows))
            positions = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            outcome = copies.show(np.take_along_axis(copies.candidate_items, positions, axis=1), random)
            value += alive * outcome.reward
            alive &= ~outcome.terminated & (copies.users.total_steps < sim.config.max_episode_steps)
            if not alive.any():
                break
            copies.refresh_candidates(random)
        return value.reshape(batch, m, r)

    def choose(self, value: np.ndarray, default: int) -> np.ndarray:
        """[B] the rule each user follows, from rollout returns ``value`` [B, M, R] and the ``default`` rule.

        A user switches from ``default`` to another rule only where its paired advantage (same random
        numbers, rollout by rollout) exceeds ``confidence`` standard errors. Taking the per-user maximum of
        noisy estimates instead would pick whichever rule got lucky (the winner's curse) and lose to the
        best fixed rule.
        """
        batch, _, r = value.shape
        advantage = value - value[:, default : default + 1, :]  # [B, M, R]
        mean = advantage.mean(axis=2)  # [B, M]
        se = advantage.std(axis=2, ddof=1) / np.sqrt(r) if r > 1 else np.full_like(mean, np.inf)
        best = mean.argmax(axis=1)  # [B]
        rows = np.arange(batch)
        confident = mean[rows, best] > self.confidence * se[rows, best]
        return np.where(confident, best, default)

    def _scratch(self, n: int) -> SlateSimulator:
        if self._copies is None or self._copies.batch != n:
            self._copies = build_simulator(self.sim.config, batch=n, choice_model=self.sim.choice_model)
        return self._copies


def _rows(terms: ItemTerms, rows: np.ndarray) -> ItemTerms:
    return ItemTerms(*(getattr(terms, f.name)[rows] for f in dataclasses.fields(ItemTerms)))
