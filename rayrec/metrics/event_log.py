"""Beyond-accuracy metrics of an event log: what a server (or a simulated A/B test) actually showed.

Every impression row of the log (``request_id``, ``user_id``, ``arm``, ``policy``, ``item_id``, ``position``)
is one item shown at one slate position. Grouped by arm or policy, the log gives each group's
:class:`rayrec.metrics.beyond.Exposure` (coverage, exposure Gini over items and categories, bootstrap over
users) and each request's list (intra-list diversity in the catalog's embedding space, novelty from the
catalog's popularity counts; per user the mean over their requests, Student-t over users). Calibration
needs each user's history, which the log does not hold, so it is not reported from logs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from rayrec.errors import DataError
from rayrec.metrics.beyond import (
    Exposure,
    encode_categories,
    group_exposures,
    intra_list_diversity,
    novelty,
    request_lists,
    self_information,
)
from rayrec.metrics.session import mean_interval, namespaced

GROUPINGS = ("arm", "policy")


@dataclass(frozen=True)
class CatalogView:
    """The catalog the logged items come from (N items, d dims).

    Attributes:
        item_ids: [N] str.
        embeddings: [N, d] float32 (the encoder's space).
        popularity_counts: [N] float64 interaction counts (novelty).
        categories: [N] str or None (category exposure; None: one category).
    """

    item_ids: np.ndarray
    embeddings: np.ndarray
    popularity_counts: np.ndarray
    categories: np.ndarray | None = None

    def rows(self, item_ids: np.ndarray, where: str) -> np.ndarray:
        """[m] catalog row of each id; ids outside the catalog → DataError with a count and an example."""
        position = {item: row for row, item in enumerate(np.asarray(self.item_ids).astype(str).tolist())}
        ids = np.asarray(item_ids).astype(str)
        rows = np.fromiter((position.get(i, -1) for i in ids.tolist()), dtype=np.int64, count=len(ids))
        if (rows < 0).any():
            raise DataError(
                f"{where}: {int((rows < 0).sum())} impressions name items outside the catalog "
                f"(e.g. {ids[rows < 0][0]!r}); give the index the log was written with"
            )
        return rows


def _column(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_pylist(), dtype=object)


def log_exposures(impressions: pa.Table, catalog: CatalogView, by: str = "arm") -> dict[str, Exposure]:
    """``{group: Exposure}`` of the impressions, grouped by ``by`` (``arm`` or ``policy``)."""
    if by not in GROUPINGS:
        raise DataError(f"group the log by one of {GROUPINGS}, not {by!r}")
    codes, names = encode_categories(catalog.categories, len(catalog.item_ids))
    rows = catalog.rows(_column(impressions, "item_id"), "event log")
    groups = np.asarray([str(g) for g in _column(impressions, by)], dtype=object)
    return group_exposures(_column(impressions, "user_id"), rows, groups, codes, len(names))


def log_metrics(
    impressions: pa.Table,
    catalog: CatalogView,
    by: str = "arm",
    resamples: int = 200,
    seed: int = 0,
    namespace: str | None = "sim",
) -> dict[str, dict]:
    """Per group: ``{"impressions", "requests", "users", NAME: {mean, ci95_low, ci95_high}}``.

    ``NAME`` is ``ild`` and ``novelty`` (per-user means of per-request values, Student-t over users) and
    ``coverage``, ``gini_items``, ``gini_categories`` (bootstrap over users); keys namespaced as
    ``namespace/NAME`` (the log of a simulated A/B test is ``sim``; a server's is live: pass None).
    """
    if impressions.num_rows == 0:
        raise DataError("event log: no impressions to measure")
    exposures = log_exposures(impressions, catalog, by)
    rows = catalog.rows(_column(impressions, "item_id"), "event log")
    requests = _column(impressions, "request_id")
    positions = impressions.column("position").to_numpy(zero_copy_only=False)
    users = np.asarray([str(u) for u in _column(impressions, "user_id")], dtype=object)
    groups = np.asarray([str(g) for g in _column(impressions, by)], dtype=object)
    information = self_information(catalog.popularity_counts)
    out = {}
    for group, exposure in exposures.items():
        mask = groups == group
        first, lists = request_lists(requests[mask], rows[mask], positions[mask])
        valid = lists >= 0
        ild = intra_list_diversity(np.asarray(catalog.embeddings)[np.maximum(lists, 0)], valid)
        nov = novelty(lists, information)
        _, user = np.unique(users[mask][first].astype(str), return_inverse=True)
        per_request = max(int(user.max()) + 1, 1)
        count = np.bincount(user, minlength=per_request)
        metrics = {
            namespaced(name, namespace): mean_interval(
                np.bincount(user, weights=v, minlength=per_request) / count
            )
            for name, v in (("ild", ild), ("novelty", nov))
        }
        out[group] = {
            "impressions": int(mask.sum()),
            "requests": len(first),
            "users": exposure.num_users,
            **metrics,
            **exposure.summary(namespace, resamples, seed),
        }
    return out
