"""Beyond-accuracy metrics: coverage, exposure concentration, diversity, novelty and calibration of lists.

Accuracy says whether users get what they want; these say what the recommender does to the catalog and
to each user's view of it. Two kinds (their names and interval methods are in :mod:`rayrec.metrics.session`):

- **Per list, averaged per user** — intra-list diversity (:func:`intra_list_diversity`), novelty
  (:func:`novelty`) and calibration (:func:`calibration_kl`): each shown list gets a value; a user's value is
  the mean over the lists they were shown, and the metric is the mean over users (Student-t interval).
- **Corpus level** — catalog coverage (:func:`catalog_coverage`) and exposure Gini over items and over
  categories (:func:`gini`): functions of the exposure counts summed over all users, with no per-user value.
  Their intervals come from the bootstrap over users (:class:`Exposure`), which keeps the user as the unit of
  resampling as every other interval in rayrec does.

Exposure counts every impression once (no position discount): coverage and Gini describe what was shown.

References:
    - Ziegler, C.-N., McNee, S., Konstan, J. & Lausen, G. (2005). "Improving Recommendation Lists Through
      Topic Diversification." WWW (intra-list similarity).
    - Zhou, T. et al. (2010). "Solving the apparent diversity-accuracy dilemma of recommender systems."
      PNAS (novelty as popularity self-information).
    - Steck, H. (2018). "Calibrated Recommendations." RecSys (the KL calibration metric, smoothing α).
    - Fleder, D. & Hosanagar, K. (2009). "Blockbuster Culture's Next Rise or Fall." Management Science
      (the Gini coefficient of sales/exposure concentration); Herlocker, J. et al. (2004) TOIS (coverage).
    - Davison, A. C. & Hinkley, D. V. (1997). Bootstrap Methods and their Application (bias, intervals).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rayrec.errors import DataError

CALIBRATION_ALPHA = 0.01
"""Steck's smoothing: the list's mix is ``(1 - α) q + α p`` so the KL stays finite (Steck, 2018, §2)."""
UNKNOWN_CATEGORY = ""
"""The category of items without one (``category`` null in items.parquet)."""


def _vector(name: str, values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise DataError(f"{name}: expected a 1-D array, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise DataError(f"{name}: values must be finite")
    if (values < 0).any():
        raise DataError(f"{name}: values must be >= 0")
    return values


def gini(exposure: np.ndarray) -> float:
    """Gini coefficient of ``exposure`` [N] (counts >= 0, zeros included): 0 equal, → 1 concentrated.

    ``G = Σ_i (2i - N - 1) x_(i) / (N Σ x)`` over the values sorted ascending (1-based ``i``); 0 when
    nothing was exposed or N = 1.
    """
    x = np.sort(_vector("gini", exposure))
    n, total = len(x), x.sum()
    if n < 2 or total <= 0:
        return 0.0
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float(np.sum((2 * ranks - n - 1) * x) / (n * total))


def catalog_coverage(exposure: np.ndarray) -> float:
    """Share of the catalog's N items shown at least once: ``exposure`` [N] counts → [0, 1]."""
    x = _vector("coverage", exposure)
    if not len(x):
        raise DataError("coverage: empty catalog")
    return float(np.count_nonzero(x) / len(x))


