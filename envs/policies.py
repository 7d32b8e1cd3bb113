"""Policies that only exist in simulation, and the policy factory of the simulator.

``oracle`` reads the users' hidden interests and the items' hidden traits, so it can run only inside the
simulator it reads. :func:`make_policy` is :func:`rayrec.baselines.load_policy` plus these, and fits
``greedy``'s click model to exploration clicks in the simulator it will run in.
"""

from __future__ import annotations

import numpy as np

from envs.config import SlateEnvConfig
from envs.factory import build_simulator
from envs.rollout import StepRecord, evaluate_policy
from envs.simulator import SlateSimulator
from rayrec.baselines import BASELINES, GreedyPolicy, RandomPolicy, ScoringPolicy, load_policy
from rayrec.click_logit import fit_slate_click_model
from rayrec.errors import ConfigError
from rayrec.slate_policy import Observation, SlatePolicy

SIMULATION_POLICIES = ("oracle",)
"""Policies that read the simulator's hidden state: never served."""

POLICY_NAMES = (*BASELINES, *SIMULATION_POLICIES)


class OraclePolicy(ScoringPolicy):
    """Simulation-only upper bound: reads the users' hidden interests and the items' hidden traits.

    Scores each candidate by its true choice logit plus the value of its effect on satisfaction,
    ``logit + patience * Δsatisfaction / temperature`` where ``Δsatisfaction = gain * (quality - 0.5) -
    penalty * clickbait`` is what clicking it would do. So it shows what the user truly likes and
    forgoes clickbait whose clicks would cost the rest of the session. It reads the simulator's *current*
    state: pass it the observation the simulator just produced.
    """

    name = "oracle"

    def __init__(self, sim: SlateSimulator, patience: float = 2.0) -> None:
        self.sim = sim
        self.patience = patience

    def scores(self, obs: Observation) -> np.ndarray:
        sim = self.sim
        if obs["features"].shape[:2] != sim.candidate_items.shape:
            raise ConfigError(
                f"oracle: observation batch {obs['features'].shape[:2]} is not its env's "
                f"{sim.candidate_items.shape}; the oracle only ranks its own env's current candidates"
            )
        config, catalog, items = sim.config, sim.catalog, sim.candidate_items
        logits = sim.choice_model.item_logits(sim.users.interest, items, catalog)  # [B, K]
        delta = (
            config.satisfaction_gain * (catalog.quality[items] - 0.5)
            - config.clickbait_penalty * catalog.clickbait[items]
        )
        return logits + self.patience * delta / config.temperature


def random_slate_log(config: SlateEnvConfig, num_users: int, seed: int):
    """Exploration log: one session each of ``num_users`` users shown uniformly random slates.

    Returns:
        (features [n, k, F], embeddings [n, k, d], clicks [n] position or -1), one row per shown slate.
    """
    features, embeddings, clicks = [], [], []

    def record(step: StepRecord) -> None:
        rows = np.arange(len(step.users))[:, None]
        features.append(step.obs["features"][rows, step.shown.positions])
        embeddings.append(step.obs["candidates"][rows, step.shown.positions])
        clicks.append(step.click_position)

    sim = build_simulator(config, batch=min(num_users, 4096))
    evaluate_policy(RandomPolicy(), sim, num_users, seed, observers=[record])
    return np.concatenate(features), np.concatenate(embeddings), np.concatenate(clicks)


def fitted_greedy(config: SlateEnvConfig, num_users: int = 512, seed: int = 0) -> GreedyPolicy:
    """A greedy policy whose click model is fitted to random-slate clicks in the simulator ``config`` defines."""
    return GreedyPolicy(fit_slate_click_model(*random_slate_log(config, num_users, seed)))


def make_policy(spec: str, sim: SlateSimulator | None = None) -> SlatePolicy:
    """A policy from a spec: a name in :data:`POLICY_NAMES` or a trained policy directory.

    Args:
        spec: ``random``, ``retrieval``, ``greedy``, ``oracle`` or a path/URI to a policy exported by
            ``rayrec train-policy``.
        sim: the simulator the policy will run in. ``oracle`` needs it (it reads its hidden state);
            ``greedy`` fits its click model in it when given.
    """
    if spec == "oracle":
        if sim is None:
            raise ConfigError(
                "policy 'oracle' reads the simulator's hidden state: it runs in simulation only"
            )
        return OraclePolicy(sim)
    if spec == "greedy" and sim is not None:
        return fitted_greedy(sim.config)
    return load_policy(spec)
