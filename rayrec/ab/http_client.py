"""Simulated A/B tests against a running server: simulated users call ``/recommend`` and ``/feedback``.

Each simulated user (drawn from the simulator's population) lives one session exactly as a client app
would: it sends its history, gets a slate from whichever arm the *server* assigns it to, reacts to the
slate with the simulator's choice model, and reports clicks. So the whole serving path (pseudonymization,
arm assignment, retrieval, ranking, event logging) is what is being tested. The simulator and the
server must share the item index, so that the simulated users can react to the items the server returns.

The client writes its own event log of what it saw (impressions, with the propensity the server
answered for each item, and click feedback), which agrees with the server's row for row. It has no
requests table (the client never sees the candidates the ranker chose from): off-policy evaluation
reads the server's event log (``rayrec ope --events <server events dir> --index <server index>``).
A server that answers without propensities (older than that field) leaves them NaN here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np

from rayrec.ab.metrics import UserMetrics
from rayrec.ab.replay import ItemLookup
from rayrec.errors import DataError, RayrecError

RETRIES = 8
"""Attempts per call while the server answers 503 (overloaded), with exponential backoff."""


@dataclass(frozen=True)
class ServerInfo:
    """What ``GET /healthz`` says about the experiment: arm weights and policies."""

    arms: dict[str, float]
    policies: dict[str, str]


class _Client:
    """One shared HTTP connection pool with retries on overload."""

    def __init__(self, url: str, concurrency: int, timeout_s: float) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url,
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        import httpx

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


def _live_session(
    client: _Client, sim, items: ItemLookup, user_id: str, rng: np.random.Generator, log
) -> tuple[str, np.ndarray]:
    """One user's whole session against the server; returns (arm, [4] return, clicks, impressions, length)."""
    catalog, config = sim.catalog, sim.config
    row = np.zeros(1, dtype=np.int64)
    sim.start_users(row, rng)
    arm = None
    totals = np.zeros(4)
    while True:
        history = catalog.item_ids[sim.users.consumed[0, : sim.users.consumed_len[0]]].tolist()
        answer = client.call(
            "POST", "/recommend", {"user_id": user_id, "history": history, "k": config.slate_size}
        )
        if arm is not None and answer["arm"] != arm:
            raise DataError(
                f"server moved user {user_id} from arm {arm!r} to {answer['arm']!r} within a session"
            )
        arm = answer["arm"]
        ids = [item["item_id"] for item in answer["items"]]
        slate = items.rows(np.asarray(ids, dtype=object))[None, :]  # [1, k] catalog rows
        if len(ids) == 0 or (slate < 0).any():
            raise DataError(
                f"server returned {len(ids)} items, {int((slate < 0).sum())} of them unknown to the simulator's "
                "catalog: run `rayrec ab --url` with the server's --index"
            )
        position = sim.choice_model.choose(sim.users.interest[:1], slate, catalog, rng)  # [1]
        chosen = np.where(position >= 0, slate[0, np.maximum(position, 0)], -1)  # [1]
        reward = sim.reward_fn(chosen, catalog)  # [1]
        left = sim.response.apply(sim.users, chosen, catalog, rng)  # [1]
        now = time.time()
        log.log_impressions(
            [
                {
                    "request_id": answer["request_id"],
                    "ts": now,
                    "user_id": user_id,
                    "arm": arm,
                    "policy": answer.get("policy", ""),
                    "item_id": item["item_id"],
                    "position": p,
                    "score": item["score"],
                    "propensity": item.get("propensity", float("nan")),
                }
                for p, item in enumerate(answer["items"])
            ]
        )
        if chosen[0] >= 0:
            item_id = str(catalog.item_ids[chosen[0]])
            client.call(
                "POST",
                "/feedback",
                {
                    "request_id": answer["request_id"],
                    "item_id": item_id,
                    "event": "click",
                    "value": float(reward[0]),
                },
            )
            log.log_feedback(
                [
                    {
                        "request_id": answer["request_id"],
                        "item_id": item_id,
                        "event": "click",
                        "value": float(reward[0]),
                        "ts": now,
                    }
                ]
            )
        totals += [reward[0], float(chosen[0] >= 0), len(ids), 1.0]
        if left[0] or sim.users.budget[0] <= 0 or sim.users.steps[0] >= config.max_episode_steps:
            return arm, totals


def run_http_ab(
    url: str,
    env_config,
    user_ids: Sequence[str],
    *,
    events_dir: str,
    seed: int,
    concurrency: int = 8,
    timeout_s: float = 30.0,
    progress: bool = True,
) -> tuple[UserMetrics, ServerInfo]:
    """Run one session per user against the server at ``url`` with ``concurrency`` users at once.

    Returns:
        every user's metrics in the order of ``user_ids`` (arm = the server's answer), and the server's
        arm weights and policies.
    """
    from tqdm import tqdm

    from envs import make_vector_env
    from rayrec.events import EventLog

    if concurrency < 1:
        raise RayrecError(f"concurrency must be >= 1, got {concurrency}")
    client = _Client(url, concurrency, timeout_s)
    local = threading.local()

    def simulator():
        if not hasattr(local, "sim"):
            local.sim = make_vector_env(env_config, num_envs=1).unwrapped.sim
        return local.sim

    catalog = simulator().catalog
    items = ItemLookup(catalog.item_ids, catalog.embeddings)
    n = len(user_ids)
    arms = np.empty(n, dtype=object)
    totals = np.zeros((n, 4))
    try:
        info = server_info(client)
        with EventLog(events_dir) as log:
            pool = ThreadPoolExecutor(concurrency)
            try:
                futures = {
                    pool.submit(
                        lambda i=i: _live_session(
                            client, simulator(), items, user_ids[i], np.random.default_rng([seed, i]), log
                        )
                    ): i
                    for i in range(n)
                }
                with tqdm(total=n, desc="ab --url: users", unit="user", disable=not progress) as bar:
                    for future in as_completed(futures):
                        i = futures[future]
                        arms[i], totals[i] = future.result()
                        bar.update(1)
            finally:
                pool.shutdown(cancel_futures=True)  # after a failure, do not start the remaining sessions
    finally:
        client.close()
    metrics = UserMetrics(
        user_id=np.asarray(user_ids, dtype=object),
        arm=arms,
        session_return=totals[:, 0],
        clicks=totals[:, 1],
        impressions=totals[:, 2],
        session_length=totals[:, 3],
    )
    return metrics, info
