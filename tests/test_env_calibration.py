"""Calibration: the likelihoods replay the simulator exactly, sim-to-sim recovery, thin data, ``rayrec calibrate``."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

import envs
from envs.calibration import (
    CALIBRATED_PARAMETERS,
    CalibrationOptions,
    calibrate,
    choice_identification,
    dynamics_identification,
    fit_choice,
    ks_distance,
    logged_statistics,
)
from envs.calibration import RECOVERY_TRUTH as TRUTH
from envs.calibration_choice import (
    ChoiceLikelihood,
    InterestPaths,
    choice_values,
    satiation_offsets,
    slate_choice_data,
)
from envs.calibration_data import SlateLogRecorder, slate_log_from_events
from envs.calibration_dynamics import DynamicsLikelihood, dynamics_values, session_steps
from envs.calibration_sim import simulate_log
from envs.choice import ConditionalLogitChoice
from envs.config import SlateEnvConfig
from envs.factory import build_simulator, load_world
from envs.rollout import Shown, StepRecord, evaluate_policy
from rayrec.baselines import RandomPolicy
from rayrec.cli import main
from rayrec.commands import simulate as simulate_command
from rayrec.config import load_config
from rayrec.errors import ConfigError
from rayrec.privacy import KEY_FILE
from rayrec.synth import WorldConfig, write_world


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


@pytest.fixture(scope="module")
def small_world(tmp_path_factory) -> str:
    """A small synthetic world written as data: its users' histories start the simulated sessions."""
    directory = tmp_path_factory.mktemp("world")
    # A fixed pseudonymization key: a fresh one renames the users, which reorders the histories the sessions
    # start from, so every run would draw other sessions.
    key = directory / KEY_FILE
    key.write_text("5eed" * 16 + "\n")
    key.chmod(0o600)
    write_world(WorldConfig(items=1000, users=300, topics=8, dim=16, seed=0), str(directory))
    return str(directory)


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


def test_ks_distance():
    assert ks_distance(np.array([1, 2, 3]), np.array([1, 2, 3])) == 0.0
    assert ks_distance(np.array([1, 1]), np.array([2, 2])) == 1.0
    assert ks_distance(np.array([1, 2]), np.array([2, 2])) == pytest.approx(0.5)


def test_the_likelihood_is_the_simulators_choice_model():
    """Without interest noise the likelihood of a user's choices is exactly the product of
    ConditionalLogitChoice's probabilities along the interest path (drift toward each click), satiation
    included (the satiation vector replayed from the clicks as the response model builds it)."""
    config = SlateEnvConfig(
        num_items=600, num_topics=6, satiation_gain=0.5, satiation_recovery=0.2, satiation_penalty=0.4
    )
    sim = build_simulator(config, batch=64)
    recorder = SlateLogRecorder()
    evaluate_policy(RandomPolicy(), sim, 64, 0, observers=[recorder])
    data = slate_choice_data(recorder.log(), config)
    drift = 0.3
    values = {**choice_values(config), "interest_noise": 0.0, "interest_drift": drift}
    paths = InterestPaths(data, sim.catalog, draws=2, seed=0)
    offsets = satiation_offsets(data, sim.catalog, config)
    model = ChoiceLikelihood(data, sim.catalog, paths, (offsets, config.satiation_penalty))
    per_user = model.per_user_log_likelihood(values)

    choice = ConditionalLogitChoice.from_config(config)
    embeddings = sim.catalog.embeddings.astype(np.float64)
    expected = np.zeros(data.num_users)
    for u in range(data.num_users):
        interest = data.first_profile[u].astype(np.float64)
        sigma = np.zeros(sim.catalog.dim)
        for row in range(data.user_start[u], data.user_start[u + 1]):
            probs = choice.probabilities(
                interest[None].astype(np.float32), data.alternatives[row : row + 1], sim.catalog, sigma[None]
            )
            expected[u] += np.log(probs[0, data.chosen[row] + 1])
            sigma *= 1.0 - config.satiation_recovery
            if data.clicked_item[row] >= 0:
                sigma += config.satiation_gain * embeddings[data.clicked_item[row]]
                interest = (1 - drift) * interest + drift * embeddings[data.clicked_item[row]]
                interest /= np.linalg.norm(interest)
    np.testing.assert_allclose(per_user, expected, rtol=1e-4, atol=1e-3)


