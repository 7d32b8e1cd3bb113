"""The user dynamics that make planning pay, each checked exactly with a scripted choice model: satiation that
recovers, clickbait whose harm grows with recent clickbait, users who leave and return, and held-out users."""

from __future__ import annotations

import numpy as np
import pytest
from test_env import ScriptedChoice

import envs
from envs.choice import ConditionalLogitChoice
from envs.config import SlateEnvConfig
from envs.users import split_of_users
from rayrec.errors import ConfigError

SMALL = {"num_items": 600, "num_topics": 6, "leave_base": 0.0, "leave_scale": 0.0}


def _env(choice_position: int, **fields):
    env = envs.make_env(SlateEnvConfig(**{**SMALL, **fields}), choice_model=ScriptedChoice(choice_position))
    env.reset(seed=3)
    return env, env.unwrapped.sim


def test_satiation_builds_with_clicks_lowers_the_items_utility_and_recovers():
    env, sim = _env(0, satiation_gain=0.5, satiation_recovery=0.2, satiation_penalty=0.4)
    item = sim.candidate_items[0, 0]
    embedding = sim.catalog.embeddings[item]
    _, _, _, _, info = env.step(np.arange(5))
    assert info["chosen_item"] == item
    np.testing.assert_allclose(sim.users.satiation[0], 0.5 * embedding, atol=1e-6)
    choice = ConditionalLogitChoice.from_config(sim.config)
    interest, items = sim.users.interest[:1], np.array([[item]])
    fresh = choice.item_logits(interest, items, sim.catalog)
    sated = choice.item_logits(interest, items, sim.catalog, satiation=sim.users.satiation[:1])
    expected_drop = 0.4 * max(float(embedding @ sim.users.satiation[0]), 0.0) / sim.config.temperature
    assert fresh[0, 0] - sated[0, 0] == pytest.approx(expected_drop, rel=1e-5)
    # Without clicks satiation only fades, by `satiation_recovery` per step.
    env.unwrapped.sim.choice_model = ScriptedChoice(-1)
    before = sim.users.satiation[0].copy()
    env.step(np.arange(5))
    np.testing.assert_allclose(sim.users.satiation[0], 0.8 * before, atol=1e-6)


def _clickbait_harm(clickbait_fatigue: float) -> list[float]:
    """Satisfaction lost on three clickbait clicks in a row (quality and gain cancel out: gain 0)."""
    env, sim = _env(
        0,
        satisfaction_gain=0.0,
        boredom=0.0,
        clickbait_penalty=0.05,
        clickbait_fatigue=clickbait_fatigue,
        fatigue_recovery=0.5,
        initial_satisfaction=(1.0, 1.0),
        candidates="random",
        clickbait_rate=0.5,
    )
    losses = []
    for _ in range(3):
        bait = np.flatnonzero(sim.catalog.clickbait[sim.candidate_items[0]] > 0.5)
        assert len(bait), "the synthetic world has clickbait among the candidates"
        action = np.r_[bait[0], [j for j in range(5) if j != bait[0]][:4]]
        before = float(sim.users.satisfaction[0])
        env.step(action)
        losses.append(before - float(sim.users.satisfaction[0]))
    return losses


def test_clickbait_harm_grows_with_recent_clickbait_and_is_constant_without_fatigue():
    constant = _clickbait_harm(0.0)
    np.testing.assert_allclose(constant, 0.05, atol=1e-6)
    growing = _clickbait_harm(2.0)
    # f' = 1, then 0.5 + 1, then 0.75 + 1: harm 0.05 * (1 + 2 f').
    np.testing.assert_allclose(growing, [0.05 * 3, 0.05 * 4, 0.05 * 4.5], atol=1e-5)


def test_watch_time_is_the_satisfaction_the_slate_met_and_clickbait_is_watched_longer():
    """Each click earns the satisfaction before it, times ``1 + clickbait_watch`` for clickbait (long-term world)."""
    env, sim = _env(
        0,
        reward="watch",
        clickbait_watch=3.0,
        satisfaction_gain=0.5,
        clickbait_penalty=0.1,
        boredom=0.0,
        initial_satisfaction=(0.4, 0.4),
        candidates="random",
        clickbait_rate=0.5,
    )
    seen, moved = set(), []
    for _ in range(8):
        bait = sim.catalog.clickbait[sim.candidate_items[0]] > 0.5  # [K]
        kind = len(seen) % 2 == 0  # alternate: clickbait first, then not
        first = int(np.flatnonzero(bait == kind)[0])
        item = sim.candidate_items[0, first]
        before = float(sim.users.satisfaction[0])
        _, reward, _, _, info = env.step(np.r_[first, [j for j in range(6) if j != first][:4]])
        assert info["chosen_item"] == item
        assert reward == pytest.approx(before * (1.0 + 3.0 * kind), rel=1e-5)
        moved.append(abs(float(info["satisfaction"]) - before))
        seen.add(kind)
    assert seen == {True, False}
    assert max(moved) > 0.01  # clicks moved satisfaction, and each reward read it before the move
    with pytest.raises(ConfigError, match="clickbait_watch must be >= 0"):
        SlateEnvConfig(reward="watch", clickbait_watch=-1.0)