def encode_categories(categories: np.ndarray | None, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Item categories [N] (str, None for unknown) → ([N] int64 codes, [C] str names, sorted).

    Without categories every item is in one category ``""`` (the category Gini is then 0).
    """
    if categories is None:
        return np.zeros(num_items, np.int64), np.asarray([UNKNOWN_CATEGORY])
    values = np.asarray(["" if c is None else str(c) for c in np.asarray(categories, dtype=object)])
    if values.shape != (num_items,):
        raise DataError(f"categories: shape {values.shape}, expected ({num_items},)")
    names, codes = np.unique(values, return_inverse=True)
    return codes.astype(np.int64), names


def category_exposure(exposure: np.ndarray, codes: np.ndarray, num_categories: int) -> np.ndarray:
    """[C] exposure of each category: the item ``exposure`` [N] summed by item category ``codes`` [N]."""
    x = _vector("category exposure", exposure)
    codes = np.asarray(codes, dtype=np.int64)
    if codes.shape != x.shape:
        raise DataError(f"category exposure: codes {codes.shape} and exposure {x.shape} differ")
    return np.bincount(codes, weights=x, minlength=num_categories)


def intra_list_diversity(embeddings: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """[B] mean pairwise cosine distance ``1 - cos(e_i, e_j)`` over the pairs of each list (Ziegler et al.).

    Args:
        embeddings: [B, k, d] the shown items' embeddings (normalised here, so any scale works).
        valid: [B, k] bool, False for padding (None: all valid).

    Returns:
        [B] float64 in [0, 2]; 0 for a list with fewer than two items.
    """
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 3:
        raise DataError(f"intra-list diversity: embeddings must be [B, k, d], got {e.shape}")
    mask = np.ones(e.shape[:2], bool) if valid is None else np.asarray(valid, bool)
    if mask.shape != e.shape[:2]:
        raise DataError(f"intra-list diversity: valid {mask.shape} must be {e.shape[:2]}")
    norm = np.linalg.norm(e, axis=-1, keepdims=True)
    e = np.where(norm > 0, e / np.maximum(norm, 1e-12), 0.0)
    cos = np.einsum("bid,bjd->bij", e, e)  # [B, k, k]
    pair = mask[:, :, None] & mask[:, None, :] & ~np.eye(e.shape[1], dtype=bool)[None]
    pairs = pair.sum(axis=(1, 2))
    total = np.where(pair, 1.0 - cos, 0.0).sum(axis=(1, 2))
    return np.where(pairs > 0, total / np.maximum(pairs, 1), 0.0)


def self_information(counts: np.ndarray) -> np.ndarray:
    """[N] popularity self-information ``-log2 p(i)`` in bits, ``p(i) = (c_i + 1) / (Σ c + N)``.

    ``counts`` [N] are interaction counts; the add-one smoothing gives never-seen items a finite (the
    largest) novelty.
    """
    c = _vector("popularity counts", counts)
    if not len(c):
        raise DataError("self-information: empty catalog")
    return -np.log2((c + 1.0) / (c.sum() + len(c)))


def novelty(items: np.ndarray, information: np.ndarray) -> np.ndarray:
    """[B] mean self-information (bits) of each list's items (Zhou et al., 2010).

    Args:
        items: [B, k] int64 catalog rows, ``-1`` for padding.
        information: [N] :func:`self_information` of the catalog.
    """
    items = np.asarray(items, dtype=np.int64)
    if items.ndim != 2:
        raise DataError(f"novelty: items must be [B, k], got {items.shape}")
    if (items >= len(information)).any():
        raise DataError(f"novelty: item rows must be < {len(information)}")
    valid = items >= 0
    bits = np.where(valid, np.asarray(information)[np.maximum(items, 0)], 0.0)
    return bits.sum(axis=1) / np.maximum(valid.sum(axis=1), 1)


def category_mix(items: np.ndarray, codes: np.ndarray, num_categories: int) -> np.ndarray:
    """[B, C] share of each row's items (``items`` [B, L] rows, ``-1`` padding) in each category.

    A row without items has all zeros.
    """
    items = np.asarray(items, dtype=np.int64)
    if items.ndim != 2:
        raise DataError(f"category mix: items must be [B, L], got {items.shape}")
    valid = items >= 0
    cat = np.asarray(codes, dtype=np.int64)[np.maximum(items, 0)]  # [B, L]
    flat = (np.arange(len(items))[:, None] * num_categories + cat)[valid]
    counts = np.bincount(flat, minlength=len(items) * num_categories).reshape(len(items), num_categories)
    return counts / np.maximum(valid.sum(axis=1, keepdims=True), 1)


def calibration_kl(
    history_mix: np.ndarray, list_mix: np.ndarray, alpha: float = CALIBRATION_ALPHA
) -> np.ndarray:
    """[B] Steck's miscalibration ``KL(p || q̃) = Σ_g p(g) log(p(g) / q̃(g))`` in nats, ``q̃ = (1-α) q + α p``.

    Args:
        history_mix: [B, C] ``p(g|u)``: the category mix of the user's history (rows sum to 1, or 0 for a
            user without history, whose value is NaN: nothing to be calibrated to).
        list_mix: [B, C] ``q(g|u)``: the category mix of the list shown.
        alpha: Steck's smoothing in (0, 1) (0.01 in the paper).

    Returns:
        [B] float64 >= 0: 0 when the list has the history's mix, larger when it drifts from it.
    """
    p, q = np.asarray(history_mix, np.float64), np.asarray(list_mix, np.float64)
    if p.ndim != 2 or p.shape != q.shape:
        raise DataError(f"calibration: history {p.shape} and list {q.shape} must both be [B, C]")
    if not 0.0 < alpha < 1.0:
        raise DataError(f"calibration: alpha must be in (0, 1), got {alpha}")
    if (p < 0).any() or (q < 0).any():
        raise DataError("calibration: category mixes must be >= 0")
    smoothed = (1.0 - alpha) * q + alpha * p
    terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0) / np.where(p > 0, smoothed, 1.0)), 0.0)
    has_history = p.sum(axis=1) > 0
    return np.where(has_history, terms.sum(axis=1), np.nan)


CORPUS_METRICS = ("coverage", "gini_items", "gini_categories")
"""Corpus-level metrics of an :class:`Exposure`, in report order."""
TABLE_COLUMNS = (
    ("ild", "ILD", 3),
    ("novelty", "novelty (bits)", 2),
    ("coverage", "coverage", 3),
    ("gini_items", "Gini items", 3),
    ("gini_categories", "Gini categories", 3),
)
"""The beyond-accuracy columns of the policy tables, ``(key, header, digits)``: :func:`table_header`,
:func:`table_cells`."""


def table_header() -> str:
    """The Markdown header cells of :data:`TABLE_COLUMNS` (``"ILD | ... | Gini categories"``)."""
    return " | ".join(label for _, label, _ in TABLE_COLUMNS)


def table_cells(values: dict[str, float]) -> str:
    """The Markdown cells of one row: ``values[key]`` of every :data:`TABLE_COLUMNS` key, rounded."""
    return " | ".join(f"{values[key]:.{digits}f}" for key, _, digits in TABLE_COLUMNS)


@dataclass(frozen=True)
class Exposure:
    """Who was shown what: one entry per impression, and the catalog it came from.

    Attributes:
        user: [m] int64 user index (0..num_users-1) of each impression.
        item: [m] int64 catalog row of each impression.
        num_users: n, the users (users shown nothing still count when resampling).
        category_codes: [N] int64 category of every catalog item (:func:`encode_categories`).
        num_categories: C.
    """

    user: np.ndarray
    item: np.ndarray
    num_users: int
    category_codes: np.ndarray
    num_categories: int

    def __post_init__(self) -> None:
        if self.user.shape != self.item.shape or self.user.ndim != 1:
            raise DataError(f"exposure: user {self.user.shape} and item {self.item.shape} must be [m]")
        if self.num_users < 1 or len(self.category_codes) < 1:
            raise DataError("exposure: needs at least one user and one catalog item")
        if len(self.item) and (self.item.min() < 0 or self.item.max() >= self.num_items):
            raise DataError(f"exposure: item rows must be in [0, {self.num_items})")
        if len(self.user) and (self.user.min() < 0 or self.user.max() >= self.num_users):
            raise DataError(f"exposure: user indices must be in [0, {self.num_users})")

    @property
    def num_items(self) -> int:
        return len(self.category_codes)

    def counts(self, user_weights: np.ndarray | None = None) -> np.ndarray:
        """[N] exposure per item; ``user_weights`` [n] counts user u's impressions that many times."""
        weights = None if user_weights is None else np.asarray(user_weights, np.float64)[self.user]
        return np.bincount(self.item, weights=weights, minlength=self.num_items).astype(np.float64)

    def corpus(self, user_weights: np.ndarray | None = None) -> dict[str, float]:
        """``{coverage, gini_items, gini_categories}`` of the (re-weighted) exposure."""
        counts = self.counts(user_weights)
        return {
            "coverage": catalog_coverage(counts),
            "gini_items": gini(counts),
            "gini_categories": gini(category_exposure(counts, self.category_codes, self.num_categories)),
        }

    def bootstrap(self, resamples: int, seed: int) -> dict[str, np.ndarray]:
        """``{metric: [resamples]}`` corpus metrics with users resampled with replacement."""
        rng = np.random.default_rng(seed)
        draws = {name: np.empty(resamples) for name in CORPUS_METRICS}
        for r in range(resamples):
            weights = np.bincount(rng.integers(0, self.num_users, self.num_users), minlength=self.num_users)
            for name, value in self.corpus(weights).items():
                draws[name][r] = value
        return draws

    def summary(
        self, namespace: str | None = "sim", resamples: int = 200, seed: int = 0, alpha: float = 0.05
    ) -> dict[str, dict[str, float]]:
        """``{name: {mean, ci95_low, ci95_high}}`` of the corpus metrics, bootstrap over users (:func:`centred_interval`)."""
        point = self.corpus()
        draws = self.bootstrap(resamples, seed)
        return {
            _key(name, namespace): centred_interval(point[name], draws[name], alpha)
            for name in CORPUS_METRICS
        }

    def take_users(self, users: np.ndarray) -> Exposure:
        """The exposure of ``users`` [n'] (indices), renumbered 0..n'-1 in that order."""
        users = np.asarray(users, dtype=np.int64)
        new = np.full(self.num_users, -1, np.int64)
        new[users] = np.arange(len(users))
        keep = new[self.user] >= 0
        return Exposure(
            user=new[self.user[keep]],
            item=self.item[keep],
            num_users=max(len(users), 1),
            category_codes=self.category_codes,
            num_categories=self.num_categories,
        )