def test_the_satisfaction_replay_is_the_simulators():
    """Satisfaction replayed from the clicks (clickbait fatigue included) equals the simulator's, step by step."""
    config = SlateEnvConfig(
        num_items=600,
        num_topics=6,
        initial_satisfaction=(0.9, 0.9),
        clickbait_fatigue=0.5,
        clickbait_rate=0.4,
    )
    batch = 32
    sim = build_simulator(config, batch=batch)
    rng = np.random.default_rng(0)
    sim.start_users(np.arange(batch), rng)
    sim.refresh_candidates(rng)
    recorder = SlateLogRecorder()
    reported = []
    for step in range(8):  # a fixed panel: every user is shown 8 slates (leaving is ignored here)
        items = sim.candidate_items[:, :5].copy()
        outcome = sim.show(items, rng)
        reported.append(outcome.info["satisfaction"].copy())
        recorder(
            StepRecord(
                users=np.arange(batch),
                session_step=np.full(batch, step),
                obs={"profile": np.zeros((batch, sim.catalog.dim), np.float32)},
                candidates=sim.candidate_items.copy(),
                shown=Shown(
                    items=items,
                    scores=np.zeros(items.shape, np.float32),
                    propensities=np.ones(items.shape, np.float32),
                    positions=None,
                    policy=np.full(batch, "fixed", dtype=object),
                ),
                chosen=outcome.info["chosen_item"],
                click_position=outcome.info["click_position"],
                reward=outcome.reward,
                done=np.zeros(batch, dtype=bool),
            )
        )
    log = recorder.log()
    assert (log.clicked_items() >= 0).any() and (log.clicked_items() < 0).any()
    likelihood = DynamicsLikelihood(session_steps(log, sim.catalog, config), config, particles=1)
    record = np.zeros((log.size, 1))
    likelihood.per_user(dynamics_values(config), record)
    expected = np.stack(reported, axis=1).ravel()  # rows are user-major, then step
    np.testing.assert_allclose(record[:, 0], expected, atol=1e-5)


@pytest.mark.parametrize(
    ("users", "bar"),
    [
        (2_500, 0.20),
        # 90 s on 2 cores: the bar of the issue, at the size where it holds for any draw (below)
        pytest.param(10_000, 0.10, marks=pytest.mark.slow),
    ],
)
def test_sim_to_sim_recovery(small_world, users, bar):
    """Logs generated with known parameters under an exploring policy are fitted back within ``bar``.

    ``users`` users under the ``random`` logging policy (every retrieved candidate at every position), fitted
    from the preset values with 16 draws per user (the command's default); ``interest_noise`` is held at its
    true value here (the slow test below fits it too). Each parameter's spread over seeds is 1-3% at 10,000
    users and 3-5% at 5,000, where one of ten lands past ±10% in a fair share of draws (``python -m
    benchmarks.calibration_recovery --users N --seeds 6``): so ±10% needs 10,000 users (slow), and the quick
    run holds 2,500 users to ±20%, about four of their standard errors (the largest error over seeds 1-4 was
    8.5%). Both check that the standard errors are honest.
    """
    truth = SlateEnvConfig(data_dir=small_world, **TRUTH)
    log, _ = simulate_log(truth, "random", users, seed=1)
    start = SlateEnvConfig(data_dir=small_world)
    catalog = load_world(truth).catalog
    choice_free = [n for n in TRUTH if n in choice_values(truth)]
    fit = fit_choice(slate_choice_data(log, truth), catalog, start, choice_free, draws=16, seed=0)
    dynamics_free = [n for n in TRUTH if n not in choice_free]
    dynamics = DynamicsLikelihood(session_steps(log, catalog, truth), start, particles=16).fit(
        dynamics_values(start), dynamics_free
    )
    fitted = {**fit.values, **dynamics.values}
    errors = {name: fitted[name] / TRUTH[name] - 1.0 for name in TRUTH}
    assert all(abs(e) <= bar for e in errors.values()), errors
    # The standard errors are honest: each estimate within 4 of them of the truth.
    se = {**fit.std_errors, **dynamics.std_errors}
    assert all(abs(fitted[n] - TRUTH[n]) <= 4 * se[n] for n in TRUTH), (fitted, se)


@pytest.mark.slow
def test_sim_to_sim_recovery_with_interest_noise(small_world):
    truth = SlateEnvConfig(data_dir=small_world, **TRUTH)
    log, _ = simulate_log(truth, "random", 8000, seed=2)
    catalog = load_world(truth).catalog
    free = [*(n for n in TRUTH if n in choice_values(truth)), "interest_noise"]
    fit = fit_choice(
        slate_choice_data(log, truth), catalog, SlateEnvConfig(data_dir=small_world), free, 16, 0
    )
    for name in free:
        assert fit.values[name] == pytest.approx(getattr(truth, name), rel=0.10), name


