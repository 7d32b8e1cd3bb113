"""Simulated A/B tests in-process: users from the simulator's population, sharded across Ray tasks.

Every user gets an id, and :func:`rayrec.assignment.assign_arm` (the server's salted hash) puts the user
in an arm. Each arm's users are cut into shards; a Ray task runs one shard in the native vector env
(:func:`envs.make_vector_env`), where every row hosts one user for one whole session and, when the
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

from rayrec.ab.metrics import UserMetrics
from rayrec.assignment import Arm, assign_arm, validate_arms
from rayrec.errors import ConfigError

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


class _ShardLog:
    """Event-log writer of one shard: requests, impressions and click feedback."""

    def __init__(self, events_dir: str, arm: str, policy: str, item_ids: np.ndarray) -> None:
        from rayrec.events import EventLog

        self.arm, self.policy, self.item_ids = arm, policy, item_ids
        self.log = EventLog(events_dir, max_rows=EVENT_BATCH_ROWS, max_delay_s=60.0)

    def record(
        self,
        request_ids: list[str],
        user_ids: list[str],
        obs: dict[str, np.ndarray],
        candidates: np.ndarray,
        scores: np.ndarray,
        propensities: np.ndarray,
        shown: np.ndarray,
        chosen: np.ndarray,
        reward: np.ndarray,
    ) -> None:
        """Log R requests.

        Args:
            obs: the observation each request was ranked on ([R, ...] per key).
            candidates: [R, K] catalog rows of the candidates.
            scores, propensities: [R, k] the policy's score and item-position propensity per position.
            shown: [R, k] catalog rows shown.
            chosen: [R] catalog row clicked, -1 for none.
            reward: [R] reward of each request.
        """
        from rayrec.events import requests_table

        n, k = shown.shape
        now = time.time()
        requests = requests_table(
            request_ids,
            np.full(n, now),
            user_ids,
            [self.arm] * n,
            [self.policy] * n,
            self.item_ids[candidates],
            obs,
        )
        self.log.log_impressions(
            pa.table(
                {
                    "request_id": np.repeat(np.asarray(request_ids, dtype=object), k),
                    "ts": np.full(n * k, now),
                    "user_id": np.repeat(np.asarray(user_ids, dtype=object), k),
                    "arm": [self.arm] * (n * k),
                    "policy": [self.policy] * (n * k),
                    "item_id": self.item_ids[shown].ravel(),
                    "position": np.tile(np.arange(k, dtype=np.int32), n),
                    "score": scores.ravel().astype(np.float32),
                    "propensity": propensities.ravel().astype(np.float32),
                }
            ),
            requests=requests,
        )
        clicked = np.flatnonzero(chosen >= 0)
        if len(clicked):
            self.log.log_feedback(
                pa.table(
                    {
                        "request_id": np.asarray(request_ids, dtype=object)[clicked],
                        "item_id": self.item_ids[chosen[clicked]],
                        "event": ["click"] * len(clicked),
                        "value": reward[clicked].astype(np.float32),
                        "ts": np.full(len(clicked), now),
                    }
                )
            )

    def close(self) -> None:
        self.log.close()


def simulate_arm_users(
    env_config,
    arm: Arm,
    user_ids: list[str],
    seed: int,
    events_dir: str | None = None,
    slots: int = 512,
) -> UserMetrics:
    """Run one whole session for each of ``user_ids`` against ``arm``'s policy.

    Args:
        env_config: the :class:`envs.config.SlateEnvConfig` of the simulator.
        arm: the arm all these users belong to.
        user_ids: [n] ids of the users, in arrival order.
        seed: seeds the users drawn from the population and the policy's randomness.
        events_dir: where to write the event log (None: no log).
        slots: users simulated at once (vector env rows).
    """
    from envs import make_vector_env
    from envs.policies import make_policy

    n = len(user_ids)
    venv = make_vector_env(env_config, num_envs=min(slots, n))
    policy = make_policy(arm.policy, env=venv)
    sim = venv.unwrapped.sim
    k = env_config.slate_size
    rows_total = venv.num_envs
    # Separate streams for the population and the policy: the same seed for both would correlate them.
    env_seed, policy_seed = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(policy_seed)
    obs, _ = venv.reset(seed=int(env_seed.generate_state(1)[0]))
    row_user = np.arange(rows_total)  # [B] user index hosted by each row, -1 when idle
    next_user = rows_total
    restarting = np.zeros(rows_total, dtype=bool)  # [B] the env starts a new user there on the next step
    totals = {name: np.zeros(n) for name in ("session_return", "clicks", "impressions", "session_length")}
    run = uuid.uuid4().hex[:12]  # keeps request ids unique when several runs share an events dir
    log = _ShardLog(events_dir, arm.name, policy.name, sim.catalog.item_ids) if events_dir else None
    try:
        while (row_user >= 0).any() or (restarting.any() and next_user < n):
            live = np.flatnonzero((row_user >= 0) & ~restarting)  # rows showing a slate to a user now
            candidates = sim.candidate_items.copy()  # [B, K] this step's candidates (catalog rows)
            slate = policy.select(obs, k, rng)
            step_obs = obs
            obs, reward, terminated, truncated, info = venv.step(slate.indices)
            users = row_user[live]
            totals["session_return"][users] += reward[live]
            totals["clicks"][users] += info["clicked"][live]
            totals["impressions"][users] += k
            totals["session_length"][users] += 1
            if log is not None and len(live):
                ids = [user_ids[u] for u in users]
                log.record(
                    request_ids=[
                        f"{run}-{uid}-{int(s) - 1}"
                        for uid, s in zip(ids, totals["session_length"][users], strict=True)
                    ],
                    user_ids=ids,
                    obs={key: value[live] for key, value in step_obs.items()},
                    candidates=candidates[live],
                    scores=slate.scores[live],
                    propensities=slate.propensities[live],
                    shown=info["slate_items"][live],
                    chosen=info["chosen_item"][live],
                    reward=reward[live],
                )
            # Rows restarted in this step now host the next users of the shard (or go idle).
            for row in np.flatnonzero(restarting):
                row_user[row] = next_user if next_user < n else -1
                next_user += 1
            ended = np.zeros(rows_total, dtype=bool)
            ended[live] = terminated[live] | truncated[live]
            row_user[ended] = -1
            restarting = ended
    finally:
        if log is not None:
            log.close()
        venv.close()
    return UserMetrics(
        user_id=np.asarray(user_ids, dtype=object),
        arm=np.full(n, arm.name, dtype=object),
        **totals,
    )


def run_simulated_ab(
    env_config,
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
    import ray
    from tqdm import tqdm

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
