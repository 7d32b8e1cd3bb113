"""From an event log to :class:`rayrec.ab.ope.LoggedSlates`: the target policy replayed on logged requests.

Each logged request's observation is rebuilt exactly as the ranker saw it: ``profile``, ``features`` and
``budget`` from the requests table (:mod:`rayrec.events`), candidate embeddings from the item index by
``candidate_ids``. The target policy's item-position marginals on that observation, the logging
propensities of the impressions and the click feedback then give the estimators their inputs.

Requests marked ``fallback`` (a server's cold-start list: no arm's policy ranked them, and no policy
under test would) are left out, with their impressions and feedback, and counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from rayrec.ab.ope import LoggedSlates
from rayrec.ab.reward_model import fit_reward_model
from rayrec.errors import DataError
from rayrec.events import REQUESTS_DIR, read_feedback, read_impressions, read_requests
from rayrec.features import NUM_FEATURES
from rayrec.slate_policy import SlatePolicy

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
    fallback_requests: int = 0
    """Requests left out because the server's cold-start fallback answered them."""


def list_column(table: pa.Table, name: str, width: int | None = None) -> np.ndarray:
    """A list column of equal-length rows as a [n, width] array (DataError naming the column otherwise)."""
    column = table.column(name).combine_chunks()
    lengths = column.value_lengths().to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths.min() != lengths.max() or (width is not None and lengths[0] != width)):
        want = f"{width}" if width is not None else "equal"
        raise DataError(
            f"requests table: column {name!r} needs {want} lengths per row, found {lengths.min()}..{lengths.max()}"
        )
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(len(table), int(lengths[0]) if len(lengths) else 0)


def feature_tensor(table: pa.Table, num_candidates: int) -> np.ndarray:
    """[n, K, F] candidate features of every request."""
    return list_column(table, "features", num_candidates * NUM_FEATURES).reshape(
        len(table), num_candidates, NUM_FEATURES
    )


def _check_propensities(impressions) -> None:
    """DataError unless every impression has a propensity in (0, 1]."""
    prop = impressions.column("propensity").to_numpy(zero_copy_only=False).astype(np.float64)
    bad = ~(np.isfinite(prop) & (prop > 0) & (prop <= 1))
    if bad.any():
        raise DataError(
            f"event log: {int(bad.sum())} of {len(prop)} impressions have no usable propensity (NaN, <= 0 or > 1); "
            "off-policy evaluation needs the logging policy's probability of every shown item "
            "(log with `rayrec serve` or `rayrec ab`, whose rankers record them)"
        )


def _check_explored(impressions) -> None:
    """DataError when the logging policies were all deterministic (nothing to weight)."""
    if pc.all(pc.equal(impressions.column("propensity"), 1.0)).as_py():
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
    fallback_requests: int = 0
    """Requests (with their impressions and feedback) left out: answered by a cold-start fallback."""


def read_event_log(events_dir: str) -> EventTables:
    """Read the log under ``events_dir`` and check that it can support off-policy estimates.

    Raises:
        DataError: no impressions, unusable propensities, or no requests table.
    """
    impressions = read_impressions(events_dir)
    if impressions.num_rows == 0:
        raise DataError(f"{events_dir}: the event log has no impressions")
    _check_propensities(impressions)
    requests = read_requests(events_dir)
    if requests.num_rows == 0:
        _check_explored(impressions)  # the more basic problem of the two, when both hold
        raise DataError(
            f"{events_dir}: no requests table ({REQUESTS_DIR}/part-*.parquet) with the logged candidates; "
            "off-policy evaluation needs the candidate set of each request, which `rayrec serve` and "
            "`rayrec ab` log (an `ab --url` client's log has none: use the server's events directory)"
        )
    feedback = read_feedback(events_dir)
    fallback = requests.column("fallback")
    left_out = requests.filter(fallback).column("request_id")
    if len(left_out):
        requests = requests.filter(pc.invert(fallback))
        impressions = impressions.filter(pc.invert(pc.is_in(impressions.column("request_id"), left_out)))
        feedback = feedback.filter(pc.invert(pc.is_in(feedback.column("request_id"), left_out)))
        if requests.num_rows == 0:
            raise DataError(
                f"{events_dir}: all {len(left_out)} logged requests were answered by the cold-start fallback; "
                "no policy ranked anything to evaluate"
            )
    _check_explored(impressions)
    return EventTables(events_dir, impressions, feedback, requests, len(left_out))


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
    model = fit_reward_model(features, embeddings, shown, reward, mask, ridge=ridge)
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
        fallback_requests=log.fallback_requests,
    )
