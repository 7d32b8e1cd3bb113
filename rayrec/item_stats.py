"""Per-item statistics of a log: click-through rate, watch time per click, and lift.

A service never reads its items' hidden traits; it logs how users reacted and aggregates the log per item.
Three statistics (:data:`rayrec.features.ITEM_LOG_FEATURES` and :data:`rayrec.features.ITEM_LIFT`):

- ``item_ctr``: clicks per impression, shrunk to the log's mean.
- ``item_watch``: watch time per click (divided by the longest watch), shrunk to the log's mean.
- ``item_lift``: the mean change in completion rate from a click on the item to the same user's next click,
  what consuming the item does to the user, shrunk toward what the first two predict.

Two logs reduce to the same counts and go through the same functions here: the simulator's exploration
log (:func:`envs.item_log.item_log_features`, the columns ``observe_item_log`` and ``observe_lift`` append)
and a server's event log (:func:`event_log_item_counts`, which ``rayrec build-index --item-log`` stores in
the index so the server builds the same columns). The completion rate of a click is known at the user's
next request: the simulator's observation shows it as ``last_engagement``, a client sends it as
``last_click`` and the server logs it in the request's row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

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
    CLICK_PRIOR_COUNT,
    IMPRESSION_PRIOR_COUNT,
    LIFT_PRIOR_COUNT,
    shrunk_mean,
)


def lift_totals(
    num_items: int, users: np.ndarray, items: np.ndarray, completions: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per item, the summed changes in completion rate from a click on it to the same user's next click.

    Args:
        num_items: N.
        users: [m] the user of each click whose completion rate is known.
        items: [m] the clicked item (a row of the catalog).
        completions: [m] float64 the click's completion rate.
        The clicks are in time order; each pairs with the same user's click before it.

    Returns:
        ([N] float64 summed changes, [N] float64 how many were measured).
    """
    order = np.argsort(users, kind="stable")  # [m] each user's clicks together, still in time order
    follows = np.flatnonzero(users[order][1:] == users[order][:-1]) + 1  # positions preceded by the same user
    later, earlier = order[follows], order[follows - 1]  # [p] each pair's clicks
    chrono = np.argsort(later, kind="stable")  # add in the order the later clicks happened
    later, earlier = later[chrono], earlier[chrono]
    total, count = np.zeros((2, num_items))
    np.add.at(total, items[earlier], completions[later] - completions[earlier])
    np.add.at(count, items[earlier], 1.0)
    return total, count


def shrunk_to_prediction(
    total: np.ndarray, count: np.ndarray, covariates: np.ndarray, prior_count: float
) -> np.ndarray:
    """[N] each item's mean ``total / count`` shrunk toward a linear prediction from ``covariates``.

    The prediction is least squares of the items' means on ``[1, covariates]``, each item weighted by its
    ``count``; an item is then ``(total + prediction * m) / (count + m)`` with m = ``prior_count``: an item
    never measured gets what items with its covariates show, one measured often about its own mean (the
    empirical-Bayes estimate with covariates, Efron & Morris 1975).

    Args:
        total: [N] summed measurements per item; count: [N] how many.
        covariates: [N, C] what is known of every item (here its logged rates).
    """
    x = np.column_stack([np.ones(len(total)), covariates])  # [N, 1 + C]
    weight = np.sqrt(count)[:, None]  # [N, 1]
    mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)  # [N]
    beta, *_ = np.linalg.lstsq(x * weight, mean * weight[:, 0], rcond=None)  # [1 + C]
    return ((total + (x @ beta) * prior_count) / (count + prior_count)).astype(np.float32)


@dataclass(frozen=True)
class ItemCounts:
    """What a log holds per item, before any shrinkage. Every array is [N] float64.

    Attributes:
        impressions: times each item was shown.
        clicks: clicks on it.
        watch: summed watch time of those clicks, divided by the longest watch.
        lift_total: summed changes in completion rate after a click on it (:func:`lift_totals`).
        lift_count: how many such changes were measured.
    """

    impressions: np.ndarray
    clicks: np.ndarray
    watch: np.ndarray
    lift_total: np.ndarray
    lift_count: np.ndarray

    def statistics(self) -> np.ndarray:
        """[N, 3] float32 ``item_ctr``, ``item_watch``, ``item_lift`` (read-only).

        The rates are shrunk to the log's mean (:func:`rayrec.features.shrunk_mean`); the lift toward what
        the rates predict (:func:`shrunk_to_prediction`), since most items are clicked only a few times.
        """
        rates = np.stack(
            [
                shrunk_mean(self.clicks, self.impressions, IMPRESSION_PRIOR_COUNT),
                shrunk_mean(self.watch, self.clicks, CLICK_PRIOR_COUNT),
            ],
            axis=1,
        )  # [N, 2]
        lift = shrunk_to_prediction(self.lift_total, self.lift_count, rates, LIFT_PRIOR_COUNT)  # [N]
        features = np.column_stack([rates, lift]).astype(np.float32)  # [N, 3]
        features.flags.writeable = False
        return features

    def summary(self) -> dict[str, int]:
        """The log's size: impressions, clicks and measured lifts."""
        return {
            "impressions": int(self.impressions.sum()),
            "clicks": int(self.clicks.sum()),
            "lift_pairs": int(self.lift_count.sum()),
        }


