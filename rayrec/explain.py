"""Why an item was recommended: attribution in the encoder space and over the ranker's features.

Two stages answer for an item, and each gets an attribution of exactly what it computes:

**Retrieval** scores a candidate ``e`` by ``profile · e``, with the profile built as serving builds it
(:func:`serving.pipeline.request_context`): ``p0 = normalize(mean(H))`` over the user's known history
``H = {h_1..h_n}`` (each item once), and with a text query ``q``: ``p = normalize(p0 + q)``. Since
``normalize(mean(H)) = S / |S|`` with ``S = sum_i h_i``, the score splits exactly into one term per
history item plus the query's::

    score = sum_i (h_i · e) / (|S| z)  +  (q · e) / z,      z = |p0 + q|  (z = 1 without a query)

(``share`` below; the terms sum to the score). The exact effect of taking an item out of the history is a
different number, because the profile is renormalised: ``drop_i = score(H) - score(H \\ {h_i})``, with the
profile rebuilt without ``h_i`` by the same formula (leave-one-out occlusion, ``drop``). The items an
explanation *names* are the ones with the largest ``drop``: removing a named item lowers the
recommended item's retrieval score by the stated amount, and removing any unnamed one lowers it less.
Cost: O(n k d) for k items.

**Ranking** scores candidates with a :class:`rayrec.slate_policy.SlatePolicy`. Per-feature
contributions over :data:`rayrec.features.FEATURE_NAMES` (always ``score = base + sum(contributions)``):

- linear policies (``retrieval``: the retrieval score itself; ``greedy``: the click model's logit
  ``bias + w · features + u · embedding``): the exact terms ``w_f x_f`` (and ``u · e`` as ``embedding``);
  ``base`` is the intercept. Method ``linear``.
- any other policy with a ``scores(obs)`` method (a trained :class:`rayrec.slate_scorer.ExportedPolicy`,
  an MLP with attention across candidates): exact Shapley values (Shapley 1953; for feature attribution
  Lundberg & Lee, NeurIPS 2017, and the "baseline Shapley" of Sundararajan & Najmi, ICML 2020) of the F
  features, computed from all ``2**F`` coalitions (no sampling, no gradients): a feature left out of a
  coalition takes, for every candidate of the request, its mean over the request's candidates. ``base``
  is the score with every feature at that mean, i.e. what the embeddings and the budget give. Method
  ``shapley``.
- ``random``, and any policy whose slate scores are not what the above reconstructs (one that explores
  or re-ranks around a scorer): no features are credited (method ``none``, the score is all ``base``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from rayrec.features import FEATURE_NAMES, l2_normalize
from rayrec.slate_policy import Observation, SlatePolicy

EXPLAIN_TOP_HISTORY = 3
"""History items an explanation names per recommended item (those whose removal lowers its score most)."""
MAX_SHAPLEY_FEATURES = 8
"""Exact Shapley values need ``2**F`` scorer passes; more features than this are refused."""


@dataclass(frozen=True)
class HistoryAttribution:
    """Attribution of retrieval scores to the history items (and the query) that formed the profile.

    Attributes:
        score: [k] retrieval score ``profile · item`` of each explained item.
        share: [k, n] each history item's additive term of the score (module docstring).
        query_share: [k] the query's term (0 without a query); ``share.sum(1) + query_share == score``.
        drop: [k, n] exact score lost when that history item is removed from the history.
    """

    score: np.ndarray
    share: np.ndarray
    query_share: np.ndarray
    drop: np.ndarray


def profile_from_sum(history_sum: np.ndarray, count: np.ndarray, query: np.ndarray | None) -> np.ndarray:
    """[m, d] profiles of m histories given by their sums [m, d] and sizes [m], as serving builds them:
    ``normalize(mean)`` (zeros for an empty history), then ``normalize(p0 + query)`` when there is a query."""
    count = np.asarray(count, dtype=np.float32).reshape(-1, 1)  # [m, 1]
    mean = np.divide(history_sum, count, out=np.zeros_like(history_sum), where=count > 0)  # [m, d]
    profile = l2_normalize(mean)  # [m, d]
    if query is not None:
        profile = l2_normalize(profile + query)  # [m, d]
    return profile


def history_attribution(
    history: np.ndarray, items: np.ndarray, query: np.ndarray | None = None
) -> HistoryAttribution:
    """Attribute ``items``' retrieval scores to ``history`` (module docstring).

    Args:
        history: [n, d] embeddings of the known history items, each item once (n may be 0).
        items: [k, d] embeddings of the items to explain.
        query: [d] the embedded text query, or None.
    """
    history = np.asarray(history, dtype=np.float32)
    items = np.asarray(items, dtype=np.float32)
    n, d = len(history), items.shape[-1]
    total = history.sum(axis=0) if n else np.zeros(d, dtype=np.float32)  # [d]
    profile = profile_from_sum(total[None], np.array([n]), query)[0]  # [d]
    score = items @ profile  # [k]
    norm_sum = float(np.linalg.norm(total))
    scale = np.linalg.norm(l2_normalize(total) + query) if query is not None else 1.0
    scale = max(float(scale), 1e-12)
    dots = items @ history.T  # [k, n]
    share = dots / (max(norm_sum, 1e-12) * scale) if n else dots  # [k, n]
    query_share = (items @ query) / scale if query is not None else np.zeros(len(items), np.float32)  # [k]
    if n:
        without = profile_from_sum(total[None] - history, np.full(n, n - 1), query)  # [n, d]
        drop = score[:, None] - items @ without.T  # [k, n]
    else:
        drop = np.zeros((len(items), 0), dtype=np.float32)
    return HistoryAttribution(
        score.astype(np.float32),
        share.astype(np.float32),
        np.asarray(query_share, dtype=np.float32),
        drop.astype(np.float32),
    )


@dataclass(frozen=True)
class FeatureAttribution:
    """Per-feature contributions to a ranker's scores of the shown items.

    Attributes:
        names: the credited inputs (the policy's features, :data:`rayrec.features.FEATURE_NAMES` and
            ``item_rating`` where it reads it, plus ``embedding`` for a click model with embedding weights;
            empty for ``random``).
        values: [B, k, len(names)] contribution of each input to each shown item's score.
        base: [B, k] the rest: ``score == base + values.sum(-1)``.
        method: ``linear`` (exact terms), ``shapley`` (exact Shapley values, all coalitions) or ``none``.
    """

    names: tuple[str, ...]
    values: np.ndarray
    base: np.ndarray
    method: str


def feature_attribution(
    policy: SlatePolicy, obs: Observation, indices: np.ndarray, shown_scores: np.ndarray | None = None
) -> FeatureAttribution:
    """Contributions of the observation's features to ``policy``'s scores of the shown candidates.

    Args:
        policy: the ranker.
        obs: [B]-batched observation (:mod:`rayrec.features`).
        indices: [B, k] the shown candidates' positions (a :class:`rayrec.slate_policy.Slate`'s indices).
        shown_scores: [B, k] the scores the policy gave them (its slate's ``scores``). When given, an
            attribution that does not add up to them (a policy whose slate scores are not its ``scores``,
            e.g. one that explores or re-ranks) is not claimed: method ``none``, everything in ``base``.
    """
    got = _feature_attribution(policy, obs, np.asarray(indices, dtype=np.int64))
    if shown_scores is None:
        return got
    shown = np.asarray(shown_scores, dtype=np.float32)
    total = got.base + got.values.sum(axis=-1)  # [B, k]
    if got.method != "none" and np.allclose(total, shown, rtol=1e-3, atol=1e-4):
        return got
    empty = np.zeros((*shown.shape, 0), dtype=np.float32)
    return FeatureAttribution((), empty, shown, "none")


def _feature_attribution(policy: SlatePolicy, obs: Observation, indices: np.ndarray) -> FeatureAttribution:
    from rayrec.baselines import GreedyPolicy, RandomPolicy, RetrievalPolicy

    features = np.take_along_axis(obs["features"], indices[..., None], axis=1)  # [B, k, F]
    if isinstance(policy, RetrievalPolicy):
        weights = np.zeros(features.shape[-1], dtype=np.float32)
        weights[FEATURE_NAMES.index("retrieval_score")] = 1.0
        return _linear(features, weights, 0.0, None)
    if isinstance(policy, GreedyPolicy):
        model = policy.click_model
        embedding = None
        if len(model.embedding_weights):
            shown = np.take_along_axis(obs["candidates"], indices[..., None], axis=1)  # [B, k, d]
            embedding = shown @ model.embedding_weights.astype(np.float32)  # [B, k]
        return _linear(features, model.feature_weights.astype(np.float32), float(model.bias), embedding)
    if isinstance(policy, RandomPolicy) or not callable(getattr(policy, "scores", None)):
        zeros = np.zeros(indices.shape, dtype=np.float32)
        return FeatureAttribution((), np.zeros((*indices.shape, 0), np.float32), zeros, "none")
    from rayrec.rerank import policy_feature_names

    return shapley_features(policy.scores, obs, indices, policy_feature_names(policy))


def _linear(
    features: np.ndarray, weights: np.ndarray, bias: float, embedding: np.ndarray | None
) -> FeatureAttribution:
    values = features * weights  # [B, k, F]
    names = FEATURE_NAMES
    if embedding is not None:
        values = np.concatenate([values, embedding[..., None]], axis=-1)  # [B, k, F + 1]
        names = (*FEATURE_NAMES, "embedding")
    base = np.full(features.shape[:2], bias, dtype=np.float32)
    return FeatureAttribution(names, values.astype(np.float32), base, "linear")


def shapley_features(
    scores, obs: Observation, indices: np.ndarray, names: tuple[str, ...] = FEATURE_NAMES
) -> FeatureAttribution:
    """Exact Shapley values of the F per-candidate features for the scores of the shown candidates.

    The game: a coalition S of features keeps their observed values for every candidate; a feature out
    of S is set, for every candidate of its request, to its mean over that request's candidates. The
    value of S for a shown item is the item's score. All ``2**F`` coalitions are scored in one call.

    Args:
        scores: ``scores(obs) -> [B, K]`` (the policy's candidate scores).
        obs: [B]-batched observation.
        indices: [B, k] the shown candidates.
        names: the F features' names (a policy's :func:`rayrec.rerank.policy_feature_names`).
    """
    features = np.asarray(obs["features"], dtype=np.float32)  # [B, K, F]
    batch, _, num = features.shape
    if len(names) != num:
        raise ValueError(f"shapley_features: {len(names)} names {list(names)} for {num} features")
    if num > MAX_SHAPLEY_FEATURES:
        from rayrec.errors import ConfigError

        raise ConfigError(f"exact Shapley values of {num} features need 2**{num} passes; at most 8")
    baseline = np.broadcast_to(features.mean(axis=1, keepdims=True), features.shape)  # [B, K, F]
    masks = np.array(list(itertools.product([0, 1], repeat=num)), dtype=bool)  # [C, F], C = 2**F
    stacked = {
        key: np.concatenate([np.asarray(value)] * len(masks))
        for key, value in obs.items()
        if key != "features"
    }
    stacked["features"] = np.concatenate(
        [np.where(mask, features, baseline) for mask in masks]
    )  # [C*B, K, F]
    values = np.asarray(scores(stacked), dtype=np.float64).reshape(len(masks), batch, -1)  # [C, B, K]
    values = np.take_along_axis(values, np.broadcast_to(indices, (len(masks), *indices.shape)), axis=2)
    row = {tuple(mask): c for c, mask in enumerate(masks.astype(int).tolist())}
    phi = np.zeros((*indices.shape, num), dtype=np.float64)  # [B, k, F]
    for f in range(num):
        for mask in masks:
            if mask[f]:
                continue
            size = int(mask.sum())
            weight = math.factorial(size) * math.factorial(num - size - 1) / math.factorial(num)
            with_f = mask.copy()
            with_f[f] = True
            gain = (
                values[row[tuple(with_f.astype(int).tolist())]]
                - values[row[tuple(mask.astype(int).tolist())]]
            )
            phi[..., f] += weight * gain
    base = values[row[(0,) * num]]  # [B, k]
    return FeatureAttribution(tuple(names), phi.astype(np.float32), base.astype(np.float32), "shapley")


def explanation(
    history_ids: list[str] | tuple[str, ...] | np.ndarray,
    history: HistoryAttribution | None,
    position: int,
    features: FeatureAttribution | None,
    row: int,
    slot: int,
    *,
    has_query: bool = False,
    top: int = EXPLAIN_TOP_HISTORY,
) -> dict[str, Any]:
    """One item's explanation as a JSON-ready dict (the ``explanation`` of an answer's item).

    Args:
        history_ids: the item ids of the history rows ``history`` was computed over, in its column order.
        history: the request's attribution (rows: its candidates), or None (no history stage, e.g. a
            cold start).
        position: the item's row in ``history``.
        features: the request batch's ranker attribution, or None.
        row, slot: the request's row in ``features`` and the item's slot in the slate.
        has_query: the profile included a text query (its share is reported).

    Returns:
        ``{"retrieval_score", "history": [{"item_id", "drop", "share"}] (strongest first), "query"?,
        "ranker": {"method", "base", "features": {name: contribution}}}``.
    """
    out: dict[str, Any] = {"history": []}
    if history is not None:
        out["retrieval_score"] = float(history.score[position])
        order = np.argsort(-history.drop[position], kind="stable")[:top]
        out["history"] = [
            {
                "item_id": str(history_ids[i]),
                "drop": float(history.drop[position, i]),
                "share": float(history.share[position, i]),
            }
            for i in order
        ]
        if has_query:
            out["query"] = float(history.query_share[position])
    if features is not None:
        out["ranker"] = {
            "method": features.method,
            "base": float(features.base[row, slot]),
            "features": {name: float(features.values[row, slot, j]) for j, name in enumerate(features.names)},
        }
    return out
