"""Baseline slate policies that run anywhere — simulator, A/B runner, server: ``random``, ``retrieval``, ``greedy``,
``epsilon-greedy`` (exploration), ``popularity``, and tuned rankers (a directory: :class:`LinearRankerPolicy`,
:class:`SwitchRankerPolicy`).

All implement :class:`rayrec.slate_policy.SlatePolicy`. :func:`load_policy` builds one from a spec string: a
baseline name, or a directory holding a policy exported by ``rayrec train-policy``. Policies that read the
simulator's hidden state (``oracle``) live in :mod:`envs.policies`, which adds them to this factory.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rayrec import storage
from rayrec.click_logit import SlateClickModel
from rayrec.errors import ArtifactError, ConfigError
from rayrec.features import FEATURE_NAMES, USER_COLUMNS, is_simulation_feature_set
from rayrec.slate_policy import Observation, Slate, SlatePolicy

BASELINES = ("random", "retrieval", "greedy", "epsilon-greedy", "popularity")
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


EXPLORATION_EPSILON = 0.2
"""Share of ``epsilon-greedy``'s requests that get a uniformly random slate."""


class EpsilonGreedyPolicy:
    """Exploration around a scoring policy: its top-k slate, or with probability ``epsilon`` a uniformly
    random one (k distinct candidates in random order).

    Every candidate has support at every position, so a log it writes supports any target policy:
    ``P(j at p) = (1 - epsilon) 1[j is the base's p-th] + epsilon / K``, and the whole ordered slate
    ``s`` has ``P(s) = (1 - epsilon) 1[s is the base's top-k] + epsilon (K - k)! / K!``.
    """

    def __init__(
        self, base: ScoringPolicy, epsilon: float = EXPLORATION_EPSILON, seed: int | None = None
    ) -> None:
        if not 0.0 < epsilon <= 1.0:
            raise ConfigError(f"epsilon-greedy: epsilon must be in (0, 1], got {epsilon}")
        self.base = base
        self.epsilon = float(epsilon)
        self.random = RandomPolicy(seed)
        self.name = f"epsilon-{base.name}"

    def select(self, obs: Observation, slate_size: int, rng: np.random.Generator | None = None) -> Slate:
        rng = rng if rng is not None else self.random.rng
        top = top_k_slate(self.base.scores(obs), slate_size)  # [B, k]
        explore = rng.random(len(top.indices)) < self.epsilon  # [B]
        indices = np.where(explore[:, None], self.random.select(obs, slate_size, rng).indices, top.indices)
        marginals = self.position_marginals(obs, slate_size)  # [B, k, K]
        return Slate(
            indices=indices,
            scores=np.where(explore[:, None], 0.0, top.scores).astype(np.float32),
            propensities=np.take_along_axis(marginals, indices[:, :, None], axis=2)[..., 0],
        )

    def position_marginals(self, obs: Observation, slate_size: int) -> np.ndarray:
        top = top_k_slate(self.base.scores(obs), slate_size)
        num = obs["features"].shape[1]
        greedy = one_hot_marginals(top, num) * (1.0 - self.epsilon)  # [B, k, K]
        return (greedy + self.epsilon / num).astype(np.float32)

    def slate_log_prob(self, obs: Observation, slates: np.ndarray) -> np.ndarray:
        """[b] log-probability of the ordered slates [b, k]."""
        k = slates.shape[1]
        num = obs["features"].shape[1]
        top = top_k_slate(self.base.scores(obs), k).indices
        uniform = self.epsilon * np.exp(-np.log(num - np.arange(k, dtype=np.float64)).sum())
        return np.log((1.0 - self.epsilon) * (slates == top).all(axis=1) + uniform)


class PopularityPolicy(ScoringPolicy):
    """The most popular candidates first: top-k by the ``popularity`` feature (log-scaled interaction count)."""

    name = "popularity"

    def scores(self, obs: Observation) -> np.ndarray:
        return obs["features"][..., FEATURE_NAMES.index("popularity")]


