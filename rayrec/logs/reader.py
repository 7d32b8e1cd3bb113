"""From an event log to :class:`rayrec.logs.requests.LoggedRequests`: every ranked request as its ranker saw it.

Each logged request's observation is rebuilt exactly as the ranker saw it: ``profile``, ``features`` and
``budget`` from the requests table (:mod:`rayrec.events`), candidate embeddings from the item index by
``candidate_ids``, a server's session feedback (the request-level ``last_engagement``, ``last_click_rating``
and ``satisfaction_estimate``) as the feature columns a policy trained with them reads
(:func:`with_session_feedback`), and over an index with an item log each candidate's ``item_ctr``,
``item_watch`` and ``item_lift`` from the index (:class:`ItemLookup`), as the server gave them.
Its impressions give the slate and the logged propensities, its click feedback the rewards; a user's requests
are put in time order (``ts``, then decreasing ``budget``).

Requests marked ``fallback`` (a server's cold-start list: no arm's policy ranked them, and no policy
under test would) are left out, with their impressions and feedback, and counted.

Every problem with the log is one :class:`rayrec.errors.DataError` line naming the table (or part file)
and what is missing: an empty log, part files that are not rayrec's (columns missing), a truncated log
(impressions whose request rows are missing, requests without impressions, gaps in a slate's positions),
or requests that do not fit the index (candidates it does not hold, profiles of another dimension).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from rayrec import storage
from rayrec.errors import DataError
from rayrec.events import (
    FEEDBACK_DIR,
    IMPRESSIONS_DIR,
    REQUESTS_DIR,
    USER_TIME_ORDER,
    read_feedback,
    read_impressions,
    read_requests,
)
from rayrec.features import (
    ITEM_LIFT,
    ITEM_STATISTICS,
    LAST_CLICK_RATING,
    LAST_ENGAGEMENT,
    NUM_FEATURES,
    SATISFACTION_ESTIMATE,
    feature_names,
)
from rayrec.logs.requests import LoggedRequests

SIMULATOR_FILE = "simulator.yaml"
"""The simulator config a simulated log was written in, next to its tables (``EVENTS/simulator.yaml``):
the catalog its candidates are looked up in."""


@dataclass(frozen=True)
class ItemLookup:
    """Item embeddings by id: an index's or a simulator catalog's.

    Attributes:
        item_ids: [N] str.
        embeddings: [N, d] float32 normalised.
        feature_names: the per-candidate features a simulated log holds (its simulator's
            ``SlateEnvConfig.feature_names``); None for a server's log, whose features are named by their
            number (:func:`logged_features`).
        item_log: [N, 3] float32 each item's ``item_ctr``, ``item_watch``, ``item_lift`` (an index built with
            ``--item-log``), which a server gave its rankers and does not log per candidate; None otherwise.
    """

    item_ids: np.ndarray
    embeddings: np.ndarray
    feature_names: tuple[str, ...] | None = None
    item_log: np.ndarray | None = None

    def rows(self, item_ids: np.ndarray) -> np.ndarray:
        """[m] catalog rows of ``item_ids`` [m] (-1 for unknown ids)."""
        position = pd.Index(np.asarray(self.item_ids).astype(str))
        return position.get_indexer(np.asarray(item_ids).astype(str)).astype(np.int64)


def list_column(table: pa.Table, name: str, where: str, width: int | None = None) -> np.ndarray:
    """A list column of equal-length rows as a [n, width] array (DataError naming ``where`` otherwise)."""
    column = table.column(name).combine_chunks()
    lengths = column.value_lengths().to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths.min() != lengths.max() or (width is not None and lengths[0] != width)):
        want = f"{width}" if width is not None else "equal"
        raise DataError(
            f"{where}: column {name!r} needs {want} values per row, found {lengths.min()}..{lengths.max()}"
        )
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(len(table), int(lengths[0]) if len(lengths) else 0)


def logged_features(
    requests: pa.Table, big_k: int, names: tuple[str, ...] | None, where: str
) -> tuple[np.ndarray, tuple[str, ...]]:
    """The requests table's ``features`` as [n, K, F] float32, and their names.

    ``names`` (a simulated log's) must match every row. A server logs :data:`rayrec.features.FEATURE_NAMES`,
    and ``item_rating`` after them over a rated index (:func:`serving.pipeline.observe`), so
    without ``names`` a row's width says which; a log whose rows differ (a server restarted over an index
    with ratings) keeps the features every row has.

    Raises:
        DataError: a row whose length is not K times a feature count the log can hold.
    """
    column = requests.column("features").combine_chunks()
    lengths = column.value_lengths().to_numpy(zero_copy_only=False)  # [n]
    values = column.flatten().to_numpy(zero_copy_only=False)
    offsets = column.offsets.to_numpy()
    offsets = offsets[:-1] - offsets[0]  # [n] where each row's values start in ``values``
    allowed = {len(names)} if names is not None else {NUM_FEATURES, NUM_FEATURES + 1}
    widths = lengths // max(big_k, 1)
    bad = (widths * big_k != lengths) | ~np.isin(widths, sorted(allowed))
    if bad.any():
        raise DataError(
            f"{where}: column 'features' has {int(lengths[bad][0])} values in a row of {big_k} candidates; "
            f"expected {' or '.join(str(big_k * w) for w in sorted(allowed))} "
            f"({' or '.join(str(w) for w in sorted(allowed))} features per candidate)"
        )
    width = int(widths.min()) if len(widths) else NUM_FEATURES
    if names is None:
        names = feature_names(rating=width == NUM_FEATURES + 1)
    keep = np.arange(width)
    features = np.empty((len(lengths), big_k, width), dtype=np.float32)
    for w in np.unique(widths):  # one vectorised gather per row width
        rows = np.flatnonzero(widths == w)
        at = offsets[rows, None, None] + np.arange(big_k)[None, :, None] * w + keep[None, None, :]
        features[rows] = values[at]
    return features, tuple(names)


def with_session_feedback(
    requests: pa.Table, features: np.ndarray, names: tuple[str, ...]
) -> tuple[np.ndarray, tuple[str, ...]]:
    """``features`` [n, K, F] with the requests' logged session feedback appended as feature columns.

    A server logs each request's :data:`rayrec.features.LAST_ENGAGEMENT` and (over a rated index)
    :data:`rayrec.features.LAST_CLICK_RATING` once per request (:data:`rayrec.events.REQUESTS_SCHEMA`), not
    per candidate; a policy trained with ``observe_feedback`` / ``observe_last_click`` reads them in every
    candidate's row, as the simulator and the server show them; over an index with an item log it also logs
    :data:`rayrec.features.SATISFACTION_ESTIMATE`. A column is appended when some row logged it (a row from
    before it, null, reads as 0: a request without a last click); a simulated log, whose features already
    hold the simulator's columns, logs none of them twice.

    Returns:
        ([n, K, F + m] float32, their names), m the columns appended (0 to 3).
    """
    for name in (LAST_ENGAGEMENT, LAST_CLICK_RATING, SATISFACTION_ESTIMATE):
        if name in names or name not in requests.column_names:
            continue
        column = requests.column(name)
        if column.null_count == len(column):
            continue
        values = column.fill_null(0.0).to_numpy().astype(np.float32)  # [n]
        column_values = np.broadcast_to(values[:, None, None], (*features.shape[:2], 1))  # [n, K, 1]
        features, names = np.concatenate([features, column_values], axis=-1), (*names, name)
    return features, names


def _check_complete(table: pa.Table, where: str) -> None:
    """DataError when rows lack required columns (part files another program wrote read back as nulls)."""
    missing = [
        field.name for field in table.schema if not field.nullable and table.column(field.name).null_count
    ]
    if missing:
        raise DataError(
            f"{where}: {table.column(missing[0]).null_count} of {table.num_rows} rows lack {missing}: "
            "part files that were not written by rayrec's event log (a foreign or damaged log)"
        )


def _check_propensities(impressions: pa.Table, where: str) -> None:
    """DataError unless every impression has a propensity in (0, 1]."""
    prop = impressions.column("propensity").to_numpy(zero_copy_only=False).astype(np.float64)
    bad = ~(np.isfinite(prop) & (prop > 0) & (prop <= 1))
    if bad.any():
        raise DataError(
            f"{where}: {int(bad.sum())} of {len(prop)} impressions have no usable propensity (NaN, <= 0 or > 1); "
            "off-policy evaluation needs the logging policy's probability of every shown item "
            "(log with `rayrec serve` or `rayrec ab`, whose rankers record them)"
        )


def _check_explored(impressions: pa.Table, where: str) -> None:
    """DataError when the logging policies were all deterministic (nothing to weight)."""
    if pc.all(pc.equal(impressions.column("propensity"), 1.0)).as_py():
        raise DataError(
            f"{where}: every propensity is 1.0, so the logging policies were deterministic and explored "
            "nothing; off-policy estimates of another policy are undefined (add a randomised arm, e.g. random)"
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
        DataError: no impressions, foreign part files, unusable propensities, no requests table.
    """
    where = {kind: storage.join(events_dir, kind) for kind in (IMPRESSIONS_DIR, REQUESTS_DIR, FEEDBACK_DIR)}
    impressions = read_impressions(events_dir)
    if impressions.num_rows == 0:
        raise DataError(f"{where[IMPRESSIONS_DIR]}: no impressions (an empty event log)")
    _check_complete(impressions, where[IMPRESSIONS_DIR])
    _check_propensities(impressions, where[IMPRESSIONS_DIR])
    requests = read_requests(events_dir)
    if requests.num_rows == 0:
        _check_explored(impressions, where[IMPRESSIONS_DIR])  # the more basic problem of the two
        raise DataError(
            f"{where[REQUESTS_DIR]}: no requests table (part-*.parquet) with the logged candidates; "
            "off-policy evaluation needs the candidate set of each request, which `rayrec serve` and "
            "`rayrec ab` log (an `ab --url` client's log has none: use the server's events directory)"
        )
    _check_complete(requests, where[REQUESTS_DIR])
    feedback = read_feedback(events_dir)
    _check_complete(feedback, where[FEEDBACK_DIR])
    fallback = requests.column("fallback")
    left_out = requests.filter(fallback).column("request_id")
    if len(left_out):
        requests = requests.filter(pc.invert(fallback))
        impressions = impressions.filter(pc.invert(pc.is_in(impressions.column("request_id"), left_out)))
        feedback = feedback.filter(pc.invert(pc.is_in(feedback.column("request_id"), left_out)))
        if requests.num_rows == 0:
            raise DataError(
                f"{where[REQUESTS_DIR]}: all {len(left_out)} logged requests were answered by the cold-start "
                "fallback; no policy ranked anything to evaluate"
            )
    _check_explored(impressions, where[IMPRESSIONS_DIR])
    return EventTables(events_dir, impressions, feedback, requests, len(left_out))


