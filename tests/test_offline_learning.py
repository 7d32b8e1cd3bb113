"""``rayrec train-policy --from-events``: learning from an exploration log, the export, the errors.

The logs are real event logs that the ``epsilon-greedy`` exploration arm wrote in a small simulated world
(through the A/B runner's log writer), with their ``simulator.yaml`` beside them.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _ab_cli import cli_output

from rayrec.baselines import EpsilonGreedyPolicy, GreedyPolicy, load_policy
from rayrec.events import read_requests

SMALL_WORLD = {
    "num_items": 400,
    "num_topics": 4,
    "dim": 8,
    "num_candidates": 8,
    "slate_size": 3,
    "budget": 6.0,
}


def _write_log(config, users: int, seed: int, events) -> None:
    from rayrec.ab.simulate import simulate_arm_users, simulated_user_ids
    from rayrec.assignment import Arm
    from rayrec.config import save_config
    from rayrec.logs.reader import SIMULATOR_FILE

    simulate_arm_users(
        config, Arm("explore", "epsilon-greedy"), simulated_user_ids(users, seed), seed, str(events)
    )
    save_config(config, events, name=SIMULATOR_FILE)


@pytest.fixture(scope="module")
def small_log(tmp_path_factory):
    from envs.config import SlateEnvConfig

    events = tmp_path_factory.mktemp("offline") / "events"
    _write_log(SlateEnvConfig(**SMALL_WORLD, user_split="train"), 150, 0, events)
    return events


def _train(capsys, events, out, *extra: str) -> tuple[int, str]:
    return cli_output(
        capsys, "train-policy", "--from-events", str(events), "--out", str(out), "--iterations", "6",
        "--train-batch-size", "128", "--minibatch-size", "128", "--validate-every", "0",
        "--eval-users", "40", "--baselines", "random", *extra,
    )  # fmt: skip


def _obs(rng, batch: int, num: int, dim: int = 8) -> dict[str, np.ndarray]:
    from rayrec.features import NUM_FEATURES

    return {
        "profile": rng.normal(size=(batch, dim)).astype(np.float32),
        "candidates": rng.normal(size=(batch, num, dim)).astype(np.float32),
        "features": rng.normal(size=(batch, num, NUM_FEATURES)).astype(np.float32),
        "budget": np.ones((batch, 1), np.float32),
    }


def test_epsilon_greedy_logs_the_probabilities_it_samples_with():
    rng = np.random.default_rng(0)
    obs = _obs(rng, 1, 5)
    policy = EpsilonGreedyPolicy(GreedyPolicy(), epsilon=0.3, seed=1)
    many = {key: np.repeat(value, 20000, axis=0) for key, value in obs.items()}
    slate = policy.select(many, 2, rng)
    marginals = policy.position_marginals(obs, 2)[0]  # [k, K]
    counts = np.zeros_like(marginals)
    np.add.at(counts, (np.tile([0, 1], 20000), slate.indices.ravel()), 1.0)
    assert np.abs(counts / 20000 - marginals).max() < 0.015
    np.testing.assert_allclose(slate.propensities, marginals[[0, 1], slate.indices], rtol=1e-6)
    top = GreedyPolicy().scores(obs).argsort()[0, ::-1][:2]
    logp = policy.slate_log_prob(obs, top[None])
    assert np.isclose(np.exp(logp[0]), 0.7 + 0.3 / 20)  # (1 - eps) + eps / (5 * 4)
    assert load_policy("epsilon-greedy").name == "epsilon-greedy"


def test_reinforce_topk_from_a_log_exports_a_policy_that_serves_and_simulates(small_log, tmp_path, capsys):
    out = tmp_path / "run"
    code, output = _train(capsys, small_log, out, "--offline-algo", "reinforce-topk")
    assert code == 0, output
    meta = json.loads((out / "policy" / "policy.json").read_text())
    assert meta["metadata"]["trainer"] == "reinforce-topk"
    assert meta["metadata"]["logging_policies"] == ["epsilon-greedy"]
    assert (meta["num_candidates"], meta["slate_size"]) == (8, 3)
    assert not list(out.glob(".policy-*"))
    policy = load_policy(str(out / "policy"))  # what `rayrec serve` and `rayrec ab` load
    rng = np.random.default_rng(0)
    obs = _obs(rng, 4, 8)
    slate = policy.select(obs, 3)
    assert slate.indices.shape == (4, 3) and np.isfinite(policy.scores(obs)).all()
    summary = json.loads((out / "eval.json").read_text())
    assert {"reinforce-topk", "epsilon-greedy", "random"} <= set(summary["policies"])
    code, output = cli_output(
        capsys, "simulate", "--policy", str(out / "policy"), "--users", "20",
        *(arg for key, value in SMALL_WORLD.items() for arg in ("--env", f"{key}={value}")),
    )  # fmt: skip
    assert code == 0, output


@pytest.mark.slow  # RLlib offline start-up (Ray Data pre-learner actor): about 2 minutes on 2 cores
def test_behaviour_cloning_on_rllibs_offline_api(ray_session, small_log, tmp_path, capsys):
    out = tmp_path / "bc"
    code, output = _train(capsys, small_log, out, "--offline-algo", "bc", "--iterations", "30")
    assert code == 0, output
    assert (out / "transitions").is_dir() and list((out / "transitions").glob("part-*.parquet"))
    rows = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    losses = [r["train/policy_loss"] for r in rows]
    # -log P(slate) of a uniform Plackett-Luce over 8 candidates, 3 positions, is log(8*7*6) = 5.83:
    # the cloned policy puts much more mass on the logged (mostly greedy) slates.
    assert losses[0] > 5.0 and min(losses[-5:]) < losses[0] - 1.0, losses
    policy = load_policy(str(out / "policy"))
    assert policy.select(_obs(np.random.default_rng(1), 2, 8), 3).indices.shape == (2, 3)


def test_offline_benchmark_table_carries_beyond_accuracy_columns():
    """``python -m benchmarks.offline_learning``'s table: every policy's row has ILD, novelty, coverage and
    both exposure Ginis, measured on the same held-out users (no training here: the fixed policies)."""
    from benchmarks.offline_learning import LOGGER, evaluate, table
    from envs.config import SlateEnvConfig
    from rayrec.metrics.beyond import TABLE_COLUMNS, table_header

    runs = evaluate(
        {LOGGER: LOGGER, "greedy": "greedy", "random": "random"}, SlateEnvConfig(**SMALL_WORLD), 80, 7
    )
    lines = table(runs).splitlines()
    assert lines[0].endswith(f"| ratio | {table_header()} |")
    values = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        values[cells[0].split()[0]] = dict(
            zip([key for key, _, _ in TABLE_COLUMNS], map(float, cells[-len(TABLE_COLUMNS) :]), strict=True)
        )
    assert set(values) == {LOGGER, "greedy", "random"}
    for name, v in values.items():
        assert 0 < v["coverage"] <= 1 and 0 <= v["gini_items"] <= 1 and 0 <= v["gini_categories"] <= 1, name
        assert 0 < v["ild"] <= 2 and v["novelty"] > 0, name
    # random slates reach more of the catalog, and less concentrated, than the greedy ranker's
    assert values["random"]["coverage"] > values["greedy"]["coverage"]
    assert values["random"]["gini_items"] < values["greedy"]["gini_items"]


def _damage(events, case: str) -> str:
    """Damage the copy ``events`` for ``case``; returns what the error must name."""
    if case == "empty":
        for kind in ("impressions", "requests", "feedback"):
            shutil.rmtree(events / kind, ignore_errors=True)
        return "impressions"
    if case == "foreign":
        pq.write_table(pa.table({"user": ["u"], "clicked": [1]}), events / "impressions" / "part-9.parquet")
        return "impressions"
    if case == "truncated":
        requests = read_requests(str(events))
        shutil.rmtree(events / "requests")
        (events / "requests").mkdir()
        pq.write_table(requests.slice(0, requests.num_rows // 2), events / "requests" / "part-1.parquet")
        return "requests"
    if case == "no_candidates":  # an `ab --url` client's log: impressions and feedback, no requests table
        shutil.rmtree(events / "requests")
        return "requests"
    return str(events)


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("empty", "an empty event log"),
        ("foreign", "not written by rayrec"),
        ("truncated", "a truncated log"),
        ("no_candidates", "candidates"),
        ("missing", "no such event-log directory"),
    ],
)
def test_unusable_logs_are_one_line_errors_and_leave_no_export(small_log, tmp_path, capsys, case, needle):
    events = tmp_path / "events"
    if case != "missing":
        shutil.copytree(small_log, events)
    where = _damage(events, case)
    out = tmp_path / "run"
    code, output = _train(capsys, events, out, "--offline-algo", "reinforce-topk")
    error = output[output.index("error:") :] if "error:" in output else output
    assert code == 2, output
    assert needle in error and where in error, error
    assert error.strip().count("\n") == 0 and "Traceback" not in output
    assert not (out / "policy").exists()


def test_a_run_that_fails_while_exporting_leaves_no_policy(small_log, tmp_path, capsys, monkeypatch):
    import trainers.offline as offline

    def crash_midway(module, config, out_dir):
        real_save(module, config, out_dir)  # the files are written ...
        raise OSError("disk full")  # ... and the run dies before it finishes

    real_save = offline.save_exported_policy
    monkeypatch.setattr(offline, "save_exported_policy", crash_midway)
    out = tmp_path / "run"
    with pytest.raises(OSError, match="disk full"):
        _train(capsys, small_log, out, "--offline-algo", "reinforce-topk")
    assert out.is_dir() and not (out / "policy").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".policy")]


@pytest.mark.slow  # a 5,000-user exploration log, 1,000 updates, 4,000 test users: about 2 minutes on 2 cores
def test_a_policy_learned_offline_beats_the_exploration_policy_that_logged(tmp_path):
    """The README's claim, as ``python -m benchmarks.offline_learning`` measures it (same functions, and its
    default world, ``classic``)."""
    from benchmarks.offline_learning import LOGGER, evaluate, train_all, write_log
    from envs.presets import preset
    from rayrec.metrics.session import paired_difference

    config = preset("classic")
    events = str(tmp_path / "events")
    write_log(config.replace(user_split="train"), 5000, 0, events)
    dirs = train_all(events, tmp_path, ["reinforce-topk"], 1000, 0, "classic")
    runs = evaluate({LOGGER: LOGGER, **dirs}, config, 4000, 1_000_003)
    diff = paired_difference(runs["reinforce-topk"][0], runs[LOGGER][0], "session_return")
    assert diff["ci95_low"] > 0, diff
