"""Simulated A/B tests against a running server: simulated users call ``/recommend`` and ``/feedback``.

Each simulated user (drawn from the simulator's population) lives one session exactly as a client app
would: it sends its history, gets a slate from whichever arm the *server* assigns it to, reacts to the
slate through the same simulator step as in-process runs (the rollout engine of :mod:`envs.rollout`, with
the server as its slate source), and reports clicks. So the whole serving path (pseudonymization,
arm assignment, retrieval, ranking, event logging) is what is being tested. The simulator and the
server must share the item index, so that the simulated users can react to the items the server returns.

The client writes its own event log of what it saw (impressions, with the propensity the server
answered for each item, and click feedback), which agrees with the server's row for row. It has no
requests table (the client never sees the candidates the ranker chose from): off-policy evaluation
reads the server's event log (``rayrec ope --events <server events dir> --index <server index>``).
A server that answers without propensities (older than that field) leaves them NaN here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import numpy as np

from envs.beyond import BeyondAccuracyObserver
from envs.config import SlateEnvConfig
from envs.factory import build_simulator
from envs.rollout import Shown, StepRecord, run_sessions
from envs.simulator import SlateSimulator
from rayrec.ab.metrics import UserMetrics
from rayrec.ab.simulate import EventLogObserver
from rayrec.errors import DataError, RayrecError
from rayrec.logs.reader import ItemLookup
from rayrec.slate_policy import Observation

RETRIES = 8
"""Attempts per call while the server answers 503 (overloaded), with exponential backoff."""


@dataclass(frozen=True)
class ServerInfo:
    """What ``GET /healthz`` says about the experiment: arm weights and policies."""

    arms: dict[str, float]
    policies: dict[str, str]


class _Client:
    """One shared HTTP connection pool with retries on overload."""

    def __init__(self, url: str, concurrency: int, timeout_s: float, api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url,
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            headers={"Authorization": f"Bearer {api_key}"} if api_key else None,
        )

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        delay = 0.05
        for attempt in range(RETRIES):
            try:
                response = self.http.request(method, path, json=body)
            except httpx.HTTPError as exc:
                raise RayrecError(f"{method} {self.url}{path} failed: {exc}") from None
            if response.status_code == 503 and attempt + 1 < RETRIES and path != "/healthz":
                time.sleep(delay)
                delay *= 2
                continue
            if response.status_code >= 400:
                raise RayrecError(
                    f"{method} {self.url}{path} answered {response.status_code}: {response.text[:300]}"
                )
            return response.json()
        raise RayrecError(f"{method} {self.url}{path}: still overloaded after {RETRIES} attempts")

    def close(self) -> None:
        self.http.close()


def server_info(client: _Client) -> ServerInfo:
    health = client.call("GET", "/healthz")
    if not health.get("ready", False):
        raise RayrecError(f"server at {client.url} is not ready: {health.get('problems')}")
    return ServerInfo(arms=dict(health["arms"]), policies=dict(health.get("policies", {})))


class ServerSource:
    """The slate source of an A/B against a live server: each live row's user asks ``/recommend``.

    A row's request carries the user's id, the history the simulator says the user has consumed, the session
    step and the user's last click with its completion rate (the session feedback); the
    server's answer (its arm, policy, request id and items) is mapped onto catalog rows and fed into the
    simulator's step, exactly as an in-process policy's slate is. Requests of one step go out concurrently.
    """

    def __init__(
        self, client: _Client, user_ids: Sequence[str], items: ItemLookup, pool: ThreadPoolExecutor
    ) -> None:
        self.client, self.user_ids, self.items, self.pool = client, user_ids, items, pool
        self.arms: dict[int, str] = {}

    def show(
        self, sim: SlateSimulator, obs: Observation, row_user: np.ndarray, rng: np.random.Generator
    ) -> Shown:
        batch, k = sim.batch, sim.config.slate_size
        items = sim.candidate_items[:, :k].copy()  # [B, k] idle rows keep their first candidates
        scores = np.zeros((batch, k), np.float32)
        propensities = np.full((batch, k), np.nan, np.float32)
        policy, arm, request_id = (np.full(batch, "", dtype=object) for _ in range(3))
        live = np.flatnonzero(row_user >= 0)
        answers = self.pool.map(lambda row: self._ask(sim, row, int(row_user[row])), live)
        for row, answer in zip(live, answers, strict=True):
            user = int(row_user[row])
            ids = np.asarray([item["item_id"] for item in answer["items"]], dtype=object)
            slate = self.items.rows(ids)
            if len(ids) != k or (slate < 0).any():
                raise DataError(
                    f"server returned {len(ids)} items for a slate of {k}, {int((slate < 0).sum())} of them "
                    "unknown to the simulator's catalog: run `rayrec ab --url` with the server's --index"
                )
            if self.arms.setdefault(user, answer["arm"]) != answer["arm"]:
                raise DataError(
                    f"server moved user {self.user_ids[user]} from arm {self.arms[user]!r} to "
                    f"{answer['arm']!r} within a session"
                )
            items[row] = slate
            scores[row] = [item["score"] for item in answer["items"]]
            propensities[row] = [item.get("propensity", np.nan) for item in answer["items"]]
            policy[row], arm[row], request_id[row] = (
                answer.get("policy", ""),
                answer["arm"],
                answer["request_id"],
            )
        return Shown(items, scores, propensities, None, policy, arm=arm, request_id=request_id)

    def _ask(self, sim: SlateSimulator, row: int, user: int) -> dict:
        history = sim.catalog.item_ids[sim.users.consumed[row, : sim.users.consumed_len[row]]].tolist()
        body = {
            "user_id": self.user_ids[user],
            "history": history,
            "k": sim.config.slate_size,
            "session_step": int(sim.users.steps[row]),  # the server's budget feature, as in the simulator
        }
        last = int(sim.users.last_click[row])
        if last >= 0:  # the session feedback, as a client app that tracks completion rates reports it
            body["last_click"] = {
                "item_id": str(sim.catalog.item_ids[last]),
                "engagement": float(sim.users.last_engagement[row]),
            }
        return self.client.call("POST", "/recommend", body)


class FeedbackObserver:
    """Reports every click of a rollout to the server's ``/feedback``, as a client app would."""

    def __init__(self, client: _Client, item_ids: np.ndarray, pool: ThreadPoolExecutor) -> None:
        self.client, self.item_ids, self.pool = client, item_ids, pool

    def __call__(self, step: StepRecord) -> None:
        clicked = np.flatnonzero(step.chosen >= 0)
        bodies = [
            {
                "request_id": step.shown.request_id[i],
                "item_id": str(self.item_ids[step.chosen[i]]),
                "event": "click",
                "value": float(step.reward[i]),
            }
            for i in clicked
        ]
        list(self.pool.map(lambda body: self.client.call("POST", "/feedback", body), bodies))


