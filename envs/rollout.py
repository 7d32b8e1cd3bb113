"""The one rollout engine: whole sessions of simulated users, each shown what a slate source chooses.

Every caller runs sessions through :func:`run_sessions`: ``rayrec simulate``, the held-out evaluation of
``train-policy``, calibration, the in-process A/B (with an event-log observer) and the A/B against a live
server (whose slate source asks the server over HTTP). Users arrive into the ``B`` rows of one batched
:class:`envs.simulator.SlateSimulator`; when a user's session ends, the next user arrives in that row, so
any number of users runs in bounded memory. Each step:

1. the source chooses a slate for every row (:class:`SlateSource`); rows without a user are ignored,
2. the simulator's :meth:`~envs.simulator.SlateSimulator.show` answers (choices, rewards, leaving),
3. observers see the step of the live rows (:class:`StepRecord`), then per-user outcomes accumulate,
4. ended sessions (the user left, spent the budget, or hit ``max_episode_steps``) make room for new users.

Randomness comes in three independent streams spawned from one seed: the users (user ``i`` is the same
user whatever the policy, however long earlier sessions lasted — so runs of different policies with the
same seed are paired user by user), the dynamics (choices, leaving, random candidates) and the source's
own sampling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from tqdm import tqdm

from envs.simulator import SlateSimulator, UserDraw, dedupe_slates
from rayrec.errors import ConfigError
from rayrec.metrics.session import SessionOutcomes
from rayrec.slate_policy import Observation, SlatePolicy


@dataclass(frozen=True)
class Shown:
    """What a source shows every row of the simulator in one step (B rows, k positions).

    Attributes:
        items: [B, k] int64 catalog rows, in display order (distinct within a row).
        scores: [B, k] float32 the source's score of each shown item.
        propensities: [B, k] float32 item-position propensities (NaN when the source does not know them).
        positions: [B, k] int64 candidate positions of the shown items, or None when the source chose
            items directly (a server answers with item ids).
        policy: [B] object name of the policy that chose each row's slate.
        arm: [B] object A/B arm of each row (None outside an experiment).
        request_id: [B] object id of each row's request (None: the observer makes its own).
    """

    items: np.ndarray
    scores: np.ndarray
    propensities: np.ndarray
    positions: np.ndarray | None
    policy: np.ndarray
    arm: np.ndarray | None = None
    request_id: np.ndarray | None = None


class SlateSource(Protocol):
    """Chooses the slates of one step for every row hosting a user (the other rows may get anything)."""

    def show(
        self, sim: SlateSimulator, obs: Observation, row_user: np.ndarray, rng: np.random.Generator
    ) -> Shown:
        """The slates of this step for every row of ``sim``.

        Args:
            obs: ``sim.observation()``.
            row_user: [B] index of the user each row hosts (into the run's users), -1 for an idle row.
        """
        ...


class PolicySource:
    """A :class:`rayrec.slate_policy.SlatePolicy` choosing among each row's K candidates."""

    def __init__(self, policy: SlatePolicy) -> None:
        self.policy = policy
        self.name = policy.name

    def show(
        self, sim: SlateSimulator, obs: Observation, row_user: np.ndarray, rng: np.random.Generator
    ) -> Shown:
        slate = self.policy.select(obs, sim.config.slate_size, rng)
        positions = dedupe_slates(slate.indices, sim.config.num_candidates)
        return Shown(
            items=np.take_along_axis(sim.candidate_items, positions, axis=1),
            scores=slate.scores,
            propensities=slate.propensities,
            positions=positions,
            policy=np.full(sim.batch, self.policy.name, dtype=object),
        )


@dataclass(frozen=True)
class StepRecord:
    """One step of the R live rows, as observers see it.

    Attributes:
        users: [R] index of each row's user (into the run's users, 0..n-1).
        session_step: [R] 0-based step of the user's session this slate was shown at.
        obs: the observation each row's slate was chosen on ([R, ...] per key).
        candidates: [R, K] catalog rows of the candidates, in retrieval order.
        shown: the :class:`Shown` of these rows ([R, ...] arrays).
        chosen: [R] catalog row clicked, -1 for none.
        click_position: [R] slate position clicked, -1 for none.
        reward: [R] float32.
        done: [R] bool: the session ended with this step.
        history: [R, H] int64 catalog rows the user had engaged with when the slate was chosen (the
            pre-session history and earlier clicks), padded with -1 (None where a record is made by hand).
        return_days: [R] float32 days until the user's next session where this step ended a session the user
            comes back from, 0 elsewhere (None where a record is made by hand: the days are then unknown).
    """

    users: np.ndarray
    session_step: np.ndarray
    obs: Observation
    candidates: np.ndarray
    shown: Shown
    chosen: np.ndarray
    click_position: np.ndarray
    reward: np.ndarray
    done: np.ndarray
    history: np.ndarray | None = None
    return_days: np.ndarray | None = None


Observer = Callable[[StepRecord], None]


class UserStream:
    """User ``i``'s starting state, independent of when it arrives: drawn in fixed blocks of ``block`` users."""

    def __init__(self, sim: SlateSimulator, seed: np.random.SeedSequence, block: int) -> None:
        self.sim, self.seed, self.block = sim, seed, block
        self._cached: tuple[int, UserDraw] | None = None

    def draw(self, users: np.ndarray) -> UserDraw:
        """The users at indices ``users`` [m] (ascending, as they arrive)."""
        parts = []
        for block in np.unique(users // self.block):
            in_block = users[users // self.block == block] - block * self.block
            parts.append(self._block(int(block)).take(in_block))
        return UserDraw(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in ("interest", "history", "satisfaction"))
        )

    def _block(self, block: int) -> UserDraw:
        if self._cached is None or self._cached[0] != block:
            child = np.random.SeedSequence(self.seed.entropy, spawn_key=(*self.seed.spawn_key, block))
            rng = np.random.default_rng(child)
            self._cached = (block, self.sim.sample_users(self.block, rng))
        return self._cached[1]


def _seeds(seed: int) -> list[np.random.SeedSequence]:
    """The users', the dynamics' and the slate source's seeds of a rollout seeded with ``seed``."""
    return np.random.SeedSequence(seed).spawn(3)


def arrival_histories(sim: SlateSimulator, num_users: int, seed: int) -> np.ndarray:
    """[num_users, h] the history each user of ``run_sessions(sim, ..., num_users, seed)`` arrives with
    (catalog rows, -1 padded): users are drawn before any policy acts, so this is the same for every policy."""
    return UserStream(sim, _seeds(seed)[0], block=sim.batch).draw(np.arange(num_users)).history


def run_sessions(
    sim: SlateSimulator,
    source: SlateSource,
    num_users: int,
    seed: int,
    *,
    observers: Sequence[Observer] = (),
    progress: str | None = None,
) -> SessionOutcomes:
    """One whole session for each of ``num_users`` users; returns their outcomes in user order.

    Args:
        sim: the simulator; its batch size ``B`` is how many users are simulated at once.
        source: chooses the slates (:class:`PolicySource` for a policy).
        seed: seeds the users, the dynamics and the source (see the module docstring).
        observers: called with every step's :class:`StepRecord` (event logs, statistics).
        progress: a tqdm description to show a progress bar of finished users (None: no bar).
    """
    if num_users < 1:
        raise ConfigError(f"a rollout needs at least one user, got {num_users}")
    users_seed, dynamics_seed, source_seed = _seeds(seed)
    dynamics, source_rng = np.random.default_rng(dynamics_seed), np.random.default_rng(source_seed)
    stream = UserStream(sim, users_seed, block=sim.batch)
    batch, max_steps = sim.batch, sim.config.max_episode_steps
    row_user = np.full(batch, -1, dtype=np.int64)  # [B] user hosted by each row, -1 when idle
    first = np.arange(min(batch, num_users))
    row_user[first] = first
    next_user = len(first)
    sim.place_users(first, stream.draw(first))
    sim.refresh_candidates(dynamics)
    totals = {
        name: np.zeros(num_users) for name in ("session_return", "clicks", "impressions", "session_length")
    }
    left = np.zeros(num_users, dtype=bool)
    sessions = np.zeros(num_users)
    with tqdm(total=num_users, desc=progress, unit="user", disable=progress is None) as bar:
        while (row_user >= 0).any():
            live = row_user >= 0
            obs = sim.observation()
            candidates = sim.candidate_items.copy()
            step_of_session = sim.users.steps.copy()
            if observers:  # what each user had engaged with when the slate was chosen
                engaged = sim.users.consumed_len.copy()
                history = sim.users.consumed[live].copy()
                history[np.arange(history.shape[1])[None, :] >= engaged[live][:, None]] = -1
            shown = source.show(sim, obs, row_user, source_rng)
            outcome = sim.show(shown.items, dynamics)
            truncated = sim.users.total_steps >= max_steps
            done = live & (outcome.terminated | truncated)
            rows = np.flatnonzero(live)
            users = row_user[rows]
            totals["session_return"][users] += outcome.reward[rows]
            totals["clicks"][users] += outcome.info["clicked"][rows]
            totals["impressions"][users] += (shown.items[rows] >= 0).sum(axis=1)
            totals["session_length"][users] += 1
            left[users] |= outcome.info["left"][rows]
            sessions[users] = sim.users.session[rows]
            if observers:
                record = StepRecord(
                    users=users,
                    session_step=step_of_session[rows],
                    obs={key: value[rows] for key, value in obs.items()},
                    candidates=candidates[rows],
                    shown=_take_rows(shown, rows),
                    chosen=outcome.info["chosen_item"][rows],
                    click_position=outcome.info["click_position"][rows],
                    reward=outcome.reward[rows],
                    done=done[rows],
                    history=history,
                    return_days=outcome.info["return_days"][rows],
                )
                for observer in observers:
                    observer(record)
            ended = np.flatnonzero(done)
            bar.update(len(ended))
            arriving = np.arange(next_user, min(next_user + len(ended), num_users))
            next_user += len(arriving)
            row_user[ended] = -1
            if len(arriving):
                row_user[ended[: len(arriving)]] = arriving
                sim.place_users(ended[: len(arriving)], stream.draw(arriving))
            sim.refresh_candidates(dynamics)
    return SessionOutcomes(left=left, sessions=sessions, **totals)


def _take_rows(shown: Shown, rows: np.ndarray) -> Shown:
    def take(value):
        return None if value is None else value[rows]

    return Shown(
        items=shown.items[rows],
        scores=shown.scores[rows],
        propensities=shown.propensities[rows],
        positions=take(shown.positions),
        policy=shown.policy[rows],
        arm=take(shown.arm),
        request_id=take(shown.request_id),
    )


def evaluate_policy(
    policy: SlatePolicy, sim: SlateSimulator, num_users: int, seed: int, **kwargs
) -> SessionOutcomes:
    """:func:`run_sessions` with ``policy`` choosing among the candidates (kwargs pass through)."""
    return run_sessions(sim, PolicySource(policy), num_users, seed, **kwargs)
