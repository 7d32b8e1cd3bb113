"""Users' sessions in a synthetic world: screens of candidates answered by a conditional-logit choice.

Each session is a run of screens. A screen shows ``shown_per_round`` candidates, part drawn from the
user's own topics and part from global popularity (both popularity-weighted); the user clicks at most
one, with probability given by a conditional logit over

    interest_weight · (interest · item) + clickbait_attraction · clickbait + popularity_weight · log popularity

and a no-click option of utility ``no_click_utility``; a screen without a click ends the session. Some
clicks are followed by a 1-5 rating driven by the item's hidden quality and the interest match, so
clickbait draws clicks but earns poor ratings. An item the user clicked before is not clicked again.

Users are simulated in fixed blocks of :data:`USER_BLOCK`, each with its own seeded generator, so a
user's events depend on the seed and the block, never on how the output is chunked.

References:
    McFadden. "Conditional logit analysis of qualitative choice behavior." 1973.
    Ie et al. "RecSim: A Configurable Simulation Platform for Recommender Systems." 2019.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rayrec.synth.config import WorldConfig
from rayrec.synth.hashing import Stream
from rayrec.synth.world import ItemAttributes, SyntheticWorld

USER_BLOCK = 1024
"""Users simulated together with one generator (a constant: changing it changes every world)."""
EVENT_NAMES = ("click", "rating", "impression")
"""Event codes used in :class:`UserEvents` → contract event names."""
CLICK, RATING, IMPRESSION = range(3)

FIRST_SESSION_SPREAD_S = 30 * 86_400
"""Users' first sessions start uniformly within this many seconds after ``start_time``."""
SESSION_GAP_MEAN_S = 2 * 86_400
"""Mean (exponential) pause between two sessions of a user."""
SCREEN_GAP_S = (20, 120)
"""Seconds between two screens of a session (uniform); a click and its rating fall inside the gap."""
RATING_NOISE = 0.6
"""Standard deviation of the rating's noise, in stars."""

_EMBEDDING_CACHE_BYTES = 64 * 2**20


@dataclass(frozen=True)
class UserEvents:
    """Events of one block of users, sorted by user then time (event arrays [m])."""

    first_user: int
    """Index of the block's first user."""
    mixtures: np.ndarray
    """[u, T] float32 the block's users' hidden topic mixtures."""
    user: np.ndarray
    """[m] int64 user index."""
    item: np.ndarray
    """[m] int64 item index."""
    timestamp: np.ndarray
    """[m] int64 unix seconds (non-decreasing per user)."""
    event: np.ndarray
    """[m] int8 code into :data:`EVENT_NAMES`."""
    value: np.ndarray
    """[m] float32 1.0 for clicks, 1-5 for ratings, 0.0 for impressions."""


