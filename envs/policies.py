"""Baseline slate policies: ``random``, ``retrieval``, ``greedy`` and, in simulation only, ``oracle``.

All implement :class:`rayrec.policy.SlatePolicy`, so the simulator, the A/B runner and the server call
them the same way; :func:`make_policy` builds one from a spec string (a name or a trained policy dir).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from envs.click_model import ClickModel, fit_click_model
from rayrec import storage
from rayrec.errors import ConfigError
from rayrec.policy import Observation, Slate, SlatePolicy

BASELINES = ("random", "retrieval", "greedy", "oracle")


def top_k_slate(scores: np.ndarray, slate_size: int) -> Slate:
    """Deterministic slate: the ``slate_size`` highest scores [B, K] per row, best on top.

    Ties go to the lower candidate position (the better retrieval rank).
    """
    order = np.argsort(-scores, axis=1, kind="stable")[:, :slate_size]  # [B, k]
    return Slate(
        indices=order.astype(np.int64),
        scores=np.take_along_axis(scores, order, axis=1).astype(np.float32),
        propensities=np.ones(order.shape, dtype=np.float32),
    )


def one_hot_marginals(slate: Slate, num_candidates: int) -> np.ndarray:
    """[B, k, K] marginals of a deterministic slate: 1 where candidate j is shown at position p."""
    batch, k = slate.indices.shape
    out = np.zeros((batch, k, num_candidates), dtype=np.float32)
    np.put_along_axis(out, slate.indices[:, :, None], 1.0, axis=2)
    return out


class ScoringPolicy:
    """Shows the top-k candidates by a per-candidate score (subclasses define :meth:`scores`)."""

    name = "scoring"

    def scores(self, obs: Observation) -> np.ndarray:
        """[B, K] score of every candidate."""
        raise NotImplementedError

    def select(self, obs: Observation, slate_size: int, rng: np.random.Generator | None = None) -> Slate:
        return top_k_slate(self.scores(obs), slate_size)

    def position_marginals(self, obs: Observation, slate_size: int) -> np.ndarray:
        return one_hot_marginals(self.select(obs, slate_size), obs["features"].shape[1])


class RandomPolicy:
    """k distinct candidates uniformly at random, in random order (P(j at p) = 1/K)."""

    name = "random"

    def __init__(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)

    def select(self, obs: Observation, slate_size: int, rng: np.random.Generator | None = None) -> Slate:
        rng = rng if rng is not None else self.rng
        batch, k_all = obs["features"].shape[:2]
        order = np.argsort(rng.random((batch, k_all)), axis=1)[:, :slate_size]
        return Slate(
            indices=order.astype(np.int64),
            scores=np.zeros(order.shape, dtype=np.float32),
            propensities=np.full(order.shape, 1.0 / k_all, dtype=np.float32),
        )

    def position_marginals(self, obs: Observation, slate_size: int) -> np.ndarray:
        batch, k_all = obs["features"].shape[:2]
        return np.full((batch, slate_size, k_all), 1.0 / k_all, dtype=np.float32)


class RetrievalPolicy(ScoringPolicy):
    """The retriever's own order: top-k by retrieval score (profile · item)."""

    name = "retrieval"

    def scores(self, obs: Observation) -> np.ndarray:
        return obs["features"][..., 0]


class GreedyPolicy(ScoringPolicy):
    """Myopic: the k candidates with the highest immediate click probability under a :class:`ClickModel`.

    Under a conditional logit with decreasing position weights, the slate that maximises the chance of
    a click is the k most attractive items, most attractive on top, so ranking by the model's logit is
    exactly the greedy optimum. With an env, :func:`make_policy` fits the click model to exploration
    clicks in it; without one it uses :meth:`ClickModel.default`.
    """

    name = "greedy"

    def __init__(self, click_model: ClickModel | None = None) -> None:
        self.click_model = click_model or ClickModel.default()

    def scores(self, obs: Observation) -> np.ndarray:
        return self.click_model.candidate_logits(obs)


class OraclePolicy(ScoringPolicy):
    """Simulation-only upper bound: reads the users' hidden interests and the items' hidden traits.

    Scores each candidate by its true choice logit plus the value of its effect on satisfaction,
    ``logit + patience * Δsatisfaction / temperature`` where ``Δsatisfaction = gain * (quality - 0.5) -
    penalty * clickbait`` is what clicking it would do. So it shows what the user truly likes and
    forgoes clickbait whose clicks would cost the rest of the session. It reads the env's *current*
    state: pass it the observation the env just returned.
    """

    name = "oracle"

    def __init__(self, env, patience: float = 2.0) -> None:
        self.sim = env.unwrapped.sim
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


def fitted_greedy(config, num_users: int = 512, seed: int = 0) -> GreedyPolicy:
    """A greedy policy whose click model is fitted to random-slate clicks in the env ``config`` defines."""
    from envs.evaluation import collect_random_slates

    features, embeddings, clicks = collect_random_slates(config, num_users, seed)
    return GreedyPolicy(fit_click_model(features, embeddings, clicks))


def make_policy(spec: str, env=None) -> SlatePolicy:
    """A policy from a spec: a baseline name, or a directory with an exported trained policy.

    Args:
        spec: ``random``, ``retrieval``, ``greedy``, ``oracle`` or a path/URI to a policy directory
            written by ``rayrec train-policy`` (loaded with :func:`rayrec.slate_model.load_exported_policy`).
        env: the simulator the policy runs in (single or vector env). ``oracle`` needs it; ``greedy``
            fits its click model in it when given.
    """
    if spec == "random":
        return RandomPolicy()
    if spec == "retrieval":
        return RetrievalPolicy()
    if spec == "greedy":
        return fitted_greedy(env.unwrapped.config) if env is not None else GreedyPolicy()
    if spec == "oracle":
        if env is None:
            raise ConfigError(
                "policy 'oracle' reads the simulator's hidden state: it runs in simulation only"
            )
        return OraclePolicy(env)
    if Path(storage.local_path(spec)).is_dir() or (storage.is_remote(spec) and storage.exists(spec)):
        from rayrec.slate_model import load_exported_policy

        return load_exported_policy(spec)
    raise ConfigError(f"unknown policy {spec!r}: use one of {BASELINES} or a trained policy directory")
