"""Baseline policies, the myopic-vs-long-term gap, and the env built from a real index directory."""

from __future__ import annotations

import numpy as np
import pytest

import envs
from envs.config import SlateEnvConfig
from envs.factory import build_simulator, load_world
from envs.item_rules import ItemRule, ItemTerms, Switch
from envs.planner import PlannerPolicy
from envs.policies import OraclePolicy, fitted_greedy, make_policy
from envs.presets import with_preset
from envs.rollout import evaluate_policy
from rayrec.baselines import GreedyPolicy, RandomPolicy, RetrievalPolicy
from rayrec.errors import ConfigError
from rayrec.slate_policy import SlatePolicy

USERS = 1500


def test_baselines_implement_the_slate_policy_protocol():
    vec = envs.make_vector_env(SlateEnvConfig(num_items=600, num_topics=6), num_envs=4)
    obs, _ = vec.reset(seed=0)
    for policy in (RandomPolicy(0), RetrievalPolicy(), GreedyPolicy(), OraclePolicy(vec.unwrapped.sim)):
        assert isinstance(policy, SlatePolicy)
        slate = policy.select(obs, 5, np.random.default_rng(0))
        assert slate.indices.shape == (4, 5)
        assert all(len(set(row)) == 5 for row in slate.indices.tolist())
        marginals = policy.position_marginals(obs, 5)
        assert marginals.shape == (4, 5, 20)
        np.testing.assert_allclose(marginals.sum(axis=2), 1.0, atol=1e-6)
        shown = np.take_along_axis(marginals, slate.indices[:, :, None], axis=2)[..., 0]
        np.testing.assert_allclose(shown, slate.propensities, atol=1e-6)
    np.testing.assert_array_equal(RetrievalPolicy().select(obs, 5).indices, np.tile(np.arange(5), (4, 1)))


def test_make_policy_specs():
    assert make_policy("random").name == "random"
    assert make_policy("retrieval").name == "retrieval"
    assert make_policy("greedy").name == "greedy"
    with pytest.raises(ConfigError, match="simulation only"):
        make_policy("oracle")
    with pytest.raises(ConfigError, match="unknown policy"):
        make_policy("no-such-policy")
    env = envs.make_env(SlateEnvConfig(num_items=600, num_topics=6))
    assert make_policy("oracle", env.unwrapped.sim).name == "oracle"


def test_greedy_wins_clicks_but_the_patient_oracle_wins_the_session():
    config = SlateEnvConfig()
    greedy = fitted_greedy(config, num_users=400, seed=1)
    # The myopic click model learns that the clickbait direction attracts clicks.
    world_direction = envs.factory.load_world(config).synthetic.clickbait_direction
    assert greedy.click_model.embedding_weights @ world_direction > 0
    sim = build_simulator(config, batch=USERS)
    oracle = evaluate_policy(OraclePolicy(sim), sim, USERS, seed=5)
    myopic = evaluate_policy(greedy, build_simulator(config, batch=USERS), USERS, seed=5)
    o, g = oracle.summary(), myopic.summary()
    assert g["sim/ctr"]["ci95_low"] > o["sim/ctr"]["ci95_high"], (g["sim/ctr"], o["sim/ctr"])
    assert o["sim/session_return"]["ci95_low"] > g["sim/session_return"]["ci95_high"]
    assert o["sim/session_length"]["mean"] > g["sim/session_length"]["mean"]


def _tiny_index(tmp_path, items: int = 300, index_type: str = "flat"):
    """A synthetic data dir and a real index over it, embedded by a tiny local text encoder."""
    encoding = pytest.importorskip("rayrec.encoding")
    item_index = pytest.importorskip("rayrec.index.item_index")
    faiss_index = pytest.importorskip("rayrec.index.faiss_index")
    from rayrec.data.io import read_items
    from rayrec.synth import WorldConfig, write_world

    data = tmp_path / "data"
    write_world(WorldConfig(items=items, users=60, topics=4, seed=3), str(data))
    table = read_items(str(data / "items.parquet"))
    texts = encoding.item_texts(table)
    model_dir = encoding.build_tiny_encoder(texts, tmp_path / "encoder")
    embeddings = encoding.TextEncoder.load(str(model_dir)).encode(texts)
    spec = faiss_index.IndexSpec(type=index_type).resolved(len(texts), embeddings.shape[1])
    index_dir = tmp_path / "index"
    item_index.write_index(
        str(index_dir),
        table.column("item_id").to_pylist(),
        embeddings,
        np.arange(len(texts)) % 7,
        faiss_index.build_faiss_index(embeddings, spec),
        spec,
        encoder=str(model_dir),
    )
    return data, index_dir, table, embeddings.shape[1]


