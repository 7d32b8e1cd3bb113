"""Fast checks of the slate RL pieces on hand-made tensors: the per-position PPO loss, SlateQ's decomposition
and target, CEM, the comparison statistics, and the new baselines (no Ray)."""

from __future__ import annotations

import itertools
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from rayrec import slate_q
from rayrec.baselines import LinearRankerPolicy, PopularityPolicy, SwitchRankerPolicy, load_policy
from rayrec.click_logit import SlateClickModel
from rayrec.errors import ArtifactError, ConfigError, DataError
from rayrec.plackett_luce import slate_log_prob
from rayrec.slate_scorer import (
    ExportConfig,
    ScorerConfig,
    SlateScorer,
    choice_model_to_json,
    load_exported_policy,
    save_exported_policy,
)
from trainers.compare_stats import bootstrap_intervals, curve_band, iqm
from trainers.linear_ranker import CEMConfig, cross_entropy_method
from trainers.slate_ppo import per_position_terms
from trainers.slateq import SlateQRLModule, slateq_targets, taken_values

# -- per-position PPO --------------------------------------------------------------------------------


def test_per_position_ratios_are_the_conditional_choice_ratios():
    old = torch.tensor([[0.0, 1.0, 2.0]])
    new = torch.tensor([[0.5, 1.0, 1.5]])
    slate = torch.tensor([[2, 0]])
    terms = per_position_terms(new, old, slate, torch.tensor([1.0]), clip_param=10.0)
    # position 0 picks item 2 among all three; position 1 picks item 0 among {0, 1}.
    p_old = [math.exp(2) / (1 + math.e + math.exp(2)), 1 / (1 + math.e)]
    p_new = [
        math.exp(1.5) / (math.exp(0.5) + math.e + math.exp(1.5)),
        math.exp(0.5) / (math.exp(0.5) + math.e),
    ]
    expected = torch.tensor([[p_new[0] / p_old[0], p_new[1] / p_old[1]]])
    torch.testing.assert_close(terms.ratio, expected)
    # the product of the per-position ratios is the whole slate's ratio
    whole = torch.exp(slate_log_prob(new, slate) - slate_log_prob(old, slate))
    torch.testing.assert_close(terms.ratio.prod(dim=1), whole)
    torch.testing.assert_close(terms.surrogate, expected.sum(dim=1))  # no clip active at eps=10


def test_each_position_is_clipped_on_its_own():
    old = torch.zeros(1, 3)
    new = torch.tensor([[2.0, 0.0, 0.0]], requires_grad=True)  # item 0 much likelier at position 0
    slate = torch.tensor([[0, 1]])
    terms = per_position_terms(new, old, slate, torch.tensor([1.0]), clip_param=0.2)
    assert terms.ratio[0, 0] > 1.2 and terms.clipped.tolist() == [[True, False]]
    # position 0 contributes the constant 1.2 A; position 1 keeps its ratio and its gradient
    assert terms.surrogate.item() == pytest.approx(1.2 + terms.ratio[0, 1].item())
    terms.surrogate.sum().backward()
    assert new.grad.abs().sum() > 0  # through position 1 only
    new2 = new.detach().clone().requires_grad_(True)
    only_first = per_position_terms(new2, old, torch.tensor([[0]]), torch.tensor([1.0]), clip_param=0.2)
    only_first.surrogate.sum().backward()
    assert new2.grad.abs().sum() == 0  # the clipped position has no gradient


def test_gradient_on_policy_is_the_slate_policy_gradient():
    torch.manual_seed(0)
    logits = torch.randn(4, 6, requires_grad=True)
    slate = torch.stack([torch.randperm(6)[:3] for _ in range(4)])
    adv = torch.randn(4)
    terms = per_position_terms(logits, logits.detach(), slate, adv, clip_param=0.2)
    (grad,) = torch.autograd.grad(terms.surrogate.sum(), logits)
    (expected,) = torch.autograd.grad((adv * slate_log_prob(logits, slate)).sum(), logits)
    torch.testing.assert_close(grad, expected)