def _examples(values) -> str:
    return ", ".join(map(str, list(values)[:3]))


def logged_requests(log: EventTables, items: ItemLookup) -> LoggedRequests:
    """The ranked requests of ``log`` with their candidates looked up in ``items``.

    Raises:
        DataError: a truncated or inconsistent log, or requests that do not fit ``items`` (module docstring).
    """
    where_requests = storage.join(log.directory, REQUESTS_DIR)
    where_impressions = storage.join(log.directory, IMPRESSIONS_DIR)
    requests = log.requests.sort_by(USER_TIME_ORDER)
    request_ids = np.asarray(requests.column("request_id").to_pylist(), dtype=object)
    n = len(request_ids)
    if len(set(request_ids.tolist())) != n:
        raise DataError(f"{where_requests}: request ids repeat (the log holds some requests twice)")
    candidate_ids = list_column(requests, "candidate_ids", where_requests)  # [n, K]
    big_k = candidate_ids.shape[1]
    features, features_named = with_session_feedback(
        requests, *logged_features(requests, big_k, items.feature_names, where_requests)
    )
    profile = list_column(requests, "profile", where_requests).astype(np.float32)  # [n, d]
    dim = items.embeddings.shape[1]
    if profile.shape[1] != dim:
        raise DataError(
            f"{where_requests}: profiles have {profile.shape[1]} dims but the item embeddings {dim}: "
            "pass the index the log was written with"
        )
    rows = items.rows(candidate_ids.ravel()).reshape(n, big_k)  # [n, K]
    if (rows < 0).any():
        missing = candidate_ids[rows < 0]
        raise DataError(
            f"{where_requests}: {len(missing)} logged candidates are not in the item index (e.g. "
            f"{_examples(missing)}); pass the index the log was written with"
        )
    if items.item_log is not None and ITEM_LIFT not in features_named:  # as the server gave them
        features = np.concatenate([features, items.item_log[rows].astype(np.float32)], axis=-1)
        features_named = (*features_named, *ITEM_STATISTICS)

    # Impression → (request row, candidate index) through the request's own candidate list.
    imp = log.impressions.select(["request_id", "item_id", "position", "propensity"]).to_pandas()
    row_of = pd.Series(np.arange(n), index=pd.Index(request_ids))
    imp["row"] = row_of.reindex(imp["request_id"].to_numpy()).to_numpy()
    lost = imp["row"].isna()
    if lost.any():
        raise DataError(
            f"{where_requests}: {int(lost.sum())} impressions belong to requests the table does not hold "
            f"(e.g. {_examples(imp.loc[lost, 'request_id'].unique())}): a truncated log (part files missing, "
            "or unreadable and skipped)"
        )
    imp["row"] = imp["row"].astype(np.int64)
    cand = pd.DataFrame(
        {
            "row": np.repeat(np.arange(n), big_k),
            "item_id": candidate_ids.ravel(),
            "candidate": np.tile(np.arange(big_k), n),
        }
    )
    merged = imp.merge(cand, on=["row", "item_id"], how="left")
    if merged["candidate"].isna().any():
        bad = merged.loc[merged["candidate"].isna(), "request_id"].unique()
        raise DataError(
            f"{where_impressions}: impressions of {len(bad)} requests show items that are not among the "
            f"request's candidates (e.g. {_examples(bad)}): the log mixes two runs"
        )
    row, position = merged["row"].to_numpy(np.int64), merged["position"].to_numpy(np.int64)
    slate_size = np.bincount(row, minlength=n)
    unshown = np.flatnonzero(slate_size == 0)
    if len(unshown):
        raise DataError(
            f"{where_impressions}: {len(unshown)} requests have no impressions (e.g. "
            f"{_examples(request_ids[unshown])}): a truncated log (part files missing, or unreadable and skipped)"
        )
    valid = (position >= 0) & (position < slate_size[row])
    seen = np.zeros((n, int(slate_size.max())), dtype=np.int64)
    np.add.at(seen, (row[valid], position[valid]), 1)
    width = seen.shape[1]
    broken = (seen != (np.arange(width) < slate_size[:, None])).any(axis=1)
    if not valid.all() or broken.any():
        bad = np.union1d(merged.loc[~valid, "request_id"].unique(), request_ids[broken])
        raise DataError(
            f"{where_impressions}: the positions of {len(bad)} requests are not 0..k-1 once each (e.g. "
            f"{_examples(bad)}): a damaged log"
        )
    fb = log.feedback.to_pandas()
    clicks = fb[fb["event"] == "click"].groupby(["request_id", "item_id"], as_index=False)["value"].sum()
    value = merged.merge(clicks, on=["request_id", "item_id"], how="left")["value"].fillna(0.0)

    shown = np.zeros((n, width), np.int64)
    propensity = np.ones((n, width))
    reward = np.zeros((n, width))
    shown[row, position] = merged["candidate"].to_numpy(np.int64)
    propensity[row, position] = merged["propensity"].to_numpy(np.float64)
    reward[row, position] = value.to_numpy(np.float64)
    users = np.unique(np.asarray(requests.column("user_id").to_pylist()), return_inverse=True)[1]
    names, logger = np.unique(
        np.asarray(requests.column("policy").to_pylist(), dtype=str), return_inverse=True
    )
    return LoggedRequests(
        user=users.astype(np.int64),
        logger=logger.astype(np.int64),
        logger_names=tuple(names.tolist()),
        candidates=rows,
        item_embeddings=np.asarray(items.embeddings, dtype=np.float32),
        features=features,
        profile=profile,
        budget=requests.column("budget").to_numpy().astype(np.float32)[:, None],
        shown=shown,
        mask=np.arange(width) < slate_size[:, None],
        propensity=propensity,
        reward=reward,
        source=str(log.directory),
        feature_names=features_named,
    )