def _key(name: str, namespace: str | None) -> str:
    return name if namespace is None else f"{namespace}/{name}"


def centred_interval(point: float, draws: np.ndarray, alpha: float = 0.05) -> dict[str, float]:
    """The bootstrap spread of a corpus metric around its measured value: ``θ̂ + q(·) - mean(draws)``.

    Resampled users repeat, so a resample covers fewer items and is more concentrated than the sample:
    the draws are biased (coverage down, Gini up) by an amount that says nothing about the uncertainty.
    The interval is the draws' ``α/2`` and ``1 - α/2`` quantiles shifted by that bias, so it is centred on
    the measured value (the percentile interval corrected by the bootstrap bias estimate; Davison &
    Hinkley, §2.2 and §5.3). It describes the metric at this number of users: coverage grows with users.
    """
    draws = np.asarray(draws, np.float64)
    lo, hi = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    shift = float(point) - float(draws.mean())
    return {"mean": float(point), "ci95_low": float(lo + shift), "ci95_high": float(hi + shift)}


def paired_corpus_difference(
    a: Exposure, b: Exposure, resamples: int = 200, seed: int = 0, alpha: float = 0.05
) -> dict[str, dict[str, float]]:
    """``a - b`` of every corpus metric over the same n users (user u of both is one user).

    Both runs are re-weighted by the *same* bootstrap draw of users, so the interval is the paired one.
    Returns ``{name: {mean, ci95_low, ci95_high}}`` (bare names).
    """
    if a.num_users != b.num_users:
        raise DataError(f"a paired difference needs the same users: got {a.num_users} and {b.num_users}")
    rng = np.random.default_rng(seed)
    point_a, point_b = a.corpus(), b.corpus()
    draws = {name: np.empty(resamples) for name in CORPUS_METRICS}
    for r in range(resamples):
        weights = np.bincount(rng.integers(0, a.num_users, a.num_users), minlength=a.num_users)
        wa, wb = a.corpus(weights), b.corpus(weights)
        for name in CORPUS_METRICS:
            draws[name][r] = wa[name] - wb[name]
    return {
        name: centred_interval(point_a[name] - point_b[name], draws[name], alpha) for name in CORPUS_METRICS
    }


