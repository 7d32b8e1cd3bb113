"""Re-rankers: slate policies that re-order another policy's candidates for diversity or fair exposure.

Each wraps a *base* policy (any :class:`rayrec.slate_policy.SlatePolicy`: a baseline, a trained policy,
another re-ranker) and chooses the slate greedily from the base's relevance and the candidates' embeddings:

- ``mmr`` — maximal marginal relevance (Carbonell & Goldstein, SIGIR 1998): each next item maximises
  ``λ rel(j) - (1 - λ) max_{s ∈ S} cos(j, s)``. λ = 1 is the base's own top-k.
- ``dpp`` — a determinantal point process over the candidates with kernel
  ``L = Diag(exp(a r)) S Diag(exp(a r))``, ``S`` the cosine similarities, ``a = θ / (2 (1 - θ))``, and the
  slate its greedy MAP by incremental Cholesky updates (Chen, Zhang & Zhou, NeurIPS 2018, Alg. 1 and §4).
- ``fair`` — amortised exposure by category (Biega, Gummadi & Weikum, SIGIR 2018): the re-ranker remembers
  the exposure it has given each category over every slate it served, and adds to each
  candidate's relevance ``β · C · (1/C - E_c / Σ E)``, the (relative) exposure deficit of its category
  against equal exposure, so under-exposed categories move up until exposure evens out over time.

Policy specs (wherever a policy is named: ``rayrec simulate --policy``, ``rayrec ab --arm``, benchmarks):
``NAME[@PARAM]:BASE``, e.g. ``mmr:retrieval``, ``mmr@0.5:greedy``, ``dpp@0.9:retrieval``, ``fair@2:retrieval``,
``fair:mmr:greedy``. ``PARAM`` is λ (mmr, default :data:`DEFAULTS`), θ (dpp) or β (fair). Relevance is the
base's per-candidate score (:func:`base_relevance`) min-max scaled to [0, 1] within each row, so the
parameters mean the same for any base. The fair re-ranker needs each candidate's category: a
:class:`CategoryLookup` built from the catalog finds it from the candidate's embedding (the simulator's
catalog; in the server, the index's ``category`` column, see :class:`serving.deployments.Ranker`).
:func:`needs_categories` tells whether a spec has a fair re-ranker anywhere in it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rayrec.baselines import load_policy, one_hot_marginals
from rayrec.errors import ArtifactError, ConfigError
from rayrec.features import FEATURE_NAMES
from rayrec.metrics.beyond import encode_categories
from rayrec.slate_policy import Observation, Slate, SlatePolicy

RERANKERS = ("mmr", "dpp", "fair")
DEFAULTS = {"mmr": 0.7, "dpp": 0.7, "fair": 1.0}
"""Default parameter per re-ranker: λ of mmr, θ of dpp, β of fair."""


@dataclass(frozen=True)
class RerankSpec:
    """A parsed ``NAME[@PARAM]:BASE`` policy spec."""

    name: str
    param: float
    base: str

    def __str__(self) -> str:
        return f"{self.name}@{self.param:g}:{self.base}"


def parse_rerank_spec(spec: str) -> RerankSpec | None:
    """``NAME[@PARAM]:BASE`` → :class:`RerankSpec`; None when ``spec`` is not a re-ranker spec.

    Bad parameters → ConfigError naming the valid range.
    """
    head, colon, base = spec.partition(":")
    name, _, param = head.partition("@")
    if not colon or name not in RERANKERS:
        return None
    if not base:
        raise ConfigError(f"policy {spec!r}: {name} needs a base policy, e.g. {name}:retrieval")
    try:
        value = float(param) if param else DEFAULTS[name]
    except ValueError:
        raise ConfigError(f"policy {spec!r}: parameter {param!r} is not a number") from None
    if name == "mmr" and not 0.0 <= value <= 1.0:
        raise ConfigError(f"policy {spec!r}: mmr's λ must be in [0, 1], got {value}")
    if name == "dpp" and not 0.0 <= value < 1.0:
        raise ConfigError(f"policy {spec!r}: dpp's θ must be in [0, 1), got {value}")
    if name == "fair" and not (value >= 0.0 and np.isfinite(value)):
        raise ConfigError(f"policy {spec!r}: fair's β must be >= 0, got {value}")
    return RerankSpec(name=name, param=value, base=base)


def innermost_spec(spec: str) -> str:
    """The policy at the bottom of ``spec``'s re-rankers (``mmr:fair@2:greedy`` → ``greedy``); ``spec``
    itself when it is no re-ranker spec. Bad parameters → ConfigError."""
    wrapped = parse_rerank_spec(spec)
    while wrapped is not None:
        spec, wrapped = wrapped.base, parse_rerank_spec(wrapped.base)
    return spec


def needs_categories(spec: str) -> bool:
    """True when ``spec`` has a ``fair`` re-ranker at any depth (``fair:greedy``, ``mmr:fair@2:retrieval``):
    loading it needs the catalog's :class:`CategoryLookup`. Bad parameters → ConfigError."""
    wrapped = parse_rerank_spec(spec)
    while wrapped is not None:
        if wrapped.name == "fair":
            return True
        wrapped = parse_rerank_spec(wrapped.base)
    return False