def event_log_item_counts(
    events_dir: str, item_ids: np.ndarray, watch_scale: float = 1.0, policies: tuple[str, ...] = ()
) -> ItemCounts:
    """:class:`ItemCounts` of the items ``item_ids`` [N] in the event log under ``events_dir``.

    - Impressions: the impressions table's rows (only those of ``policies`` when given: exploration
      traffic shows items regardless of what a ranker thinks of them, so its rates are not the ranker's).
    - Clicks and watch time: the ``click`` feedback on those impressions; a click's ``value`` is its watch
      time (the API's engagement weight in [0, 1]), divided by ``watch_scale``.
    - Lift: each request's row holds the ``last_engagement`` its client sent, the completion rate of the
      user's click on the request before it. Every user's requests in time order
      (:data:`rayrec.events.USER_TIME_ORDER`, as :func:`rayrec.logs.reader.logged_requests` orders them),
      a request that follows a clicked one gives that click's completion rate; :func:`lift_totals` pairs
      them (all traffic).
    Items the log shows that ``item_ids`` lacks are left out.

    Raises:
        DataError: no impressions, no click on the items, or no completion rate to measure a lift with.
    """
    if not watch_scale > 0:
        raise DataError(f"item log: watch_scale must be positive, got {watch_scale}")
    position = pd.Index(np.asarray(item_ids).astype(str))
    impressions = read_impressions(events_dir).select(["request_id", "item_id", "policy"]).to_pandas()
    if policies:
        impressions = impressions[impressions["policy"].isin(policies)]
    impressions["row"] = position.get_indexer(impressions["item_id"].astype(str))
    impressions = impressions[impressions["row"] >= 0]
    where = storage.join(events_dir, IMPRESSIONS_DIR)
    if impressions.empty:
        which = f" of policies {list(policies)}" if policies else ""
        raise DataError(f"{where}: no impressions{which} of the index's items")
    num_items = len(position)
    feedback = read_feedback(events_dir).to_pandas()
    clicks = (
        feedback[feedback["event"] == "click"]
        .groupby(["request_id", "item_id"], as_index=False)
        .agg(value=("value", "sum"), ts=("ts", "max"))
        .merge(impressions[["request_id", "item_id", "row"]].drop_duplicates(), on=["request_id", "item_id"])
    )
    if clicks.empty:
        raise DataError(f"{storage.join(events_dir, FEEDBACK_DIR)}: no click on the impressions of {where}")
    shown = np.bincount(impressions["row"], minlength=num_items).astype(np.float64)
    clicked = np.bincount(clicks["row"], minlength=num_items).astype(np.float64)
    watch = np.bincount(clicks["row"], weights=clicks["value"] / watch_scale, minlength=num_items)
    total, count = _logged_lifts(events_dir, clicks, num_items)
    return ItemCounts(shown, clicked, watch, total, count)


def _logged_lifts(events_dir: str, clicks: pd.DataFrame, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`lift_totals` of the completion rates the requests table holds
    (:func:`event_log_item_counts`)."""
    where = storage.join(events_dir, REQUESTS_DIR)
    requests = (
        read_requests(events_dir)
        .select(["request_id", "user_id", "ts", "budget", "last_engagement"])
        .sort_by(USER_TIME_ORDER)
        .to_pandas()
    )
    # a request's click: the latest one when a client reported several
    latest = clicks.sort_values("ts", kind="stable").drop_duplicates("request_id", keep="last")
    requests["clicked"] = (
        requests["request_id"].map(latest.set_index("request_id")["row"]).fillna(-1).astype(np.int64)
    )
    same_user = requests["user_id"].eq(requests["user_id"].shift())
    previous = requests["clicked"].shift(fill_value=-1).where(same_user, -1).astype(np.int64)
    if requests.empty:
        raise DataError(
            f"{where}: no requests table, which holds the completion rates (last_engagement) a lift is "
            "measured from: build the index from the server's events directory (an `ab --url` client logs no requests)"
        )
    arrived = (previous >= 0) & requests["last_engagement"].notna()
    if not arrived.any():
        raise DataError(
            f"{where}: no request reports the completion rate (last_engagement) of a click on the request "
            "before it, so no lift can be measured: clients send it as `last_click` with each request"
        )
    users = pd.factorize(requests["user_id"])[0]
    # chronological order across users: the lift pairs each click with its user's previous one either way
    return lift_totals(
        num_items,
        users[arrived.to_numpy()],
        previous[arrived].to_numpy(),
        requests.loc[arrived, "last_engagement"].to_numpy(np.float64),
    )
