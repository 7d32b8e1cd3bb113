"""The one factory: a :class:`SlateEnvConfig` in, a wired :class:`SlateSimulator` out.

Catalogs are cached per process (keyed by what defines them) because RLlib and the tests build many
envs over the same catalog; their arrays are made read-only so no env can change another's items.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from envs.candidates import (
    CategoryQuotaCandidates,
    FlatRetriever,
    IndexRetriever,
    RandomCandidates,
    RetrievalCandidates,
)
from envs.catalog import ItemCatalog, catalog_from_index, synthetic_catalog
from envs.choice import ChoiceModel, ConditionalLogitChoice
from envs.config import SlateEnvConfig, config_with
from envs.item_log import item_log_features
from envs.response import UserResponse
from envs.rewards import reward_function
from envs.simulator import SlateSimulator
from envs.users import (
    AnchorItemSampler,
    ChoiceHistory,
    LoggedUserSampler,
    TopicMixtureSampler,
    UserSampler,
    logged_user_histories,
    split_of_users,
)
from rayrec import storage
from rayrec.data.io import read_interactions, read_items
from rayrec.errors import ConfigError
from rayrec.features import logged_rating_totals, rating_feature
from rayrec.index import ItemIndex
from rayrec.synth import SyntheticWorld, WorldConfig, read_world_config
from rayrec.synth.behaviour import logged_ratings

DEFAULT_DIM = 32
"""Embedding dimension of the built-in synthetic world when ``dim`` is not given."""


@dataclass(frozen=True)
class World:
    """A loaded catalog and what users are sampled from (shared, read-only).

    Attributes:
        catalog: the items.
        synthetic: the :class:`rayrec.synth.SyntheticWorld` when the catalog is synthetic, else None.
        histories: [U, h] logged users' recent catalog items (see :func:`envs.users.logged_histories`),
            or None without logs.
        history_splits: [U] the split of each logged user (:func:`envs.users.split_of_users`), or None.
        retriever: exact or index-backed nearest-neighbour search over the catalog.
        interactions: the logged interactions (pa.Table) or None; calibration compares against them.
    """

    catalog: ItemCatalog
    synthetic: object | None
    histories: np.ndarray | None
    history_splits: np.ndarray | None
    retriever: object
    interactions: object | None


def _freeze(catalog: ItemCatalog) -> ItemCatalog:
    for value in vars(catalog).values():
        if isinstance(value, np.ndarray):
            value.flags.writeable = False
    return catalog


@functools.lru_cache(maxsize=8)
def _synthetic_world(num_items: int, num_topics: int, dim: int, clickbait_rate: float, seed: int):
    world = SyntheticWorld(
        WorldConfig(items=num_items, topics=num_topics, dim=dim, clickbait_rate=clickbait_rate, seed=seed)
    )
    catalog = _freeze(synthetic_catalog(world))
    return world, catalog, FlatRetriever(catalog.embeddings)


def _read_logs(data_dir: str):
    items_uri = storage.join(data_dir, "items.parquet")
    inter_uri = storage.join(data_dir, "interactions.parquet")
    for uri in (items_uri, inter_uri):
        if not storage.exists(uri):
            raise ConfigError(f"data_dir {data_dir}: {uri} not found")
    items = read_items(items_uri)
    return items, read_interactions(inter_uri)


@functools.lru_cache(maxsize=4)
def _logged_world(index_dir: str | None, data_dir: str | None, history_length: int) -> World:
    items = interactions = None
    if data_dir is not None:
        items, interactions = _read_logs(data_dir)
    synthetic = None
    if index_dir is not None:
        index = ItemIndex.load(index_dir)
        catalog = _freeze(catalog_from_index(index, items, interactions))
        retriever = IndexRetriever(index)
    else:
        # A synthetic world's data dir: its latent catalog plus its logged users.
        world_config = read_world_config(data_dir)
        synthetic, catalog, retriever = _synthetic_world(
            world_config.items,
            world_config.topics,
            world_config.dim,
            world_config.clickbait_rate,
            world_config.seed,
        )
    histories = history_users = None
    if interactions is not None:
        history_users, histories = logged_user_histories(catalog, interactions, max(history_length, 1))
        if len(histories) == 0:
            raise ConfigError(f"data_dir {data_dir}: no interaction refers to an item of the catalog")
    return World(
        catalog=catalog,
        synthetic=synthetic,
        histories=histories,
        history_splits=None if history_users is None else split_of_users(history_users),
        retriever=retriever,
        interactions=interactions,
    )


def load_world(config: SlateEnvConfig) -> World:
    """The catalog, user source and retriever ``config`` names (cached per process)."""
    if config.index_dir is None and config.data_dir is None:
        dim = config.dim or DEFAULT_DIM
        world, catalog, retriever = _synthetic_world(
            config.num_items, config.num_topics, dim, config.clickbait_rate, config.world_seed
        )
        return World(
            catalog=catalog,
            synthetic=world,
            histories=None,
            history_splits=None,
            retriever=retriever,
            interactions=None,
        )
    return _logged_world(config.index_dir, config.data_dir, config.history_length)


@functools.lru_cache(maxsize=4)
def _synthetic_rating(
    num_items: int, num_topics: int, dim: int, clickbait_rate: float, seed: int, users: int
) -> np.ndarray:
    world = SyntheticWorld(
        WorldConfig(
            items=num_items, topics=num_topics, dim=dim, clickbait_rate=clickbait_rate, seed=seed, users=users
        )
    )
    count, total, low, high = logged_ratings(world)
    if not count.any():
        raise ConfigError(f"observe_rating: the built-in world's log of {users} users has no rating")
    rating = rating_feature(count, total, low, high)
    rating.flags.writeable = False
    return rating


@functools.lru_cache(maxsize=4)
def _logged_rating(index_dir: str | None, data_dir: str, history_length: int) -> np.ndarray:
    world = _logged_world(index_dir, data_dir, history_length)
    totals = logged_rating_totals(world.catalog.item_ids, world.interactions)
    if totals is None:
        raise ConfigError(
            f"observe_rating: the interactions at {data_dir} have no rating event of a catalog item; set "
            "observe_rating=false or log ratings"
        )
    rating = rating_feature(*totals)
    rating.flags.writeable = False
    return rating


def observed_rating(config: SlateEnvConfig, world: World) -> np.ndarray:
    """[N] float32 :func:`rayrec.features.rating_feature` of the world's logged ratings: the data's
    ``interactions.parquet``, the ones an index built from rated data stores, or the built-in world's own
    log of ``config.rating_log_users`` users (cached per process, like the world, so the many simulators of
    one run compute it once)."""
    if world.interactions is not None:
        return _logged_rating(config.index_dir, config.data_dir, config.history_length)
    if world.catalog.rating is not None:  # an index built from rated data stores them
        return world.catalog.rating
    if world.synthetic is None:
        raise ConfigError(
            f"observe_rating: the index at {config.index_dir} carries no ratings (it was built from data "
            "without rating events); give the data_dir whose interactions.parquet has them"
        )
    return _synthetic_rating(
        config.num_items,
        config.num_topics,
        config.dim or DEFAULT_DIM,
        config.clickbait_rate,
        config.world_seed,
        config.rating_log_users,
    )


ITEM_LOG_SEED = 2_000_003
"""Seeds the exploration log that ``observe_item_log`` and ``observe_lift`` read: apart from the seeds of
training (small integers) and of the held-out evaluation users (1,000,003)."""
_item_logs: dict[str, np.ndarray] = {}


def observed_item_log(config: SlateEnvConfig) -> np.ndarray:
    """[N, 3] float32 each item's click-through rate, watch time per click and lift in the exploration log of
    ``config.item_log_users`` training users of ``config``'s world (:func:`envs.item_log.item_log_features`;
    cached per process, like the world, so the many simulators of one run make the log once).

    The log's simulator is ``config``'s world with the watch time as its reward and only the completion rate
    appended to the observation; its users are the training split, so held-out users' behaviour never
    enters a feature.
    """
    log_config = config_with(
        config,
        reward="watch",
        diversity_weight=0.0,
        observe_rating=False,
        observe_feedback=True,
        observe_last_click=False,
        observe_item_log=False,
        observe_lift=False,
        observe_hidden=(),
        user_split="train",
    )
    key = repr(log_config)
    if key not in _item_logs:
        sim = build_simulator(log_config, batch=min(config.item_log_users, 4096))
        _item_logs[key] = item_log_features(sim, config.item_log_users, ITEM_LOG_SEED)
    return _item_logs[key]


def check_against_world(config: SlateEnvConfig, world: World) -> None:
    """Errors that need the catalog: K against its size, the requested dimension against the index's."""
    catalog = world.catalog
    if config.dim is not None and config.dim != catalog.dim:
        source = config.index_dir or config.data_dir
        raise ConfigError(
            f"dim={config.dim} but the catalog at {source} has {catalog.dim}-dimensional embeddings"
        )
    reserve = config.history_length + config.max_episode_steps if config.candidates != "random" else 0
    if config.num_candidates + reserve > catalog.size:
        raise ConfigError(
            f"num_candidates K={config.num_candidates} does not fit the catalog of {catalog.size} items"
            + (f" (K plus up to {reserve} consumed items excluded from retrieval)" if reserve else "")
        )


