"""Baseline slate policies that run anywhere — simulator, A/B runner, server: ``random``, ``retrieval``, ``greedy``.

All implement :class:`rayrec.slate_policy.SlatePolicy`. :func:`load_policy` builds one from a spec string: a
baseline name, or a directory holding a policy exported by ``rayrec train-policy``. Policies that read the
simulator's hidden state (``oracle``) live in :mod:`envs.policies`, which adds them to this factory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rayrec import storage
from rayrec.click_logit import SlateClickModel
from rayrec.errors import ConfigError
from rayrec.slate_policy import Observation, Slate, SlatePolicy

BASELINES = ("random", "retrieval", "greedy")
"""Baselines that need nothing but the observation (so the server can run them)."""


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
    """Myopic: the k candidates with the highest immediate click probability under a :class:`SlateClickModel`.

    Under a conditional logit with decreasing position weights, the slate that maximises the chance of
    a click is the k most attractive items, most attractive on top, so ranking by the model's logit is
    exactly the greedy optimum. In the simulator, :func:`envs.policies.make_policy` fits the click model
    to exploration clicks; elsewhere it is :meth:`SlateClickModel.default`.
    """

    name = "greedy"

    def __init__(self, click_model: SlateClickModel | None = None) -> None:
        self.click_model = click_model or SlateClickModel.default()

    def scores(self, obs: Observation) -> np.ndarray:
        return self.click_model.candidate_logits(obs)


def is_policy_dir(spec: str) -> bool:
    """True when ``spec`` names an existing directory (local or remote) rather than a baseline."""
    return Path(storage.local_path(spec)).is_dir() or (storage.is_remote(spec) and storage.exists(spec))


def load_policy(spec: str) -> SlatePolicy:
    """A policy from a spec: a :data:`BASELINES` name or an exported policy directory (path or URI).

    ``greedy`` here uses :meth:`SlateClickModel.default`; in the simulator, :func:`envs.policies.make_policy`
    fits its click model to exploration clicks first.
    """
    if spec == "random":
        return RandomPolicy()
    if spec == "retrieval":
        return RetrievalPolicy()
    if spec == "greedy":
        return GreedyPolicy()
    if is_policy_dir(spec):
        from rayrec.slate_scorer import load_exported_policy  # torch: loaded only for a trained policy

        return load_exported_policy(spec)
    raise ConfigError(f"unknown policy {spec!r}: use one of {BASELINES} or a trained policy directory")