def equal_users(a: Exposure, b: Exposure, seed: int = 0) -> tuple[Exposure, Exposure]:
    """``a`` and ``b`` with the one that has more users cut to a random subset of the other's size."""
    n = min(a.num_users, b.num_users)
    rng = np.random.default_rng(seed)

    def cut(e: Exposure) -> Exposure:
        return e if e.num_users == n else e.take_users(np.sort(rng.choice(e.num_users, n, replace=False)))

    return cut(a), cut(b)


def independent_corpus_difference(
    treatment: Exposure, control: Exposure, resamples: int = 500, seed: int = 0, alpha: float = 0.05
) -> dict[str, dict[str, float]]:
    """``treatment - control`` of every corpus metric for two independent groups of users (A/B arms).

    Coverage and concentration depend on how many users there are, so the larger arm is first cut to the
    smaller arm's number of users (a seeded random subset, :func:`equal_users`); then each arm's users are
    resampled on their own. Returns ``{name: {mean, ci95_low, ci95_high, control, treatment, p_value}}`` (bare
    names; the two-sided p-value is the normal approximation with the bootstrap standard error).
    """
    treatment, control = equal_users(treatment, control, seed)
    point_t, point_c = treatment.corpus(), control.corpus()
    draws_t = treatment.bootstrap(resamples, seed)
    draws_c = control.bootstrap(resamples, seed + 1)
    out = {}
    for name in CORPUS_METRICS:
        lift, draws = point_t[name] - point_c[name], draws_t[name] - draws_c[name]
        sd = float(draws.std(ddof=1))
        z = abs(lift) / sd if sd > 0 else (0.0 if lift == 0 else math.inf)
        out[name] = centred_interval(lift, draws, alpha) | {
            "control": point_c[name],
            "treatment": point_t[name],
            "p_value": math.erfc(z / math.sqrt(2.0)),
        }
    return out


