"""The synthetic world: determinism, chunk independence, signal in behaviour and text, files, memory."""

from __future__ import annotations

import json
import re
import tracemalloc

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from rayrec.data.io import read_interactions, read_items
from rayrec.data.schema import EVENT_TYPES, INTERACTIONS_SCHEMA, ITEMS_SCHEMA
from rayrec.data.stats import popularity_gini
from rayrec.errors import ConfigError
from rayrec.privacy import KEY_ENV, Pseudonymizer
from rayrec.synth import (
    WORLD_FILE,
    SyntheticWorld,
    WorldConfig,
    behaviour,
    read_world_config,
    write_world,
    writer,
)
from rayrec.synth.behaviour import CLICK, IMPRESSION, RATING, CandidateSampler, CatalogView, simulate_block
from rayrec.synth.text import compose_item_text
from rayrec.synth.writer import items_table

KEY = "k" * 32


@pytest.fixture
def fixed_key(monkeypatch):
    """One pseudonymization key for every directory, so two runs can be compared row by row."""
    monkeypatch.setenv(KEY_ENV, KEY)


def simulate(config: WorldConfig):
    """Events of the first user block of ``config``'s world, with the catalog's attributes."""
    world = SyntheticWorld(config)
    attributes = world.item_attributes(np.arange(config.items))
    sampler = CandidateSampler(attributes.topic, attributes.popularity, config.topics)
    return simulate_block(world, CatalogView(world, attributes), sampler, 0), attributes


@pytest.mark.parametrize(
    "field, value",
    [
        ("items", 0),
        ("users", -3),
        ("dim", 1),
        ("chunk_size", 0),
        ("items", 2.5),
        ("clickbait_rate", 1.5),
        ("targeted_fraction", -0.1),
        ("popularity_exponent", float("nan")),
        ("popularity_exponent", 5.0),
        ("sessions_per_user", 0.5),
        ("interest_weight", -1.0),
        ("start_time", -1),
    ],
)
def test_bad_config_is_a_config_error(field, value):
    with pytest.raises(ConfigError, match=field):
        WorldConfig(**{field: value})


def test_more_topics_than_items_is_a_config_error():
    with pytest.raises(ConfigError, match="topics"):
        WorldConfig(items=5, topics=6)


def test_items_depend_only_on_seed_and_index():
    world = SyntheticWorld(WorldConfig(items=500, seed=3))
    whole = world.item_attributes(np.arange(500))
    part = world.item_attributes(np.array([499, 7, 250]))
    for name in ("topic", "secondary", "clickbait", "quality", "popularity"):
        np.testing.assert_array_equal(getattr(part, name), getattr(whole, name)[[499, 7, 250]])
    np.testing.assert_array_equal(world.item_embeddings(part), world.item_embeddings(whole)[[499, 7, 250]])
    other = SyntheticWorld(WorldConfig(items=500, seed=4)).item_attributes(np.arange(500))
    assert (other.topic != whole.topic).mean() > 0.5


def test_catalog_vectors_carry_topics_and_clickbait():
    world = SyntheticWorld(WorldConfig(items=1_500, topics=8, dim=32, seed=1))
    catalog = world.catalog()
    n = 1_500
    assert catalog.embeddings.shape == (n, 32) and catalog.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(catalog.embeddings, axis=1), 1.0, rtol=1e-5)
    assert catalog.item_ids[0] == "item-0000000" and len(set(catalog.item_ids)) == n
    assert ((catalog.quality >= 0) & (catalog.quality <= 1)).all() and (catalog.popularity >= 1).all()
    # Each item is closest to its own topic's centroid.
    nearest = (catalog.embeddings @ world.topic_centroids.T).argmax(axis=1)
    assert (nearest == catalog.topics).mean() > 0.95
    along = catalog.embeddings @ world.clickbait_direction
    assert along[catalog.clickbait].mean() > along[~catalog.clickbait].mean() + 0.3
    assert 0.08 < catalog.clickbait.mean() < 0.22


def test_user_mixtures_concentrate_on_few_topics():
    world = SyntheticWorld(WorldConfig(topics=12))
    mixtures = world.sample_user_mixtures(400, np.random.default_rng(0))
    assert mixtures.shape == (400, 12)
    np.testing.assert_allclose(mixtures.sum(axis=1), 1.0, rtol=1e-5)
    top3 = np.sort(mixtures, axis=1)[:, -3:].sum(axis=1)
    assert (top3 > 0.85).all()
    interests = world.user_interests(mixtures)
    assert interests.shape == (400, world.dim)
    np.testing.assert_allclose(np.linalg.norm(interests, axis=1), 1.0, rtol=1e-5)
    assert ((interests @ world.topic_centroids.T).argmax(axis=1) == mixtures.argmax(axis=1)).mean() > 0.95
    with pytest.raises(ConfigError, match="shape"):
        world.user_interests(np.ones((3, 5)))


