"""Calibration: logged statistics, the temperature's maximum likelihood, and ``rayrec calibrate`` end to end."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

import envs
from envs.calibration import fit_temperature, logged_statistics
from envs.config import SlateEnvConfig
from envs.factory import load_world
from rayrec.cli import main
from rayrec.commands import simulate as simulate_command
from rayrec.config import load_config
from rayrec.features import l2_normalize


def interactions_table(users, items, timestamps, events=None) -> pa.Table:
    n = len(users)
    return pa.table(
        {
            "user_id": pa.array(users, pa.string()),
            "item_id": pa.array(items, pa.string()),
            "timestamp": pa.array(timestamps, pa.int64()),
            "event": pa.array(events or ["click"] * n, pa.string()),
            "value": pa.array([1.0] * n, pa.float32()),
        }
    )


def test_logged_statistics_split_sessions_and_count_impressions():
    catalog = load_world(SlateEnvConfig(num_items=600, num_topics=6)).catalog
    ids = catalog.item_ids
    table = interactions_table(
        ["a", "a", "a", "b", "b", "b"],
        [ids[0], ids[1], ids[2], ids[0], ids[3], ids[4]],
        [0, 60, 10_000, 5, 6, 7],  # a: two sessions (gap > 30 min); b: one session
        ["click", "click", "click", "click", "impression", "impression"],
    )
    stats = logged_statistics(catalog, table)
    assert stats.interactions_per_session == pytest.approx(4 / 3)
    assert stats.interaction_rate == pytest.approx(4 / 2)
    assert 0.99 < stats.popularity_gini < 1.0  # 3 of 600 items take every interaction
    assert sum(stats.category_mix.values()) == pytest.approx(1.0)


def test_temperature_maximum_likelihood_recovers_the_generating_temperature():
    catalog = load_world(SlateEnvConfig(num_items=600, num_topics=6)).catalog
    rng = np.random.default_rng(0)
    true_temperature = 0.08
    users, items, times = [], [], []
    for user in range(600):
        history = rng.integers(0, catalog.size, size=3)
        interest = l2_normalize(catalog.embeddings[history].mean(axis=0))
        logits = catalog.embeddings @ interest / true_temperature
        probs = np.exp(logits - logits.max())
        choice = rng.choice(catalog.size, p=probs / probs.sum())
        for t, item in enumerate([*history, choice]):
            users.append(f"u{user}")
            items.append(catalog.item_ids[item])
            times.append(t)
    fitted, log_likelihood = fit_temperature(
        catalog, interactions_table(users, items, times), popularity_appeal=0.0
    )
    assert 0.7 * true_temperature < fitted < 1.4 * true_temperature
    assert log_likelihood < 0


def test_calibrate_command_writes_a_loadable_env_config(tmp_path):
    from rayrec.synth import WorldConfig, write_world

    data = tmp_path / "data"
    write_world(WorldConfig(items=500, users=120, topics=5, seed=1), str(data))
    out = tmp_path / "calib"
    assert main(["calibrate", "--data", str(data), "--out", str(out), "--users", "100"]) == 0
    report = json.loads((out / simulate_command.CALIBRATION_FILE).read_text())
    assert set(report) == {"logged", "simulated_before", "simulated_after", "fitted"}
    fitted = report["fitted"]
    target = fitted["no_click_utility"]["target"]
    assert report["logged"]["interactions_per_session"] == pytest.approx(target)
    # Moment matching moved the simulated sessions toward the logged ones.
    before = abs(report["simulated_before"]["interactions_per_session"] - target)
    after = abs(report["simulated_after"]["interactions_per_session"] - target)
    assert after <= before + 0.05
    config = load_config(SlateEnvConfig, out / simulate_command.ENV_CONFIG_FILE)
    assert config.temperature == pytest.approx(fitted["temperature"]["value"])
    assert config.no_click_utility == pytest.approx(fitted["no_click_utility"]["value"])
    assert (out / "config.yaml").exists()
    env = envs.make_env(config)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)


def test_simulate_command_rejects_an_unknown_policy(capsys):
    assert main(["simulate", "--policy", "no-such-policy", "--users", "10"]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "unknown policy" in err and "Traceback" not in err
