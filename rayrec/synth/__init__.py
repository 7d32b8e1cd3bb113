"""The embedded default world: topics, items whose text carries signal, users with topic mixtures.

Items belong to topics with their own vocabularies; titles and descriptions are composed from those
words (with some cross-topic mixing), a fraction of items are clickbait (their own wording, more
clicks, lower hidden quality), and popularity is Zipf-like. Every item has a latent vector in a
``dim``-dimensional space (topic centroid, a little secondary topic, a clickbait direction, noise);
users have topic mixtures and interest vectors in the same space, and their clicks and ratings follow
a conditional-logit choice model. Deterministic by seed, chunk-size independent, 1M items in bounded
memory.

    world = SyntheticWorld(WorldConfig(items=2_000, users=500, seed=0))
    catalog = world.catalog()                          # in memory, for the simulator
    write_world(WorldConfig(items=1_000_000), "data/")  # Parquet files, chunk by chunk
"""

from rayrec.synth.config import WORLD_FILE, WorldConfig, read_world_config
from rayrec.synth.world import ItemAttributes, SyntheticCatalog, SyntheticWorld, item_ids
from rayrec.synth.writer import SYNTH_ITEMS_SCHEMA, WorldFiles, write_world

__all__ = [
    "SYNTH_ITEMS_SCHEMA",
    "WORLD_FILE",
    "ItemAttributes",
    "SyntheticCatalog",
    "SyntheticWorld",
    "WorldConfig",
    "WorldFiles",
    "item_ids",
    "read_world_config",
    "write_world",
]
