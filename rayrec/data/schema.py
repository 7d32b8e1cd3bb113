"""Arrow schemas of the data contract (README.md describes it). Extra columns beyond these are kept."""

from __future__ import annotations

import pyarrow as pa

ITEMS_FILE = "items.parquet"
INTERACTIONS_FILE = "interactions.parquet"

EVENT_TYPES = ("click", "rating", "view", "purchase", "impression")

ITEMS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=True),
        pa.field("tags", pa.list_(pa.string()), nullable=True),
    ]
)
"""``items.parquet``: one row per item; ``item_id`` unique; ``text`` is what the encoder reads."""

INTERACTIONS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),
        pa.field("event", pa.string(), nullable=False),
        pa.field("value", pa.float32(), nullable=False),
    ]
)
"""``interactions.parquet``: ``user_id`` pseudonymized; ``timestamp`` unix seconds; ``value`` rating or 1.0."""
