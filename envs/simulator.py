"""The batched simulation core shared by the single env and the native vector env.

Both envs are thin Gymnasium shells around :class:`SlateSimulator`, which holds B users in arrays and
advances them all with array operations and one batched candidate search per step. The single env is
the case B = 1, so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gymnasium import spaces

from envs.candidates import CandidateGenerator
from envs.catalog import ItemCatalog
from envs.choice import NO_CLICK, ChoiceModel
from envs.config import SlateEnvConfig
from envs.response import UserResponse
from envs.rewards import RewardFn, StepEvents
from envs.users import UserSampler, UserState
from rayrec.features import (
    FEATURE_NAMES,
    ITEM_CTR,
    ITEM_LIFT,
    ITEM_RATING,
    ITEM_WATCH,
    LAST_CLICK_RATING,
    LAST_ENGAGEMENT,
    NUM_FEATURES,
    SATISFACTION_ESTIMATE,
    build_observation,
    estimated_satisfaction,
)

INFO_KEYS = (
    "clicked",
    "click_position",
    "chosen_item",
    "satisfaction",
    "left",
    "session_ended",
    "return_days",
)
"""Per-step info keys (arrays over the batch in the vector env, scalars in the single env)."""


def observation_space(num_candidates: int, dim: int, names: tuple[str, ...] = FEATURE_NAMES) -> spaces.Dict:
    """One user's observation space: :mod:`rayrec.features`'s contract with B dropped.

    ``names``: the per-candidate features (``SlateEnvConfig.feature_names``: :data:`rayrec.features.FEATURE_NAMES`,
    and the appended ``item_rating``, ``last_engagement``, ``last_click_rating`` and hidden columns the config
    asks for).
    """
    # retrieval_score is an inner product of unit vectors, the other observable features are in [0, 1];
    # the true click logit is unbounded.
    low = np.full((num_candidates, len(names)), -1.0, dtype=np.float32)
    high = np.ones_like(low)
    if "true_click_logit" in names:
        low[:, names.index("true_click_logit")], high[:, names.index("true_click_logit")] = -np.inf, np.inf
    return spaces.Dict(
        {
            "profile": spaces.Box(-1.0, 1.0, shape=(dim,), dtype=np.float32),
            "candidates": spaces.Box(-1.0, 1.0, shape=(num_candidates, dim), dtype=np.float32),
            "features": spaces.Box(low, high, dtype=np.float32),
            "budget": spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32),
        }
    )


def action_space(num_candidates: int, slate_size: int) -> spaces.MultiDiscrete:
    """One user's action space: k candidate positions, each in [0, K)."""
    return spaces.MultiDiscrete(np.full(slate_size, num_candidates, dtype=np.int64))


def dedupe_slates(actions: np.ndarray, num_candidates: int) -> np.ndarray:
    """Slates [B, k] of candidate positions with repeats replaced, deterministically.

    Rule: positions are read left to right; a candidate already shown earlier in the slate is replaced
    by the best-ranked (lowest retrieval rank) candidate not yet in the slate. A slate without repeats
    is returned unchanged.
    """
    actions = np.asarray(actions, dtype=np.int64)
    batch, k = actions.shape
    rows = np.arange(batch)
    used = np.zeros((batch, num_candidates), dtype=bool)
    out = actions.copy()
    for p in range(k):
        pick = out[:, p]
        repeat = used[rows, pick]
        if repeat.any():
            pick = np.where(repeat, np.argmin(used, axis=1), pick)  # first unused = best-ranked unused
            out[:, p] = pick
        used[rows, pick] = True
    return out


@dataclass(frozen=True)
class UserDraw:
    """n freshly sampled users: interest [n, d], arrival history [n, h] (catalog rows, -1 padded), satisfaction [n]."""

    interest: np.ndarray
    history: np.ndarray
    satisfaction: np.ndarray

    def take(self, rows: np.ndarray) -> UserDraw:
        """The users at ``rows`` [m], in that order."""
        return UserDraw(self.interest[rows], self.history[rows], self.satisfaction[rows])