def test_position_entropies_and_kls():
    uniform = torch.zeros(2, 5)
    slate = torch.tensor([[0, 1, 2], [4, 3, 2]])
    terms = per_position_terms(uniform, uniform, slate, torch.zeros(2), clip_param=0.2)
    expected = torch.log(torch.tensor([5.0, 4.0, 3.0])).expand(2, 3)
    torch.testing.assert_close(terms.entropy, expected)
    torch.testing.assert_close(terms.kl, torch.zeros(2, 3))
    sharp = per_position_terms(torch.tensor([[5.0, 0, 0, 0, 0]] * 2), uniform, slate, torch.zeros(2), 0.2)
    assert (sharp.entropy[:, 0] < expected[:, 0]).all() and (sharp.kl[:, 0] > 0).all()


# -- SlateQ -------------------------------------------------------------------------------------------


def test_slate_value_is_the_choice_weighted_item_value():
    item_logits = torch.tensor([[0.0, math.log(2.0), math.log(3.0)]])
    positions = torch.tensor([0.0, math.log(0.5)])
    item_q = torch.tensor([[1.0, 2.0, 4.0]])
    null_q = torch.tensor([0.5])
    slate = torch.tensor([[2, 1]])  # weights: item 2 at top 3, item 1 at position 1 2 * 0.5 = 1, no-click 1
    probs = slate_q.choice_probs(item_logits, slate, positions)
    torch.testing.assert_close(probs, torch.tensor([[3 / 5, 1 / 5, 1 / 5]]))
    value = slate_q.slate_value(item_q, null_q, item_logits, positions, slate)
    torch.testing.assert_close(value, torch.tensor([(3 * 4.0 + 1 * 2.0 + 0.5) / 5]))


def test_greedy_slate_finds_the_best_slate_of_a_small_problem():
    item_logits = torch.tensor([[0.0, 1.0, -1.0, 0.5]])
    positions = torch.tensor([0.0, -0.5])
    item_q = torch.tensor([[3.0, 1.0, 5.0, 2.0]])
    null_q = torch.tensor([0.0])
    best = max(
        itertools.permutations(range(4), 2),
        key=lambda s: slate_q.slate_value(item_q, null_q, item_logits, positions, torch.tensor([s])).item(),
    )
    assert slate_q.greedy_slate(item_q, null_q, item_logits, positions, 2).tolist() == [list(best)]


def test_taken_values_pick_the_clicked_item_or_no_click():
    item_q = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    null_q = torch.tensor([-1.0, -2.0])
    slate = torch.tensor([[2, 0], [1, 2]])
    got = taken_values(item_q, null_q, slate, torch.tensor([1, -1]))
    torch.testing.assert_close(got, torch.tensor([1.0, -2.0]))


def _slateq_module(num: int = 4, k: int = 2, dim: int = 3) -> SlateQRLModule:
    obs_space = gym.spaces.Dict(
        {
            "profile": gym.spaces.Box(-1, 1, (dim,), np.float32),
            "candidates": gym.spaces.Box(-1, 1, (num, dim), np.float32),
            "features": gym.spaces.Box(-1, 1, (num, 3), np.float32),
            "budget": gym.spaces.Box(0, 1, (1,), np.float32),
        }
    )
    model = SlateClickModel(
        np.array([2.0, 0.5, -1.0]), np.array([0.3, -0.2, 0.1]), -1.0, np.array([0.0, -0.4])
    )
    module = SlateQRLModule(
        observation_space=obs_space,
        action_space=gym.spaces.MultiDiscrete([num] * k),
        model_config={
            "hidden": 8,
            "attention_heads": 2,
            "choice_model": choice_model_to_json(model),
            "epsilon": 0.0,
        },
    )
    module.make_target_networks()
    return module