LINEAR_RANKER_FILE = "linear_ranker.json"
"""The file of a :class:`LinearRankerPolicy` directory (``trainers.linear_ranker`` writes it)."""


class LinearRankerPolicy(ScoringPolicy):
    """Top-k by a linear score of each candidate's observable inputs: ``w_f · features + w_e · embedding``.

    The weights come from black-box search on training users (``trainers.linear_ranker``: the
    cross-entropy method); the policy itself needs only the observation, so the server can run it.

    Args:
        feature_weights: [F] weights of the features ``feature_names``.
        embedding_weights: [d] weights of the candidate embedding (empty: not used).
        feature_names: the F features the weights are for, in order: :data:`rayrec.features.FEATURE_NAMES`
            (the default), or those and the columns a simulator with ``observe_rating`` or ``observe_hidden``
            appends (:func:`rayrec.features.feature_names`).
    """

    def __init__(
        self,
        feature_weights: np.ndarray,
        embedding_weights: np.ndarray,
        name: str = "linear-cem",
        feature_names: tuple[str, ...] = FEATURE_NAMES,
    ) -> None:
        self.feature_weights = np.asarray(feature_weights, dtype=np.float32)
        self.embedding_weights = np.asarray(embedding_weights, dtype=np.float32)
        self.name = name
        self.feature_names = tuple(feature_names)
        if len(self.feature_names) != len(self.feature_weights) or not is_simulation_feature_set(
            self.feature_names
        ):
            raise ConfigError(
                f"policy {name!r}: {len(self.feature_weights)} feature weights for the features "
                f"{list(self.feature_names)} (the names must be rayrec.features.feature_names of a selection)"
            )

    @staticmethod
    def split(weights: np.ndarray, num_features: int) -> tuple[np.ndarray, np.ndarray]:
        """A flat [F + d] weight vector → (feature weights [F], embedding weights [d])."""
        return weights[:num_features], weights[num_features:]

    def scores(self, obs: Observation) -> np.ndarray:
        features = obs["features"]
        if features.shape[-1] != len(self.feature_weights):
            raise ConfigError(
                f"policy {self.name!r}: {len(self.feature_weights)} feature weights, observation has "
                f"{features.shape[-1]} features"
            )
        out = features @ self.feature_weights  # [B, K]
        if len(self.embedding_weights):
            if obs["candidates"].shape[-1] != len(self.embedding_weights):
                raise ConfigError(
                    f"policy {self.name!r} was fitted on {len(self.embedding_weights)}-d embeddings, "
                    f"the candidates are {obs['candidates'].shape[-1]}-d"
                )
            out = out + obs["candidates"] @ self.embedding_weights  # [B, K]
        return out

    def save(self, out_dir: str, metadata: dict | None = None) -> str:
        """Write ``linear_ranker.json`` under ``out_dir`` (path or URI); returns ``out_dir``."""
        record = {
            "format": "rayrec-linear-ranker",
            "name": self.name,
            "feature_names": list(self.feature_names),
            "feature_weights": self.feature_weights.tolist(),
            "embedding_weights": self.embedding_weights.tolist(),
            "metadata": metadata or {},
        }
        storage.write_text(storage.join(out_dir, LINEAR_RANKER_FILE), json.dumps(record, indent=2) + "\n")
        return out_dir

    @classmethod
    def from_record(cls, record: dict) -> LinearRankerPolicy:
        """The ranker of a ``linear_ranker.json`` record written by :meth:`save`.

        A record without ``feature_names`` (written before they were recorded) holds weights of
        :data:`rayrec.features.FEATURE_NAMES`.
        """
        names = tuple(record.get("feature_names", FEATURE_NAMES))
        return cls(record["feature_weights"], record["embedding_weights"], str(record["name"]), names)