def test_env_from_a_real_index_and_logs(tmp_path):
    data, index_dir, table, dim = _tiny_index(tmp_path)
    env = envs.make_env(index_dir=str(index_dir), data_dir=str(data), num_candidates=10, slate_size=3)
    obs, _ = env.reset(seed=0)
    assert obs["candidates"].shape == (10, dim) and obs["profile"].shape == (dim,)
    sim = env.unwrapped.sim
    # Traits come from the items.parquet columns, users from logged histories.
    np.testing.assert_array_equal(
        sim.catalog.clickbait, np.asarray(table.column("clickbait").to_pylist(), np.float32)
    )
    assert sim.users.consumed_len[0] >= 1
    for _ in range(5):
        obs, _, terminated, _, _info = env.step(np.arange(3))
        assert env.observation_space.contains(obs)
        if terminated:
            break
    with pytest.raises(ConfigError, match="dim"):
        envs.make_env(index_dir=str(index_dir), data_dir=str(data), dim=dim + 1)
    with pytest.raises(ConfigError, match="catalog"):
        envs.make_env(index_dir=str(index_dir), data_dir=str(data), num_candidates=290)


def test_the_retrieval_shortlist_runs_over_a_flat_index_and_refuses_an_approximate_one(tmp_path):
    data, index_dir, _, _ = _tiny_index(tmp_path / "flat")
    env = envs.make_vector_env(
        None, 48, index_dir=str(index_dir), data_dir=str(data), num_candidates=10, retrieval_shortlist=True
    )
    sim = env.unwrapped.sim
    index = load_world(sim.config).retriever  # the index's own search, as the simulator uses it without
    env.reset(seed=4)
    for _ in range(30):
        env.step(np.tile(np.arange(3), (48, 1)))
        users = sim.users
        excluded = users.consumed[:, : int(users.consumed_len.max())]
        scores, items = index.search_excluding(users.profile(), 11, excluded)  # [48, K + 1]
        tie = scores[:, 9] - scores[:, 10] < 1e-5  # either item is a correct 10th
        same = (np.sort(sim.candidate_items, 1) == np.sort(items[:, :10], 1)).all(axis=1)
        assert (same | tie).all()
    data, ivf_dir, _, _ = _tiny_index(tmp_path / "ivf", index_type="ivf")
    with pytest.raises(ConfigError, match="retrieval_shortlist needs an exact"):
        envs.make_env(index_dir=str(ivf_dir), data_dir=str(data), retrieval_shortlist=True)
    envs.make_env(index_dir=str(ivf_dir), data_dir=str(data))  # without it the approximate index serves


def test_the_planner_leaves_its_base_policy_only_for_a_clearly_better_first_move():
    sim = build_simulator(SlateEnvConfig(num_items=600, num_topics=6), batch=3)
    planner = PlannerPolicy(sim, rollouts=4, confidence=2.0)
    base = np.array([5.0, 6.0, 5.5, 6.5])  # [R] the base policy's returns, rollout by rollout
    value = np.stack(
        [
            [base, base + 1.0, base - 1.0],  # first move 1 is better in every rollout: take it
            [base, base + np.array([3.0, -2.0, 2.5, -3.0]), base - 1.0],  # better on average, by luck only
            [base, base - 0.5, base - 1.0],  # nothing beats the base policy
        ]
    )  # [B, M, R]
    np.testing.assert_array_equal(planner.choose(value, default=0), [1, 0, 0])
    # Against a worse default the same rows switch to its clearly better moves; a lucky best stays unproven.
    np.testing.assert_array_equal(planner.choose(value, default=2), [1, 2, 0])


def test_a_satisfaction_switch_spends_on_satisfied_users_and_builds_on_the_others():
    sim = build_simulator(SlateEnvConfig(num_items=600, num_topics=6), batch=4)
    sim.start_users(np.arange(4), np.random.default_rng(0))
    sim.refresh_candidates(np.random.default_rng(0))
    sim.users.satisfaction[:] = [0.95, 0.5, 0.91, 0.9]  # the threshold itself is not above it
    spend, build = ItemRule(0.0), ItemRule(4.0, clickbait_ban=True)
    terms = ItemTerms.of(sim)
    scores = Switch(spend, build, threshold=0.9).scores(terms)
    for row, satisfied in enumerate([True, False, True, False]):
        expected = (spend if satisfied else build).scores(terms)[row]
        np.testing.assert_array_equal(scores[row], expected)
    assert not np.array_equal(spend.scores(terms), build.scores(terms))  # the two rules rank differently