def base_relevance(policy: SlatePolicy, obs: Observation) -> np.ndarray:
    """[B, K] the base policy's relevance of every candidate, min-max scaled to [0, 1] per row.

    A scoring policy's own scores; for any other policy, its full ranking (a slate of all K candidates):
    candidate at rank r gets ``1 - r / (K - 1)``.
    """
    if hasattr(policy, "scores"):
        raw = np.asarray(policy.scores(obs), dtype=np.float64)
    else:
        k_all = obs["features"].shape[1]
        order = policy.select(obs, k_all, np.random.default_rng(0)).indices  # [B, K]
        raw = np.empty(order.shape)
        np.put_along_axis(raw, order, 1.0 - np.arange(k_all)[None, :] / max(k_all - 1, 1), axis=1)
    low, high = raw.min(axis=1, keepdims=True), raw.max(axis=1, keepdims=True)
    return np.where(high > low, (raw - low) / np.where(high > low, high - low, 1.0), 1.0)


def cosine_similarities(candidates: np.ndarray) -> np.ndarray:
    """[B, K, K] cosine similarity of each row's candidates ``candidates`` [B, K, d]."""
    e = np.asarray(candidates, dtype=np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
    return np.einsum("bid,bjd->bij", e, e)


def _slate(indices: list[np.ndarray], scores: list[np.ndarray]) -> Slate:
    idx = np.stack(indices, axis=1).astype(np.int64)
    return Slate(
        indices=idx,
        scores=np.stack(scores, axis=1).astype(np.float32),
        propensities=np.ones(idx.shape, dtype=np.float32),
    )


class _Reranker:
    """Common parts: a name that rebuilds the policy, deterministic marginals."""

    def __init__(self, spec: RerankSpec, base: SlatePolicy) -> None:
        self.spec, self.base = spec, base
        self.name = str(spec)

    def position_marginals(self, obs: Observation, slate_size: int) -> np.ndarray:
        return one_hot_marginals(self.select(obs, slate_size), obs["features"].shape[1])

    def select(self, obs: Observation, slate_size: int, rng: np.random.Generator | None = None) -> Slate:
        raise NotImplementedError


class MMRPolicy(_Reranker):
    """Maximal marginal relevance over the base's relevance (Carbonell & Goldstein, 1998)."""

    def select(self, obs: Observation, slate_size: int, rng: np.random.Generator | None = None) -> Slate:
        lam = self.spec.param
        rel = base_relevance(self.base, obs)  # [B, K]
        sim = cosine_similarities(obs["candidates"])  # [B, K, K]
        rows = np.arange(len(rel))
        taken = np.zeros(rel.shape, dtype=bool)
        closest = np.zeros(rel.shape)  # [B, K] max similarity to the items already chosen
        indices, scores = [], []
        for step in range(slate_size):
            objective = lam * rel - (1.0 - lam) * (closest if step else 0.0)
            objective = np.where(taken, -np.inf, objective)
            pick = objective.argmax(axis=1)  # ties: the lower candidate position (better retrieval rank)
            indices.append(pick)
            scores.append(objective[rows, pick])
            taken[rows, pick] = True
            closest = np.maximum(closest, sim[rows, pick]) if step else sim[rows, pick]
        return _slate(indices, scores)


class DPPPolicy(_Reranker):
    """Greedy MAP inference of a quality-diversity DPP (Chen, Zhang & Zhou, NeurIPS 2018)."""

    JITTER = 1e-6
    """Added to the similarity's diagonal so the kernel stays positive definite."""

    def select(self, obs: Observation, slate_size: int, rng: np.random.Generator | None = None) -> Slate:
        theta = self.spec.param
        rel = base_relevance(self.base, obs)  # [B, K]
        quality = np.exp(theta / (2.0 * (1.0 - theta)) * rel)  # [B, K]
        sim = cosine_similarities(obs["candidates"])
        batch, k_all = rel.shape
        kernel = quality[:, :, None] * (sim + self.JITTER * np.eye(k_all)[None]) * quality[:, None, :]
        rows = np.arange(batch)
        gains = np.einsum("bii->bi", kernel).copy()  # [B, K] d_j^2: marginal gain of adding j
        factors = np.zeros((batch, slate_size, k_all))  # [B, k, K] rows of the incremental Cholesky factor
        taken = np.zeros((batch, k_all), dtype=bool)
        indices, scores = [], []
        for step in range(slate_size):
            # Chen et al. stop when no gain is left; a slate needs k items, so those go by relevance.
            usable = gains > 1e-10
            objective = np.where(usable, np.log(np.maximum(gains, 1e-300)), -1e6 + rel)
            objective = np.where(taken, -np.inf, objective)
            pick = objective.argmax(axis=1)
            indices.append(pick)
            scores.append(objective[rows, pick])
            taken[rows, pick] = True
            d = np.sqrt(np.maximum(gains[rows, pick], 1e-12))  # [B]
            projection = np.einsum("bt,btk->bk", factors[rows, :step, pick], factors[:, :step, :])
            e = (kernel[rows, pick, :] - projection) / d[:, None]  # [B, K]
            factors[:, step, :] = e
            gains = gains - e**2
        return _slate(indices, scores)


class CategoryLookup:
    """The category of a candidate from its embedding: an exact match of the float32 vector in the catalog.

    The observation carries candidates' embeddings, not their ids; the catalog's embeddings are hashed
    (FNV-1a over the 32-bit words) once, and each candidate's hash is found by binary search. A candidate
    absent from the catalog gets category ``C`` (unknown), which the fair re-ranker neither favours nor counts.
    """

    def __init__(self, embeddings: np.ndarray, codes: np.ndarray, num_categories: int) -> None:
        """Args: embeddings [N, d] of the catalog (as the observation shows them); codes [N] int64 in [0, C)."""
        keys = embedding_keys(np.asarray(embeddings, dtype=np.float32))
        order = np.argsort(keys, kind="stable")
        self.keys, self.codes = keys[order], np.asarray(codes, np.int64)[order]
        self.num_categories = int(num_categories)

    @classmethod
    def from_categories(cls, embeddings: np.ndarray, categories: np.ndarray) -> CategoryLookup:
        """The lookup of a catalog of ``embeddings`` [N, d] and ``categories`` [N] str (``""`` or None:
        unknown, a category of its own, as :func:`rayrec.metrics.beyond.encode_categories` codes it)."""
        codes, names = encode_categories(categories, len(embeddings))
        return cls(embeddings, codes, len(names))

    def categories(self, candidates: np.ndarray) -> np.ndarray:
        """[B, K] int64 category of each candidate ``candidates`` [B, K, d] (``C`` when unknown)."""
        keys = embedding_keys(np.asarray(candidates, dtype=np.float32))
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return np.where(self.keys[at] == keys, self.codes[at], self.num_categories)


def embedding_keys(embeddings: np.ndarray) -> np.ndarray:
    """[...] uint64 FNV-1a hash of each float32 vector ``embeddings`` [..., d] (its exact bits)."""
    words = np.ascontiguousarray(embeddings, dtype=np.float32).view(np.uint32).astype(np.uint64)
    keys = np.full(words.shape[:-1], 14695981039346656037, dtype=np.uint64)
    prime = np.uint64(1099511628211)
    for i in range(words.shape[-1]):
        keys = (keys ^ words[..., i]) * prime
    return keys


class FairExposurePolicy(_Reranker):
    """Amortised category exposure (Biega et al., 2018): relevance plus β times the category's deficit.

    State: ``exposure`` [C] impressions given to each category over every slate this policy has chosen.
    Every impression counts once, as :mod:`rayrec.metrics.beyond` counts exposure (Biega et al. weight
    positions by the attention they get; the metric this re-ranker is judged by does not). The bonus of
    category c is ``β · C · (1/C - E_c / Σ E)``: positive while c has less than an equal share.
    Within one batch every position is filled for all rows at once and the exposure updated after it.
    """

    def __init__(self, spec: RerankSpec, base: SlatePolicy, lookup: CategoryLookup) -> None:
        super().__init__(spec, base)
        self.lookup = lookup
        self.exposure = np.zeros(lookup.num_categories)

    def select(self, obs: Observation, slate_size: int, rng: np.random.Generator | None = None) -> Slate:
        beta, c = self.spec.param, self.lookup.num_categories
        rel = base_relevance(self.base, obs)  # [B, K]
        cats = self.lookup.categories(obs["candidates"])  # [B, K], c = unknown
        rows = np.arange(len(rel))
        taken = np.zeros(rel.shape, dtype=bool)
        indices, scores = [], []
        for _ in range(slate_size):
            total = self.exposure.sum()
            share = self.exposure / total if total > 0 else np.full(c, 1.0 / c)
            bonus = np.append(beta * c * (1.0 / c - share), 0.0)  # [C + 1], unknown gets none
            objective = np.where(taken, -np.inf, rel + bonus[cats])
            pick = objective.argmax(axis=1)
            indices.append(pick)
            scores.append(objective[rows, pick])
            taken[rows, pick] = True
            shown = cats[rows, pick]
            known = shown < c
            self.exposure += np.bincount(shown[known], minlength=c)
        return _slate(indices, scores)


def innermost_policy(policy: SlatePolicy) -> SlatePolicy:
    """The policy a chain of re-rankers wraps (``policy`` itself when it is no re-ranker): what decides the
    observation's scale (a trained policy's K and ``budget``)."""
    while isinstance(policy, _Reranker):
        policy = policy.base
    return policy


def policy_feature_names(policy: SlatePolicy) -> tuple[str, ...]:
    """The per-candidate features ``policy`` reads, in order: a trained policy's or a fitted linear ranker's
    ``feature_names``, :data:`rayrec.features.FEATURE_NAMES` for every other baseline (a re-ranker reads
    what the policy it wraps reads). Give it ``select_features(features, have, this)``."""
    return getattr(innermost_policy(policy), "feature_names", FEATURE_NAMES)


def make_reranker(spec: RerankSpec, base: SlatePolicy, lookup: CategoryLookup | None = None) -> SlatePolicy:
    """The re-ranker ``spec`` names around ``base``; ``fair`` needs the catalog's ``lookup``."""
    if spec.name == "mmr":
        return MMRPolicy(spec, base)
    if spec.name == "dpp":
        return DPPPolicy(spec, base)
    if lookup is None:
        raise ConfigError(
            f"policy {spec}: the fair re-ranker needs the catalog's item categories; it runs where the "
            "catalog is known (rayrec simulate, rayrec ab, benchmarks, and the server with an index built "
            "from items with a category column)"
        )
    return FairExposurePolicy(spec, base, lookup)


def index_category_lookup(index_uri: str | None, spec: str) -> CategoryLookup:
    """The :class:`rayrec.rerank.CategoryLookup` of the index's items, for policy ``spec``'s ``fair``
    re-ranker: their embeddings and ``category`` column (the embeddings file only, checksum verified).

    Raises:
        ConfigError: no index given.
        ArtifactError: the index has no categories (built from items without a ``category`` column, or
            before ``rayrec build-index`` stored them), or does not load.
    """
    if index_uri is None:
        raise ConfigError(
            f"policy {spec}: the fair re-ranker needs an index with item categories; none given"
        )
    from rayrec.index.item_index import load_index_items  # pyarrow: only when a fair policy is loaded

    items = load_index_items(index_uri, verify=True)
    if items.categories is None:
        raise ArtifactError(
            f"policy {spec}: the fair re-ranker needs item categories and index {index_uri} has none; "
            "rebuild it with `rayrec build-index` from items.parquet with a category column"
        )
    return CategoryLookup.from_categories(items.embeddings, items.categories)


def load_policy_for_index(spec: str, index_uri: str | None) -> SlatePolicy:
    """:func:`rayrec.baselines.load_policy` of ``spec``, given the categories of the index ``index_uri``
    (:func:`index_category_lookup`) when the spec has a ``fair`` re-ranker anywhere in it."""
    categories = index_category_lookup(index_uri, spec) if needs_categories(spec) else None
    return load_policy(spec, categories)
