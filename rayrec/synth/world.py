"""The latent model of a synthetic world: topics, items, their vectors, users' topic mixtures.

Every item attribute is a pure function of ``(seed, item index)`` (see :mod:`rayrec.synth.hashing`), so
any slice of the catalog can be produced on its own, in any chunking, with identical results.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayrec.errors import ConfigError
from rayrec.features import l2_normalize
from rayrec.synth.config import WorldConfig
from rayrec.synth.hashing import Stream, hashed_normal, hashed_uniform
from rayrec.synth.vocabulary import Vocabulary

CLICKBAIT_STRENGTH = 0.6
"""Length of the clickbait direction added to a clickbait item's vector (before normalisation)."""
TOPIC_SKEW = 0.5
"""Topic sizes follow rank**-TOPIC_SKEW: some topics have more items than others, as in real catalogs."""
QUALITY_LOGIT_MEAN = {False: 0.5, True: -1.0}
"""Mean logit of quality for ordinary and clickbait items (quality = sigmoid(mean + 0.9 z))."""
FAVOURITE_TOPICS = 3
"""Users concentrate on 1 to this many favourite topics."""
BACKGROUND_INTEREST = 0.1
"""Share of a user's mixture spread over all topics (curiosity beyond the favourites)."""

ITEM_ID_PREFIX = "item-"


@dataclass(frozen=True)
class ItemAttributes:
    """The numeric attributes of a set of items (shapes [n])."""

    index: np.ndarray
    """[n] int64 item indices (position in the catalog)."""
    topic: np.ndarray
    """[n] int32 primary topic."""
    secondary: np.ndarray
    """[n] int32 secondary topic (never the primary one when there are 2+ topics)."""
    secondary_share: np.ndarray
    """[n] float32 weight of the secondary topic, in [0, secondary_topic_weight]."""
    clickbait: np.ndarray
    """[n] bool clickbait trait."""
    quality: np.ndarray
    """[n] float32 hidden quality in [0, 1]."""
    popularity: np.ndarray
    """[n] float32 Zipf-like popularity weight (>= 1)."""

    def __len__(self) -> int:
        return len(self.index)

    def take(self, positions: np.ndarray) -> ItemAttributes:
        """The attributes of ``self``'s items at ``positions`` (an index array or a slice)."""
        return ItemAttributes(**{name: value[positions] for name, value in vars(self).items()})

    @classmethod
    def concat(cls, parts: list[ItemAttributes]) -> ItemAttributes:
        """One set of attributes from consecutive parts."""
        names = vars(parts[0]).keys()
        return cls(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in names})


@dataclass(frozen=True)
class SyntheticCatalog:
    """A whole synthetic catalog in memory (for small worlds: the simulator's built-in catalog)."""

    item_ids: np.ndarray
    """[N] str item ids (``item-0000042``)."""
    embeddings: np.ndarray
    """[N, dim] float32 L2-normalised latent item vectors."""
    topics: np.ndarray
    """[N] int32 primary topic of each item."""
    clickbait: np.ndarray
    """[N] bool clickbait trait."""
    quality: np.ndarray
    """[N] float32 hidden quality in [0, 1]."""
    popularity: np.ndarray
    """[N] float32 popularity weights (>= 1, heavy-tailed)."""

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        for name in ("embeddings", "topics", "clickbait", "quality", "popularity"):
            if len(getattr(self, name)) != n:
                raise ConfigError(
                    f"SyntheticCatalog.{name} has {len(getattr(self, name))} rows, expected {n}"
                )


def padded_ids(prefix: str, index: np.ndarray) -> pa.StringArray:
    """[n] ids ``prefix`` + index zero-padded to 7 digits (``item-0000042``), sorting like the indices."""
    digits = pc.utf8_lpad(pa.array(np.asarray(index, dtype=np.int64)).cast(pa.string()), 7, "0")
    return pc.binary_join_element_wise(prefix, digits, "")


def item_ids(index: np.ndarray) -> pa.StringArray:
    """[n] item ids of item indices."""
    return padded_ids(ITEM_ID_PREFIX, index)