def run_http_ab(
    url: str,
    env_config: SlateEnvConfig,
    user_ids: Sequence[str],
    *,
    events_dir: str,
    seed: int,
    concurrency: int = 8,
    timeout_s: float = 30.0,
    progress: bool = True,
    api_key: str | None = None,
) -> tuple[UserMetrics, ServerInfo]:
    """Run one session per user against the server at ``url`` with ``concurrency`` users at once.

    Returns:
        every user's metrics in the order of ``user_ids`` (arm = the server's answer), and the server's
        arm weights and policies.
    """
    if concurrency < 1:
        raise RayrecError(f"concurrency must be >= 1, got {concurrency}")
    client = _Client(url, concurrency, timeout_s, api_key)
    sim = build_simulator(env_config, batch=min(concurrency, len(user_ids)))
    items = ItemLookup(sim.catalog.item_ids, sim.catalog.embeddings)
    try:
        info = server_info(client)
        with ThreadPoolExecutor(concurrency) as pool:
            source = ServerSource(client, list(user_ids), items, pool)
            log = EventLogObserver(events_dir, user_ids, sim.catalog.item_ids)
            beyond = BeyondAccuracyObserver(sim.catalog, len(user_ids))
            try:
                outcomes = beyond.fill(
                    run_sessions(
                        sim,
                        source,
                        len(user_ids),
                        seed,
                        observers=[FeedbackObserver(client, sim.catalog.item_ids, pool), log, beyond],
                        progress="ab --url: users" if progress else None,
                    )
                )
            finally:
                log.close()
    finally:
        client.close()
    arms = np.asarray([source.arms[i] for i in range(len(user_ids))], dtype=object)
    return UserMetrics.of(outcomes, np.asarray(user_ids, dtype=object), arms), info
