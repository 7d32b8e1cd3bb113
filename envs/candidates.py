"""Candidate generators: which K items a user could be shown this step (before the policy ranks them)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from envs.catalog import ItemCatalog
from envs.shortlist import SHORTLIST_PER_CANDIDATE, shortlist_top_k
from envs.users import UserState
from rayrec.errors import ConfigError
from rayrec.metrics.beyond import encode_categories


class Retriever(Protocol):
    """Nearest items by inner product, with each row's consumed items excluded exactly."""

    def search_excluding(
        self, queries: np.ndarray, k: int, excluded: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Queries [B, d], excluded [B, H] (padded with -1) → (scores [B, k] float32, items [B, k] int64)."""
        ...

    def exact(self) -> FlatRetriever | None:
        """The same search as an exact :class:`FlatRetriever` over the catalog's rows, or None (approximate)."""
        ...


def drop_excluded(
    scores: np.ndarray, items: np.ndarray, excluded: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` results per row that are not in that row's ``excluded`` [B, H] (nor -1 padding).

    Args:
        scores: [B, k'] search scores, best first (k' >= k + H).
        items: [B, k'] item indices.

    A row with fewer than ``k`` valid results is padded with item -1 at score -inf.
    """
    hit = items < 0  # [B, k']
    for column in excluded.T:  # one [B, k'] comparison per excluded slot, no [B, k', H] temporary
        hit |= items == column[:, None]
    keep = np.argsort(hit, axis=1, kind="stable")[:, :k]  # valid results first, in score order
    short = np.take_along_axis(hit, keep, axis=1)  # [B, k] a row with fewer than k valid results
    scores = np.where(short, -np.inf, np.take_along_axis(scores, keep, axis=1)).astype(scores.dtype)
    return scores, np.where(short, -1, np.take_along_axis(items, keep, axis=1))


class FlatRetriever:
    """Exact inner-product search over an in-memory catalog (FAISS ``IndexFlatIP``)."""

    def __init__(self, embeddings: np.ndarray, ids: np.ndarray | None = None) -> None:
        """Args: embeddings [N, d]; ids [N] the item id of each row (default: the row number)."""
        import faiss

        # faiss-cpu 1.15 only switches flat search to BLAS at 128,000 queries; one step's batch of
        # users is far smaller, and the per-query path is ~4x slower at 10k-100k items (benchmarks/env.py).
        faiss.cvar.distance_compute_blas_threshold = min(faiss.cvar.distance_compute_blas_threshold, 20)
        # It keeps each query's top k in a heap below k=100 and in a reservoir from there; at a step's width
        # (K plus the consumed items, ~70 at K=50) the reservoir gives the same results faster.
        faiss.cvar.distance_compute_min_k_reservoir = min(faiss.cvar.distance_compute_min_k_reservoir, 64)
        self.size = len(embeddings)
        self.ids = None if ids is None else np.asarray(ids, np.int64)
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)  # [N, d]
        self.index = faiss.IndexFlatIP(embeddings.shape[1])
        self.index.add(self.embeddings)
        self._neighbours: np.ndarray | None = None  # [N, L] filled as rows are asked for (neighbours)
        self._beyond = np.empty(0, np.float32)  # [N] NaN until filled

    def search_excluding(
        self, queries: np.ndarray, k: int, excluded: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        width = min(k + excluded.shape[1], self.size)
        scores, items = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), width)
        if self.ids is not None:
            items = np.where(items >= 0, self.ids[np.maximum(items, 0)], -1)
        return drop_excluded(scores, items, excluded, k)

    def exact(self) -> FlatRetriever | None:
        return self if self.ids is None else None

    def scores_of(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Queries [B, d] · their own index rows [B, m] (-1 padded) → [B, m] float32, -inf at padding."""
        import faiss

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        labels = np.ascontiguousarray(np.maximum(rows, 0), dtype=np.int64)
        out = np.empty(rows.shape, np.float32)
        self.index.compute_distance_subset(
            len(queries), faiss.swig_ptr(queries), rows.shape[1], faiss.swig_ptr(out), faiss.swig_ptr(labels)
        )
        out[rows < 0] = -np.inf
        return out

    def neighbours(self, rows: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Each index row's ``width`` most similar other rows, and a bound on the rest.

        Args:
            rows: [n] index rows.
            width: neighbours per row (fixed by the first call; lists are computed once per row, when first
                asked for, with one batched search, and kept).

        Returns:
            (neighbours [n, width] int64, -1 padded; beyond [n] float32: no row other than the row itself
            and its neighbours has a larger inner product with it, -inf when there is none).
        """
        if self._neighbours is None:
            self._neighbours = np.full((self.size, width), -1, np.int64)
            self._beyond = np.full(self.size, np.nan, np.float32)
        elif self._neighbours.shape[1] != width:
            raise ValueError(f"neighbour lists are {self._neighbours.shape[1]} wide, asked for {width}")
        missing = np.unique(rows[np.isnan(self._beyond[rows])])
        if len(missing):
            scores, found = self.index.search(self.embeddings[missing], min(width + 2, self.size))  # [m, w+2]
            # Drop the row itself (the last result where another row ties with it for first place).
            self_at = (found == missing[:, None]).argmax(axis=1)
            self_at[(found != missing[:, None]).all(axis=1)] = found.shape[1] - 1
            others = np.argsort(np.arange(found.shape[1]) == self_at[:, None], axis=1, kind="stable")[:, :-1]
            found = np.take_along_axis(found, others, axis=1)  # [m, w+1] best first
            scores = np.take_along_axis(scores, others, axis=1)
            found = np.pad(found, ((0, 0), (0, width + 1 - found.shape[1])), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, width + 1 - scores.shape[1])), constant_values=-np.inf)
            self._neighbours[missing] = found[:, :width]
            self._beyond[missing] = np.where(found[:, width] >= 0, scores[:, width], -np.inf)
        return self._neighbours[rows], self._beyond[rows]


class IndexRetriever:
    """A :class:`rayrec.index.ItemIndex` (flat, IVF, HNSW, ...) behind the :class:`Retriever` protocol."""

    def __init__(self, index) -> None:
        self.index = index
        self._exact: FlatRetriever | None = None

    def exact(self) -> FlatRetriever | None:
        """A flat index's own vectors behind a :class:`FlatRetriever` (built once); None for IVF, HNSW, ..."""
        if self.index.index_type != "flat":
            return None
        if self._exact is None:
            stored = self.index.faiss_index
            self._exact = FlatRetriever(stored.reconstruct_n(0, stored.ntotal))
        return self._exact

    def search_excluding(
        self, queries: np.ndarray, k: int, excluded: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        exclude = [row[row >= 0] for row in excluded]
        scores, items = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k, exclude=exclude)
        return np.asarray(scores, np.float32), np.asarray(items, np.int64)


class CandidateGenerator(Protocol):
    deterministic: bool
    """The K candidates are a function of the user's observed profile and consumed items alone (no draws):
    a user whose profile did not change keeps them (:meth:`envs.simulator.SlateSimulator.refresh_candidates`)."""

    shortlist_width: int
    """Items each user keeps for :mod:`envs.shortlist` (0: none; the simulator sizes
    :class:`envs.users.UserState` by it)."""

    def generate(self, users: UserState, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(items [B, K] int64 catalog indices in retrieval order, scores [B, K] float32 profile · item)."""
        ...


class RetrievalCandidates:
    """The K nearest items to each user's *observed* profile, consumed items excluded.

    Retrieval never sees the hidden interest: only what the user has clicked (history and this session),
    as a production retriever would. Users with an empty profile (no history) get a zero query, for which
    every item scores 0 and FAISS returns the lowest item indices; give users a history to avoid that.

    With ``shortlist`` a click is served from the user's kept shortlist wherever that is certified to give
    the K items a search gives (:mod:`envs.shortlist`); it needs the exact flat index of the catalog.
    """

    deterministic = True

    def __init__(
        self, retriever: Retriever, num_candidates: int, catalog: ItemCatalog, shortlist: bool = False
    ) -> None:
        self.retriever = retriever
        self.k = num_candidates
        self.catalog = catalog
        self.shortlist_width = 0
        if shortlist:
            exact = retriever.exact()
            if exact is None:
                raise ConfigError(
                    "retrieval_shortlist needs an exact (flat) index: an approximate one can miss items a "
                    "certificate would rule out; build the index with --index-type flat or drop the setting"
                )
            self.retriever, self.shortlist_width = exact, SHORTLIST_PER_CANDIDATE * num_candidates

    def generate(self, users: UserState, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if self.shortlist_width:
            items, scores = shortlist_top_k(users, self.retriever, self.k)
        else:
            width = int(users.consumed_len.max()) if len(users.consumed_len) else 0
            excluded = users.consumed[:, :width]
            scores, items = self.retriever.search_excluding(users.profile(), self.k, excluded)
        if (items < 0).any():
            raise ConfigError(
                f"retrieval returned fewer than K={self.k} unseen items (catalog of {self.catalog.size}); "
                "lower num_candidates or use a larger catalog"
            )
        return items, scores.astype(np.float32, copy=False)


class CategoryQuotaCandidates:
    """The K nearest unseen items to the observed profile with at most ``quota`` from any one category.

    A diversifying retrieval stage: plain nearest-neighbour candidates come from the user's dominant
    category (in ``classic`` the 20 nearest items span 1.01 of 16 categories), so no re-ranker
    downstream can change category exposure. Here each category has an exact FAISS index of its own;
    every category is searched for its ``quota`` nearest unseen items and the ``C · quota`` results are
    cut to the K best by score. ``quota = K`` is plain retrieval; ``quota = ceil(K / C)`` spreads the K
    candidates over every category. The cost is one flat search per category (the same inner products
    as one catalog-wide search, C calls instead of one). Retrieving per interest and merging is how
    multi-interest retrieval widens the candidate set (MIND: Li et al., CIKM 2019); here the interests
    are the item categories, which is also what topic diversification re-ranks for (Ziegler et al.,
    WWW 2005) and what the exposure-fair re-ranker (:mod:`rayrec.rerank`) needs to choose from.
    """

    deterministic = True
    shortlist_width = 0

    def __init__(self, catalog: ItemCatalog, num_candidates: int, quota: int) -> None:
        codes, names = encode_categories(catalog.categories, catalog.size)
        if len(names) * quota < num_candidates:
            raise ConfigError(
                f"category_quota={quota} over the catalog's {len(names)} categories gives at most "
                f"{len(names) * quota} candidates, fewer than K={num_candidates}: raise the quota"
            )
        self.k, self.quota = num_candidates, quota
        members = [np.flatnonzero(codes == c) for c in range(len(names))]  # per category: [N_c] items
        self.retrievers = [FlatRetriever(catalog.embeddings[items], ids=items) for items in members]

    def generate(self, users: UserState, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        width = int(users.consumed_len.max()) if len(users.consumed_len) else 0
        excluded = users.consumed[:, :width]  # [B, H] item ids, -1 padded
        queries = users.profile()  # [B, d]
        # Per category its `quota` nearest unseen items (a category short of them pads with -inf).
        found = [r.search_excluding(queries, self.quota, excluded) for r in self.retrievers]
        scores = np.concatenate([f[0] for f in found], axis=1)  # [B, C·q]
        items = np.concatenate([f[1] for f in found], axis=1)
        best = np.argsort(-scores, axis=1, kind="stable")[:, : self.k]  # [B, K]
        scores, items = np.take_along_axis(scores, best, axis=1), np.take_along_axis(items, best, axis=1)
        if not np.isfinite(scores).all():
            raise ConfigError(
                f"category-quota retrieval found fewer than K={self.k} unseen items within the quota of "
                f"{self.quota} per category: raise category_quota or lower num_candidates"
            )
        return items, scores.astype(np.float32, copy=False)


class RandomCandidates:
    """K distinct items drawn uniformly each step (RecSim's candidate sampler), ranked by profile score.

    Consumed items are not excluded (uniform draws from a large catalog rarely repeat them). The drawn
    items are ordered by ``profile · item`` so that ``retrieval_score`` and ``retrieval_rank`` mean the
    same as with FAISS.
    """

    deterministic = False
    shortlist_width = 0

    def __init__(self, catalog: ItemCatalog, num_candidates: int) -> None:
        if num_candidates > catalog.size:
            raise ConfigError(f"num_candidates K={num_candidates} exceeds the catalog size {catalog.size}")
        self.catalog = catalog
        self.k = num_candidates

    def draw_distinct(self, batch: int, rng: np.random.Generator) -> np.ndarray:
        """[B, K] uniform draws without repeats in a row (redraws collisions; a few rounds at most)."""
        items = np.sort(rng.integers(0, self.catalog.size, size=(batch, self.k)), axis=1)
        while True:
            dup = np.zeros_like(items, dtype=bool)
            dup[:, 1:] = items[:, 1:] == items[:, :-1]
            if not dup.any():
                return items
            items[dup] = rng.integers(0, self.catalog.size, size=int(dup.sum()))
            items.sort(axis=1)

    def generate(self, users: UserState, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        items = self.draw_distinct(len(users.interest), rng)  # [B, K]
        scores = np.einsum("bkd,bd->bk", self.catalog.embeddings[items], users.profile())  # [B, K]
        order = np.argsort(-scores, axis=1, kind="stable")
        return np.take_along_axis(items, order, axis=1), np.take_along_axis(scores, order, axis=1)