def test_favourite_topic_items_are_clicked_more():
    events, attributes = simulate(WorldConfig(items=800, users=300, log_impressions=True, seed=5))
    favourite = events.mixtures.argmax(axis=1)[events.user - events.first_user]
    on_favourite = attributes.topic[events.item] == favourite
    shown, clicked = events.event == IMPRESSION, events.event == CLICK
    ctr_favourite = (clicked & on_favourite).sum() / (shown & on_favourite).sum()
    ctr_other = (clicked & ~on_favourite).sum() / (shown & ~on_favourite).sum()
    assert ctr_favourite > 3 * ctr_other
    # And per user: most users click their favourite topic more than any other single topic.
    users = events.user[clicked] - events.first_user
    counts = np.zeros((len(events.mixtures), attributes.topic.max() + 1))
    np.add.at(counts, (users, attributes.topic[events.item[clicked]]), 1)
    active = counts.sum(axis=1) >= 5
    assert (counts[active].argmax(axis=1) == events.mixtures[active].argmax(axis=1)).mean() > 0.8


def test_clickbait_draws_clicks_but_has_lower_quality_and_ratings():
    events, attributes = simulate(WorldConfig(items=1_000, users=400, log_impressions=True, seed=2))
    bait = attributes.clickbait[events.item]
    shown, clicked, rated = (events.event == code for code in (IMPRESSION, CLICK, RATING))
    assert (clicked & bait).sum() / (shown & bait).sum() > 1.2 * (clicked & ~bait).sum() / (
        shown & ~bait
    ).sum()
    assert (
        attributes.quality[attributes.clickbait].mean()
        < attributes.quality[~attributes.clickbait].mean() - 0.15
    )
    assert events.value[rated & bait].mean() < events.value[rated & ~bait].mean() - 0.3
    assert set(np.unique(events.value[rated])) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_events_are_ordered_and_never_repeat_a_click():
    events, _ = simulate(WorldConfig(items=300, users=200, seed=9))
    same_user = events.user[1:] == events.user[:-1]
    assert (np.diff(events.user) >= 0).all()
    assert (np.diff(events.timestamp)[same_user] >= 0).all()
    clicks = events.event == CLICK
    keys = events.user[clicks] * 300 + events.item[clicks]
    assert len(np.unique(keys)) == len(keys)
    # Every rating follows a click of the same item by the same user.
    for row in np.flatnonzero(events.event == RATING)[:50]:
        earlier = (events.user[:row] == events.user[row]) & (events.item[:row] == events.item[row])
        assert (events.event[:row][earlier] == CLICK).any()


def test_item_text_carries_topic_and_clickbait_signal():
    world = SyntheticWorld(WorldConfig(items=600, topics=12, seed=4))
    attributes = world.item_attributes(np.arange(600))
    text = compose_item_text(world.vocabulary, attributes, seed=4, wording_noise=0.05)
    vocab = world.vocabulary
    topic_sets = [set(vocab.topic_words(t)) for t in range(12)]
    bait_wording = vocab.clickbait_wording()
    own_wins = 0
    bait_hits = np.zeros(600, dtype=bool)
    for i, body in enumerate(text.text.to_pylist()):
        lowered = body.lower()
        words = re.findall(r"[a-z0-9'-]+", lowered)
        hits = [sum(w in words_of for w in words) for words_of in topic_sets]
        own_wins += int(np.argmax(hits) == attributes.topic[i])
        bait_hits[i] = any(re.search(rf"\b{re.escape(p)}\b", lowered) for p in bait_wording)
    assert own_wins / 600 > 0.95
    assert bait_hits[attributes.clickbait].mean() > 0.85
    assert bait_hits[~attributes.clickbait].mean() < 0.15
    assert text.category.to_pylist() == [vocab.topic_names[t] for t in attributes.topic]


def test_many_topics_get_generated_vocabularies():
    world = SyntheticWorld(WorldConfig(items=400, topics=24, dim=16))
    assert len(world.topic_names) == 24 and world.topic_centroids.shape == (24, 16)
    table = items_table(world, world.item_attributes(np.arange(400)))
    row = int(np.flatnonzero(table.column("topic").to_numpy() == 20)[0])
    words = set(table.column("text")[row].as_py().lower().replace(".", "").split())
    assert words & set(world.vocabulary.topic_words(20))


def test_popularity_is_skewed():
    events, attributes = simulate(WorldConfig(items=1_000, users=500, seed=6))
    clicks = np.bincount(events.item[events.event == CLICK], minlength=1_000)
    flat, _ = simulate(WorldConfig(items=1_000, users=500, seed=6, popularity_exponent=0.0))
    flat_clicks = np.bincount(flat.item[flat.event == CLICK], minlength=1_000)
    assert popularity_gini(attributes.popularity) > 0.4
    assert popularity_gini(clicks) > 0.5
    assert popularity_gini(clicks) > popularity_gini(flat_clicks) + 0.15