class CandidateSampler:
    """Popularity-weighted item draws, over the whole catalog or within one topic.

    Items are ordered by topic and their popularity accumulated once, so a draw is one binary search,
    within the topic's span of the cumulative sum or over all of it.

    Args:
        topics: [N] primary topic of every item.
        popularity: [N] positive popularity weights.
        num_topics: T.
    """

    def __init__(self, topics: np.ndarray, popularity: np.ndarray, num_topics: int) -> None:
        self._order = np.argsort(topics, kind="stable")  # [N] item indices grouped by topic
        self._cumulative = np.cumsum(popularity[self._order], dtype=np.float64)  # [N]
        starts = np.searchsorted(topics[self._order], np.arange(num_topics + 1))  # [T+1]
        mass = np.concatenate([[0.0], self._cumulative])
        self._low, self._high = mass[starts[:-1]], mass[starts[1:]]  # [T] cumulative mass spans
        self._first, self._last = starts[:-1], np.maximum(starts[1:] - 1, starts[:-1])  # [T]
        self._total = float(self._cumulative[-1])

    def sample(self, topic: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Item indices, one per draw: within ``topic`` where it is >= 0 (and not empty), else global.

        Args:
            topic: [m, C] int topic of each draw, -1 for a draw over the whole catalog.
            u: [m, C] uniforms in (0, 1).

        Returns:
            [m, C] int64 item indices.
        """
        within = (topic >= 0) & (self._high[topic] > self._low[topic])
        low = np.where(within, self._low[topic], 0.0)
        high = np.where(within, self._high[topic], self._total)
        position = np.searchsorted(self._cumulative, low + u * (high - low))
        # Rounding at a span's edge must not leak into the neighbouring topic (or past the end).
        lo = np.where(within, self._first[topic], 0)
        hi = np.where(within, self._last[topic], len(self._order) - 1)
        return self._order[np.clip(position, lo, hi)]


class CatalogView:
    """Item attributes of the whole catalog, with latent vectors materialised only where needed.

    Vectors of a catalog that fits in a few tens of MB are computed once; for larger catalogs (1M
    items) each screen's candidates are computed on the fly from their indices.
    """

    def __init__(self, world: SyntheticWorld, attributes: ItemAttributes) -> None:
        self.world = world
        self.attributes = attributes
        self._embeddings = None
        if len(attributes) * world.dim * 4 <= _EMBEDDING_CACHE_BYTES:
            chunk = world.config.chunk_size  # bounds the float64 temporaries, like item generation
            self._embeddings = np.concatenate(
                [
                    world.item_embeddings(attributes.take(slice(start, start + chunk)))
                    for start in range(0, len(attributes), chunk)
                ]
            )

    def embeddings(self, items: np.ndarray) -> np.ndarray:
        """[n] item indices → [n, dim] float32 latent vectors."""
        if self._embeddings is not None:
            return self._embeddings[items]
        # Popular items fill many screens at once: compute each distinct item's vector once.
        distinct, inverse = np.unique(items, return_inverse=True)
        return self.world.item_embeddings(self.attributes.take(distinct))[inverse]


def _first_occurrence(items: np.ndarray) -> np.ndarray:
    """[m, C] → [m, C] bool, True where the item appears for the first time in its row."""
    order = np.argsort(items, axis=1, kind="stable")
    sorted_items = np.take_along_axis(items, order, axis=1)
    repeat = np.zeros_like(items, dtype=bool)
    repeat[:, 1:] = sorted_items[:, 1:] == sorted_items[:, :-1]
    first = np.empty_like(repeat)
    np.put_along_axis(first, order, ~repeat, axis=1)
    return first


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Membership of ``keys`` (any shape) in the sorted 1-D ``sorted_keys``, by binary search."""
    if sorted_keys.size == 0:
        return np.zeros(keys.shape, dtype=bool)
    position = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
    return sorted_keys[position] == keys


class _EventLog:
    """Events appended screen by screen, returned sorted by user then time."""

    def __init__(self) -> None:
        self._parts: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def add(
        self, code: int, users: np.ndarray, items: np.ndarray, times: np.ndarray, values: np.ndarray
    ) -> None:
        self._parts.append((code, users, items, times, values))

    def events(self, first_user: int, mixtures: np.ndarray) -> UserEvents:
        def column(i: int, dtype: type) -> np.ndarray:
            return np.concatenate([part[i] for part in self._parts]).astype(dtype)

        event = np.concatenate([np.full(len(part[1]), part[0], dtype=np.int8) for part in self._parts])
        user, item, timestamp = column(1, np.int64), column(2, np.int64), column(3, np.int64)
        order = np.lexsort((timestamp, user))  # stable: a screen's impressions stay in display order
        return UserEvents(
            first_user=first_user,
            mixtures=mixtures,
            user=user[order] + first_user,
            item=item[order],
            timestamp=timestamp[order],
            event=event[order],
            value=column(4, np.float32)[order],
        )


def _choose(
    cfg: WorldConfig,
    catalog: CatalogView,
    interests: np.ndarray,
    shown: np.ndarray,
    available: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One conditional-logit choice per screen, with a no-click option.

    Args:
        interests: [m, dim] the viewers' interest vectors.
        shown: [m, C] item indices on each screen.
        available: [m, C] bool, False for items that cannot be clicked (repeats, clicked before).

    Returns:
        (best [m] column of the preferred item, clicked [m] bool whether it beat not clicking,
        match [m] cosine of interest and the preferred item).
    """
    m, c = shown.shape
    attrs = catalog.attributes
    vectors = catalog.embeddings(shown.ravel()).reshape(m, c, -1)  # [m, C, dim]
    match = np.einsum("md,mcd->mc", interests, vectors)  # [m, C]
    utility = (
        cfg.interest_weight * match
        + cfg.clickbait_attraction * attrs.clickbait[shown]
        + cfg.popularity_weight * np.log(attrs.popularity[shown])
    )  # [m, C]
    # Gumbel-max draws exactly from the conditional logit over the screen plus the no-click option.
    noisy = np.where(available, utility + rng.gumbel(size=(m, c)), -np.inf)  # [m, C]
    best = noisy.argmax(axis=1)  # [m]
    rows = np.arange(m)
    clicked = noisy[rows, best] > cfg.no_click_utility + rng.gumbel(size=m)
    return best, clicked, match[rows, best]


def _stars(quality: np.ndarray, match: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[n] 1-5 star ratings: 60% hidden quality, 40% interest match, plus noise."""
    score = 0.6 * quality + 0.4 * np.clip(match, 0.0, 1.0)
    stars = 1.0 + 4.0 * score + RATING_NOISE * rng.standard_normal(len(quality))
    return np.clip(np.rint(stars), 1.0, 5.0).astype(np.float32)


def simulate_block(
    world: SyntheticWorld, catalog: CatalogView, sampler: CandidateSampler, block: int
) -> UserEvents:
    """Simulate every session of the users in block ``block`` (users ``block * USER_BLOCK`` onwards)."""
    cfg = world.config
    first_user = block * USER_BLOCK
    n = min(cfg.users - first_user, USER_BLOCK)
    num_items = len(catalog.attributes)
    rng = np.random.default_rng([cfg.seed, Stream.USERS, block])
    mixtures = world.sample_user_mixtures(n, rng)  # [n, T]
    interests = world.user_interests(mixtures)  # [n, dim]
    mixture_cdf = np.cumsum(mixtures, axis=1)  # [n, T]
    sessions = 1 + rng.poisson(cfg.sessions_per_user - 1.0, size=n)  # [n]
    clock = cfg.start_time + rng.integers(0, FIRST_SESSION_SPREAD_S, size=n)  # [n]
    clicked_before = np.empty(0, dtype=np.int64)  # sorted keys user * N + item of past clicks
    log = _EventLog()
    c = cfg.shown_per_round

    for session in range(int(sessions.max())):
        users = np.flatnonzero(sessions > session)  # [m] block-local users in this session
        for _ in range(cfg.max_session_rounds):
            if users.size == 0:
                break
            m = users.size
            # Each slot shows an item of one of the user's topics (drawn from the mixture) or of any topic.
            slot_topic = (rng.random((m, c, 1)) > mixture_cdf[users][:, None, :]).sum(axis=2)  # [m, C]
            targeted = rng.random((m, c)) < cfg.targeted_fraction
            slot_topic = np.where(targeted, np.minimum(slot_topic, cfg.topics - 1), -1)
            shown = sampler.sample(slot_topic, rng.random((m, c)))  # [m, C]
            keys = users[:, None].astype(np.int64) * num_items + shown  # [m, C]
            available = _first_occurrence(shown) & ~_contains(clicked_before, keys)
            best, clicked, match = _choose(cfg, catalog, interests[users], shown, available, rng)

            now = clock[users]  # [m]
            if cfg.log_impressions:
                rows, cols = np.nonzero(available)
                log.add(
                    IMPRESSION, users[rows], shown[rows, cols], now[rows], np.zeros(rows.size, np.float32)
                )
            who = np.flatnonzero(clicked)
            item = shown[who, best[who]]
            click_time = now[who] + rng.integers(1, 6, size=who.size)
            log.add(CLICK, users[who], item, click_time, np.ones(who.size, np.float32))
            rated = np.flatnonzero(rng.random(who.size) < cfg.rating_rate)
            log.add(
                RATING,
                users[who[rated]],
                item[rated],
                click_time[rated] + rng.integers(1, 11, size=rated.size),
                _stars(catalog.attributes.quality[item[rated]], match[who[rated]], rng),
            )
            # Clicks are never repeats, so the merged keys stay unique.
            clicked_before = np.sort(np.concatenate([clicked_before, keys[who, best[who]]]))
            clock[users] += rng.integers(SCREEN_GAP_S[0], SCREEN_GAP_S[1] + 1, size=m)
            users = users[clicked]  # a screen without a click ends the session
        later = np.flatnonzero(sessions > session + 1)
        clock[later] += rng.exponential(SESSION_GAP_MEAN_S, size=later.size).astype(np.int64)

    return log.events(first_user, mixtures)


def logged_ratings(world: SyntheticWorld) -> tuple[np.ndarray, np.ndarray, float, float]:
    """``(count [N], total [N], low, high)``: each item's number and sum of ratings in the log of
    ``world.config.users`` users, and the lowest and highest rating in it: the ratings
    :func:`rayrec.synth.write_world` would write, without writing them (the same blocks, the same draws)."""
    cfg = world.config
    attributes = world.item_attributes(np.arange(cfg.items))
    catalog = CatalogView(world, attributes)
    sampler = CandidateSampler(attributes.topic, attributes.popularity, cfg.topics)
    count, total = np.zeros(cfg.items), np.zeros(cfg.items)
    low, high = np.inf, -np.inf
    for block in range((cfg.users + USER_BLOCK - 1) // USER_BLOCK):
        events = simulate_block(world, catalog, sampler, block)
        rated = events.event == RATING
        values = events.value[rated].astype(np.float64)
        count += np.bincount(events.item[rated], minlength=cfg.items)
        total += np.bincount(events.item[rated], weights=values, minlength=cfg.items)
        if values.size:
            low, high = min(low, values.min()), max(high, values.max())
    return count, total, float(low), float(high)
