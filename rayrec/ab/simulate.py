"""Simulated A/B tests in-process: users from the simulator's population, sharded across Ray tasks.

Every user gets an id, and :func:`rayrec.assignment.assign_arm` (the server's salted hash) puts the user
in an arm. Each arm's users are cut into shards; a Ray task runs one shard through the rollout engine
(:mod:`envs.rollout`), where every simulator row hosts one user for one whole session and, when the
session ends, the next user of the shard arrives in that row. So a run scales with the cluster: more
nodes, more shards at once. Every request is written to the event log (impressions with the policy's
item-position propensities, click feedback) with its row of the requests table, which off-policy
evaluation replays (:mod:`rayrec.events`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import ray
from tqdm import tqdm

from envs.beyond import evaluate_beyond
from envs.config import SlateEnvConfig
from envs.factory import build_simulator
from envs.policies import make_policy
from envs.rollout import StepRecord
from rayrec.ab.metrics import UserMetrics
from rayrec.assignment import Arm, assign_arm, validate_arms
from rayrec.errors import ConfigError
from rayrec.events import EventLog, requests_table
from rayrec.features import LAST_ENGAGEMENT

EVENT_BATCH_ROWS = 262_144
"""Impression rows per event-log part file written by a shard (fewer, larger parts than a server's)."""


def simulated_user_ids(count: int, seed: int) -> list[str]:
    """``count`` pseudonymous ids for simulated users; distinct seeds give distinct populations."""
    if count < 1:
        raise ConfigError(f"an A/B test needs at least one user per arm; got {count} users in all")
    return [f"sim-{seed}-{i:08d}" for i in range(count)]


def assign_users(user_ids: Sequence[str], arms: Sequence[Arm], salt: str) -> np.ndarray:
    """[n] arm name of every user, by the salted hash the server uses."""
    weights = [(arm.name, arm.weight) for arm in arms]
    validate_arms(weights)
    return np.asarray([assign_arm(u, weights, salt) for u in user_ids], dtype=object)


class EventLogObserver:
    """Writes every step of a rollout to an event log: requests, impressions and click feedback.

    Request ids are ``RUN-USER-STEP`` (``RUN`` unique per observer, so runs can share a directory).
    The arm, policy and request id come from the slate source when it says them (a live server does),
    else from ``arm`` and the source's policy name. With the simulator's ``feature_names``, a request's
    row holds the ``last_engagement`` its observation shows, as a server logs the client's ``last_click``.
    """

    def __init__(
        self,
        events_dir: str,
        user_ids: Sequence[str],
        item_ids: np.ndarray,
        arm: str | None = None,
        feature_names: tuple[str, ...] = (),
    ) -> None:
        self.user_ids = np.asarray(user_ids, dtype=object)
        self.item_ids, self.arm = item_ids, arm
        # the completion rate a request reports, as a server logs it: where the simulator observes it
        self.engagement = feature_names.index(LAST_ENGAGEMENT) if LAST_ENGAGEMENT in feature_names else None
        self.run = uuid.uuid4().hex[:12]
        self.log = EventLog(events_dir, max_rows=EVENT_BATCH_ROWS, max_delay_s=60.0)

    def __call__(self, step: StepRecord) -> None:
        n, k = step.shown.items.shape
        now = time.time()
        users = self.user_ids[step.users]
        request_ids = (
            step.shown.request_id
            if step.shown.request_id is not None
            else np.asarray(
                [f"{self.run}-{u}-{s}" for u, s in zip(users, step.session_step, strict=True)], dtype=object
            )
        )
        arms = step.shown.arm if step.shown.arm is not None else np.full(n, self.arm, dtype=object)
        self.log.log_impressions(
            pa.table(
                {
                    "request_id": np.repeat(request_ids, k),
                    "ts": np.full(n * k, now),
                    "user_id": np.repeat(users, k),
                    "arm": np.repeat(arms, k),
                    "policy": np.repeat(step.shown.policy, k),
                    "item_id": self.item_ids[step.shown.items].ravel(),
                    "position": np.tile(np.arange(k, dtype=np.int32), n),
                    "score": step.shown.scores.ravel().astype(np.float32),
                    "propensity": step.shown.propensities.ravel().astype(np.float32),
                }
            ),
            requests=None
            if step.shown.positions is None
            else requests_table(
                request_ids.tolist(),
                np.full(n, now),
                users.tolist(),
                arms.tolist(),
                step.shown.policy.tolist(),
                self.item_ids[step.candidates],
                step.obs,
                None if self.engagement is None else step.obs["features"][:, 0, self.engagement],
            ),
        )
        clicked = np.flatnonzero(step.chosen >= 0)
        if len(clicked):
            self.log.log_feedback(
                pa.table(
                    {
                        "request_id": request_ids[clicked],
                        "item_id": self.item_ids[step.chosen[clicked]],
                        "event": ["click"] * len(clicked),
                        "value": step.reward[clicked].astype(np.float32),
                        "ts": np.full(len(clicked), now),
                    }
                )
            )

    def close(self) -> None:
        self.log.close()


def simulate_arm_users(
    env_config: SlateEnvConfig,
    arm: Arm,
    user_ids: list[str],
    seed: int,
    events_dir: str | None = None,
    slots: int = 512,
) -> UserMetrics:
    """Run one whole session for each of ``user_ids`` against ``arm``'s policy (:mod:`envs.rollout`).

    Args:
        env_config: the simulator.
        arm: the arm all these users belong to.
        user_ids: [n] ids of the users, in arrival order.
        seed: seeds the users drawn from the population, their dynamics and the policy's randomness.
        events_dir: where to write the event log (None: no log).
        slots: users simulated at once (simulator rows).
    """
    sim = build_simulator(env_config, batch=min(slots, len(user_ids)))
    policy = make_policy(arm.policy, sim)
    log = (
        EventLogObserver(events_dir, user_ids, sim.catalog.item_ids, arm.name, sim.config.feature_names)
        if events_dir
        else None
    )
    try:
        outcomes, _ = evaluate_beyond(policy, sim, len(user_ids), seed, observers=[log] if log else [])
    finally:
        if log is not None:
            log.close()
    return UserMetrics.of(
        outcomes, np.asarray(user_ids, dtype=object), np.full(len(user_ids), arm.name, dtype=object)
    )


def run_simulated_ab(
    env_config: SlateEnvConfig,
    arms: Sequence[Arm],
    user_ids: Sequence[str],
    *,
    salt: str,
    seed: int,
    events_dir: str | None,
    users_per_task: int = 2000,
    slots: int = 512,
    progress: bool = True,
) -> UserMetrics:
    """Assign ``user_ids`` to ``arms`` and simulate them in Ray tasks (Ray must be initialised).

    Returns:
        every user's metrics, in the order of ``user_ids`` (their arrival order).
    """
    if users_per_task < 1 or slots < 1:
        raise ConfigError(f"users_per_task and slots must be >= 1, got {users_per_task} and {slots}")
    assigned = assign_users(user_ids, arms, salt)
    task = ray.remote(num_cpus=1)(simulate_arm_users)
    shards = [(arm, [u for u, a in zip(user_ids, assigned, strict=True) if a == arm.name]) for arm in arms]
    jobs = [
        (arm, users[i : i + users_per_task])
        for arm, users in shards
        for i in range(0, len(users), users_per_task)
    ]
    seeds = np.random.SeedSequence(seed).generate_state(max(len(jobs), 1))
    env_ref = ray.put(env_config)
    pending = {
        task.remote(env_ref, arm, users, int(s), events_dir, slots): len(users)
        for (arm, users), s in zip(jobs, seeds, strict=False)
    }
    results = []
    with tqdm(total=len(user_ids), desc="ab: users", unit="user", disable=not progress) as bar:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            results.append(ray.get(done[0]))
            bar.update(pending.pop(done[0]))
    metrics = UserMetrics.concat(results)
    order = {u: i for i, u in enumerate(metrics.user_id.tolist())}
    return metrics.take(np.asarray([order[u] for u in user_ids]))