def test_slateq_target_decomposes_through_the_choice_model():
    torch.manual_seed(0)
    module = _slateq_module()
    with torch.no_grad():  # make target and online networks differ: the target must value, online choose
        for p in module._target_scorer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    obs = {
        "profile": torch.randn(5, 3),
        "candidates": torch.randn(5, 4, 3),
        "features": torch.rand(5, 4, 3),
        "budget": torch.rand(5, 1),
    }
    rewards, discounts = torch.rand(5), torch.tensor([0.9, 0.9, 0.0, 0.9, 0.9])
    got = slateq_targets(module, obs, rewards, discounts)
    # by hand: the online network's greedy slate, valued by the target network through the choice model
    logits = (
        obs["features"] @ torch.tensor([2.0, 0.5, -1.0])
        - 1.0
        + obs["candidates"] @ torch.tensor([0.3, -0.2, 0.1])
    )
    with torch.no_grad():
        slate = slate_q.greedy_slate(
            module.scorer.scores(obs), module.scorer.value(obs), logits, torch.tensor([0.0, -0.4]), 2
        )
        q, null = module._target_scorer.scores(obs), module._target_scorer.value(obs)
    w = torch.cat([(logits.gather(1, slate) + torch.tensor([0.0, -0.4])).exp(), torch.ones(5, 1)], dim=1)
    expected = rewards + discounts * (w * torch.cat([q.gather(1, slate), null[:, None]], 1)).sum(1) / w.sum(1)
    torch.testing.assert_close(got, expected)
    assert got[2] == rewards[2]  # terminated: no bootstrap


def test_slateq_export_serves_the_greedy_slate(tmp_path):
    model = SlateClickModel(np.array([2.0, 0.5, -1.0]), np.zeros(0), -1.0, np.array([0.0, -0.4]))
    scorer = SlateScorer(ScorerConfig(dim=3, hidden=8, attention_heads=2))
    config = ExportConfig(
        scorer=scorer.config, slate_size=2, num_candidates=4, name="slateq", choice_model=model
    )
    save_exported_policy(scorer, config, str(tmp_path))
    policy = load_exported_policy(str(tmp_path))
    assert policy.config.choice_model is not None
    rng = np.random.default_rng(0)
    obs = {
        "profile": rng.normal(size=(6, 3)).astype(np.float32),
        "candidates": rng.normal(size=(6, 4, 3)).astype(np.float32),
        "features": rng.random((6, 4, 3)).astype(np.float32),
        "budget": rng.random((6, 1)).astype(np.float32),
    }
    tensors = {k: torch.from_numpy(v) for k, v in obs.items()}
    with torch.no_grad():
        expected = slate_q.greedy_slate(
            scorer.scores(tensors), scorer.value(tensors), torch.from_numpy(model.candidate_logits(obs)).float(),
            torch.tensor([0.0, -0.4]), 2,
        )  # fmt: skip
    assert policy.select(obs, 2).indices.tolist() == expected.tolist()
    # a longer slate than fitted repeats the last position's logit
    assert policy.select(obs, 3).indices.shape == (6, 3)
    with pytest.raises(ConfigError, match="no sampled mode"):
        load_exported_policy(str(tmp_path), sampled=True)


# -- CEM and the statistics ------------------------------------------------------------------------


def test_cem_finds_the_maximum_of_a_concave_function():
    target = np.array([3.0, -2.0])

    def objective(w: np.ndarray, iteration: int) -> np.ndarray:
        return -((w - target) ** 2).sum(axis=1)

    result = cross_entropy_method(objective, np.zeros(2), CEMConfig(iterations=25, population=32, seed=1))
    np.testing.assert_allclose(result.mean, target, atol=0.1)
    assert result.history[-1]["best"] > result.history[0]["best"]
    with pytest.raises(ConfigError):
        CEMConfig(population=1)


def test_iqm_and_bootstrap_intervals():
    assert iqm(np.array([0.0, 1.0, 2.0, 3.0, 100.0, -100.0, 1.5, 2.5])) == pytest.approx(
        np.mean([1, 1.5, 2, 2.5])
    )
    rng = np.random.default_rng(0)
    base = rng.normal(5, 1, size=(1, 400))  # a fixed baseline: one run
    method = base + 0.5 + rng.normal(0, 0.05, size=(3, 400))  # 3 runs, paired with the baseline's users
    stats = bootstrap_intervals({"m": method, "b": base}, [("m", "b")], reps=500)
    diff = stats["differences"]["m - b"]
    assert diff["above_zero"] and diff["ci"][0] < 0.5 < diff["ci"][1] and diff["ci"][1] - diff["ci"][0] < 0.2
    m = stats["methods"]["m"]
    assert m["runs"] == 3 and m["mean_ci"][0] <= m["mean"] <= m["mean_ci"][1]
    # unpaired, the same difference would be buried in the users' spread (width ~ 2 * 1.96 / sqrt(400))
    assert stats["methods"]["b"]["mean_ci"][1] - stats["methods"]["b"]["mean_ci"][0] > 0.15
    with pytest.raises(DataError):
        bootstrap_intervals({"m": method, "b": base[:, :10]}, [("m", "b")])
    band = curve_band(np.array([[1.0, 2.0], [3.0, 4.0]]), reps=200)
    assert band.shape == (3, 2) and (band[1] <= band[0]).all() and (band[0] <= band[2]).all()


