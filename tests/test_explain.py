"""Explanations (rayrec/explain.py): faithful to what retrieval and the ranker compute, offline and over HTTP.

Faithfulness is checked against the serving code itself: a history item's stated ``drop`` must be what
the retrieval score loses when the profile is rebuilt by :func:`serving.pipeline.request_context` without
it (offline), and what the live Serve app answers for the history without it (over HTTP on 127.0.0.1).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from _serve_app import NUM_CANDIDATES, build_test_index, export_policy

from rayrec.baselines import GreedyPolicy, RetrievalPolicy, ScoringPolicy, load_policy
from rayrec.cli import main
from rayrec.explain import (
    EXPLAIN_TOP_HISTORY,
    feature_attribution,
    history_attribution,
    shapley_features,
)
from rayrec.features import FEATURE_NAMES, l2_normalize
from rayrec.index.item_index import ItemIndex
from rayrec.slate_policy import Slate
from serving.pipeline import Retrieval, rank

HISTORY = ["item-0000", "item-0004", "item-0008", "item-0001", "item-0012", "item-0005"]
"""Six history items from two topics (item-i is in topic i % 4): more than the three an explanation names."""


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    return build_test_index(tmp_path_factory.mktemp("explain-index"))


@pytest.fixture(scope="module")
def index(index_dir) -> ItemIndex:
    return ItemIndex.load(str(index_dir))


def served_score(retrieval: Retrieval, history: list[str], item: str, query=None) -> float:
    """An item's retrieval score for a history, with the profile built by serving's own code."""
    row = retrieval.index.lookup([item])[0]
    return float(retrieval.index.embeddings[row] @ retrieval.context(history, query).profile)


@pytest.mark.parametrize("with_query", [False, True])
def test_history_shares_sum_to_the_score_and_drops_are_exact_removals(index, with_query):
    retrieval = Retrieval(index, NUM_CANDIDATES, 10)
    query = l2_normalize(np.random.default_rng(1).normal(size=index.dim)) if with_query else None
    context = retrieval.context(HISTORY, query, explain=True)
    cands = retrieval.retrieve([context])[0]
    attribution = cands.attribution
    assert attribution.share.shape == attribution.drop.shape == (len(cands.item_ids), len(HISTORY))
    # completeness: the history items' terms and the query's add up to the retrieval score FAISS returned
    total = attribution.share.sum(axis=1) + attribution.query_share
    np.testing.assert_allclose(total, cands.scores, atol=1e-5)
    np.testing.assert_allclose(attribution.score, cands.scores, atol=1e-5)
    assert (attribution.query_share != 0).all() == with_query
    # each drop is the serving pipeline's own score without that history item
    for position in (0, 5, len(cands.item_ids) - 1):
        item = str(cands.item_ids[position])
        full = served_score(retrieval, HISTORY, item, query)
        for column, removed in enumerate(cands.history_ids):
            rest = [h for h in HISTORY if h != removed]
            expected = full - served_score(retrieval, rest, item, query)
            assert attribution.drop[position, column] == pytest.approx(expected, abs=1e-5)


def test_removing_the_named_item_lowers_the_score_more_than_any_unnamed_one(index):
    retrieval = Retrieval(index, NUM_CANDIDATES, 10)
    cands = retrieval.retrieve([retrieval.context(HISTORY, explain=True)])[0]
    ranked = rank(RetrievalPolicy(), [(cands, 5)])[0]
    assert len(ranked.explanations) == 5
    disagreements = 0
    for item, explained in zip(ranked.item_ids, ranked.explanations, strict=True):
        named = [h["item_id"] for h in explained["history"]]
        assert len(named) == EXPLAIN_TOP_HISTORY
        full = served_score(retrieval, HISTORY, item)
        assert explained["retrieval_score"] == pytest.approx(full, abs=1e-5)
        lost = {h: full - served_score(retrieval, [x for x in HISTORY if x != h], item) for h in HISTORY}
        assert lost[named[0]] > 0, "removing the top named item lowers the item's retrieval score"
        assert lost[named[0]] == pytest.approx(explained["history"][0]["drop"], abs=1e-5)
        unnamed = [h for h in HISTORY if h not in named]
        assert max(lost[h] for h in unnamed) < min(lost[h] for h in named)
        # the additive shares alone would not have named the same items for every recommendation
        by_share = sorted(HISTORY, key=lambda h: -explained_share(retrieval, item, h))[: len(named)]
        disagreements += set(by_share) != set(named)
    assert disagreements >= 1, "this history is one where renormalisation matters"


def explained_share(retrieval: Retrieval, item: str, history_item: str) -> float:
    rows = retrieval.index.lookup([item, history_item])
    return float(retrieval.index.embeddings[rows[0]] @ retrieval.index.embeddings[rows[1]])


def test_a_query_only_profile_is_attributed_to_the_query(index):
    retrieval = Retrieval(index, NUM_CANDIDATES, 10)
    query = l2_normalize(np.random.default_rng(2).normal(size=index.dim))
    cands = retrieval.retrieve([retrieval.context([], query, explain=True)])[0]
    assert not cands.cold_start and cands.attribution.share.shape == (NUM_CANDIDATES, 0)
    np.testing.assert_allclose(cands.attribution.query_share, cands.scores, atol=1e-5)
    explained = rank(RetrievalPolicy(), [(cands, 3)])[0].explanations
    assert all(e["history"] == [] and e["query"] == pytest.approx(e["retrieval_score"]) for e in explained)


def test_explanations_are_off_unless_asked_and_a_cold_start_is_explained_by_popularity(index):
    retrieval = Retrieval(index, NUM_CANDIDATES, 10)
    quiet = retrieval.retrieve([retrieval.context(HISTORY)])[0]
    assert quiet.attribution is None and rank(RetrievalPolicy(), [(quiet, 3)])[0].explanations is None
    cold = retrieval.retrieve([retrieval.context([], explain=True)])[0]
    ranked = rank(RetrievalPolicy(), [(cold, 3)])[0]
    assert ranked.cold_start
    for score, explained in zip(ranked.scores, ranked.explanations, strict=True):
        assert explained["history"] == [] and "retrieval_score" not in explained
        assert explained["ranker"] == {"method": "fallback", "base": 0.0, "features": {"popularity": score}}


@pytest.mark.parametrize("policy", ["retrieval", "greedy", "random", "trained", "trained-attention"])
def test_ranker_contributions_add_up_to_the_policys_score(index, tmp_path, policy):
    retrieval = Retrieval(index, NUM_CANDIDATES, 10)
    cands = retrieval.retrieve(
        [
            retrieval.context(HISTORY, explain=True),
            retrieval.context(["item-0002", "item-0003"], explain=True),
        ]
    )
    if policy.startswith("trained"):
        spec = export_policy(tmp_path, index.dim)
        loaded = load_policy(str(spec))
        if policy == "trained-attention":  # a scorer whose candidates see each other (the default shape)
            import torch

            from rayrec.slate_scorer import ExportConfig, ExportedPolicy, ScorerConfig, SlateScorer

            torch.manual_seed(0)
            scorer = ScorerConfig(dim=index.dim, hidden=16, attention_layers=1)
            module = SlateScorer(scorer)
            torch.nn.init.normal_(module.score_head.weight, std=1.0)
            loaded = ExportedPolicy(module, ExportConfig(scorer=scorer, slate_size=3, num_candidates=20))
    else:
        loaded = load_policy(policy)
    ranked = rank(loaded, [(c, 4) for c in cands])
    methods = {"retrieval": "linear", "greedy": "linear", "random": "none"}
    for slate in ranked:
        for score, explained in zip(slate.scores, slate.explanations, strict=True):
            ranker = explained["ranker"]
            assert ranker["method"] == methods.get(policy, "shapley")
            assert ranker["base"] + sum(ranker["features"].values()) == pytest.approx(score, abs=1e-4)
            if policy == "retrieval":
                assert ranker["features"]["retrieval_score"] == pytest.approx(explained["retrieval_score"])
            if policy == "greedy":
                weights = GreedyPolicy().click_model.feature_weights
                assert set(ranker["features"]) == set(FEATURE_NAMES) and weights[0] > 0
    if policy == "trained-attention":  # the features matter to this scorer: not all credit is in the base
        assert any(
            abs(v) > 1e-4 for s in ranked for e in s.explanations for v in e["ranker"]["features"].values()
        )


class _TwoFeatureInteraction(ScoringPolicy):
    """score = retrieval_score * popularity + 2 * retrieval_rank: an interaction whose Shapley values are
    known in closed form."""

    name = "interaction"

    def scores(self, obs):
        f = obs["features"]
        return f[..., 0] * f[..., 1] + 2.0 * f[..., 2]


def test_shapley_values_match_the_closed_form():
    rng = np.random.default_rng(0)
    features = rng.random((2, 6, 3)).astype(np.float32)
    obs = {
        "profile": np.zeros((2, 4), np.float32),
        "candidates": np.zeros((2, 6, 4), np.float32),
        "features": features,
        "budget": np.ones((2, 1), np.float32),
    }
    shown = np.array([[0, 3], [5, 1]])
    got = feature_attribution(_TwoFeatureInteraction(), obs, shown)
    assert got.method == "shapley" and got.names == FEATURE_NAMES
    mean = features.mean(axis=1, keepdims=True)
    x = np.take_along_axis(features, shown[..., None], axis=1)  # [B, k, F]
    m = np.broadcast_to(mean, x.shape)
    # for a*b the Shapley values are (a b - a0 b) / 2 + (a b0 - a0 b0) / 2 for a, and symmetrically for b
    phi_a = 0.5 * (x[..., 0] * x[..., 1] - m[..., 0] * x[..., 1]) + 0.5 * (
        x[..., 0] * m[..., 1] - m[..., 0] * m[..., 1]
    )
    phi_b = 0.5 * (x[..., 0] * x[..., 1] - x[..., 0] * m[..., 1]) + 0.5 * (
        m[..., 0] * x[..., 1] - m[..., 0] * m[..., 1]
    )
    np.testing.assert_allclose(got.values[..., 0], phi_a, atol=1e-6)
    np.testing.assert_allclose(got.values[..., 1], phi_b, atol=1e-6)
    np.testing.assert_allclose(got.values[..., 2], 2.0 * (x[..., 2] - m[..., 2]), atol=1e-6)
    np.testing.assert_allclose(got.base, m[..., 0] * m[..., 1] + 2.0 * m[..., 2], atol=1e-6)
    direct = shapley_features(_TwoFeatureInteraction().scores, obs, shown)
    np.testing.assert_array_equal(direct.values, got.values)


class _ShiftedSlateScores(_TwoFeatureInteraction):
    """A policy whose slate scores are not its ``scores`` (as an exploring or re-ranking policy's are not)."""

    def select(self, obs, slate_size, rng=None):
        slate = super().select(obs, slate_size, rng)
        return Slate(slate.indices, slate.scores + 1.0, slate.propensities)


def test_an_attribution_that_does_not_add_up_to_the_shown_score_is_not_claimed(index):
    retrieval = Retrieval(index, NUM_CANDIDATES, 10)
    cands = retrieval.retrieve([retrieval.context(HISTORY, explain=True)])[0]
    honest = rank(_TwoFeatureInteraction(), [(cands, 3)])[0]
    assert {e["ranker"]["method"] for e in honest.explanations} == {"shapley"}
    shifted = rank(_ShiftedSlateScores(), [(cands, 3)])[0]
    for score, explained in zip(shifted.scores, shifted.explanations, strict=True):
        assert explained["ranker"] == {"method": "none", "base": pytest.approx(score), "features": {}}


def test_history_attribution_of_no_history_is_empty():
    items = l2_normalize(np.random.default_rng(3).normal(size=(4, 8)))
    got = history_attribution(np.zeros((0, 8), np.float32), items)
    assert got.share.shape == got.drop.shape == (4, 0)
    np.testing.assert_array_equal(got.score, np.zeros(4))


# ---- the offline command -------------------------------------------------------------------------------


def test_cli_explain_matches_the_pipeline(index_dir, index, tmp_path, capsys):
    out = tmp_path / "explain.json"
    argv = ["explain", "--index", str(index_dir), "--policy", "greedy", "--history", ",".join(HISTORY),
            "--k", "3", "--num-candidates", str(NUM_CANDIDATES), "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    answer = json.loads(out.read_text())
    retrieval = Retrieval(index, NUM_CANDIDATES, 3)
    served = rank(GreedyPolicy(), [(retrieval.retrieve([retrieval.context(HISTORY, explain=True)])[0], 3)])[0]
    assert [i["item_id"] for i in answer["items"]] == served.item_ids
    assert [i["explanation"] for i in answer["items"]] == served.explanations
    first = answer["items"][0]["explanation"]
    assert len(first["history"]) == EXPLAIN_TOP_HISTORY
    assert f"because of {first['history'][0]['item_id']}" in printed and "ranker (linear)" in printed


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--history", "no-such-item"], "history items not in the index"),
        ([], "give the history either as --history"),
        (["--history", "item-0000", "--policy", "no-such-policy"], "unknown policy"),
        (["--user", "u1"], "--user needs --data"),
    ],
)
def test_cli_explain_bad_input_is_one_line_error(index_dir, capsys, extra, needle):
    assert main(["explain", "--index", str(index_dir), *extra]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], lines


