"""From an event log to :class:`rayrec.ab.ope.LoggedSlates`: the target policy replayed on logged requests.

Each logged request's observation is rebuilt exactly as the ranker saw it: ``profile``, ``features`` and
``budget`` from the requests table (:mod:`rayrec.ab.request_log`), candidate embeddings from the item
index by ``candidate_ids``. The target policy's item-position marginals on that observation, the logging
propensities of the impressions and the click feedback then give the estimators their inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from rayrec.ab.click_model import fit_click_model
from rayrec.ab.ope import LoggedSlates
from rayrec.ab.request_log import feature_tensor, list_column, read_requests
from rayrec.errors import DataError
from rayrec.events import read_feedback, read_impressions
from rayrec.policy import SlatePolicy

REPLAY_BATCH = 4096
"""Requests whose observations are rebuilt and scored by the target policy at once."""


@dataclass(frozen=True)
class ItemLookup:
    """Item embeddings by id: an index's or a simulator catalog's.

    Attributes:
        item_ids: [N] str.
        embeddings: [N, d] float32 normalised.
    """

    item_ids: np.ndarray
    embeddings: np.ndarray

    def rows(self, item_ids: np.ndarray) -> np.ndarray:
        """[m] catalog rows of ``item_ids`` [m] (-1 for unknown ids)."""
        position = pd.Index(np.asarray(self.item_ids).astype(str))
        return position.get_indexer(np.asarray(item_ids).astype(str)).astype(np.int64)


@dataclass(frozen=True)
class LoggedData:
    """What :func:`load_logged_slates` returns: the estimator inputs and a summary of the log."""

    slates: LoggedSlates
    requests: int
    users: int
    logging_policies: dict[str, int]
    """Requests per logging policy."""


def _check_propensities(impressions) -> None:
    prop = impressions.column("propensity").to_numpy(zero_copy_only=False).astype(np.float64)
    bad = ~(np.isfinite(prop) & (prop > 0) & (prop <= 1))
    if bad.any():
        raise DataError(
            f"event log: {int(bad.sum())} of {len(prop)} impressions have no usable propensity (NaN, <= 0 or > 1); "
            "off-policy evaluation needs the logging policy's probability of every shown item "
            "(a --url client's log cannot know them: use the server's event log)"
        )
    if (prop == 1.0).all():
        raise DataError(
            "event log: every propensity is 1.0, so the logging policy was deterministic and explored nothing; "
            "off-policy estimates of another policy are undefined (log with a randomised policy, e.g. random)"
        )


@dataclass(frozen=True)
class EventTables:
    """An event log read and checked for off-policy use: impressions, feedback and the requests table."""

    directory: str
    impressions: pa.Table
    feedback: pa.Table
    requests: pa.Table


def read_event_log(events_dir: str) -> EventTables:
    """Read the log under ``events_dir`` and check that it can support off-policy estimates.

    Raises:
        DataError: no impressions, unusable propensities, or no requests table.
    """
    impressions = read_impressions(events_dir)
    if impressions.num_rows == 0:
        raise DataError(f"{events_dir}: the event log has no impressions")
    _check_propensities(impressions)
    return EventTables(events_dir, impressions, read_feedback(events_dir), read_requests(events_dir))


def load_logged_slates(
    log: EventTables, target: SlatePolicy, items: ItemLookup, *, ridge: float = 1e-4
) -> LoggedData:
    """Replay ``target`` on the requests of ``log``.

    Raises:
        DataError: impressions without a request row or not among its candidates, or candidates that
            are not in ``items``.
    """
    events_dir, impressions, requests = log.directory, log.impressions, log.requests
    candidate_ids = list_column(requests, "candidate_ids")  # [n, K]
    n, big_k = candidate_ids.shape
    features = feature_tensor(requests, big_k)  # [n, K, F]
    profile = list_column(requests, "profile").astype(np.float32)  # [n, d]
    budget = requests.column("budget").to_numpy().astype(np.float32)[:, None]  # [n, 1]
    request_ids = np.asarray(requests.column("request_id").to_pylist(), dtype=object)
    if len(set(request_ids.tolist())) != n:
        raise DataError(f"{events_dir}: the requests table repeats request ids")

    # Impression → (request row, candidate index) through the request's own candidate list.
    cand = pd.DataFrame(
        {
            "request_id": np.repeat(request_ids, big_k),
            "item_id": candidate_ids.ravel(),
            "candidate": np.tile(np.arange(big_k), n),
        }
    )
    cand["row"] = np.repeat(np.arange(n), big_k)
    imp = impressions.select(["request_id", "item_id", "position", "propensity"]).to_pandas()
    merged = imp.merge(cand, on=["request_id", "item_id"], how="left")
    orphans = int(merged["row"].isna().sum())
    if orphans:
        raise DataError(
            f"{events_dir}: {orphans} impressions have no matching request row or are not among its candidates"
        )
    fb = log.feedback.to_pandas()
    clicks = fb[fb["event"] == "click"].groupby(["request_id", "item_id"], as_index=False)["value"].sum()
    merged = merged.merge(clicks, on=["request_id", "item_id"], how="left")

    rows = merged["row"].to_numpy(np.int64)
    position = merged["position"].to_numpy(np.int64)
    slate_size = np.zeros(n, np.int64)
    np.maximum.at(slate_size, rows, position + 1)
    k_max = int(slate_size.max())
    shown = np.zeros((n, k_max), np.int64)
    mask = np.zeros((n, k_max), bool)
    propensity = np.ones((n, k_max))
    reward = np.zeros((n, k_max))
    shown[rows, position] = merged["candidate"].to_numpy(np.int64)
    mask[rows, position] = True
    propensity[rows, position] = merged["propensity"].to_numpy(np.float64)
    reward[rows, position] = merged["value"].fillna(0.0).to_numpy(np.float64)

    cand_rows = items.rows(candidate_ids.ravel()).reshape(n, big_k)  # [n, K]
    if (cand_rows < 0).any():
        missing = candidate_ids[cand_rows < 0]
        raise DataError(
            f"{events_dir}: {len(missing)} logged candidates are not in the item index (e.g. {missing[:3].tolist()}); "
            "pass the index the log was written with"
        )
    embeddings = items.embeddings[cand_rows]  # [n, K, d]
    marginals = np.zeros((n, k_max, big_k), np.float32)  # [n, k, K]
    for size in np.unique(slate_size):
        group = np.flatnonzero(slate_size == size)
        for start in range(0, len(group), REPLAY_BATCH):
            sel = group[start : start + REPLAY_BATCH]
            obs = {
                "profile": profile[sel],
                "candidates": embeddings[sel],
                "features": features[sel],
                "budget": budget[sel],
            }
            marginals[sel, :size] = target.position_marginals(obs, int(size))  # [b, size, K]
    model = fit_click_model(features, embeddings, shown, reward, mask, ridge=ridge)
    users = np.unique(np.asarray(requests.column("user_id").to_pylist()), return_inverse=True)[1]
    policies = pd.Series(requests.column("policy").to_pylist()).value_counts()
    return LoggedData(
        slates=LoggedSlates(
            user_index=users.astype(np.int64),
            shown=shown,
            mask=mask,
            logging_propensity=propensity,
            clicks=reward,
            target_marginals=marginals.astype(np.float64),
            predicted_clicks=model.predict(features, embeddings),
        ),
        requests=n,
        users=int(users.max()) + 1,
        logging_policies={str(k): int(v) for k, v in policies.items()},
    )
