"""Users: their hidden state, and the samplers that start new ones (RecSim's user model, batched)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from envs.catalog import ItemCatalog
from envs.config import SPLIT_FRACTIONS
from rayrec.features import l2_normalize

NO_ITEM = -1
"""Padding in item-index arrays (no item)."""


@dataclass
class UserState:
    """The state of B simulated users, one row each (mutated in place by the response model).

    Attributes:
        interest: [B, d] float32 hidden interest vector, unit norm, in the catalog's embedding space.
        satisfaction: [B] float32 in [0, 1], hidden.
        last_engagement: [B] float32 the satisfaction the user's last click met (0 before their first click):
            what ``observe_feedback`` shows of it.
        last_click: [B] int64 catalog index of the user's last clicked item (:data:`NO_ITEM` before their
            first click): ``observe_last_click`` shows its logged rating.
        budget: [B] float32 remaining session time (steps).
        steps: [B] int64 steps taken this session.
        total_steps: [B] int64 steps taken in all of the user's sessions (the episode's truncation counts these).
        session: [B] int64 the user's current session, 1-based.
        satiation: [B, d] float32 hidden satiation vector: recent consumption, fading (RecSim's interest
            evolution); an item's utility falls with its alignment to it.
        fatigue: [B] float32 hidden count of recent clickbait clicks, fading: clickbait's harm grows with it.
        profile_sum: [B, d] float32 sum of the embeddings of the items the user engaged with (history and
            clicks this session): the observed profile is its normalised mean.
        profile_count: [B] int64 number of those items.
        consumed: [B, H] int64 catalog indices of those items, padded with :data:`NO_ITEM`; retrieval
            excludes them.
        consumed_len: [B] int64 valid entries of ``consumed`` per row.
        retrieval_stale: [B] bool the observed profile or the consumed items changed since the row's
            candidates were last retrieved (a retrieval that is a function of them can keep the others).
        shortlist: [B, M] int64 the items retrieval keeps per user (:mod:`envs.shortlist`; M may be 0).
        shortlist_bound: [B] float32 the most ``profile_sum · x`` of any unconsumed item x not in it.
        shortlist_count: [B] int64 ``profile_count`` the shortlist and bound are for; -1: no shortlist.
    """

    interest: np.ndarray
    satisfaction: np.ndarray
    last_engagement: np.ndarray
    last_click: np.ndarray
    budget: np.ndarray
    steps: np.ndarray
    total_steps: np.ndarray
    session: np.ndarray
    satiation: np.ndarray
    fatigue: np.ndarray
    profile_sum: np.ndarray
    profile_count: np.ndarray
    consumed: np.ndarray
    consumed_len: np.ndarray
    retrieval_stale: np.ndarray
    shortlist: np.ndarray
    shortlist_bound: np.ndarray
    shortlist_count: np.ndarray

    @classmethod
    def empty(cls, batch: int, dim: int, capacity: int, shortlist_width: int = 0) -> UserState:
        return cls(
            interest=np.zeros((batch, dim), np.float32),
            satisfaction=np.zeros(batch, np.float32),
            last_engagement=np.zeros(batch, np.float32),
            last_click=np.full(batch, NO_ITEM, np.int64),
            budget=np.zeros(batch, np.float32),
            steps=np.zeros(batch, np.int64),
            total_steps=np.zeros(batch, np.int64),
            session=np.zeros(batch, np.int64),
            satiation=np.zeros((batch, dim), np.float32),
            fatigue=np.zeros(batch, np.float32),
            profile_sum=np.zeros((batch, dim), np.float32),
            profile_count=np.zeros(batch, np.int64),
            consumed=np.full((batch, max(capacity, 1)), NO_ITEM, np.int64),
            consumed_len=np.zeros(batch, np.int64),
            retrieval_stale=np.ones(batch, dtype=bool),
            shortlist=np.full((batch, shortlist_width), NO_ITEM, np.int64),
            shortlist_bound=np.full(batch, np.inf, np.float32),
            shortlist_count=np.full(batch, -1, np.int64),
        )

    def take(self, rows: np.ndarray) -> UserState:
        """A copy holding the users at ``rows`` [n] (repeats allowed), e.g. to simulate their futures."""
        return UserState(**{name: np.array(value[rows]) for name, value in vars(self).items()})

    def put(self, rows: np.ndarray, part: UserState) -> None:
        """Write ``part`` (a :meth:`take` of ``rows``, since changed) back into ``rows``."""
        for name, value in vars(part).items():
            getattr(self, name)[rows] = value

    def profile(self) -> np.ndarray:
        """[B, d] observed profile: normalised mean of engaged items' embeddings (zeros without any)."""
        mean = self.profile_sum / np.maximum(self.profile_count, 1)[:, None].astype(np.float32)
        return l2_normalize(mean)

    def consume(self, rows: np.ndarray, items: np.ndarray, embeddings: np.ndarray) -> None:
        """Record that user ``rows[i]`` engaged with catalog item ``items[i]`` (profile and exclusion)."""
        if len(rows) == 0:
            return
        if int(self.consumed_len[rows].max()) >= self.consumed.shape[1]:
            grow = np.full_like(self.consumed, NO_ITEM)
            self.consumed = np.concatenate([self.consumed, grow], axis=1)
        self.consumed[rows, self.consumed_len[rows]] = items
        self.consumed_len[rows] += 1
        self.profile_sum[rows] += embeddings[items]
        self.profile_count[rows] += 1
        self.retrieval_stale[rows] = True

    def start(
        self,
        rows: np.ndarray,
        interest: np.ndarray,
        history: np.ndarray,
        satisfaction: np.ndarray,
        budget: float,
        embeddings: np.ndarray,
    ) -> None:
        """Put new users into ``rows``: interest [n, d], history [n, h] (padded), satisfaction [n]."""
        self.interest[rows] = interest
        self.satisfaction[rows] = satisfaction
        self.last_engagement[rows] = 0.0
        self.last_click[rows] = NO_ITEM
        self.budget[rows] = budget
        self.steps[rows] = 0
        self.total_steps[rows] = 0
        self.session[rows] = 1
        self.satiation[rows] = 0.0
        self.fatigue[rows] = 0.0
        h = history.shape[1]
        if h > self.consumed.shape[1]:
            extra = np.full((len(self.consumed), h - self.consumed.shape[1]), NO_ITEM, np.int64)
            self.consumed = np.concatenate([self.consumed, extra], axis=1)
        self.consumed[rows] = NO_ITEM
        self.consumed[rows, :h] = history
        valid = history >= 0
        self.consumed_len[rows] = valid.sum(axis=1)
        safe = np.where(valid, history, 0)
        self.profile_sum[rows] = (embeddings[safe] * valid[..., None]).sum(axis=1)  # [n, d]
        self.profile_count[rows] = valid.sum(axis=1)
        self.retrieval_stale[rows] = True
        self.shortlist_count[rows] = -1