def pad_lists(lists: list[np.ndarray]) -> np.ndarray:
    """Ragged item-row arrays → [U, L] int64 padded with -1 (L the longest, at least 1)."""
    width = max((len(x) for x in lists), default=0)
    out = np.full((len(lists), max(width, 1)), -1, np.int64)
    for row, items in enumerate(lists):
        out[row, : len(items)] = items
    return out


def list_metrics(
    lists: np.ndarray,
    embeddings: np.ndarray,
    popularity_counts: np.ndarray,
    category_codes: np.ndarray,
    num_categories: int,
    histories: np.ndarray | None = None,
) -> dict[str, float]:
    """Every beyond-accuracy metric of one recommendation list per user (offline evaluation).

    Args:
        lists: [U, k] int64 catalog rows recommended to each user (-1 padding).
        embeddings: [N, d] item embeddings (the encoder's space) for intra-list diversity.
        popularity_counts: [N] interaction counts for novelty.
        category_codes: [N] int64 item categories (:func:`encode_categories`).
        num_categories: C.
        histories: [U, H] int64 each user's history rows (-1 padding) for calibration; None: NaN.

    Returns:
        ``{coverage, gini_items, gini_categories, ild, novelty, calibration}``: corpus metrics of all lists
        together, per-user metrics averaged over users.
    """
    lists = np.asarray(lists, np.int64)
    if lists.ndim != 2:
        raise DataError(f"list metrics: lists must be [U, k], got {lists.shape}")
    n_items = len(category_codes)
    valid = lists >= 0
    counts = np.bincount(lists[valid], minlength=n_items).astype(np.float64)
    result = {
        "coverage": catalog_coverage(counts),
        "gini_items": gini(counts),
        "gini_categories": gini(category_exposure(counts, category_codes, num_categories)),
        "ild": float(intra_list_diversity(np.asarray(embeddings)[np.maximum(lists, 0)], valid).mean()),
        "novelty": float(novelty(lists, self_information(popularity_counts)).mean()),
        "calibration": float("nan"),
    }
    if histories is not None:
        kl = calibration_kl(
            category_mix(histories, category_codes, num_categories),
            category_mix(lists, category_codes, num_categories),
        )
        result["calibration"] = float(np.nanmean(kl)) if np.isfinite(kl).any() else float("nan")
    return result


def group_exposures(
    user_ids: np.ndarray,
    item_rows: np.ndarray,
    groups: np.ndarray,
    category_codes: np.ndarray,
    num_categories: int,
) -> dict[str, Exposure]:
    """One :class:`Exposure` per group (A/B arm, policy) of logged impressions.

    Args:
        user_ids: [m] the user of each impression (any hashable ids).
        item_rows: [m] int64 catalog row of each impression's item.
        groups: [m] the group of each impression.
        category_codes: [N] int64 categories of the catalog; num_categories: C.
    """
    user_ids, groups = np.asarray(user_ids).astype(str), np.asarray(groups).astype(str)
    item_rows = np.asarray(item_rows, np.int64)
    if not (user_ids.shape == item_rows.shape == groups.shape) or user_ids.ndim != 1:
        raise DataError(
            f"exposure log: users {user_ids.shape}, items {item_rows.shape}, groups {groups.shape}"
        )
    out = {}
    for group in np.unique(groups):
        mask = groups == group
        _, users = np.unique(user_ids[mask], return_inverse=True)
        out[str(group)] = Exposure(
            user=users.astype(np.int64),
            item=item_rows[mask],
            num_users=int(users.max()) + 1,
            category_codes=np.asarray(category_codes, np.int64),
            num_categories=num_categories,
        )
    return out


def request_lists(
    request_ids: np.ndarray, item_rows: np.ndarray, positions: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Logged impressions → one list per request.

    Args:
        request_ids: [m] request of each impression; item_rows: [m] int64; positions: [m] slate position.

    Returns:
        ([R] the first impression index of each request (to look up its user), [R, k] int64 item rows in
        position order, -1 padded).
    """
    request_ids = np.asarray(request_ids).astype(str)
    positions = np.asarray(positions, np.int64)
    if len(positions) and positions.min() < 0:
        raise DataError("exposure log: positions must be >= 0")
    _, first, request = np.unique(request_ids, return_index=True, return_inverse=True)
    width = int(positions.max()) + 1 if len(positions) else 1
    lists = np.full((len(first), width), -1, np.int64)
    lists[request, positions] = np.asarray(item_rows, np.int64)
    return first, lists
