"""The typed configuration of a synthetic world, validated when it is built."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from rayrec import storage
from rayrec.config import to_plain
from rayrec.errors import ConfigError

WORLD_FILE = "world.json"


@dataclass(kw_only=True)
class WorldConfig:
    """Everything that defines a synthetic world; the same config and seed give the same files."""

    items: int = 2_000
    """Number of items in the catalog."""
    users: int = 500
    """Number of users whose interactions are simulated."""
    topics: int = 12
    """Number of topics; each has its own vocabulary (16 hand-written, pseudo-words beyond)."""
    dim: int = 32
    """Dimension of the latent item and interest vectors."""
    seed: int = 0
    """Seed of everything random in the world."""
    clickbait_rate: float = 0.15
    """Fraction of items with the clickbait trait (clickbait wording, extra click appeal, lower quality)."""
    popularity_exponent: float = 0.8
    """Zipf exponent s of item popularity: the r-th most popular item's weight is about r**-s."""
    secondary_topic_weight: float = 0.35
    """Largest weight of an item's secondary topic in its latent vector and text (0 = single-topic items)."""
    embedding_noise: float = 0.5
    """Norm of the isotropic noise added to item vectors before normalisation (item individuality)."""
    wording_noise: float = 0.05
    """Chance that an item's wording lies about its clickbait trait (plain text on a clickbait item, or
    clickbait wording on an ordinary one): the text predicts the trait well, not perfectly."""
    sessions_per_user: float = 4.0
    """Mean number of sessions per user (at least one each)."""
    max_session_rounds: int = 8
    """Most screens in one session; a session also ends at the first screen without a click."""
    shown_per_round: int = 10
    """Candidates shown on one screen."""
    targeted_fraction: float = 0.5
    """Share of shown candidates drawn from the user's own topics (the rest by global popularity)."""
    interest_weight: float = 6.0
    """Choice-model weight of interest · item (cosine of the two latent vectors)."""
    clickbait_attraction: float = 1.5
    """Choice-model utility a clickbait item gains, whatever the user's interests."""
    popularity_weight: float = 0.3
    """Choice-model weight of log item popularity (herding)."""
    no_click_utility: float = 4.5
    """Utility of not clicking anything on a screen (higher: fewer clicks)."""
    rating_rate: float = 0.3
    """Probability that a click is followed by a 1-5 rating, driven by quality and interest match."""
    log_impressions: bool = False
    """Also log every shown candidate as an ``impression`` event (value 0.0); needed for click-through rates."""
    start_time: int = 1_600_000_000
    """Unix time (seconds) before which no event happens."""
    chunk_size: int = 50_000
    """Items (and interaction rows) per generated and written chunk; bounds memory, never changes content."""

    def __post_init__(self) -> None:
        counts = {
            "items": self.items,
            "users": self.users,
            "topics": self.topics,
            "dim": self.dim,
            "max_session_rounds": self.max_session_rounds,
            "shown_per_round": self.shown_per_round,
            "chunk_size": self.chunk_size,
        }
        for name, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"WorldConfig.{name} must be a positive integer, got {value!r}")
        if self.dim < 2:
            raise ConfigError(f"WorldConfig.dim must be at least 2, got {self.dim}")
        if self.topics > self.items:
            raise ConfigError(f"WorldConfig.topics ({self.topics}) cannot exceed items ({self.items})")
        fractions = {
            "clickbait_rate": self.clickbait_rate,
            "secondary_topic_weight": self.secondary_topic_weight,
            "wording_noise": self.wording_noise,
            "targeted_fraction": self.targeted_fraction,
            "rating_rate": self.rating_rate,
        }
        for name, value in fractions.items():
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"WorldConfig.{name} must be in [0, 1], got {value!r}")
        non_negative = {
            "popularity_exponent": self.popularity_exponent,
            "embedding_noise": self.embedding_noise,
            "interest_weight": self.interest_weight,
            "popularity_weight": self.popularity_weight,
        }
        for name, value in non_negative.items():
            if not value >= 0.0:  # also rejects NaN
                raise ConfigError(f"WorldConfig.{name} must be >= 0, got {value!r}")
        if self.popularity_exponent > 3.0:
            raise ConfigError(
                f"WorldConfig.popularity_exponent must be at most 3 (one item would take every view), "
                f"got {self.popularity_exponent}"
            )
        if not 1.0 <= self.sessions_per_user <= 1_000.0:
            raise ConfigError(
                f"WorldConfig.sessions_per_user must be in [1, 1000], got {self.sessions_per_user}"
            )
        if self.start_time < 0:
            raise ConfigError(f"WorldConfig.start_time must be a unix time >= 0, got {self.start_time}")


def read_world_config(data_dir: str) -> WorldConfig:
    """The :class:`WorldConfig` saved in ``data_dir/world.json`` by :func:`~rayrec.synth.write_world`."""
    uri = storage.join(data_dir, WORLD_FILE)
    if not storage.exists(uri):
        raise ConfigError(f"{uri}: no such file (not a synthetic world directory)")
    try:
        fields = json.loads(storage.read_text(uri))["config"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{uri}: not a world description ({exc})") from None
    known = {f.name for f in dataclasses.fields(WorldConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"{uri}: unknown WorldConfig fields {unknown}")
    return WorldConfig(**fields)


def world_description(config: WorldConfig, **counts: int) -> str:
    """The JSON text of ``world.json``: the config plus what was written."""
    return json.dumps({"generator": "rayrec.synth", "config": to_plain(config), **counts}, indent=2)