def test_written_world_follows_the_contract(tmp_path):
    config = WorldConfig(items=400, users=150, seed=8, log_impressions=True)
    files = write_world(config, str(tmp_path))
    items = read_items(str(tmp_path))
    interactions = read_interactions(str(tmp_path), items.column("item_id"))
    assert items.schema.names == [*ITEMS_SCHEMA.names, "topic", "clickbait", "quality"]
    assert interactions.schema.equals(INTERACTIONS_SCHEMA)
    assert items.num_rows == files.items == 400 and interactions.num_rows == files.interactions
    assert set(interactions.column("event").to_pylist()) <= set(EVENT_TYPES)
    # User ids are keyed pseudonyms of the synthetic ids, with the key created beside the data.
    user_ids = set(interactions.column("user_id").to_pylist())
    assert len(user_ids) == files.users and not any(u.startswith("user-") for u in user_ids)
    assert (tmp_path / "pseudonym.key").exists()
    clicks = interactions.filter(pc.equal(interactions.column("event"), "click"))
    assert set(clicks.column("value").to_pylist()) == {1.0}
    assert read_world_config(str(tmp_path)) == config
    assert json.loads((tmp_path / WORLD_FILE).read_text())["interactions"] == files.interactions
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "interactions.parquet",
        "items.parquet",
        "pseudonym.key",
        "world.json",
    ]


def test_same_seed_same_files_whatever_the_chunk_size(tmp_path, fixed_key):
    config = WorldConfig(items=900, users=1_100, seed=11)  # two user blocks
    write_world(config, str(tmp_path / "a"))
    write_world(config, str(tmp_path / "b"))
    write_world(WorldConfig(items=900, users=1_100, seed=11, chunk_size=128), str(tmp_path / "c"))
    write_world(WorldConfig(items=900, users=1_100, seed=12), str(tmp_path / "d"))
    tables = {
        name: (
            pq.read_table(tmp_path / name / "items.parquet"),
            pq.read_table(tmp_path / name / "interactions.parquet"),
        )
        for name in "abcd"
    }
    assert (tmp_path / "a" / "items.parquet").read_bytes() == (tmp_path / "b" / "items.parquet").read_bytes()
    assert tables["a"][0].equals(tables["b"][0]) and tables["a"][1].equals(tables["b"][1])
    assert tables["a"][0].equals(tables["c"][0]) and tables["a"][1].equals(tables["c"][1])
    assert pq.ParquetFile(tmp_path / "c" / "items.parquet").num_row_groups == 8
    assert not tables["a"][0].equals(tables["d"][0])
    assert user_pseudonym(0) in set(tables["a"][1].column("user_id").to_pylist())


def user_pseudonym(index: int) -> str:
    return Pseudonymizer(KEY.encode()).pseudonymize(f"user-{index:07d}")


def test_large_catalog_path_computes_vectors_on_the_fly(monkeypatch):
    config = WorldConfig(items=2_000, users=120, seed=13)
    cached, _ = simulate(config)
    monkeypatch.setattr(behaviour, "_EMBEDDING_CACHE_BYTES", 0)
    on_the_fly, _ = simulate(config)
    np.testing.assert_array_equal(cached.item, on_the_fly.item)
    np.testing.assert_array_equal(cached.timestamp, on_the_fly.timestamp)


def test_chunked_generation_keeps_memory_bounded(tmp_path, fixed_key):
    """50k items: small chunks must need far less working memory than one big chunk, for equal output."""

    def peak(chunk_size: int, out: str) -> int:
        tracemalloc.start()
        write_world(WorldConfig(items=50_000, users=100, seed=1, chunk_size=chunk_size), str(tmp_path / out))
        size = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return size

    small, large = peak(2_000, "small"), peak(50_000, "large")
    assert small < 0.5 * large
    a, b = (pq.read_table(tmp_path / out / "items.parquet") for out in ("small", "large"))
    assert a.equals(b)


def test_unwritable_destination_is_a_config_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="a-file"):
        write_world(WorldConfig(items=50, users=5), str(blocker))
    assert blocker.read_text() == "not a directory"


def test_a_failed_run_leaves_the_directory_as_it_was(tmp_path, monkeypatch, fixed_key):
    (tmp_path / "items.parquet").write_bytes(b"an older dataset")

    def broken(*args, **kwargs):
        raise RuntimeError("simulated crash while simulating users")

    monkeypatch.setattr(writer, "simulate_block", broken)
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_world(WorldConfig(items=200, users=20), str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items.parquet"]
    assert (tmp_path / "items.parquet").read_bytes() == b"an older dataset"
