"""Exact top-K retrieval that re-scores a kept shortlist after a click instead of searching the catalog.

A user's observed profile is ``S / |S|``, where ``S`` is the sum of the embeddings of the items the user
engaged with (:class:`envs.users.UserState`). After a full search the user keeps its ``M`` nearest
unconsumed items (the *shortlist*) and a bound ``β`` such that ``S · x ≤ β`` for every other unconsumed
item ``x``. A click on item ``e`` makes the sum ``S + e``. Let ``N(e)`` be the ``L`` items most similar to
``e`` and ``b(e)`` the largest ``e · x`` of any other item outside ``N(e)``. Then for every unconsumed item
outside the shortlist and ``N(e)``

    (S + e) · x = S · x + e · x ≤ β + b(e),

so the pool "shortlist ∪ N(e)", re-scored against the new profile, holds every item that can score above
``β' = β + b(e)``. When the K-th best of the pool beats ``β' / |S + e|`` the pool's top K *is* the
catalog's top K, and the search is skipped; the new shortlist is the pool's best ``M`` and its bound the
larger of ``β'`` and the best score cut. When the K-th best does not beat the bound (it grows with every
click), and for new users, the user is searched again and gets a fresh shortlist. Re-scoring
``M + L`` items costs a small part of scoring the catalog (the speed-up: ``python -m benchmarks.env``).

The certificate asks for a margin of :data:`MARGIN` over float32 rounding, at the bound and between the
K-th and the (K+1)-th score, so the K items are the ones a full search finds; within the K, items are
ordered by their re-scored inner products (the same products a search computes, summed in another order).

This is the threshold test of Fagin's algorithm and of safe early termination in top-k retrieval, for a
query that moves by one known vector per step.

References:
    - Fagin, Lotem, Naor. "Optimal aggregation algorithms for middleware." PODS 2001.
    - Ding, Suel. "Faster top-k document retrieval using block-max indexes." SIGIR 2011.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from envs.users import NO_ITEM, UserState

if TYPE_CHECKING:
    from envs.candidates import FlatRetriever

MARGIN = 1e-5
"""Slack over float32 rounding (profile and items have unit norm, so scores lie in [-1, 1]; two sums of the
same products differ by ~1e-7): a top K certified with this margin is the top K of a full search."""

SHORTLIST_PER_CANDIDATE = 2
"""M = 2 K items kept per user. A wider shortlist certifies more clicks, but every full search costs more:
FAISS's top-k selection grows with k."""

NEIGHBOURS = 32
"""L: the clicked item's nearest items added to the pool (the bound then grows by the (L+1)-th similarity)."""


