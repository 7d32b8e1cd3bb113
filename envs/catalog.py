"""The item catalog the simulator recommends from: embeddings plus the hidden traits users react to."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rayrec.errors import ConfigError, DataError
from rayrec.features import l2_normalize, logged_rating_totals, popularity_feature, rating_feature

MIN_RATINGS_FOR_TRAITS = 5
"""Items with fewer logged ratings than this are never derived clickbait; their derived quality is their
mean rating shrunk toward 0.5 like every item's (:func:`derived_traits`)."""


@dataclass(frozen=True)
class ItemCatalog:
    """Items as the simulator sees them (N items, d dims).

    Attributes:
        item_ids: [N] str.
        embeddings: [N, d] float32, L2-normalised (the encoder's space; what the policy observes).
        popularity_counts: [N] float64 interaction counts (or weights).
        popularity: [N] float32 :func:`rayrec.features.popularity_feature` of the counts (observed).
        clickbait: [N] float32 in [0, 1], hidden: 1 for clickbait.
        quality: [N] float32 in [0, 1], hidden.
        categories: [N] str or None (for the category mix in calibration reports).
        rating: [N] float32 :func:`rayrec.features.rating_feature` of the items' logged ratings (observed),
            or None: only a simulator with ``observe_rating`` needs it (:func:`envs.factory.load_world`).
        item_log: [N, 3] float32 :data:`rayrec.features.ITEM_LOG_FEATURES` and :data:`rayrec.features.ITEM_LIFT`
            of the items (observed: logged click-through rate, watch time and lift), or None: only a simulator
            with ``observe_item_log`` or ``observe_lift`` needs it (:func:`envs.item_log.item_log_features`).
    """

    item_ids: np.ndarray
    embeddings: np.ndarray
    popularity_counts: np.ndarray
    popularity: np.ndarray
    clickbait: np.ndarray
    quality: np.ndarray
    categories: np.ndarray | None = None
    rating: np.ndarray | None = None
    item_log: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        if self.embeddings.ndim != 2 or len(self.embeddings) != n:
            raise DataError(f"catalog: embeddings {self.embeddings.shape} must be [{n}, d]")
        for name in ("popularity_counts", "popularity", "clickbait", "quality"):
            if getattr(self, name).shape != (n,):
                raise DataError(f"catalog: {name} {getattr(self, name).shape} must be [{n}]")
        for name in ("categories", "rating"):
            value = getattr(self, name)
            if value is not None and value.shape != (n,):
                raise DataError(f"catalog: {name} {value.shape} must be [{n}]")
        if self.item_log is not None and self.item_log.shape != (n, 3):
            raise DataError(f"catalog: item_log {self.item_log.shape} must be [{n}, 3]")
        if n == 0:
            raise DataError("catalog: no items")

    @property
    def size(self) -> int:
        return len(self.item_ids)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @classmethod
    def build(
        cls,
        item_ids: np.ndarray,
        embeddings: np.ndarray,
        popularity_counts: np.ndarray,
        clickbait: np.ndarray,
        quality: np.ndarray,
        categories: np.ndarray | None = None,
        rating: np.ndarray | None = None,
    ) -> ItemCatalog:
        """A catalog with normalised float32 embeddings and the popularity feature computed once."""
        counts = np.asarray(popularity_counts, dtype=np.float64)
        return cls(
            item_ids=np.asarray(item_ids).astype(str),
            embeddings=np.ascontiguousarray(l2_normalize(np.asarray(embeddings, dtype=np.float32))),
            popularity_counts=counts,
            popularity=popularity_feature(counts),
            clickbait=np.clip(np.asarray(clickbait, dtype=np.float32), 0.0, 1.0),
            quality=np.clip(np.asarray(quality, dtype=np.float32), 0.0, 1.0),
            categories=None if categories is None else np.asarray(categories).astype(str),
            rating=None if rating is None else np.asarray(rating, dtype=np.float32),
        )