# -- baselines ------------------------------------------------------------------------------------------


def _obs(batch: int = 2, num: int = 5, dim: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "profile": rng.normal(size=(batch, dim)).astype(np.float32),
        "candidates": rng.normal(size=(batch, num, dim)).astype(np.float32),
        "features": rng.random((batch, num, 3)).astype(np.float32),
        "budget": np.ones((batch, 1), dtype=np.float32),
    }


def test_popularity_shows_the_most_popular_candidates_first():
    obs = _obs()
    slate = load_policy("popularity").select(obs, 3)
    assert isinstance(load_policy("popularity"), PopularityPolicy)
    expected = np.argsort(-obs["features"][..., 1], axis=1)[:, :3]
    assert slate.indices.tolist() == expected.tolist()


def test_linear_ranker_scores_saves_and_loads_by_path(tmp_path):
    obs = _obs()
    policy = LinearRankerPolicy(np.array([1.0, -2.0, 0.0]), np.array([0.5, 0.0, 0.0, -1.0]))
    expected = obs["features"] @ np.array([1.0, -2.0, 0.0]) + obs["candidates"] @ np.array(
        [0.5, 0.0, 0.0, -1.0]
    )
    np.testing.assert_allclose(policy.scores(obs), expected, rtol=1e-5)
    policy.save(str(tmp_path / "lin"), {"note": "test"})
    loaded = load_policy(str(tmp_path / "lin"))
    assert isinstance(loaded, LinearRankerPolicy) and loaded.name == "linear-cem"
    assert loaded.select(obs, 2).indices.tolist() == policy.select(obs, 2).indices.tolist()
    with pytest.raises(ConfigError, match="4-d embeddings"):
        loaded.scores(_obs(dim=6))
    (tmp_path / "lin" / "linear_ranker.json").write_text("{broken")
    with pytest.raises(ArtifactError, match=r"linear_ranker\.json"):
        load_policy(str(tmp_path / "lin"))


def test_a_switch_ranker_spends_while_its_gate_on_the_user_is_open(tmp_path):
    """The gate reads the remaining budget and the per-user columns (here ``last_engagement`` and
    ``last_click_rating``); open rows are ranked by ``spend``, closed ones by ``build``. It saves, loads by path
    (the same file name as a linear ranker, told apart by its format) and keeps the budget it was fitted with."""
    from rayrec.features import feature_names

    names = feature_names(rating=True, feedback=True, last_click=True)  # 3 + item_rating + 2 user columns
    obs = _obs(batch=4, num=6)
    rng = np.random.default_rng(3)
    user = rng.random((4, 2)).astype(np.float32)  # [B, 2] last_engagement, last_click_rating
    obs["features"] = np.concatenate(
        [obs["features"], rng.random((4, 6, 1)), np.broadcast_to(user[:, None, :], (4, 6, 2))], axis=2
    ).astype(np.float32)
    obs["budget"] = np.array([[1.0], [0.2], [1.0], [0.2]], np.float32)
    spend = np.array([0, 1.0, 0, 0, 0, 0])  # popularity
    build = np.array([0, 0, 0, 1.0, 0, 0])  # item_rating
    gate = np.array([-0.5, 0.0, 1.0, 0.0])  # open where last_engagement > 0.5
    policy = SwitchRankerPolicy.from_flat(np.concatenate([spend, build, gate]), names, budget=20.0)
    assert policy.gate_inputs(obs).tolist() == np.c_[np.ones(4), obs["budget"], user].tolist()
    open_ = user[:, 0] > 0.5
    expected = np.where(open_[:, None], obs["features"][..., 1], obs["features"][..., 3])
    np.testing.assert_allclose(policy.scores(obs), expected)
    # A gate on the clock alone: open in the last fifth of the session.
    clock = SwitchRankerPolicy.from_flat(
        np.concatenate([spend, build, [0.25, -1.0, 0.0, 0.0]]), names, budget=20.0
    )
    late = obs["budget"][:, 0] < 0.25
    np.testing.assert_allclose(
        clock.scores(obs), np.where(late[:, None], obs["features"][..., 1], obs["features"][..., 3])
    )
    loaded = load_policy(policy.save(str(tmp_path / "switch")))
    assert isinstance(loaded, SwitchRankerPolicy) and loaded.feature_names == names and loaded.budget == 20.0
    np.testing.assert_allclose(loaded.scores(obs), policy.scores(obs))
    with pytest.raises(
        ConfigError, match=r"3 gate weights for the inputs \['bias', 'budget', 'last_engagement'"
    ):
        SwitchRankerPolicy.from_flat(np.zeros(2 * len(names) + 3), names, budget=20.0)
    (tmp_path / "switch" / "linear_ranker.json").write_text('{"format": "rayrec-switch-ranker"}')
    with pytest.raises(ArtifactError, match=r"linear_ranker\.json"):
        load_policy(str(tmp_path / "switch"))