# ---- over HTTP, through the live Serve app --------------------------------------------------------------


@pytest.fixture(scope="module")
def http(live_app):
    with httpx.Client(base_url=live_app.url, timeout=60) as client:
        yield client


def test_http_explanations_are_faithful(http, live_app):
    """Through the real app: the named history item's removal lowers the item's served score by the stated
    drop, and removing an unnamed one lowers it less."""
    user = live_app.user_in("control", "explainer")  # the retrieval arm: its score is the retrieval score

    def ask(history: list[str], **extra) -> dict:
        response = http.post(
            "/recommend", json={"user_id": user, "history": history, "k": NUM_CANDIDATES, **extra}
        )
        assert response.status_code == 200, response.text
        return live_app.record(response.json())

    plain = ask(HISTORY)
    assert all("explanation" not in item for item in plain["items"]), "off by default"
    answer = ask(HISTORY, explain=True)
    assert [i["item_id"] for i in answer["items"]] == [i["item_id"] for i in plain["items"]]
    for item in answer["items"][:2]:
        explained = item["explanation"]
        assert explained["retrieval_score"] == pytest.approx(item["score"], abs=1e-5)
        assert explained["ranker"]["features"]["retrieval_score"] == pytest.approx(item["score"], abs=1e-5)
        named = [h["item_id"] for h in explained["history"]]
        assert len(named) == EXPLAIN_TOP_HISTORY
        unnamed = min((h for h in HISTORY if h not in named), key=HISTORY.index)
        stated = explained["history"][0]["drop"]
        assert stated > 0
        without = {}
        for removed in (named[0], unnamed):
            slate = ask([h for h in HISTORY if h != removed])
            without[removed] = {i["item_id"]: i["score"] for i in slate["items"]}
        if item["item_id"] in without[named[0]]:
            assert item["score"] - without[named[0]][item["item_id"]] == pytest.approx(stated, abs=1e-5)
        else:  # it fell out of the top K: its score is at most the last one shown
            assert min(without[named[0]].values()) <= item["score"] - stated + 1e-5
        assert item["item_id"] in without[unnamed]
        assert item["score"] - without[unnamed][item["item_id"]] < stated


def test_http_explain_on_a_greedy_arm_and_bad_values(http, live_app):
    user = live_app.user_in("treatment", "explainer")
    response = http.post(
        "/recommend", json={"user_id": user, "history": HISTORY[:2], "k": 3, "explain": True}
    )
    assert response.status_code == 200, response.text
    for item in live_app.record(response.json())["items"]:
        ranker = item["explanation"]["ranker"]
        assert ranker["method"] == "linear"
        assert ranker["base"] + sum(ranker["features"].values()) == pytest.approx(item["score"], abs=1e-4)
    cold = http.post("/recommend", json={"user_id": user, "history": [], "k": 2, "explain": True})
    assert cold.status_code == 200 and live_app.record(cold.json())["cold_start"]
    assert all(i["explanation"]["ranker"]["method"] == "fallback" for i in cold.json()["items"])
    bad = http.post("/recommend", json={"user_id": user, "history": [], "explain": "yes"})
    assert bad.status_code == 422
    error = bad.json()["error"]
    assert ["body", "explain"] in [d["loc"] for d in error["details"]] and "explain" in error["message"]