def synthetic_catalog(world) -> ItemCatalog:
    """The catalog of a :class:`rayrec.synth.SyntheticWorld` (clickbait and quality are its own traits)."""
    cat = world.catalog()
    return ItemCatalog.build(
        item_ids=cat.item_ids,
        embeddings=cat.embeddings,
        popularity_counts=cat.popularity,
        clickbait=cat.clickbait,
        quality=cat.quality,
        categories=np.asarray([f"topic-{t}" for t in np.asarray(cat.topics)]),
    )


def derived_traits(item_ids: np.ndarray, interactions) -> tuple[np.ndarray, np.ndarray]:
    """Quality and clickbait of items without those columns, derived from logged ratings.

    - ``quality``: the item's mean rating, min-max scaled over the log's ratings and shrunk toward 0.5
      (:func:`rayrec.features.rating_feature`; the observable ``item_rating`` is the same number).
    - ``clickbait``: 1 for "popular but disappointing" items — interaction count in the top half and
      quality in the bottom quarter of items with at least ``MIN_RATINGS_FOR_TRAITS`` ratings — the
      logged footprint of items that attract more than they satisfy.

    Without rating events (clicks only) every item is neutral: quality 0.5, no clickbait.

    Args:
        item_ids: [N] catalog item ids.
        interactions: pa.Table with the data contract's columns.

    Returns:
        ([N] float32 quality, [N] float32 clickbait).
    """
    n = len(item_ids)
    clickbait = np.zeros(n, dtype=np.float32)
    totals = logged_rating_totals(item_ids, interactions)
    if totals is None:
        return np.full(n, 0.5, dtype=np.float32), clickbait
    quality = rating_feature(*totals)
    count = totals[0]
    solid = count >= MIN_RATINGS_FOR_TRAITS
    if solid.sum() >= 4:
        popular = count >= np.median(count[solid])
        poor = quality <= np.quantile(quality[solid], 0.25)
        clickbait = (solid & popular & poor).astype(np.float32)
    return quality, clickbait


def catalog_from_index(index, items=None, interactions=None) -> ItemCatalog:
    """The catalog of an item index, with traits from ``items.parquet`` columns or derived from logs.

    Args:
        index: a :class:`rayrec.index.ItemIndex` (item ids, embeddings, popularity counts, ratings).
        items: optional pa.Table of ``items.parquet``; ``clickbait``/``quality``/``category`` columns
            are used when present.
        interactions: optional pa.Table of ``interactions.parquet`` for :func:`derived_traits`.
    """
    item_ids = np.asarray(index.item_ids).astype(str)
    n = len(item_ids)
    quality = np.full(n, 0.5, dtype=np.float32)
    clickbait = np.zeros(n, dtype=np.float32)
    categories = None
    if interactions is not None:
        quality, clickbait = derived_traits(item_ids, interactions)
    if items is not None:
        table_ids = np.asarray(items.column("item_id").to_numpy(zero_copy_only=False)).astype(str)
        row = {item: i for i, item in enumerate(table_ids)}
        rows = np.fromiter((row.get(i, -1) for i in item_ids), dtype=np.int64, count=n)
        if (rows < 0).any():
            missing = item_ids[rows < 0][:3].tolist()
            raise ConfigError(
                f"index and data disagree: {int((rows < 0).sum())} indexed items are not in items.parquet "
                f"(e.g. {missing}); build the index from this data dir"
            )
        names = set(items.column_names)
        if "quality" in names:
            quality = np.asarray(items.column("quality").to_numpy(zero_copy_only=False), np.float32)[rows]
        if "clickbait" in names:
            clickbait = np.asarray(items.column("clickbait").to_numpy(zero_copy_only=False), np.float32)[rows]
        if "category" in names:
            cats = items.column("category").to_pylist()
            categories = np.asarray(["" if cats[r] is None else cats[r] for r in rows])
    return ItemCatalog.build(
        item_ids=item_ids,
        embeddings=np.asarray(index.embeddings, dtype=np.float32),
        popularity_counts=np.asarray(index.popularity, dtype=np.float64),
        clickbait=clickbait,
        quality=quality,
        categories=categories,
        rating=index.rating,  # stored by `rayrec build-index` from rated data, else None
    )