class SyntheticWorld:
    """Topics with vocabularies, items with latent vectors and hidden traits, users with topic mixtures.

    Args:
        config: the world's :class:`WorldConfig`.

    Attributes:
        topic_centroids: [T, dim] float32 unit vectors, one per topic (orthonormal when T < dim).
        clickbait_direction: [dim] float32 unit vector added to clickbait items (orthogonal to the
            centroids when T < dim), so clickbait is visible in item vectors, not in users' interests.
        topic_prior: [T] float64 share of items in each topic.
        vocabulary: the words the items are written with.
    """

    def __init__(self, config: WorldConfig) -> None:
        self.config = config
        self.num_topics = config.topics
        self.dim = config.dim
        rng = np.random.default_rng([config.seed, Stream.CENTROIDS])
        gaussian = rng.standard_normal((config.dim, config.topics + 1))  # [dim, T+1]
        if config.topics + 1 <= config.dim:
            directions = np.linalg.qr(gaussian)[0].T  # [T+1, dim] orthonormal rows
        else:
            directions = l2_normalize(gaussian.T)  # [T+1, dim]: random, nearly orthogonal
        self.topic_centroids = directions[: config.topics].astype(np.float32)
        self.clickbait_direction = directions[config.topics].astype(np.float32)
        order = np.random.default_rng([config.seed, Stream.TOPIC_PRIOR]).permutation(config.topics)
        prior = np.empty(config.topics)
        prior[order] = (np.arange(config.topics) + 1.0) ** -TOPIC_SKEW
        self.topic_prior = prior / prior.sum()
        self._topic_cdf = np.cumsum(self.topic_prior)
        self.vocabulary = Vocabulary.build(config.topics, config.seed)

    @property
    def topic_names(self) -> tuple[str, ...]:
        """[T] topic names (``space``, ``cooking``, ...)."""
        return self.vocabulary.topic_names

    # -- items ---------------------------------------------------------------------------------------

    def item_attributes(self, index: np.ndarray) -> ItemAttributes:
        """Attributes of the items at ``index`` ([n] int); independent of which other items are asked for."""
        cfg = self.config
        index = np.asarray(index, dtype=np.int64)
        from scipy.special import ndtri  # here, not at import: the CLI's parser imports this module

        u = hashed_uniform(cfg.seed, Stream.ITEM, index, width=6)  # [n, 6]
        topic = np.minimum(np.searchsorted(self._topic_cdf, u[:, 0]), cfg.topics - 1).astype(np.int32)
        if cfg.topics > 1:
            # Uniform over the other topics: shift by 1..T-1 so the secondary is never the primary.
            shift = 1 + np.floor(u[:, 1] * (cfg.topics - 1)).astype(np.int32)
            secondary = (topic + shift) % cfg.topics
        else:
            secondary = topic
        share = (u[:, 2] * cfg.secondary_topic_weight).astype(np.float32)
        clickbait = u[:, 3] < cfg.clickbait_rate
        logit_mean = np.where(clickbait, QUALITY_LOGIT_MEAN[True], QUALITY_LOGIT_MEAN[False])
        quality = 1.0 / (1.0 + np.exp(-(logit_mean + 0.9 * ndtri(u[:, 4]))))
        # Pareto tail with index 1/s: ranked weights fall off like rank**-s (Zipf's law), no sorting needed.
        popularity = u[:, 5] ** -cfg.popularity_exponent
        return ItemAttributes(
            index=index,
            topic=topic,
            secondary=secondary.astype(np.int32),
            secondary_share=share,
            clickbait=clickbait,
            quality=quality.astype(np.float32),
            popularity=popularity.astype(np.float32),
        )

    def item_embeddings(self, attributes: ItemAttributes) -> np.ndarray:
        """[n, dim] float32 L2-normalised latent vectors of the items described by ``attributes``.

        topic centroid + share × secondary centroid + clickbait direction (clickbait items) + noise.
        """
        cfg = self.config
        noise = hashed_normal(cfg.seed, Stream.EMBEDDING_NOISE, attributes.index, cfg.dim)  # [n, dim]
        vectors = (
            self.topic_centroids[attributes.topic]
            + attributes.secondary_share[:, None] * self.topic_centroids[attributes.secondary]
            + (CLICKBAIT_STRENGTH * attributes.clickbait)[:, None] * self.clickbait_direction[None, :]
            + (cfg.embedding_noise / np.sqrt(cfg.dim)) * noise
        )  # [n, dim]
        return l2_normalize(vectors)

    def catalog(self) -> SyntheticCatalog:
        """The whole catalog in memory: ids, vectors and hidden traits of all ``config.items`` items."""
        attributes = self.item_attributes(np.arange(self.config.items))
        return SyntheticCatalog(
            item_ids=np.asarray(item_ids(attributes.index).to_pylist()),
            embeddings=self.item_embeddings(attributes),
            topics=attributes.topic,
            clickbait=attributes.clickbait,
            quality=attributes.quality,
            popularity=attributes.popularity,
        )

    # -- users ---------------------------------------------------------------------------------------

    def sample_user_mixtures(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """[n, T] float32 topic mixtures (rows sum to 1), each concentrated on 1-3 favourite topics.

        Favourites are drawn without replacement in proportion to the topics' sizes (Gumbel top-k),
        weighted by a flat Dirichlet; :data:`BACKGROUND_INTEREST` of the mass is spread over all topics.
        """
        t = self.num_topics
        top = min(FAVOURITE_TOPICS, t)
        keys = np.log(self.topic_prior)[None, :] + rng.gumbel(size=(n, t))  # [n, T]
        favourites = np.argsort(-keys, axis=1)[:, :top]  # [n, top]
        count = rng.integers(1, top + 1, size=n)  # [n]
        weights = rng.dirichlet(np.ones(top), size=n) * (np.arange(top)[None, :] < count[:, None])
        weights /= weights.sum(axis=1, keepdims=True)  # [n, top]
        mixture = np.zeros((n, t))
        np.put_along_axis(mixture, favourites, weights, axis=1)
        background = rng.dirichlet(np.full(t, 0.5), size=n)  # [n, T]
        return ((1.0 - BACKGROUND_INTEREST) * mixture + BACKGROUND_INTEREST * background).astype(np.float32)

    def user_interests(self, mixtures: np.ndarray) -> np.ndarray:
        """[n, T] topic mixtures → [n, dim] float32 L2-normalised interest vectors in the items' space."""
        mixtures = np.asarray(mixtures, dtype=np.float32)
        if mixtures.ndim != 2 or mixtures.shape[1] != self.num_topics:
            raise ConfigError(f"mixtures must have shape [n, {self.num_topics}], got {mixtures.shape}")
        return l2_normalize(mixtures @ self.topic_centroids)  # [n, dim]