def test_a_clock_switch_builds_early_in_the_session_and_spends_late():
    sim = build_simulator(SlateEnvConfig(num_items=600, num_topics=6), batch=4)
    sim.start_users(np.arange(4), np.random.default_rng(0))
    sim.refresh_candidates(np.random.default_rng(0))
    sim.users.budget[:] = [20.0, 13.0, 12.0, 5.0]  # steps left: the first two users are early in the session
    sim.users.satisfaction[:] = [0.95, 0.95, 0.1, 0.1]  # a clock switch does not read it
    spend, build = ItemRule(0.0), ItemRule(4.0, clickbait_ban=True)
    terms = ItemTerms.of(sim)
    scores = Switch(spend, build, signal=None, endgame=12).scores(terms)
    for row, late in enumerate([False, False, True, True]):
        np.testing.assert_array_equal(scores[row], (spend if late else build).scores(terms)[row])


def test_a_feedback_switch_reads_the_last_engagement_and_spends_the_session_s_last_steps():
    sim = build_simulator(SlateEnvConfig(num_items=600, num_topics=6), batch=4)
    sim.start_users(np.arange(4), np.random.default_rng(0))
    sim.refresh_candidates(np.random.default_rng(0))
    sim.users.last_engagement[:] = [0.9, 0.2, 0.2, 0.2]
    sim.users.satisfaction[:] = [0.1, 0.95, 0.1, 0.1]  # hidden: a switch on the feedback does not read it
    sim.users.budget[:] = [10.0, 10.0, 2.0, 3.0]  # the third user is in the session's last two steps
    spend, build = ItemRule(0.5), ItemRule(4.0, clickbait_ban=True)
    terms = ItemTerms.of(sim)
    switch = Switch(spend, build, signal="last_engagement", threshold=0.75, endgame=2)
    scores = switch.scores(terms)
    for row, spending in enumerate([True, False, True, False]):
        np.testing.assert_array_equal(scores[row], (spend if spending else build).scores(terms)[row])
    assert switch.name == (
        "switch(last_engagement > 0.75 or last 2 steps: rule(p=0.5), else rule(p=4, no clickbait))"
    )
    with pytest.raises(ConfigError, match="signal"):
        Switch(spend, build, signal="interest")


def test_the_planner_chooses_its_base_policy_on_whole_episodes_of_several_sessions():
    # Returning users: the return objective pays only when a session ends, and sessions last 4 steps.
    config = with_preset("retention", num_items=600, num_topics=6, budget=4.0, sessions=3)
    sim = build_simulator(config, batch=4)
    sim.start_users(np.arange(4), np.random.default_rng(0))
    sim.refresh_candidates(np.random.default_rng(0))
    episode = config.max_episode_steps
    twin = PlannerPolicy(sim, rollouts=3, horizon=2, seed=7)
    short = twin.rollout_returns(first_steps=2)  # [B, M, R] two steps: at most one session's end
    whole = twin.rollout_returns(first_steps=episode, steps=episode)  # every session the users have left
    assert whole.sum() > short.sum()
    assert short.max() <= 1.0 < whole.max()  # 1 / days pays at most 1 a session: whole episodes see several
    planner = PlannerPolicy(sim, rollouts=3, horizon=2, seed=7)
    expected = PlannerPolicy(sim, rollouts=3, horizon=2, seed=7).rollout_returns(episode, episode)
    planner.best_rules()
    assert planner.base == int(expected.mean(axis=(0, 2)).argmax())


def test_the_planner_plans_on_the_best_library_rule_of_its_first_plan():
    sim = build_simulator(SlateEnvConfig(num_items=600, num_topics=6, budget=6.0), batch=8)
    planner = PlannerPolicy(sim, rollouts=3, horizon=6)
    outcomes = evaluate_policy(planner, sim, 8, seed=0)
    assert planner.base is not None and 0 <= planner.base < len(planner.library)
    assert np.isfinite(outcomes.session_return).all()
