"""Beyond accuracy: coverage, exposure Gini, diversity, novelty, calibration; re-rankers; A/B guardrails."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from envs.beyond import BeyondAccuracyObserver, evaluate_beyond
from envs.catalog import ItemCatalog
from envs.config import SlateEnvConfig
from envs.factory import build_simulator
from envs.policies import catalog_categories, make_policy
from envs.rewards import StepEvents, reward_function
from rayrec.ab.analysis import analyse
from rayrec.ab.guardrails import Guardrail, parse_guardrail, verdicts
from rayrec.ab.metrics import UserMetrics
from rayrec.baselines import GreedyPolicy, RetrievalPolicy, load_policy, top_k_slate
from rayrec.cli import main
from rayrec.errors import ConfigError, DataError
from rayrec.features import l2_normalize
from rayrec.metrics.beyond import (
    Exposure,
    calibration_kl,
    catalog_coverage,
    category_exposure,
    category_mix,
    encode_categories,
    gini,
    group_exposures,
    independent_corpus_difference,
    intra_list_diversity,
    list_metrics,
    novelty,
    paired_corpus_difference,
    request_lists,
    self_information,
)
from rayrec.metrics.session import BEYOND, SessionOutcomes, metric_definition
from rayrec.rerank import (
    CategoryLookup,
    FairExposurePolicy,
    RerankSpec,
    innermost_policy,
    needs_categories,
    parse_rerank_spec,
)

SMALL = SlateEnvConfig(num_items=1500)


# --- metrics on hand-computed cases -------------------------------------------------------------------


def test_gini_and_coverage_by_hand():
    assert gini(np.array([1.0, 1.0, 1.0, 1.0])) == 0.0
    # sorted (0, 0, 0, 4): sum (2i - n - 1) x_i / (n sum x) = (2*4 - 5) * 4 / (4 * 4)
    assert gini(np.array([0.0, 4.0, 0.0, 0.0])) == pytest.approx(0.75)
    # (1, 2, 3): ((-2)*1 + 0*2 + 2*3) / (3 * 6) = 4 / 18
    assert gini(np.array([3.0, 1.0, 2.0])) == pytest.approx(4 / 18)
    assert gini(np.zeros(5)) == 0.0
    assert catalog_coverage(np.array([0.0, 2.0, 0.0, 1.0])) == 0.5
    codes, names = encode_categories(np.array(["b", "a", None, "b"], dtype=object), 4)
    assert names.tolist() == ["", "a", "b"] and codes.tolist() == [2, 1, 0, 2]
    np.testing.assert_allclose(category_exposure(np.array([1.0, 2.0, 3.0, 4.0]), codes, 3), [3.0, 2.0, 5.0])


def test_intra_list_diversity_novelty_and_calibration_by_hand():
    e = np.array([[[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]])  # scale does not matter: cosine
    # pairs (0,1): 1, (0,2): 0, (1,2): 1 → mean 2/3
    assert intra_list_diversity(e)[0] == pytest.approx(2 / 3)
    assert intra_list_diversity(e, np.array([[True, True, False]]))[0] == pytest.approx(1.0)
    assert intra_list_diversity(e[:, :1])[0] == 0.0

    info = self_information(np.array([3.0, 0.0, 1.0]))  # p = (c + 1) / (4 + 3)
    np.testing.assert_allclose(info, -np.log2(np.array([4, 1, 2]) / 7))
    assert novelty(np.array([[0, 1], [2, -1]]), info).tolist() == pytest.approx(
        [(info[0] + info[1]) / 2, info[2]]
    )

    p, q = np.array([[0.5, 0.5]]), np.array([[1.0, 0.0]])
    smoothed = 0.99 * q + 0.01 * p
    expected = 0.5 * math.log(0.5 / smoothed[0, 0]) + 0.5 * math.log(0.5 / smoothed[0, 1])
    assert calibration_kl(p, q)[0] == pytest.approx(expected)
    assert calibration_kl(p, p)[0] == pytest.approx(0.0)
    assert math.isnan(calibration_kl(np.zeros((1, 2)), q)[0])  # no history: nothing to calibrate to
    mix = category_mix(np.array([[0, 1, 2, -1]]), np.array([0, 1, 1]), 2)
    np.testing.assert_allclose(mix, [[1 / 3, 2 / 3]])


@pytest.mark.parametrize(
    "call, needle",
    [
        (lambda: gini(np.array([1.0, -1.0])), ">= 0"),
        (lambda: gini(np.ones((2, 2))), "1-D"),
        (lambda: catalog_coverage(np.array([np.nan])), "finite"),
        (lambda: intra_list_diversity(np.ones((2, 3))), "[B, k, d]"),
        (lambda: calibration_kl(np.ones((1, 2)), np.ones((1, 3))), "[B, C]"),
        (lambda: calibration_kl(np.ones((1, 2)), np.ones((1, 2)), alpha=0.0), "alpha"),
        (lambda: novelty(np.array([[5]]), np.zeros(3)), "< 3"),
        (lambda: Exposure(np.array([0]), np.array([9]), 1, np.zeros(3, np.int64), 1), "item rows"),
    ],
)
def test_bad_inputs_are_clear_errors(call, needle):
    with pytest.raises(DataError, match=None) as info:
        call()
    assert needle in str(info.value)


def test_corpus_intervals_and_paired_differences():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(200), 5)
    items = rng.zipf(1.5, size=1000) % 100
    exposure = Exposure(users, items.astype(np.int64), 200, np.arange(100) % 4, 4)
    summary = exposure.summary("sim", resamples=100, seed=0)
    assert set(summary) == {"sim/coverage", "sim/gini_items", "sim/gini_categories"}
    for value in summary.values():
        assert value["ci95_low"] < value["mean"] < value["ci95_high"]
    same = paired_corpus_difference(exposure, exposure, resamples=50)
    assert all(d["mean"] == d["ci95_low"] == d["ci95_high"] == 0.0 for d in same.values())
    flat = Exposure(users, (np.arange(1000) % 100).astype(np.int64), 200, np.arange(100) % 4, 4)
    diff = paired_corpus_difference(flat, exposure, resamples=100)
    assert diff["gini_items"]["ci95_high"] < 0 and diff["coverage"]["ci95_low"] > 0
    arms = independent_corpus_difference(flat, exposure.take_users(np.arange(150)), resamples=100)
    assert arms["gini_items"]["ci95_high"] < 0 and arms["gini_items"]["p_value"] < 0.01


def test_log_groups_and_request_lists():
    groups = group_exposures(
        np.array(["u1", "u1", "u2", "u3"]), np.array([0, 1, 1, 2]), np.array(["A", "A", "A", "B"]),
        np.zeros(3, np.int64), 1,
    )  # fmt: skip
    assert groups["A"].num_users == 2 and groups["B"].counts().tolist() == [0, 0, 1]
    first, lists = request_lists(np.array(["r2", "r1", "r1"]), np.array([7, 4, 5]), np.array([0, 1, 0]))
    assert lists.tolist() == [[5, 4], [7, -1]] and first.tolist() == [1, 0]


# --- the rollout engine's observer and the simulator's reward -----------------------------------------


def test_observer_measures_what_the_rollout_showed():
    sim = build_simulator(SMALL, batch=64)
    shown = []
    outcomes, exposure = evaluate_beyond(
        RetrievalPolicy(), sim, 64, seed=3, observers=[lambda step: shown.append(step)]
    )
    assert exposure.counts().sum() == outcomes.impressions.sum()
    first = next(s for s in shown if (s.session_step == 0).any())
    rows = first.session_step == 0
    # the history a slate is calibrated against is what the user had before it: the pre-session history
    assert ((first.history[rows] >= 0).sum(axis=1) == SMALL.history_length).all()
    obs = BeyondAccuracyObserver(sim.catalog, 64)
    for step in shown:
        obs(step)
    np.testing.assert_allclose(obs.per_user()["ild"], outcomes.ild)
    assert np.isfinite(outcomes.calibration).all() and (outcomes.ild > 0).all()
    summary = outcomes.summary()
    assert {"sim/ild", "sim/novelty", "sim/calibration"} <= set(summary)
    with pytest.raises(DataError, match="corpus-level"):
        outcomes.values("coverage")


def test_diversity_reward_adds_the_slate_diversity_and_defaults_to_nothing():
    catalog = ItemCatalog.build(
        item_ids=np.array(["a", "b", "c"]),
        embeddings=np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]),
        popularity_counts=np.ones(3),
        clickbait=np.zeros(3),
        quality=np.ones(3),
    )
    events = StepEvents(np.array([0, -1]), np.zeros(2, bool), np.zeros(2), np.array([[0, 1], [0, 2]]))
    assert reward_function("clicks")(events, catalog).tolist() == [1.0, 0.0]
    assert reward_function("clicks", 0.5)(events, catalog).tolist() == pytest.approx([1.5, 0.0])
    with pytest.raises(ConfigError, match="diversity_weight"):
        SlateEnvConfig(diversity_weight=-1)
    assert SlateEnvConfig().diversity_weight == 0.0


# --- re-rankers ---------------------------------------------------------------------------------------


def _obs(candidates: np.ndarray, relevance: np.ndarray, normalize: bool = True) -> dict:
    batch, k = relevance.shape
    features = np.zeros((batch, k, 3), np.float32)
    features[..., 0] = relevance
    candidates = candidates.astype(np.float32)
    return {"candidates": l2_normalize(candidates) if normalize else candidates, "features": features}


def test_mmr_with_lambda_one_is_the_base_and_specs_parse():
    rng = np.random.default_rng(1)
    obs = _obs(rng.normal(size=(32, 20, 8)), rng.normal(size=(32, 20)))
    obs["features"][..., 1] = rng.random((32, 20))
    for base in (RetrievalPolicy(), GreedyPolicy()):
        policy = load_policy(f"mmr@1:{base.name}")
        assert policy.name == f"mmr@1:{base.name}"
        np.testing.assert_array_equal(policy.select(obs, 5).indices, top_k_slate(base.scores(obs), 5).indices)
    assert str(parse_rerank_spec("dpp:greedy")) == "dpp@0.7:greedy" and parse_rerank_spec("retrieval") is None
    nested = parse_rerank_spec("fair@2:mmr@0.5:retrieval")
    assert (nested.name, nested.param, nested.base) == ("fair", 2.0, "mmr@0.5:retrieval")
    for bad, needle in [
        ("mmr@2:retrieval", "λ"),
        ("dpp@1:retrieval", "θ"),
        ("mmr:", "base"),
        ("mmr@x:greedy", "number"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            load_policy(bad)
    with pytest.raises(ConfigError, match="categories"):
        load_policy("fair:retrieval")


def test_dpp_and_mmr_pick_diverse_items():
    # candidates 0-2 are near duplicates and the most relevant; candidate 3 points elsewhere
    vecs = np.array([[[1.0, 0.0], [1.0, 0.01], [1.0, 0.02], [0.0, 1.0], [0.1, 1.0]]])
    obs = _obs(vecs, np.array([[0.9, 0.89, 0.88, 0.5, 0.1]]))
    assert top_k_slate(obs["features"][..., 0], 2).indices.tolist() == [[0, 1]]
    assert load_policy("dpp@0.5:retrieval").select(obs, 2).indices.tolist() == [[0, 3]]
    assert load_policy("mmr@0.5:retrieval").select(obs, 2).indices.tolist() == [[0, 3]]
    slate = load_policy("dpp@0.5:retrieval").select(obs, 5)
    assert sorted(slate.indices[0].tolist()) == [0, 1, 2, 3, 4]  # a full slate even past the DPP's rank


def test_fair_reranker_lowers_category_exposure_gini_on_a_scripted_catalog():
    rng = np.random.default_rng(0)
    catalog = l2_normalize(rng.normal(size=(40, 6)).astype(np.float32))
    codes = (np.arange(40) >= 30).astype(np.int64)  # category 0: items 0-29, category 1: items 30-39
    lookup = CategoryLookup(catalog, codes, 2)
    unknown = lookup.categories(np.ones((1, 1, 6), np.float32))
    assert unknown.tolist() == [[2]]
    rows = np.stack(
        [np.r_[rng.choice(30, 6, replace=False), 30 + rng.choice(10, 4, replace=False)] for _ in range(16)]
    )
    relevance = np.r_[np.linspace(1.0, 0.8, 6), np.linspace(0.6, 0.5, 4)][None].repeat(16, 0)
    obs = _obs(catalog[rows], relevance, normalize=False)  # the catalog's exact vectors, as a simulator shows
    assert (lookup.categories(obs["candidates"]) == codes[rows]).all()

    def category_gini(policy) -> float:
        exposure = np.zeros(2)
        for _ in range(20):
            shown = codes[np.take_along_axis(rows, policy.select(obs, 4).indices, axis=1)]
            exposure += np.bincount(shown.ravel(), minlength=2)
        return gini(exposure)

    base = category_gini(RetrievalPolicy())

    def fair(beta: float) -> float:
        return category_gini(
            FairExposurePolicy(RerankSpec("fair", beta, "retrieval"), RetrievalPolicy(), lookup)
        )

    # the bonus is proportional to the deficit: the larger β, the closer exposure comes to equal
    assert base == pytest.approx(0.5) and base > fair(1.0) > fair(5.0) and fair(5.0) < 0.1
    assert fair(0.0) == pytest.approx(base)


def test_specs_say_when_they_need_categories_and_what_they_wrap():
    assert needs_categories("fair:retrieval") and needs_categories("mmr@0.5:fair@2:greedy")
    assert not needs_categories("mmr:dpp:greedy") and not needs_categories("/srv/policy")
    assert not needs_categories("s3://bucket/fair:policy")  # a URI, not a re-ranker
    with pytest.raises(ConfigError, match="β"):
        needs_categories("mmr:fair@-1:retrieval")
    embeddings = l2_normalize(np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32))
    lookup = CategoryLookup.from_categories(
        embeddings, np.array(["b", "a", None, "b", "a", ""], dtype=object)
    )
    # codes of the sorted names ("", "a", "b"): missing and empty share the unknown-but-counted category ""
    assert lookup.num_categories == 3
    assert lookup.categories(embeddings[None]).tolist() == [[2, 1, 0, 2, 1, 0]]
    policy = load_policy("fair@0.5:mmr:greedy", lookup)
    assert isinstance(innermost_policy(policy), GreedyPolicy) and innermost_policy(policy) is not policy
    assert innermost_policy(policy.base) is innermost_policy(policy)


def test_rerankers_run_in_the_simulator_by_name():
    sim = build_simulator(SMALL, batch=32)
    policy = make_policy("fair:mmr@0.9:retrieval", sim)
    assert policy.name == "fair@1:mmr@0.9:retrieval"
    assert catalog_categories(sim.catalog).num_categories == SMALL.num_topics
    outcomes, exposure = evaluate_beyond(policy, sim, 32, seed=0)
    assert len(outcomes) == 32 and exposure.counts().sum() > 0


# --- guardrails in the A/B verdict --------------------------------------------------------------------


def _users(n: int, seed: int = 0) -> UserMetrics:
    """Control returns ~5 with diverse slates; treatment returns ~6 with much less diverse ones."""
    rng = np.random.default_rng(seed)
    arm = np.where(np.arange(n) % 2 == 0, "control", "treatment").astype(object)
    treated = arm == "treatment"
    outcomes = SessionOutcomes(
        session_return=rng.normal(5.0 + treated, 1.0),
        clicks=rng.poisson(5, n).astype(float),
        impressions=np.full(n, 50.0),
        session_length=np.full(n, 10.0),
        ild=rng.normal(np.where(treated, 0.15, 0.20), 0.01),
        novelty=rng.normal(12.0, 0.1, n),
        calibration=rng.normal(0.3, 0.05, n),
    )
    return UserMetrics.of(outcomes, np.asarray([f"u{i}" for i in range(n)], dtype=object), arm)


def test_treatment_that_wins_on_return_but_breaks_a_guardrail_does_not_ship():
    analysis = analyse(_users(400), [("control", "a", 1.0), ("treatment", "b", 1.0)], sequential_tau_sd=None)
    (plain,) = verdicts(analysis, "session_return")
    assert plain.decision == "ship" and plain.primary_status == "wins"
    (guarded,) = verdicts(analysis, "sim/session_return", [parse_guardrail("sim/ild:0.05")])
    assert guarded.decision == "do not ship" and guarded.primary_status == "wins"
    assert guarded.guardrails[0].status == "breached" and "ild breached" in guarded.reasons[0]
    (loose,) = verdicts(analysis, "session_return", [Guardrail("ild", 0.5)])  # 25% worse is tolerated
    assert loose.decision == "ship" and loose.guardrails[0].status == "ok"
    (wrong_way,) = verdicts(analysis, "ild")
    assert wrong_way.decision == "do not ship" and wrong_way.primary_status == "loses"
    with pytest.raises(ConfigError, match="not measured"):
        verdicts(analysis, "session_return", [Guardrail("coverage", 0.1)])
    assert metric_definition("gini_categories").better == "lower"


@pytest.mark.parametrize(
    "spec, needle", [("coverage", "METRIC:TOLERANCE"), ("nope:0.1", "unknown metric"), ("ild:-1", ">= 0")]
)
def test_bad_guardrails_are_clear_errors(spec, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_guardrail(spec)


def test_ab_cli_reports_do_not_ship_when_a_guardrail_breaks(ray_session, tmp_path, capsys):
    out = tmp_path / "ab"
    argv = [
        "ab", "--arm", "control=dpp@0.3:retrieval", "--arm", "treatment=retrieval", "--users", "1600",
        "--guardrail", "sim/ild:0.05", "--out", str(out),
        "--env", "num_items=1500", "--no-progress", "--users-per-task", "800", "--resamples", "200",
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    (verdict,) = report["verdicts"]
    assert verdict["primary_status"] == "wins" and verdict["decision"] == "do not ship"
    assert verdict["guardrails"][0]["metric"] == "ild" and verdict["guardrails"][0]["status"] == "breached"
    assert "**do not ship**" in (out / "report.md").read_text()
    for arm in report["arms"].values():
        assert {"ild", "novelty", "calibration", "coverage", "gini_items", "gini_categories"} <= set(
            arm["means"]
        )
    by_metric = {c["metric"]: c for c in report["comparisons"]}
    assert by_metric["coverage"]["lift"] < 0  # the diverse control shows more of the catalog

    stats_json = tmp_path / "stats.json"
    assert main(["events", "stats", "--events", str(out / "events"), "--json", str(stats_json)]) == 0
    stats = json.loads(stats_json.read_text())
    assert set(stats["groups"]) == {"control", "treatment"}
    for group in stats["groups"].values():
        assert {"impressions", "requests", "users", "sim/ild", "sim/novelty", "sim/coverage"} <= set(group)
        assert set(group["sim/gini_categories"]) == {"mean", "ci95_low", "ci95_high"}
    # the log's per-user diversity is the rollout's: the same slates, measured twice
    assert stats["groups"]["control"]["sim/ild"]["mean"] == pytest.approx(
        report["arms"]["control"]["means"]["ild"]
    )
    assert "sim/coverage" in capsys.readouterr().out


# --- the command line's JSON ---------------------------------------------------------------------------


def test_simulate_json_has_every_beyond_accuracy_metric_with_intervals(tmp_path):
    out = tmp_path / "sim.json"
    argv = ["simulate", "--env", "num_items=1500", "--users", "40", "--policy", "retrieval",
            "--policy", "mmr@0.5:retrieval", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    policies = json.loads(out.read_text())["policies"]
    assert set(policies) == {"retrieval", "mmr@0.5:retrieval"}
    for metrics in policies.values():
        for name in BEYOND:
            value = metrics[f"sim/{name}"]
            assert value["ci95_low"] <= value["mean"] <= value["ci95_high"]
    assert policies["mmr@0.5:retrieval"]["sim/ild"]["mean"] > policies["retrieval"]["sim/ild"]["mean"]


def test_eval_retrieval_json_keeps_its_shape_and_adds_beyond_accuracy(tmp_path):
    from _retrieval_world import write_tiny_world

    from rayrec.index import IndexSpec
    from rayrec.index.evaluate import EvalRetrievalConfig, evaluate_retrieval
    from rayrec.index.faiss_index import build_faiss_index
    from rayrec.index.item_index import write_index

    data = write_tiny_world(tmp_path / "data")
    ids = [f"{topic}-{i}" for topic in ("space", "cooking", "music", "sports") for i in range(15)]
    topic = np.repeat(np.arange(4), 15)
    rng = np.random.default_rng(0)
    vectors = l2_normalize(
        (np.eye(4)[topic] @ rng.normal(size=(4, 16)) + 0.2 * rng.normal(size=(60, 16))).astype(np.float32)
    )
    spec = IndexSpec(type="flat").resolved(60, 16)
    write_index(
        str(tmp_path / "index"),
        ids,
        vectors,
        np.ones(60),
        build_faiss_index(vectors, spec),
        spec,
        encoder="t",
    )
    out = tmp_path / "eval.json"
    config = EvalRetrievalConfig(
        index=str(tmp_path / "index"), data=str(data), k=5, json=str(out), peers=False
    )
    evaluate_retrieval(config)
    result = json.loads(out.read_text())
    assert {"k", "users", "recall@5", "ndcg@5", "mrr", "baselines"} <= set(result)
    keys = {f"{m}@5" for m in ("coverage", "gini_items", "gini_categories", "ild", "novelty", "calibration")}
    assert keys <= set(result) and keys <= set(result["baselines"]["popularity"])
    # the text-topic index recommends each user's own topic; popularity shows everyone the same items
    assert result["calibration@5"] < result["baselines"]["popularity"]["calibration@5"]
    assert result["coverage@5"] > result["baselines"]["popularity"]["coverage@5"]
    direct = list_metrics(np.array([[0, 15]]), vectors, np.ones(60), topic, 4, np.array([[0, 1]]))
    assert direct["coverage"] == pytest.approx(2 / 60) and direct["calibration"] > 0


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["ab", "--arm", "A=random", "--arm", "B=greedy", "--guardrail", "nope:0.1"], "unknown metric"),
        (["ab", "--arm", "A=random", "--arm", "B=mmr@3:greedy"], "λ must be in [0, 1]"),
        (["ab", "--arm", "A=random", "--arm", "B=fair:nonsense"], "unknown policy"),
        (["simulate", "--users", "10", "--policy", "dpp:"], "needs a base policy"),
        (["events", "stats", "--events", "/nonexistent/events"], "no such event-log directory"),
        (["events", "stats", "--events", "x", "--data", "d"], "pass --index too"),
        (["events"], "needs a sub-command"),
    ],
)
def test_bad_command_lines_are_one_line_errors(capsys, tmp_path, argv, needle):
    code = main([*argv, "--out", str(tmp_path / "out")] if argv[0] == "ab" else argv)
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err, err


def test_policy_evaluation_reports_beyond_accuracy_for_every_policy():
    from trainers.policy_eval import evaluate_policies

    summary = evaluate_policies("dpp@0.5:retrieval", SMALL, ["retrieval"], 48, seed=0, name="dpp")
    for metrics in summary["policies"].values():
        assert {f"sim/{name}" for name in BEYOND} <= set(metrics)
    assert summary["policies"]["dpp"]["sim/ild"]["mean"] > summary["policies"]["retrieval"]["sim/ild"]["mean"]
    assert "Beyond accuracy" in summary["markdown"] and "| dpp |" in summary["markdown"]