class UserSampler(Protocol):
    """Starts new users: hidden interests and the history they arrive with."""

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """([n, d] float32 unit interests, [n, h] int64 history catalog indices padded with NO_ITEM)."""
        ...


def add_interest_noise(interest: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors near ``interest`` [n, d]: Gaussian noise of expected norm ``scale``, renormalised."""
    dim = interest.shape[1]
    noise = rng.standard_normal(interest.shape).astype(np.float32) * (scale / np.sqrt(dim))
    return l2_normalize(interest + noise)


class ChoiceHistory:
    """A user's pre-session history: ``length`` items chosen by the choice model from a uniform pool.

    Gumbel-top-``length`` over the choice model's utilities of ``pool`` uniformly drawn items is sampling
    without replacement from the conditional logit, so past consumption follows the same behaviour as
    the session (interest, clickbait appeal, popularity) without touching the whole catalog.
    """

    def __init__(self, catalog: ItemCatalog, choice_model, length: int, pool: int) -> None:
        self.catalog = catalog
        self.choice_model = choice_model
        self.length = min(length, catalog.size)
        self.pool = max(pool, self.length)

    def sample(self, interest: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n = len(interest)
        if self.length == 0:
            return np.full((n, 0), NO_ITEM, np.int64)
        pool = rng.integers(0, self.catalog.size, size=(n, self.pool))  # [n, P]
        logits = self.choice_model.item_logits(interest, pool, self.catalog)  # [n, P]
        gumbel = logits + rng.gumbel(size=logits.shape)
        # Duplicate draws of one item must not both enter the history.
        order = np.argsort(pool, axis=1, kind="stable")
        sorted_pool = np.take_along_axis(pool, order, axis=1)
        dup = np.zeros_like(pool, dtype=bool)
        np.put_along_axis(dup, order[:, 1:], sorted_pool[:, 1:] == sorted_pool[:, :-1], axis=1)
        gumbel[dup] = -np.inf
        top = np.argpartition(-gumbel, self.length - 1, axis=1)[:, : self.length]  # unordered top-h
        # Oldest first, most recent (best) last, as logged histories are ordered.
        top = np.take_along_axis(top, np.argsort(np.take_along_axis(gumbel, top, axis=1), axis=1), axis=1)
        return np.take_along_axis(pool, top, axis=1).astype(np.int64)


class TopicMixtureSampler:
    """Synthetic users: a topic mixture from the synthetic world → interest (plus noise) → history."""

    def __init__(self, world, history: ChoiceHistory, noise: float) -> None:
        self.world = world
        self.history = history
        self.noise = noise

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        mixtures = self.world.sample_user_mixtures(n, rng)  # [n, T]
        interest = add_interest_noise(
            np.asarray(self.world.user_interests(mixtures), np.float32), self.noise, rng
        )
        return interest, self.history.sample(interest, rng)


class AnchorItemSampler:
    """Users for a catalog without logs: interest = a uniformly drawn item's embedding plus noise."""

    def __init__(self, catalog: ItemCatalog, history: ChoiceHistory, noise: float) -> None:
        self.catalog = catalog
        self.history = history
        self.noise = noise

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        anchors = rng.integers(0, self.catalog.size, size=n)
        interest = add_interest_noise(self.catalog.embeddings[anchors], self.noise, rng)
        return interest, self.history.sample(interest, rng)


class LoggedUserSampler:
    """Users started from real users' histories: interest = normalised mean of their items plus noise.

    Args:
        histories: [U, h] int64 catalog indices of each logged user's most recent items (oldest first),
            padded with :data:`NO_ITEM`; every row has at least one item.
    """

    def __init__(self, catalog: ItemCatalog, histories: np.ndarray, noise: float) -> None:
        if len(histories) == 0:
            raise ValueError("LoggedUserSampler needs at least one user history")
        self.catalog = catalog
        self.histories = histories
        self.noise = noise

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        history = self.histories[rng.integers(0, len(self.histories), size=n)]  # [n, h]
        valid = history >= 0
        emb = self.catalog.embeddings[np.where(valid, history, 0)] * valid[..., None]  # [n, h, d]
        mean = emb.sum(axis=1) / np.maximum(valid.sum(axis=1), 1)[:, None]
        return add_interest_noise(l2_normalize(mean), self.noise, rng), history


def logged_columns(catalog: ItemCatalog, interactions) -> tuple[np.ndarray, ...]:
    """An interactions table as arrays: catalog positions [n] (NO_ITEM outside the catalog), user ids [n],
    timestamps [n] and events [n]."""
    position = {item: i for i, item in enumerate(catalog.item_ids)}
    items = np.asarray(interactions.column("item_id").to_numpy(zero_copy_only=False)).astype(str)
    idx = np.fromiter((position.get(i, NO_ITEM) for i in items), dtype=np.int64, count=len(items))
    users = np.asarray(interactions.column("user_id").to_numpy(zero_copy_only=False)).astype(str)
    ts = np.asarray(interactions.column("timestamp").to_numpy(zero_copy_only=False), dtype=np.int64)
    events = np.asarray(interactions.column("event").to_numpy(zero_copy_only=False)).astype(str)
    return idx, users, ts, events


def logged_histories(catalog: ItemCatalog, interactions, length: int) -> np.ndarray:
    """[U, length] each logged user's ``length`` most recent catalog items (by timestamp), NO_ITEM padded.

    Impressions and interactions with items outside the catalog are ignored; users left with no item
    are dropped.
    """
    return logged_user_histories(catalog, interactions, length)[1]


def logged_user_histories(catalog: ItemCatalog, interactions, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(user ids [U], histories [U, length]) as :func:`logged_histories` builds them, users in id order."""
    idx, users, ts, events = logged_columns(catalog, interactions)
    keep = (idx >= 0) & (events != "impression")  # an impression is not engagement
    users, ts, idx = users[keep], ts[keep], idx[keep]
    if len(idx) == 0:
        return np.empty(0, dtype=object), np.full((0, max(length, 1)), NO_ITEM, np.int64)
    user_ids, user_code = np.unique(users, return_inverse=True)
    order = np.lexsort((np.arange(len(ts)), ts, user_code))  # by user, then time, then row order
    user_code, idx = user_code[order], idx[order]
    starts = np.flatnonzero(np.r_[True, user_code[1:] != user_code[:-1]])
    ends = np.r_[starts[1:], len(idx)]
    width = max(length, 1)
    out = np.full((len(starts), width), NO_ITEM, np.int64)
    for row, (lo, hi) in enumerate(zip(starts, ends, strict=True)):
        recent = idx[max(lo, hi - width) : hi]
        out[row, : len(recent)] = recent
    return user_ids, out


def split_of_users(user_ids: np.ndarray) -> np.ndarray:
    """[U] the split (``train``, ``validation``, ``test``) of each user id, by a stable hash of the id.

    The hash is SHA-256 of the (pseudonymized) id, so a user stays in its split across runs, machines and
    catalog versions; the shares are :data:`envs.config.SPLIT_FRACTIONS`.
    """
    unit = np.array(
        [int.from_bytes(hashlib.sha256(str(u).encode()).digest()[:8], "big") / 2.0**64 for u in user_ids]
    )
    train, validation = SPLIT_FRACTIONS["train"], SPLIT_FRACTIONS["validation"]
    return np.where(unit < train, "train", np.where(unit < train + validation, "validation", "test"))
