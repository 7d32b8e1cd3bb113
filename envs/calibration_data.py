"""What calibration fits to: logged slates (impressions) and logged interactions, split into sessions and users.

Two kinds of logs reach calibration:

- :class:`SlateLog`: one row per request — the user's observed profile, the slate shown (catalog rows by
  position) and the clicked position. rayrec's own event log has all of it (``requests`` hold the profile,
  ``impressions`` the positions, ``feedback`` the clicks: :func:`slate_log_from_events`); a simulated log
  is recorded from the rollout engine by :class:`SlateLogRecorder`.
- :class:`InteractionLog`: plain interactions (user, item, time), as in MovieLens: only the chosen items,
  with neither the slates they were chosen from nor the requests without a click.

Both are split into sessions the same way: a new session starts at a new user or after more than
:data:`SESSION_GAP` seconds without activity; in a slate log also where the session step starts again (the
request's ``budget`` feature ``1 - step / budget`` goes up). Users are split into train / validation / test
by :func:`envs.users.split_of_users` (a stable hash of the user id), the split the simulator's
``user_split`` uses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from envs.catalog import ItemCatalog
from envs.rollout import StepRecord
from envs.users import NO_ITEM, logged_columns
from rayrec.errors import DataError
from rayrec.events import read_feedback, read_impressions, read_requests

SESSION_GAP = 30 * 60
"""Seconds of inactivity that end a logged session."""


def session_starts(user: np.ndarray, time: np.ndarray, restart: np.ndarray | None = None) -> np.ndarray:
    """[n] True where a session starts, for rows sorted by user then time.

    Args:
        user: [n] user code per row.
        time: [n] seconds.
        restart: [n] bool, True where the log says a new session begins (e.g. the session step is back to 0).
    """
    start = np.r_[True, (user[1:] != user[:-1]) | (np.diff(time) > SESSION_GAP)]
    return start | restart if restart is not None else start


@dataclass(frozen=True)
class SlateLog:
    """Logged requests with their slates and clicks (n requests, k positions, d dims), sorted by user then time.

    Attributes:
        user_ids: [U] str the users' ids.
        user: [n] int64 index into ``user_ids``.
        session: [n] int64 session number, 0..S-1, increasing along the rows.
        step: [n] int64 0-based step of the request within its session.
        profile: [n, d] float32 the user's observed profile when the request was answered.
        slate: [n, k] int64 catalog rows shown, by position (:data:`envs.users.NO_ITEM` for an empty position).
        click: [n] int64 clicked position, -1 for none.
        time: [n] float64 seconds.
        policy: the name of the policy that logged most requests.
        days_known: whether the times between a user's sessions are real (else the days between sessions
            are unknown and returns' delays cannot be fitted).
        num_candidates: K, the candidates each slate was chosen from (0 when unknown).
    """

    user_ids: np.ndarray
    user: np.ndarray
    session: np.ndarray
    step: np.ndarray
    profile: np.ndarray
    slate: np.ndarray
    click: np.ndarray
    time: np.ndarray
    policy: str
    days_known: bool = True
    num_candidates: int = 0

    @property
    def size(self) -> int:
        return len(self.user)

    @property
    def slate_size(self) -> int:
        return int(self.slate.shape[1])

    @property
    def num_sessions(self) -> int:
        return int(self.session[-1]) + 1 if self.size else 0

    def clicked_items(self) -> np.ndarray:
        """[n] catalog row clicked per request, -1 for none."""
        rows = np.arange(self.size)
        return np.where(self.click >= 0, self.slate[rows, np.maximum(self.click, 0)], NO_ITEM)

    def session_lengths(self) -> np.ndarray:
        """[S] requests per session."""
        return np.bincount(self.session, minlength=self.num_sessions)

    def session_clicks(self) -> np.ndarray:
        """[S] clicks per session."""
        return np.bincount(self.session, weights=self.click >= 0, minlength=self.num_sessions)

    def position_ctr(self) -> np.ndarray:
        """[k] clicks per impression at each slate position."""
        shown = (self.slate >= 0).sum(axis=0)
        clicks = np.bincount(self.click[self.click >= 0], minlength=self.slate_size)
        return clicks / np.maximum(shown, 1)

    def take_users(self, keep: np.ndarray) -> SlateLog:
        """The rows of the users where ``keep`` [U] is True (sessions renumbered)."""
        rows = keep[self.user]
        _, session = np.unique(self.session[rows], return_inverse=True)
        return SlateLog(
            user_ids=self.user_ids,
            user=self.user[rows],
            session=session.astype(np.int64),
            step=self.step[rows],
            profile=self.profile[rows],
            slate=self.slate[rows],
            click=self.click[rows],
            time=self.time[rows],
            policy=self.policy,
            days_known=self.days_known,
            num_candidates=self.num_candidates,
        )


def _ordered_slate_log(
    user_ids: np.ndarray,
    user: np.ndarray,
    time: np.ndarray,
    restart: np.ndarray,
    profile: np.ndarray,
    slate: np.ndarray,
    click: np.ndarray,
    policy: str,
) -> SlateLog:
    """A :class:`SlateLog` from unordered rows: sorted by user, then time, then row order; sessions split."""
    order = np.lexsort((np.arange(len(user)), time, user))
    user, time, restart = user[order], time[order], restart[order]
    starts = session_starts(user, time, restart)
    session = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    step = np.arange(len(user)) - first[session]
    return SlateLog(
        user_ids=np.asarray(user_ids).astype(str),
        user=user.astype(np.int64),
        session=session.astype(np.int64),
        step=step.astype(np.int64),
        profile=np.ascontiguousarray(profile[order], dtype=np.float32),
        slate=slate[order].astype(np.int64),
        click=click[order].astype(np.int64),
        time=time.astype(np.float64),
        policy=policy,
    )


def _catalog_rows(catalog: ItemCatalog, item_ids: np.ndarray) -> np.ndarray:
    position = {item: i for i, item in enumerate(catalog.item_ids)}
    return np.fromiter((position.get(i, NO_ITEM) for i in item_ids), dtype=np.int64, count=len(item_ids))


def slate_log_from_events(catalog: ItemCatalog, events_dir: str) -> SlateLog:
    """The slates of a rayrec event log: requests (profiles), impressions (positions) and click feedback.

    Requests whose impressions name items outside ``catalog`` keep those positions empty; a click on an
    item that was not shown in its request is ignored. Raises DataError when the log has no request rows
    with impressions (a log written without ``requests`` has no profiles to fit to).
    """
    requests = read_requests(events_dir)
    impressions = read_impressions(events_dir)
    if impressions.num_rows == 0:
        raise DataError(f"event log {events_dir} has no impressions")
    if requests.num_rows == 0:
        raise DataError(
            f"event log {events_dir} has impressions but no requests table: the users' profiles are "
            "missing, so the choice model cannot be fitted to its slates"
        )
    request_ids = np.asarray(requests.column("request_id").to_pylist(), dtype=object)
    _, first = np.unique(request_ids, return_index=True)  # a request logged twice counts once
    first = np.sort(first)
    request_ids = request_ids[first]
    row_of = {r: i for i, r in enumerate(request_ids)}
    n = len(request_ids)

    imp_request = np.asarray(impressions.column("request_id").to_pylist(), dtype=object)
    imp_row = np.fromiter((row_of.get(r, -1) for r in imp_request), dtype=np.int64, count=len(imp_request))
    position = impressions.column("position").to_numpy().astype(np.int64)
    known = (imp_row >= 0) & (position >= 0)
    k = int(position[known].max()) + 1 if known.any() else 0
    if k == 0:
        raise DataError(f"event log {events_dir}: no impression belongs to a logged request")
    slate = np.full((n, k), NO_ITEM, np.int64)
    items = _catalog_rows(catalog, np.asarray(impressions.column("item_id").to_pylist(), dtype=str))
    slate[imp_row[known], position[known]] = items[known]

    click = np.full(n, -1, np.int64)
    feedback = read_feedback(events_dir)
    if feedback.num_rows:
        is_click = np.asarray(feedback.column("event").to_pylist(), dtype=object) == "click"
        fb_request = np.asarray(feedback.column("request_id").to_pylist(), dtype=object)[is_click]
        fb_row = np.fromiter((row_of.get(r, -1) for r in fb_request), dtype=np.int64, count=len(fb_request))
        fb_item = _catalog_rows(
            catalog, np.asarray(feedback.column("item_id").to_pylist(), dtype=str)[is_click]
        )
        ok = (fb_row >= 0) & (fb_item >= 0)
        hit = slate[fb_row[ok]] == fb_item[ok][:, None]  # [c, k]
        shown = hit.any(axis=1)
        # One click per request (the choice model's unit); a second click on one request is ignored.
        click[fb_row[ok][shown][::-1]] = hit[shown].argmax(axis=1)[::-1]

    profile = np.stack(requests.column("profile").to_numpy(zero_copy_only=False)[first]).astype(np.float32)
    if profile.shape[1] != catalog.dim:
        raise DataError(
            f"event log {events_dir}: profiles have {profile.shape[1]} dimensions, the catalog {catalog.dim}"
        )
    users = np.asarray(requests.column("user_id").to_pylist(), dtype=str)[first]
    user_ids, user = np.unique(users, return_inverse=True)
    time = requests.column("ts").to_numpy()[first].astype(np.float64)
    budget = requests.column("budget").to_numpy()[first].astype(np.float64)
    # The budget feature falls within a session; where it rises for the same user, a new session began.
    order = np.lexsort((np.arange(n), time, user))
    rises = np.zeros(n, dtype=bool)
    same_user = user[order][1:] == user[order][:-1]
    rises[order[1:]] = same_user & (budget[order][1:] > budget[order][:-1] + 1e-6)
    width = pc.list_value_length(requests.column("candidate_ids")).to_numpy()
    policies, counts = np.unique(
        np.asarray(requests.column("policy").to_pylist(), dtype=str), return_counts=True
    )
    log = _ordered_slate_log(
        user_ids, user, time, rises, profile, slate, click, str(policies[counts.argmax()])
    )
    return dataclasses.replace(log, num_candidates=int(width.max()) if len(width) else 0)


class SlateLogRecorder:
    """A rollout observer (:func:`envs.rollout.run_sessions`) that keeps every step as a :class:`SlateLog` row.

    The run's user ``i`` gets the id ``f"{prefix}{i}"``. Each user has a clock: a step takes one second,
    and a user who comes back for another session does so the number of days the step record says
    (``return_days``, when the rollout engine reports it; else one day, and the log says the days are
    unknown). A row whose session step is 0 starts a new session.
    """

    def __init__(self, prefix: str = "sim-") -> None:
        self.prefix = prefix
        self.parts: list[tuple[np.ndarray, ...]] = []
        self.policy = "unknown"
        self.clock = np.zeros(0)  # [users seen] seconds, NaN before a user's first step
        self.pending_days = np.zeros(0)  # [users seen] days until the user's next session
        self.days_known = True
        self.num_candidates = 0

    def __call__(self, step: StepRecord) -> None:
        users = step.users
        self.num_candidates = int(step.candidates.shape[1])
        if len(users):
            self.policy = str(step.shown.policy[0])
            need = int(users.max()) + 1
            if need > len(self.clock):
                grow = need - len(self.clock)
                self.clock = np.r_[self.clock, np.full(grow, np.nan)]
                self.pending_days = np.r_[self.pending_days, np.ones(grow)]
        seen = ~np.isnan(self.clock[users])
        back = seen & (step.session_step == 0)
        times = np.where(seen, self.clock[users], 0.0) + np.where(
            back, self.pending_days[users] * 86_400.0, 1.0
        )
        times[~seen] = 0.0
        self.clock[users] = times
        if step.return_days is None:
            self.days_known = False
        else:
            days = np.asarray(step.return_days, np.float64)
            self.pending_days[users[days > 0]] = days[days > 0]
        self.parts.append(
            (
                step.users.copy(),
                step.session_step.copy(),
                np.asarray(step.obs["profile"], np.float32).copy(),
                step.shown.items.copy(),
                step.click_position.copy(),
                times,
            )
        )

    def log(self) -> SlateLog:
        if not self.parts:
            raise DataError("the rollout recorded no step")
        users, steps, profile, slate, click, time = (np.concatenate(c) for c in zip(*self.parts, strict=True))
        codes, user = np.unique(users, return_inverse=True)
        log = _ordered_slate_log(
            np.asarray([f"{self.prefix}{c}" for c in codes]),
            user,
            time,
            steps == 0,
            profile,
            slate,
            click,
            self.policy,
        )
        return dataclasses.replace(log, days_known=self.days_known, num_candidates=self.num_candidates)


@dataclass(frozen=True)
class InteractionLog:
    """Logged interactions with catalog items (n rows), sorted by user then time, split into sessions.

    Attributes:
        user_ids: [U] str.
        user: [n] int64 index into ``user_ids``.
        session: [n] int64 session number 0..S-1, increasing along the rows.
        item: [n] int64 catalog row.
        time: [n] int64 seconds.
    """

    user_ids: np.ndarray
    user: np.ndarray
    session: np.ndarray
    item: np.ndarray
    time: np.ndarray

    @property
    def size(self) -> int:
        return len(self.user)

    @property
    def num_sessions(self) -> int:
        return int(self.session[-1]) + 1 if self.size else 0

    def session_lengths(self) -> np.ndarray:
        """[S] interactions per session."""
        return np.bincount(self.session, minlength=self.num_sessions)

    def take_users(self, keep: np.ndarray) -> InteractionLog:
        """The rows of the users where ``keep`` [U] is True (sessions renumbered)."""
        rows = keep[self.user]
        _, session = np.unique(self.session[rows], return_inverse=True)
        return InteractionLog(
            user_ids=self.user_ids,
            user=self.user[rows],
            session=session.astype(np.int64),
            item=self.item[rows],
            time=self.time[rows],
        )


def interaction_log(catalog: ItemCatalog, interactions) -> InteractionLog:
    """The engagements of an interactions table: impressions, items outside the catalog and repeated
    (user, item) pairs (a rating after a click) dropped, sorted by user then time, split into sessions."""
    idx, users, ts, events = logged_columns(catalog, interactions)
    keep = (idx >= 0) & (events != "impression")
    if not keep.any():
        raise DataError("logs have no interaction with an item of the catalog")
    user_ids, user = np.unique(users[keep], return_inverse=True)
    ts, idx = ts[keep], idx[keep]
    order = np.lexsort((np.arange(len(ts)), ts, user))
    user, ts, idx = user[order], ts[order], idx[order]
    # One choice per (user, item): a rating that follows a click on the same item is not another choice.
    pair = user.astype(np.int64) * (int(idx.max()) + 1) + idx
    _, first = np.unique(pair, return_index=True)
    once = np.zeros(len(pair), dtype=bool)
    once[first] = True
    user, ts, idx = user[once], ts[once], idx[once]
    session = np.cumsum(session_starts(user, ts)) - 1
    return InteractionLog(
        user_ids=user_ids.astype(str), user=user.astype(np.int64), session=session, item=idx, time=ts
    )