def shortlist_top_k(users: UserState, retriever: FlatRetriever, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each user's ``k`` nearest unconsumed items, from the kept shortlist where certified.

    Updates ``users``' shortlist, bound and count in place: rows certified keep the pool's best, the others
    get a fresh shortlist from a full search.

    Returns:
        (items [B, k] int64 in score order, NO_ITEM where the catalog ran out;
        scores [B, k] float32 profile · item, -inf where the catalog ran out).
    """
    batch = len(users.profile_count)
    profile = users.profile()  # [B, d] unit norm (zero without any engagement)
    norm = np.linalg.norm(users.profile_sum, axis=1)  # [B] |S|
    items = np.full((batch, k), NO_ITEM, np.int64)
    scores = np.full((batch, k), -np.inf, np.float32)

    fresh = users.profile_count - users.shortlist_count  # [B] engagements since the shortlist was made
    kept = np.flatnonzero((users.shortlist_count >= 0) & (fresh >= 0) & (fresh <= 1) & (norm > 0))
    if len(kept):
        pool, bound = _pool(users, kept, fresh[kept] == 1, retriever)
        kept, top_items, top_scores = _certify(
            users, kept, pool, bound, profile[kept], norm[kept], retriever, k
        )
        items[kept], scores[kept] = top_items, top_scores
    search = np.setdiff1d(np.arange(batch), kept, assume_unique=True)
    if len(search):
        items[search], scores[search] = _search(users, search, profile[search], norm[search], retriever, k)
    return items, scores


def _pool(
    users: UserState, rows: np.ndarray, clicked: np.ndarray, retriever: FlatRetriever
) -> tuple[np.ndarray, np.ndarray]:
    """The items of ``rows`` [n] that can beat their bound, and the bound (``profile_sum`` units).

    Args:
        clicked: [n] bool the row engaged with one item since its shortlist was made (else none).

    Returns:
        (pool [n, M + L] int64, NO_ITEM padded: shortlist, then the clicked item's neighbours not in it and
        not consumed; bound [n] float32: the most any unconsumed item outside the pool scores).
    """
    shortlist = users.shortlist[rows]  # [n, M]
    extra = np.full((len(rows), NEIGHBOURS), NO_ITEM, np.int64)  # [n, L]
    bound = users.shortlist_bound[rows].copy()  # [n]
    moved = np.flatnonzero(clicked)
    if len(moved):
        last = users.consumed_len[rows[moved]] - 1
        item = users.consumed[rows[moved], last]  # [c] the item e added to S
        near, beyond = retriever.neighbours(item, NEIGHBOURS)  # [c, L], [c]
        history = users.consumed[rows[moved], : int(last.max()) + 1]  # [c, H] item e included
        known = np.concatenate([history, shortlist[moved]], axis=1)  # [c, H + M] consumed or listed
        extra[moved] = np.where(row_member(near, known), NO_ITEM, near)
        shortlist[moved] = np.where(shortlist[moved] == item[:, None], NO_ITEM, shortlist[moved])
        bound[moved] += beyond
    return np.concatenate([shortlist, extra], axis=1), bound


def row_member(values: np.ndarray, sets: np.ndarray) -> np.ndarray:
    """[c, L] bool: ``values[i, j]`` is in ``sets[i]`` ([c, L] and [c, S] item ids, NO_ITEM allowed).

    Each row's ids are shifted into their own range, so one sort and one binary search serve all rows
    (a broadcast comparison would cost c·L·S).
    """
    if sets.size == 0:
        return np.zeros(values.shape, dtype=bool)
    span = int(max(values.max(initial=0), sets.max(initial=0))) + 2  # ids + 1 lie in [0, span)
    offset = np.arange(len(values), dtype=np.int64)[:, None] * span  # [c, 1]
    keys = np.sort(sets + 1 + offset, axis=None)  # [c·S] sorted: rows in order, each row sorted
    wanted = (values + 1 + offset).ravel()  # [c·L]
    at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return (keys[at] == wanted).reshape(values.shape)


def _certify(
    users: UserState,
    rows: np.ndarray,
    pool: np.ndarray,
    bound: np.ndarray,
    profile: np.ndarray,
    norm: np.ndarray,
    retriever: FlatRetriever,
    k: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-score ``pool`` [n, W] of ``rows`` [n] against ``profile`` [n, d]; keep the certified rows' top.

    Returns (the certified rows [c], their items [c, k], their scores [c, k]); their shortlist, bound and
    count in ``users`` are updated.
    """
    width = users.shortlist.shape[1]  # M
    rescored = retriever.scores_of(profile, pool)  # [n, W], -inf at NO_ITEM
    # One sort of the W scores (numpy's SIMD sort) is faster than partitioning at k and M and sorting the k.
    order = np.argsort(-rescored, axis=1)  # [n, W] best first
    best = order[:, : k + 1]
    best_scores = np.take_along_axis(rescored, best, axis=1)  # [n, k + 1]
    best_items = np.take_along_axis(pool, best, axis=1)
    tied = np.flatnonzero((best_scores[:, 1:] == best_scores[:, :-1]).any(axis=1))
    if len(tied):  # equal scores are ordered by item id, as a search orders them
        ranked = np.lexsort((best_items[tied], -best_scores[tied]), axis=1)
        best_scores[tied] = np.take_along_axis(best_scores[tied], ranked, axis=1)
        best_items[tied] = np.take_along_axis(best_items[tied], ranked, axis=1)
    kth, after = best_scores[:, k - 1], best_scores[:, k]  # [n]
    with np.errstate(invalid="ignore"):  # -inf - -inf where the catalog is exhausted
        certified = (kth >= bound / norm + MARGIN) & ~(kth - after <= MARGIN) & np.isfinite(kth)
    done = rows[certified]
    users.shortlist[done] = np.take_along_axis(pool, order[:, :width], axis=1)[certified]
    cut = np.take_along_axis(rescored, order[:, width : width + 1], axis=1)[certified, 0]  # (M+1)-th best
    users.shortlist_bound[done] = np.maximum(bound[certified], cut * norm[certified])
    users.shortlist_count[done] = users.profile_count[done]
    return done, best_items[certified, :k], best_scores[certified, :k]


def _search(
    users: UserState,
    rows: np.ndarray,
    profile: np.ndarray,
    norm: np.ndarray,
    retriever: FlatRetriever,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Full search for ``rows`` [n]: their top ``k`` [n, k] (items, scores) and a fresh shortlist."""
    width = users.shortlist.shape[1]
    excluded = users.consumed[rows, : int(users.consumed_len[rows].max())]
    found_scores, found = retriever.search_excluding(profile, width, excluded)  # [n, M]
    users.shortlist[rows] = found
    # Every unconsumed item not found scores at most the M-th found (-inf: the list holds them all).
    users.shortlist_bound[rows] = np.where(found[:, -1] >= 0, found_scores[:, -1] * norm, -np.inf)
    users.shortlist_count[rows] = users.profile_count[rows]
    return found[:, :k], found_scores[:, :k]