def test_thin_data_keeps_presets_and_says_why(small_world):
    config = SlateEnvConfig(data_dir=small_world)
    catalog = load_world(config).catalog
    tiny, _ = simulate_log(config, "random", 8, seed=0)
    free, held = choice_identification(slate_choice_data(tiny, config), catalog, fit_noise=True)
    assert free == [] and all("data too small: 8 train users" in held[n] for n in choice_values(config))
    free, held = dynamics_identification(session_steps(tiny, catalog, config), config, days_known=True)
    assert free == [] and "data too small" in held["leave_scale"]
    # One request per user: no choice follows a click, the noise is not separable from the temperature.
    one = simulate_log(config.replace(budget=1.0), "random", 400, seed=0)[0]
    free, held = choice_identification(slate_choice_data(one, config), catalog, fit_noise=True)
    assert "interest_drift" in held and "one item" in held["interest_drift"]
    assert "interest_noise" in held and "one choice per user" in held["interest_noise"]
    assert {"temperature", "no_click_utility", "position_decay"} <= set(free)
    free, held = dynamics_identification(
        session_steps(one, catalog, config.replace(budget=1.0)), config, True
    )
    assert "leave_scale" in held and "leaving" in held["leave_scale"]
    assert all("sessions=1" in held[n] for n in ("return_bias", "return_slope", "return_delay"))


def test_event_log_gives_the_same_slates_as_the_rollout(tmp_path, small_world):
    from rayrec.ab.simulate import EventLogObserver  # the A/B runner's observer writes rayrec's event log

    config = SlateEnvConfig(data_dir=small_world)
    sim = build_simulator(config, batch=40)
    user_ids = [f"u{i:03d}" for i in range(40)]
    writer = EventLogObserver(str(tmp_path / "events"), user_ids, sim.catalog.item_ids, "a")
    recorder = SlateLogRecorder(prefix="u")
    evaluate_policy(RandomPolicy(), sim, 40, 0, observers=[writer, recorder])
    writer.close()
    read = slate_log_from_events(sim.catalog, str(tmp_path / "events"))
    direct = recorder.log()
    assert read.size == direct.size and read.num_sessions == direct.num_sessions == 40
    np.testing.assert_array_equal(read.slate, direct.slate)
    np.testing.assert_array_equal(read.click, direct.click)
    np.testing.assert_array_equal(read.step, direct.step)
    np.testing.assert_allclose(read.profile, direct.profile, atol=1e-6)
    assert read.policy == "random"


def test_calibrate_from_events_reports_fit_validation_and_recovery(tmp_path, small_world):
    from rayrec.ab.simulate import EventLogObserver

    truth = SlateEnvConfig(data_dir=small_world, **TRUTH)
    sim = build_simulator(truth, batch=600)
    writer = EventLogObserver(
        str(tmp_path / "events"), [f"u{i}" for i in range(600)], sim.catalog.item_ids, "a"
    )
    evaluate_policy(RandomPolicy(), sim, 600, 0, observers=[writer])
    writer.close()
    out = tmp_path / "calib"
    args = ["calibrate", "--data", small_world, "--events", str(tmp_path / "events"), "--out", str(out)]
    small = ["--users", "300", "--recovery-users", "400", "--recovery-requests", "1000", "--draws", "4"]
    assert main([*args, *small]) == 0
    report = json.loads((out / simulate_command.CALIBRATION_FILE).read_text())
    assert report["data"]["kind"] == "impressions"
    assert set(report["parameters"]) == set(CALIBRATED_PARAMETERS)
    fitted = {n for n, p in report["parameters"].items() if p["status"] == "fitted"}
    assert {"temperature", "no_click_utility", "position_decay", "leave_scale"} <= fitted
    assert all(p["std_error"] is not None for n, p in report["parameters"].items() if n in fitted)
    held_out = report["validation"]
    assert set(held_out["log_likelihood"]) == {"model", "popularity", "retrieval_score"}
    assert (
        held_out["log_likelihood"]["model"]["per_choice"]
        > held_out["log_likelihood"]["popularity"]["per_choice"]
    )
    assert 0 <= held_out["ks"]["session_length"] <= 1 and 0 <= held_out["ks"]["click_position"] <= 1
    assert report["users"]["counts"]["train"] + report["users"]["counts"]["validation"] <= 600
    ids = json.loads((out / "calibration_users.json").read_text())
    assert not set(ids["train"]) & set(ids["validation"])
    assert set(report["recovery"]["parameters"]) == fitted
    assert (out / "calibration.png").stat().st_size > 10_000
    config = load_config(SlateEnvConfig, out / simulate_command.ENV_CONFIG_FILE)
    assert config.temperature == pytest.approx(report["parameters"]["temperature"]["value"])
    assert set(config.fitted["fitted"]) == fitted
    env = envs.make_env(config)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)