def test_users_return_for_another_session_after_a_good_one_and_not_after_a_bad_one():
    # Budget 2: a session is two steps. A certain return (huge bias) restarts the session in place.
    env, sim = _env(-1, budget=2.0, sessions=3, return_bias=50.0, reward="return", boredom=0.0)
    rewards, infos = [], []
    for _ in range(4):
        _, reward, terminated, _, info = env.step(np.arange(5))
        rewards.append(reward)
        infos.append(info)
        assert not terminated
    assert [i["session_ended"] for i in infos] == [False, True, False, True]
    days = infos[1]["return_days"]
    assert days >= 1 and rewards[1] == pytest.approx(1.0 / days) and rewards[0] == 0.0
    assert sim.users.session[0] == 3 and sim.users.budget[0] == 2.0 and sim.users.total_steps[0] == 4
    # The third session is the last: the episode ends with it.
    env.step(np.arange(5))
    _, _, terminated, _, info = env.step(np.arange(5))
    assert terminated and info["return_days"] == 0.0
    # A certain non-return (huge negative bias) ends the episode with the first session.
    env, sim = _env(-1, budget=2.0, sessions=3, return_bias=-50.0)
    env.step(np.arange(5))
    _, _, terminated, _, info = env.step(np.arange(5))
    assert terminated and info["session_ended"] and sim.users.session[0] == 1


def test_satisfied_users_come_back_sooner_and_more_often():
    config = SlateEnvConfig(**SMALL, sessions=2)
    response = envs.build_simulator(config, batch=1).response
    low, high = np.array([0.1]), np.array([0.9])
    assert response.return_probability(high)[0] > response.return_probability(low)[0]
    # The mean delay falls from return_delay days at satisfaction 0 to half of it at satisfaction 1.
    assert config.return_delay * (1 - 0.9 / 2) < config.return_delay * (1 - 0.1 / 2)


def test_user_splits_are_stable_disjoint_and_sized():
    ids = np.array([f"u{i}" for i in range(20000)])
    splits = split_of_users(ids)
    np.testing.assert_array_equal(splits, split_of_users(ids))  # stable
    shares = {name: float((splits == name).mean()) for name in ("train", "validation", "test")}
    assert shares == pytest.approx({"train": 0.7, "validation": 0.1, "test": 0.2}, abs=0.015)


def test_evaluation_users_come_from_the_test_split_only(tmp_path):
    from rayrec.synth import WorldConfig, write_world

    data = tmp_path / "data"
    write_world(WorldConfig(items=400, users=300, topics=4, seed=1), str(data))
    base = SlateEnvConfig(data_dir=str(data), num_candidates=10, slate_size=3)
    world = envs.factory.load_world(base)
    test_rows = {tuple(h) for h in world.histories[world.history_splits == "test"]}
    train_rows = {tuple(h) for h in world.histories[world.history_splits == "train"]}
    sim = envs.build_simulator(base.replace(user_split="test"), batch=200)
    draw = sim.sample_users(200, np.random.default_rng(0))
    assert {tuple(h) for h in draw.history} <= test_rows
    assert not ({tuple(h) for h in draw.history} & (train_rows - test_rows))


def test_simulate_runs_the_planner_and_myopic_true_on_a_preset_and_keeps_the_json_shape(tmp_path, capsys):
    import json

    from rayrec.cli import main

    out = tmp_path / "sim.json"
    argv = ["simulate", "--preset", "satiation", "--users", "24", "--json", str(out)]
    argv += ["--policy", "planner", "--policy", "myopic-true", "--policy", "random", "--env", "num_items=600"]
    assert main(argv) == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert set(result["policies"]) == {"planner", "myopic-true", "random"}
    for metrics in result["policies"].values():
        assert {"mean", "ci95_low", "ci95_high"} <= set(metrics["sim/session_return"])
    assert result["preset"] == "satiation" and result["users"] == 24
    assert result["world"] == "preset `satiation` with --env `num_items=600`"  # what changed the preset, too
    assert "preset `satiation` with --env `num_items=600`, 24 users" in capsys.readouterr().out


def test_presets_are_listed_and_unknown_ones_refused(capsys):
    from rayrec.cli import main

    assert main(["simulate", "--list-presets"]) == 0
    listed = capsys.readouterr().out
    assert all(f"{name}: " in listed for name in ("long-term", "classic", "satiation", "retention"))
    assert main(["simulate", "--preset", "no-such-world", "--users", "4"]) == 2
    assert "unknown preset 'no-such-world'" in capsys.readouterr().err
    # the first world's old name: the error lists the presets and says which one is the default now
    assert main(["simulate", "--preset", "default", "--users", "4"]) == 2
    err = capsys.readouterr().err
    assert "classic" in err and "long-term is the default" in err
