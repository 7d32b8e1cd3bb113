"""Policies that only exist in simulation, and the policy factory of the simulator.

``oracle``, ``myopic-true`` and ``planner`` read the users' hidden state and the items' hidden traits, so
they run only inside the simulator they read: ``myopic-true`` ranks by the true immediate click
probability, ``oracle`` is the classic patient per-item rule, and ``planner`` plans with the true model
(the upper bound every "% of optimum" figure refers to). :func:`make_policy` is :func:`rayrec.baselines.load_policy` plus these, and fits
``greedy``'s click model to exploration clicks in the simulator it will run in.
"""

from __future__ import annotations

import numpy as np

from envs.catalog import ItemCatalog
from envs.config import SlateEnvConfig
from envs.factory import build_simulator
from envs.item_rules import ItemRule, ItemTerms, Rule
from envs.planner import PlannerPolicy
from envs.rollout import StepRecord, evaluate_policy
from envs.simulator import SlateSimulator
from rayrec.baselines import (
    BASELINES,
    EpsilonGreedyPolicy,
    GreedyPolicy,
    RandomPolicy,
    ScoringPolicy,
    load_policy,
)
from rayrec.click_logit import fit_slate_click_model
from rayrec.errors import ConfigError
from rayrec.metrics.beyond import encode_categories
from rayrec.rerank import CategoryLookup, make_reranker, parse_rerank_spec
from rayrec.slate_policy import Observation, SlatePolicy

SIMULATION_POLICIES = ("oracle", "myopic-true", "planner")
"""Policies that read the simulator's hidden state: never served."""

POLICY_NAMES = (*BASELINES, *SIMULATION_POLICIES)


class ItemRulePolicy(ScoringPolicy):
    """Simulation-only: an :class:`ItemRule` applied to the hidden state of the simulator it reads.

    ``myopic-true`` is patience 0 (the true immediate click probability); ``oracle`` is patience 2 — it shows
    what the user truly likes and forgoes clickbait whose clicks would cost the rest of the session. It
    reads the simulator's *current* state: pass it the observation the simulator just produced.
    """

    def __init__(self, sim: SlateSimulator, rule: Rule, name: str | None = None) -> None:
        self.sim, self.rule = sim, rule
        self.name = name or rule.name

    def scores(self, obs: Observation) -> np.ndarray:
        check_own_simulator(self.name, self.sim, obs)
        return self.rule.scores(ItemTerms.of(self.sim))


def check_own_simulator(name: str, sim: SlateSimulator, obs: Observation) -> None:
    """A privileged policy only ranks its own simulator's current candidates."""
    if obs["features"].shape[:2] != sim.candidate_items.shape:
        raise ConfigError(
            f"{name}: observation batch {obs['features'].shape[:2]} is not its simulator's "
            f"{sim.candidate_items.shape}; it only ranks its own simulator's current candidates"
        )


def OraclePolicy(sim: SlateSimulator, patience: float = 2.0) -> ItemRulePolicy:
    """The classic ``oracle``: true logits plus ``patience`` times the classic satisfaction value."""
    return ItemRulePolicy(sim, ItemRule(patience), name="oracle")


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


def catalog_categories(catalog: ItemCatalog) -> CategoryLookup:
    """The :class:`rayrec.rerank.CategoryLookup` of a simulator's catalog (what ``fair`` re-ranks by)."""
    codes, names = encode_categories(catalog.categories, catalog.size)
    return CategoryLookup(catalog.embeddings, codes, len(names))


def check_policy_spec(spec: str) -> None:
    """Raise ConfigError unless ``spec`` names a policy (loading a policy directory to check it)."""
    wrapped = parse_rerank_spec(spec)
    if wrapped is not None:
        check_policy_spec(wrapped.base)
    elif spec not in POLICY_NAMES:
        load_policy(spec)


def make_policy(spec: str, sim: SlateSimulator | None = None) -> SlatePolicy:
    """A policy from a spec: a name in :data:`POLICY_NAMES` or a trained policy directory.

    Args:
        spec: ``random``, ``retrieval``, ``greedy``, ``oracle``, ``myopic-true``, ``planner``, a path/URI
            to a policy exported by ``rayrec train-policy``, or a re-ranker ``NAME[@PARAM]:BASE`` around
            any of them (:mod:`rayrec.rerank`; ``fair`` reads the categories of ``sim``'s catalog).
        sim: the simulator the policy will run in. The simulation-only policies need it (they read its
            hidden state); ``greedy`` fits its click model in it when given.
    """
    wrapped = parse_rerank_spec(spec)
    if wrapped is not None:
        lookup = catalog_categories(sim.catalog) if sim is not None else None
        return make_reranker(wrapped, make_policy(wrapped.base, sim), lookup)
    if spec in SIMULATION_POLICIES:
        if sim is None:
            raise ConfigError(
                f"policy {spec!r} reads the simulator's hidden state: it runs in simulation only"
            )
        if spec == "oracle":
            return OraclePolicy(sim)
        if spec == "myopic-true":
            return ItemRulePolicy(sim, ItemRule(0.0), name="myopic-true")
        return PlannerPolicy(sim)
    if spec == "greedy" and sim is not None:
        return fitted_greedy(sim.config)
    if spec == "epsilon-greedy" and sim is not None:
        return EpsilonGreedyPolicy(fitted_greedy(sim.config))
    return load_policy(spec)