@dataclass
class StepOutcome:
    """What one step did to each of B users.

    Attributes:
        reward: [B] float32.
        terminated: [B] bool: the user's episode is over (the session ended and the user will not return).
        slate_items: [B, k] int64 catalog indices actually shown (after de-duplication).
        info: :data:`INFO_KEYS` → [B] arrays.
    """

    reward: np.ndarray
    terminated: np.ndarray
    slate_items: np.ndarray
    info: dict[str, np.ndarray]


class SlateSimulator:
    """B users, their candidates, and one step of the RecSim loop for all of them at once."""

    def __init__(
        self,
        config: SlateEnvConfig,
        catalog: ItemCatalog,
        sampler: UserSampler,
        candidates: CandidateGenerator,
        choice_model: ChoiceModel,
        response: UserResponse,
        reward_fn: RewardFn,
        batch: int,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.sampler = sampler
        self.candidate_generator = candidates
        self.choice_model = choice_model
        self.response = response
        self.reward_fn = reward_fn
        self.batch = batch
        self.users = UserState.empty(
            batch, catalog.dim, config.history_length + config.max_episode_steps, candidates.shortlist_width
        )
        self.candidate_items = np.zeros((batch, config.num_candidates), np.int64)
        """[B, K] catalog indices of the current candidates (retrieval order); the oracle reads these."""
        self.candidate_scores = np.zeros((batch, config.num_candidates), np.float32)

    def sample_users(self, n: int, rng: np.random.Generator) -> UserDraw:
        """Draw ``n`` new users (not placed in any row yet)."""
        interest, history = self.sampler.sample(n, rng)
        low, high = self.config.initial_satisfaction
        satisfaction = rng.uniform(low, high, size=n).astype(np.float32)
        return UserDraw(interest=interest, history=history, satisfaction=satisfaction)

    def place_users(self, rows: np.ndarray, draw: UserDraw) -> None:
        """Put the users of ``draw`` (one per row, in order) into ``rows``, replacing whoever was there."""
        if len(rows):
            self.users.start(
                rows,
                draw.interest,
                draw.history,
                draw.satisfaction,
                self.config.budget,
                self.catalog.embeddings,
            )

    def start_users(self, rows: np.ndarray, rng: np.random.Generator) -> None:
        """Replace the users in ``rows`` with freshly sampled ones."""
        if len(rows):
            self.place_users(rows, self.sample_users(len(rows), rng))

    def refresh_candidates(self, rng: np.random.Generator) -> None:
        """Retrieve the users' K candidates (one batched search).

        With a deterministic retrieval only the users whose observed profile changed since the last
        retrieval (a click, a new user) are searched again; the others' candidates would come out the same.
        In a session most steps of many users have no click, and the search is most of a step's cost.
        """
        users, generator = self.users, self.candidate_generator
        stale = users.retrieval_stale
        if not generator.deterministic or stale.all():
            self.candidate_items, self.candidate_scores = generator.generate(users, rng)
        elif stale.any():
            rows = np.flatnonzero(stale)
            part = users.take(rows)
            items, scores = generator.generate(part, rng)
            users.put(rows, part)  # what the generator keeps per user (envs.shortlist)
            # New arrays, not in-place writes: an earlier step's record may still hold the old ones.
            self.candidate_items, self.candidate_scores = (
                self.candidate_items.copy(),
                self.candidate_scores.copy(),
            )
            self.candidate_items[rows], self.candidate_scores[rows] = items, scores
        stale[:] = False

    def observation(self) -> dict[str, np.ndarray]:
        """The batched observation of :func:`rayrec.features.build_observation` for the current candidates.

        With ``observe_rating``, ``observe_feedback`` and ``observe_hidden`` the features gain :meth:`appended_features`.
        """
        obs = build_observation(
            profile=self.users.profile(),
            candidates=self.catalog.embeddings[self.candidate_items],  # [B, K, d]
            retrieval_scores=self.candidate_scores,
            popularity=self.catalog.popularity[self.candidate_items],
            session_step=self.users.steps,
            budget=self.config.budget,
        )
        appended = self.config.feature_names[NUM_FEATURES:]
        if appended:
            obs["features"] = np.concatenate([obs["features"], self.appended_features(appended)], axis=-1)
        return obs

    def appended_features(self, names: tuple[str, ...]) -> np.ndarray:
        """[B, K, len(names)] float32 features of the current candidates beyond :data:`rayrec.features.FEATURE_NAMES`,
        in the order of ``names``: ``item_rating`` (the catalog's observed ratings), ``last_engagement`` (the
        users' feedback on their last click), ``last_click_rating`` (that item's rating), ``item_ctr`` and ``item_watch`` (the
        catalog's logged click-through rate and watch time per click), ``item_lift`` and
        ``satisfaction_estimate`` (:meth:`satisfaction_estimate`) and the simulation-only
        :data:`rayrec.features.HIDDEN_FEATURE_NAMES`."""
        items, users = self.candidate_items, self.users  # [B, K]
        columns = {
            ITEM_RATING: lambda: self.catalog.rating[items],
            "true_click_logit": lambda: self.choice_model.item_logits(
                users.interest, items, self.catalog, satiation=users.satiation
            ),
            "quality": lambda: self.catalog.quality[items],
            "clickbait": lambda: self.catalog.clickbait[items],
            LAST_ENGAGEMENT: lambda: np.broadcast_to(users.last_engagement[:, None], items.shape),
            LAST_CLICK_RATING: lambda: np.broadcast_to(self.last_click_rating()[:, None], items.shape),
            ITEM_CTR: lambda: self.catalog.item_log[items, 0],
            ITEM_WATCH: lambda: self.catalog.item_log[items, 1],
            ITEM_LIFT: lambda: self.catalog.item_log[items, 2],
            SATISFACTION_ESTIMATE: lambda: np.broadcast_to(
                self.satisfaction_estimate()[:, None], items.shape
            ),
            "satisfaction": lambda: np.broadcast_to(users.satisfaction[:, None], items.shape),
        }
        return np.stack([columns[name]() for name in names], axis=-1).astype(np.float32)  # [B, K, H]

    def satisfaction_estimate(self) -> np.ndarray:
        """[B] float32 each user's :data:`rayrec.features.SATISFACTION_ESTIMATE`: their last completion rate plus
        the logged lift of the item that click was on, clipped to [0, 1]; 0 before their first click."""
        last = self.users.last_click
        lift = self.catalog.item_log[np.maximum(last, 0), 2]
        return estimated_satisfaction(self.users.last_engagement, lift, last >= 0)

    def last_click_rating(self) -> np.ndarray:
        """[B] float32 the ``item_rating`` of each user's last clicked item, 0 before their first click."""
        last = self.users.last_click
        return np.where(last >= 0, self.catalog.rating[np.maximum(last, 0)], 0.0).astype(np.float32)

    def step(self, actions: np.ndarray, rng: np.random.Generator) -> StepOutcome:
        """Show slates ``actions`` [B, k] (candidate positions), let users respond, update their state."""
        slates = dedupe_slates(actions, self.config.num_candidates)
        return self.show(np.take_along_axis(self.candidate_items, slates, axis=1), rng)

    def show(self, slate_items: np.ndarray, rng: np.random.Generator) -> StepOutcome:
        """Show slates of catalog rows ``slate_items`` [B, k] (distinct per row), let users respond.

        This is the step itself; :meth:`step` maps candidate positions to items first. A live server's
        answers come in as items, so the A/B runner against a server calls this directly.
        """
        users = self.users
        position = self.choice_model.choose(
            users.interest, slate_items, self.catalog, rng, satiation=users.satiation
        )
        clicked = position != NO_CLICK
        chosen = np.where(clicked, slate_items[np.arange(len(position)), np.maximum(position, 0)], -1)
        shown_to = users.satisfaction.copy()  # [B] the satisfaction the slate met (watch time reads it)
        users.last_engagement[clicked] = shown_to[clicked]
        users.last_click[clicked] = chosen[clicked]
        left = self.response.apply(users, chosen, self.catalog, rng)
        session_ended = left | (users.budget <= 0)
        returned, days = self.response.end_sessions(users, session_ended, rng)
        reward = self.reward_fn(StepEvents(chosen, returned, days, slate_items, shown_to), self.catalog)
        terminated = session_ended & ~returned
        info = {
            "clicked": clicked,
            "click_position": position,
            "chosen_item": chosen,
            "satisfaction": users.satisfaction.copy(),
            "left": left,
            "session_ended": session_ended,
            "return_days": days,
        }
        return StepOutcome(reward=reward, terminated=terminated, slate_items=slate_items, info=info)
