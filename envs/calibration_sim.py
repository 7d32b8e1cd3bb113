"""Simulated logs for calibration: sessions of the rollout engine recorded as a :class:`SlateLog`.

Every simulation of calibration (validation against held-out users, simulated moments, the sim-to-sim
recovery check) goes through :func:`envs.rollout.run_sessions` with a :class:`SlateLogRecorder`, under the
policy that logged the real data when the simulator knows it (a baseline or simulation policy name), else
``retrieval`` (what a log of plain interactions is assumed to have been shown).
"""

from __future__ import annotations

import numpy as np

from envs.calibration_data import SlateLog, SlateLogRecorder
from envs.config import SlateEnvConfig
from envs.factory import build_simulator
from envs.policies import POLICY_NAMES, make_policy
from envs.rollout import evaluate_policy
from rayrec.baselines import RandomPolicy, RetrievalPolicy

ROLLOUT_SLOTS = 4096
"""Users simulated at once."""


def logging_policy_name(name: str | None) -> str:
    """The simulator policy that stands in for a log's policy ``name`` (``retrieval`` when it is unknown)."""
    return name if name in POLICY_NAMES else "retrieval"


def simulate_log(config: SlateEnvConfig, policy: str, users: int, seed: int) -> tuple[SlateLog, np.ndarray]:
    """``users`` simulated users' sessions under ``policy`` (a name of :data:`envs.policies.POLICY_NAMES`).

    Returns:
        (their :class:`SlateLog`, [users] sessions each user had).
    """
    sim = build_simulator(config, batch=min(users, ROLLOUT_SLOTS))
    if policy == "random":
        chosen = RandomPolicy()
    elif policy == "retrieval":
        chosen = RetrievalPolicy()
    else:
        chosen = make_policy(policy, sim)
    recorder = SlateLogRecorder()
    outcomes = evaluate_policy(chosen, sim, users, seed, observers=[recorder])
    return recorder.log(), np.asarray(outcomes.sessions)