def test_calibrate_from_interactions_fits_what_they_identify(small_world):
    """Plain interactions (no impressions): the choice model on sampled exposure, leave_scale by simulated
    moments; what needs non-clicks or positions keeps its preset, with the reason."""
    config = SlateEnvConfig(data_dir=small_world)
    options = CalibrationOptions(
        users=80, recovery_users=0, draws=2, max_choices_per_user=10, uniform_alternatives=10
    )
    calibrated, report = calibrate(config, options)
    parameters = report["parameters"]
    assert report["data"]["kind"] == "interactions" and "sampled exposure" in report["data"]["exposure"]
    for name in ("temperature", "popularity_appeal", "leave_scale"):
        assert parameters[name]["status"] == "fitted", (name, parameters[name])
    for name in ("no_click_utility", "position_decay", "satisfaction_gain", "boredom"):
        assert parameters[name]["status"] == "held" and "no impressions" in parameters[name]["reason"]
    assert any(
        m.startswith("position_decay keeps its preset value 0.85: no impressions") for m in report["messages"]
    )
    assert report["validation"]["ks"]["click_position"] is None
    assert calibrated.temperature == parameters["temperature"]["value"]


def test_calibrate_command_needs_logs():
    with pytest.raises(ConfigError, match="needs logs"):
        simulate_command.CalibrateConfig(out="/tmp/nowhere")


def test_simulate_command_rejects_an_unknown_policy(capsys):
    assert main(["simulate", "--policy", "no-such-policy", "--users", "10"]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "unknown policy" in err and "Traceback" not in err


@pytest.mark.slow
def test_movielens_calibration(movielens_small, tmp_path):
    """The MovieLens report of docs/calibration.md, small: import, a MiniLM index, calibrate (interactions)."""
    data, index, out = tmp_path / "ml", tmp_path / "ml-index", tmp_path / "calib"
    assert main(["data", "import-movielens", str(movielens_small), "--out", str(data)]) == 0
    encoder = "sentence-transformers/all-MiniLM-L6-v2"
    assert main(["build-index", "--encoder", encoder, "--data", str(data), "--out", str(index)]) == 0
    args = ["calibrate", "--index", str(index), "--data", str(data), "--out", str(out), "--draws", "4"]
    small = ["--users", "300", "--recovery-users", "1000", "--recovery-requests", "10000"]
    assert main([*args, *small, "--max-choices-per-user", "20"]) == 0
    report = json.loads((out / simulate_command.CALIBRATION_FILE).read_text())
    assert report["data"]["kind"] == "interactions"
    assert report["parameters"]["temperature"]["status"] == "fitted"
    assert report["parameters"]["no_click_utility"]["status"] == "held"
    likelihood = report["validation"]["log_likelihood"]
    assert likelihood["model"]["per_choice"] > likelihood["retrieval_score"]["per_choice"]
    assert report["recovery"]["parameters"]


@pytest.mark.slow
def test_sim_to_sim_recovery_of_returning_users(small_world):
    """Users with several sessions: leaving and returning (bias, slope, and the delay from the days the
    rollout reports between sessions) fitted back within ±10%."""
    truth = SlateEnvConfig(data_dir=small_world, sessions=4, return_bias=0.5, boredom=0.05, return_delay=5.0)
    log, _ = simulate_log(truth, "random", 5000, seed=3)
    assert log.days_known
    catalog = load_world(truth).catalog
    steps = session_steps(log, catalog, truth)
    free, held = dynamics_identification(steps, truth, log.days_known)
    assert {"return_bias", "return_slope", "return_delay", "leave_scale"} <= set(free), held
    start = SlateEnvConfig(data_dir=small_world, sessions=4)
    fit = DynamicsLikelihood(steps, start).fit(dynamics_values(start), free)
    for name in free:
        assert fit.values[name] == pytest.approx(getattr(truth, name), rel=0.10), name