class SwitchRankerPolicy(ScoringPolicy):
    """Two linear rankers and a linear gate on the user: ``spend`` while the gate is open, ``build`` otherwise.

    The gate is open where ``w_g · [1, budget, user columns] > 0``: the remaining session budget and the
    observation's per-user columns (:data:`rayrec.features.USER_COLUMNS`: ``last_engagement``,
    ``last_click_rating``, when the features have them). It is the observable form of the planner's
    satisfaction switches (:class:`envs.item_rules.Switch`): where the user's state decides whether to spend
    it on what is clicked now or to build it for later, a single linear ranker cannot switch, and a learner
    that beats it has learned more than the switch. Without per-user columns the gate reads the budget
    alone, a switch on the session's clock. Both rankers weigh the features only (no embedding weights):
    every weight costs the black-box search that fits them (``trainers.linear_ranker``).

    Args:
        spend: the ranker while the gate is open.
        build: the ranker while it is closed (same ``feature_names``).
        gate_weights: [G] weights of :meth:`gate_inputs` (G = 2 + the per-user columns of the features).
        budget: the session budget that scales the observation's ``budget`` (the world it was fitted in);
            the server computes the gate's clock with it (``serving.pipeline.budget_scale``).
        name: the policy's name.
    """

    def __init__(
        self,
        spend: LinearRankerPolicy,
        build: LinearRankerPolicy,
        gate_weights: np.ndarray,
        budget: float,
        name: str = "switch-cem",
    ) -> None:
        self.spend, self.build, self.name, self.budget = spend, build, name, float(budget)
        if self.budget <= 0:
            raise ConfigError(f"policy {name!r}: budget must be > 0 (got {budget})")
        self.gate_weights = np.asarray(gate_weights, dtype=np.float32)
        self.feature_names = spend.feature_names
        if build.feature_names != self.feature_names:
            raise ConfigError(
                f"policy {name!r}: its rankers read different features ({list(self.feature_names)} vs "
                f"{list(build.feature_names)})"
            )
        self.user_columns = tuple(n for n in self.feature_names if n in USER_COLUMNS)
        if len(self.gate_weights) != 2 + len(self.user_columns):
            raise ConfigError(
                f"policy {name!r}: {len(self.gate_weights)} gate weights for the inputs "
                f"{['bias', 'budget', *self.user_columns]}"
            )

    @staticmethod
    def split(
        weights: np.ndarray, feature_names: tuple[str, ...]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A flat [2 F + G] vector → (spend weights [F], build weights [F], gate weights [G])."""
        f = len(feature_names)
        return weights[:f], weights[f : 2 * f], weights[2 * f :]

    @staticmethod
    def num_weights(feature_names: tuple[str, ...]) -> int:
        """2 F + G: the length of the flat vector :meth:`split` takes."""
        return 2 * len(feature_names) + 2 + sum(n in USER_COLUMNS for n in feature_names)

    @classmethod
    def from_flat(
        cls, weights: np.ndarray, feature_names: tuple[str, ...], budget: float, name: str = "switch-cem"
    ) -> SwitchRankerPolicy:
        """The ranker of a flat weight vector (:meth:`split`)."""
        spend, build, gate = cls.split(np.asarray(weights, dtype=np.float32), feature_names)
        empty = np.zeros(0, np.float32)
        return cls(
            LinearRankerPolicy(spend, empty, "spend", feature_names),
            LinearRankerPolicy(build, empty, "build", feature_names),
            gate,
            budget,
            name,
        )

    def gate_inputs(self, obs: Observation) -> np.ndarray:
        """[B, G]: 1, the remaining budget and each per-user column (read from the first candidate's row)."""
        features = obs["features"]  # [B, K, F]
        columns = [features[:, 0, self.feature_names.index(n)] for n in self.user_columns]
        ones = np.ones(len(features), np.float32)
        return np.stack([ones, obs["budget"][:, 0], *columns], axis=1)

    def scores(self, obs: Observation) -> np.ndarray:
        open_ = self.gate_inputs(obs) @ self.gate_weights > 0  # [B]
        return np.where(open_[:, None], self.spend.scores(obs), self.build.scores(obs))

    def save(self, out_dir: str, metadata: dict | None = None) -> str:
        """Write ``linear_ranker.json`` (format ``rayrec-switch-ranker``) under ``out_dir``; returns ``out_dir``."""
        record = {
            "format": SWITCH_FORMAT,
            "name": self.name,
            "feature_names": list(self.feature_names),
            "spend": self.spend.feature_weights.tolist(),
            "build": self.build.feature_weights.tolist(),
            "gate_inputs": ["bias", "budget", *self.user_columns],
            "gate_weights": self.gate_weights.tolist(),
            "budget": self.budget,
            "metadata": metadata or {},
        }
        storage.write_text(storage.join(out_dir, LINEAR_RANKER_FILE), json.dumps(record, indent=2) + "\n")
        return out_dir


SWITCH_FORMAT = "rayrec-switch-ranker"
"""The ``format`` of a :class:`SwitchRankerPolicy`'s ``linear_ranker.json``."""


def load_ranker(uri: str) -> LinearRankerPolicy | SwitchRankerPolicy:
    """The tuned ranker saved under ``uri``: a switch ranker or a linear one (by the file's ``format``); a
    broken file → ArtifactError."""
    try:
        record = json.loads(storage.read_text(storage.join(uri, LINEAR_RANKER_FILE)))
        if record.get("format") != SWITCH_FORMAT:
            return LinearRankerPolicy.from_record(record)
        names = tuple(record["feature_names"])
        flat = np.concatenate([record["spend"], record["build"], record["gate_weights"]])
        return SwitchRankerPolicy.from_flat(flat, names, record["budget"], str(record["name"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, ConfigError) as exc:
        raise ArtifactError(f"{uri}: invalid {LINEAR_RANKER_FILE} ({exc})") from None


def is_policy_dir(spec: str) -> bool:
    """True when ``spec`` names an existing directory (local or remote) rather than a baseline."""
    return Path(storage.local_path(spec)).is_dir() or (storage.is_remote(spec) and storage.exists(spec))


def load_policy(spec: str, categories=None) -> SlatePolicy:
    """A policy from a spec: a :data:`BASELINES` name, an exported policy directory (path or URI), or a
    re-ranker around either (``mmr:retrieval``, ``dpp@0.9:greedy``, ``fair:DIR``; :mod:`rayrec.rerank`).

    ``greedy`` here uses :meth:`SlateClickModel.default`; in the simulator, :func:`envs.policies.make_policy`
    fits its click model to exploration clicks first. ``categories`` is the catalog's
    :class:`rayrec.rerank.CategoryLookup`, which the ``fair`` re-ranker needs.
    """
    from rayrec import rerank  # rerank builds on this module's slates: imported here to avoid a cycle

    wrapped = rerank.parse_rerank_spec(spec)
    if wrapped is not None:
        return rerank.make_reranker(wrapped, load_policy(wrapped.base, categories), categories)
    if spec == "random":
        return RandomPolicy()
    if spec == "retrieval":
        return RetrievalPolicy()
    if spec == "greedy":
        return GreedyPolicy()
    if spec == "epsilon-greedy":
        return EpsilonGreedyPolicy(GreedyPolicy())
    if spec == "popularity":
        return PopularityPolicy()
    if is_policy_dir(spec) and storage.exists(storage.join(spec, LINEAR_RANKER_FILE)):
        return load_ranker(spec)
    if is_policy_dir(spec):
        from rayrec.slate_scorer import load_exported_policy  # torch: loaded only for a trained policy

        return load_exported_policy(spec)
    raise ConfigError(
        f"unknown policy {spec!r}: use one of {BASELINES}, a trained policy directory, or a re-ranker "
        "NAME[@PARAM]:BASE with NAME one of mmr, dpp, fair"
    )