def users_of_split(world: World, config: SlateEnvConfig) -> np.ndarray:
    """[U', h] the logged histories of ``config.user_split``'s users (all of them for ``all``)."""
    if config.user_split == "all":
        return world.histories
    chosen = world.histories[world.history_splits == config.user_split]
    if len(chosen) == 0:
        raise ConfigError(
            f"user_split={config.user_split!r}: none of the {len(world.histories)} logged users falls in it; "
            "use user_split=all or more users"
        )
    return chosen


def build_simulator(
    config: SlateEnvConfig, batch: int, choice_model: ChoiceModel | None = None
) -> SlateSimulator:
    """Wire catalog, user sampler, candidate generator, choice, response and reward for ``batch`` users."""
    world = load_world(config)
    check_against_world(config, world)
    catalog = world.catalog
    if config.observe_rating:
        catalog = dataclasses.replace(catalog, rating=observed_rating(config, world))
    if config.observe_item_log or config.observe_lift:
        catalog = dataclasses.replace(catalog, item_log=observed_item_log(config))
    choice = choice_model if choice_model is not None else ConditionalLogitChoice.from_config(config)
    sampler: UserSampler
    if world.histories is not None:
        sampler = LoggedUserSampler(catalog, users_of_split(world, config), config.interest_noise)
    else:
        history = ChoiceHistory(catalog, choice, config.history_length, config.history_pool)
        if world.synthetic is not None:
            sampler = TopicMixtureSampler(world.synthetic, history, config.interest_noise)
        else:
            sampler = AnchorItemSampler(catalog, history, config.interest_noise)
    if config.candidates == "faiss":
        candidates = RetrievalCandidates(
            world.retriever, config.num_candidates, catalog, config.retrieval_shortlist
        )
    elif config.candidates == "faiss-diverse":
        candidates = CategoryQuotaCandidates(catalog, config.num_candidates, config.category_quota)
    else:
        candidates = RandomCandidates(catalog, config.num_candidates)
    return SlateSimulator(
        config=config,
        catalog=catalog,
        sampler=sampler,
        candidates=candidates,
        choice_model=choice,
        response=UserResponse(config),
        reward_fn=reward_function(config.reward, config.diversity_weight, config.clickbait_watch),
        batch=batch,
    )
