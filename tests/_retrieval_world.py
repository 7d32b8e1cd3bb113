"""A tiny dataset for the encoder and index tests: users who stick to one topic, items whose text names it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from rayrec.data.io import write_interactions, write_items

TOPICS = {
    "space": ["rocket", "orbit", "galaxy", "astronaut", "planet", "comet"],
    "cooking": ["recipe", "oven", "spice", "pasta", "bread", "sauce"],
    "music": ["guitar", "melody", "drums", "concert", "album", "chorus"],
    "sports": ["football", "goal", "stadium", "league", "coach", "match"],
}


def write_tiny_world(
    out: Path, items_per_topic: int = 15, users: int = 40, per_user: int = 10, seed: int = 0
) -> Path:
    """items.parquet + interactions.parquet under ``out``; returns ``out``."""
    rng = np.random.default_rng(seed)
    item_ids, titles, texts, categories, topic_of = [], [], [], [], []
    for t, (topic, words) in enumerate(TOPICS.items()):
        for i in range(items_per_topic):
            chosen = rng.choice(words, size=3, replace=False)
            item_ids.append(f"{topic}-{i}")
            titles.append(f"{topic.title()} story {i}")
            texts.append(f"{topic.title()} story {i}. " + " ".join(chosen))
            categories.append(topic)
            topic_of.append(t)
    items = pa.table(
        {
            "item_id": item_ids,
            "title": titles,
            "text": texts,
            "category": categories,
            "tags": [[c] for c in categories],
        }
    )
    topic_of = np.array(topic_of)
    rows = {"user_id": [], "item_id": [], "timestamp": [], "event": [], "value": []}
    for u in range(users):
        pool = np.flatnonzero(topic_of == u % len(TOPICS))
        for step, item in enumerate(rng.choice(pool, size=per_user, replace=False)):
            rows["user_id"].append(f"user-{u}")
            rows["item_id"].append(item_ids[item])
            rows["timestamp"].append(1_700_000_000 + 60 * step + u)
            rows["event"].append("click")
            rows["value"].append(1.0)
    interactions = pa.table(
        {
            **{k: rows[k] for k in ("user_id", "item_id", "event")},
            "timestamp": pa.array(rows["timestamp"], pa.int64()),
            "value": pa.array(rows["value"], pa.float32()),
        }
    ).select(["user_id", "item_id", "timestamp", "event", "value"])
    out.mkdir(parents=True, exist_ok=True)
    write_items(items, str(out))
    write_interactions(interactions, str(out))
    return out
