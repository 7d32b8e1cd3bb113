"""Write a synthetic world as the data contract's Parquet files, chunk by chunk.

Memory stays bounded for 1M-item worlds: item texts exist one chunk at a time; what the user
simulation needs of the whole catalog is a few numbers per item (topic, trait, quality, popularity,
about 20 bytes), and item vectors are computed for the shown candidates only when the catalog is large.
Each file is written under a temporary name and moved into place when complete, so a failed run
leaves no half-written file behind.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from tqdm import tqdm

from rayrec import storage
from rayrec.data.schema import INTERACTIONS_FILE, INTERACTIONS_SCHEMA, ITEMS_FILE, ITEMS_SCHEMA
from rayrec.errors import ConfigError
from rayrec.privacy import Pseudonymizer, load_or_create_key
from rayrec.synth.behaviour import (
    EVENT_NAMES,
    USER_BLOCK,
    CandidateSampler,
    CatalogView,
    UserEvents,
    simulate_block,
)
from rayrec.synth.config import WORLD_FILE, WorldConfig, world_description
from rayrec.synth.text import compose_item_text
from rayrec.synth.world import ItemAttributes, SyntheticWorld, item_ids, padded_ids

SYNTH_ITEMS_SCHEMA = (
    ITEMS_SCHEMA.append(pa.field("topic", pa.int32(), nullable=False))
    .append(pa.field("clickbait", pa.bool_(), nullable=False))
    .append(pa.field("quality", pa.float32(), nullable=False))
)
"""``items.parquet`` of a synthetic world: the contract's columns plus the hidden truth of each item."""

USER_ID_PREFIX = "user-"


@dataclass(frozen=True)
class WorldFiles:
    """What :func:`write_world` wrote."""

    items_uri: str
    """URI of ``items.parquet``."""
    interactions_uri: str
    """URI of ``interactions.parquet``."""
    items: int
    """Item rows written."""
    interactions: int
    """Interaction rows written."""
    users: int
    """Users with at least one event."""


def items_table(world: SyntheticWorld, attributes: ItemAttributes) -> pa.Table:
    """The ``items.parquet`` rows of the items described by ``attributes``."""
    text = compose_item_text(world.vocabulary, attributes, world.config.seed, world.config.wording_noise)
    columns = [
        item_ids(attributes.index),
        text.title,
        text.text,
        text.category,
        text.tags,
        pa.array(attributes.topic, pa.int32()),
        pa.array(attributes.clickbait, pa.bool_()),
        pa.array(attributes.quality, pa.float32()),
    ]
    return pa.Table.from_arrays(columns, schema=SYNTH_ITEMS_SCHEMA)


def interactions_table(
    events: UserEvents, catalog_ids: pa.StringArray, pseudonymizer: Pseudonymizer
) -> pa.Table:
    """The ``interactions.parquet`` rows of one block of simulated users (user ids pseudonymized)."""
    columns = [
        pseudonymizer.pseudonymize_array(padded_ids(USER_ID_PREFIX, events.user)),
        catalog_ids.take(pa.array(events.item)),
        pa.array(events.timestamp, pa.int64()),
        pa.array(EVENT_NAMES, pa.string()).take(pa.array(events.event)),
        pa.array(events.value, pa.float32()),
    ]
    return pa.Table.from_arrays(columns, schema=INTERACTIONS_SCHEMA)


class _Staging:
    """Parquet writers on temporary names; :meth:`commit` moves them all into place, else they are deleted.

    Both files of a world appear together or not at all: a failure while simulating users must not
    leave new items next to an older run's interactions.
    """

    def __init__(self, fs: pafs.FileSystem) -> None:
        self._fs = fs
        self._staged: dict[str, str] = {}  # final path → temporary path

    def writer(self, path: str, schema: pa.Schema) -> pq.ParquetWriter:
        parent, name = path.rsplit("/", 1)
        self._staged[path] = f"{parent}/.{name}.{uuid.uuid4().hex}.tmp"
        return pq.ParquetWriter(self._staged[path], schema, filesystem=self._fs, compression="zstd")

    def commit(self) -> None:
        for path, temporary in self._staged.items():
            self._fs.move(temporary, path)
        self._staged.clear()

    def __enter__(self) -> _Staging:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for temporary in self._staged.values():
            if self._fs.get_file_info(temporary).type != pafs.FileType.NotFound:
                self._fs.delete_file(temporary)


def write_world(config: WorldConfig, out_dir: str, *, progress: bool = False) -> WorldFiles:
    """Generate the world ``config`` describes and write it under ``out_dir`` (a path or URI).

    Writes ``items.parquet`` (contract columns plus ``topic``, ``clickbait``, ``quality``),
    ``interactions.parquet`` (clicks, ratings, and impressions when ``config.log_impressions``), and
    ``world.json`` (the config and the counts). User ids are pseudonymized with the directory's key
    (see :mod:`rayrec.privacy`). The same config (and key) gives the same rows whatever
    ``config.chunk_size`` is; only the Parquet row groups are cut differently.
    """
    world = SyntheticWorld(config)
    try:
        storage.makedirs(out_dir)
    except OSError as exc:
        raise ConfigError(f"{out_dir}: cannot create the world's directory ({exc})") from None
    fs, root = storage.resolve(out_dir)
    pseudonymizer = Pseudonymizer(load_or_create_key(out_dir))
    items_path, interactions_path = f"{root}/{ITEMS_FILE}", f"{root}/{INTERACTIONS_FILE}"
    chunk = config.chunk_size

    with _Staging(fs) as staging:
        parts: list[ItemAttributes] = []
        with staging.writer(items_path, SYNTH_ITEMS_SCHEMA) as writer:
            chunks = range(0, config.items, chunk)
            for start in tqdm(chunks, desc="items", unit="chunk", disable=not progress):
                attributes = world.item_attributes(np.arange(start, min(start + chunk, config.items)))
                writer.write_table(items_table(world, attributes), row_group_size=chunk)
                parts.append(attributes)
        attributes = ItemAttributes.concat(parts)
        del parts
        catalog = CatalogView(world, attributes)
        sampler = CandidateSampler(attributes.topic, attributes.popularity, config.topics)
        catalog_ids = item_ids(attributes.index)

        interactions = active_users = 0
        blocks = range((config.users + USER_BLOCK - 1) // USER_BLOCK)
        with staging.writer(interactions_path, INTERACTIONS_SCHEMA) as writer:
            for block in tqdm(blocks, desc="users", unit="block", disable=not progress):
                events = simulate_block(world, catalog, sampler, block)
                writer.write_table(
                    interactions_table(events, catalog_ids, pseudonymizer), row_group_size=chunk
                )
                interactions += len(events.user)
                active_users += len(np.unique(events.user))
        staging.commit()

    storage.write_text(
        storage.join(out_dir, WORLD_FILE),
        world_description(config, items=config.items, interactions=interactions, users=active_users),
    )
    return WorldFiles(
        items_uri=storage.join(out_dir, ITEMS_FILE),
        interactions_uri=storage.join(out_dir, INTERACTIONS_FILE),
        items=config.items,
        interactions=interactions,
        users=active_users,
    )