def test_a_fitted_switch_ranker_switches_where_a_linear_one_cannot():
    """On ``long-term`` with ``item_rating`` the CEM-fitted switch ranker (a gate on the session's clock)
    beats the CEM-fitted linear ranker on held-out users: building satisfaction early and spending it late
    is what one linear score cannot do. Both fits see training users only (a test split is refused)."""
    from envs import build_simulator
    from envs.config import config_with
    from envs.presets import preset
    from envs.rollout import evaluate_policy
    from rayrec.metrics.session import mean_interval
    from trainers.linear_ranker import fit_linear_ranker, fit_switch_ranker

    world = config_with(preset("long-term"), observe_rating=True, num_items=2000)
    cem = CEMConfig(iterations=6, population=12, seed=0)
    switch, _ = fit_switch_ranker(config_with(world, user_split="train"), cem, users=96)
    linear, _ = fit_linear_ranker(config_with(world, user_split="train"), cem, users=96)
    test = build_simulator(config_with(world, user_split="test"), batch=300)
    gain = mean_interval(  # paired: user i starts the same way under both
        evaluate_policy(switch, test, 300, 1_000_003).session_return
        - evaluate_policy(linear, test, 300, 1_000_003).session_return
    )
    assert gain["ci95_low"] > 0, gain
    with pytest.raises(ConfigError, match="training users"):
        fit_switch_ranker(config_with(world, user_split="test"), cem, users=8)


def test_a_linear_ranker_records_the_features_its_weights_are_for(tmp_path):
    """The weights of a ranker fitted with ``observe_rating`` are for ``item_rating`` too: the names are
    saved with them (what the server checks before serving it); a file written before names were recorded
    holds :data:`rayrec.features.FEATURE_NAMES` weights, and names that do not fit the weights are refused."""
    import json

    from rayrec.features import FEATURE_NAMES, feature_names
    from rayrec.rerank import policy_feature_names

    rated = LinearRankerPolicy(np.arange(4.0), np.zeros(4), feature_names=feature_names(rating=True))
    loaded = load_policy(rated.save(str(tmp_path / "rated")))
    assert loaded.feature_names == policy_feature_names(loaded) == (*FEATURE_NAMES, "item_rating")
    assert policy_feature_names(load_policy(f"mmr:{tmp_path / 'rated'}")) == loaded.feature_names
    record = json.loads((tmp_path / "rated" / "linear_ranker.json").read_text())
    del record["feature_names"]
    (tmp_path / "rated" / "linear_ranker.json").write_text(json.dumps(record))
    with pytest.raises(ArtifactError, match=r"4 feature weights for the features \['retrieval_score'"):
        load_policy(str(tmp_path / "rated"))
    record["feature_weights"] = [1.0, 0.0, 0.0]
    (tmp_path / "rated" / "linear_ranker.json").write_text(json.dumps(record))
    assert load_policy(str(tmp_path / "rated")).feature_names == FEATURE_NAMES
    with pytest.raises(ConfigError, match="feature weights"):
        LinearRankerPolicy(
            np.zeros(4), np.zeros(0), feature_names=("popularity", "retrieval_score", "x", "y")
        )
