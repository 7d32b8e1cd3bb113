"""``rayrec compare`` end to end on a tiny world with the session's real Ray: PPO and SlateQ runs as Ray tasks,
the CEM linear ranker, fixed and privileged baselines, the statistics, the table, the plot, and the reuse of
finished runs when the compare is run again."""

from __future__ import annotations

import json

import pytest

from rayrec.cli import main
from rayrec.errors import ConfigError
from trainers.compare_config import CompareConfig

TINY = [
    "--num-candidates", "10", "--slate-size", "3", "--seeds", "1", "--iterations", "1",
    "--methods", "ppo", "--methods", "slateq",
    "--baselines", "random", "--baselines", "linear-cem", "--baselines", "switch-cem",
    "--baselines", "myopic-true",
    "--test-users", "32", "--cem-iterations", "1", "--cem-population", "2", "--cem-users", "16",
    "--bootstrap-reps", "200",
    "--train", "train_batch_size=256", "--train", "minibatch_size=128", "--train", "num_epochs=1",
    "--train", "envs_per_runner=8", "--train", "hidden=16", "--train", "attention_heads=2",
    "--train", "validate_every=1", "--train", "validate_users=16", "--train", "learning_starts=64",
    "--train", "choice_users=64", "--train", "checkpoint_every=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def compare_dir(ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    assert main(["compare", "--out", str(out), *TINY]) == 0
    return out


def test_compare_writes_per_run_results_table_and_plot(compare_dir):
    summary = json.loads((compare_dir / "compare.json").read_text())
    assert set(summary["methods"]) == {"ppo", "slateq", "random", "linear-cem", "switch-cem", "myopic-true"}
    for name, m in summary["methods"].items():
        assert m["runs"] == 1
        assert m["mean_ci"][0] <= m["mean"] <= m["mean_ci"][1], name
    assert summary["methods"]["myopic-true"]["hidden_state"] is True
    assert summary["methods"]["random"]["hidden_state"] is False
    assert summary["methods"]["linear-cem"]["kind"] == summary["methods"]["switch-cem"]["kind"] == "fitted"
    assert "ppo - random" in summary["differences"] and "slateq - linear-cem" in summary["differences"]
    assert set(summary["curves"]) == {"ppo", "slateq"}
    table = (compare_dir / "compare.md").read_text()
    assert "| myopic-true | fixed | yes | 1 |" in table and "| ppo - random |" in table
    assert (compare_dir / "compare.png").stat().st_size > 0
    for name in ("ppo", "slateq", "random", "linear-cem", "switch-cem", "myopic-true"):
        record = json.loads((compare_dir / "runs" / name / "seed0.json").read_text())
        assert len(record["session_return"]) == 32
    # the trained runs are exported policies, the linear ranker a saved ranker: all usable by path
    assert (compare_dir / "runs" / "slateq" / "seed0" / "policy" / "policy.json").exists()
    assert (compare_dir / "runs" / "linear-cem" / "seed0" / "linear_ranker.json").exists()
    switch = json.loads((compare_dir / "runs" / "switch-cem" / "seed0" / "linear_ranker.json").read_text())
    assert switch["format"] == "rayrec-switch-ranker" and switch["gate_inputs"] == ["bias", "budget"]


def test_compare_reports_beyond_accuracy_of_every_policy(compare_dir):
    from rayrec.metrics.beyond import table_header

    summary = json.loads((compare_dir / "compare.json").read_text())
    keys = {"ild", "novelty", "coverage", "gini_items", "gini_categories"}
    for name, m in summary["methods"].items():
        b = m["beyond"]
        assert set(b) == keys and len(m["beyond_runs"]) == m["runs"], name
        assert 0 < b["coverage"] <= 1 and 0 <= b["gini_items"] <= 1 and 0 <= b["gini_categories"] <= 1, name
        assert 0 < b["ild"] <= 2 and b["novelty"] > 0, name
        assert b == pytest.approx(m["beyond_runs"][0])  # one seed: the mean over runs is that run
        record = json.loads((compare_dir / "runs" / name / "seed0.json").read_text())
        assert record["beyond"] == m["beyond_runs"][0]
    # uniformly random slates spread impressions over more of the catalog than the greedy reference
    rand, greedy = summary["methods"]["random"]["beyond"], summary["methods"]["myopic-true"]["beyond"]
    assert rand["coverage"] > greedy["coverage"] and rand["gini_items"] < greedy["gini_items"]
    table = (compare_dir / "compare.md").read_text()
    assert f"| % of planner | {table_header()} |" in table and "not pooled" in table
    row = next(line for line in table.splitlines() if line.startswith("| random |"))
    assert row.rstrip(" |").endswith(
        f"{rand['coverage']:.3f} | {rand['gini_items']:.3f} | {rand['gini_categories']:.3f}"
    )
    assert "Gini categories</th>" in (compare_dir / "compare.html").read_text()


def test_beyond_values_of_several_seeds_are_their_mean_not_pooled():
    from trainers.compare import markdown, summarize

    cfg = CompareConfig(out="x", methods=["ppo"], seeds=2, baselines=["random"], bootstrap_reps=50)
    keys = ("ild", "novelty", "coverage", "gini_items", "gini_categories")

    def record(name: str, seed: int, values: tuple[float, ...]) -> dict:
        return {
            "name": name,
            "seed": seed,
            "session_return": [1.0, 2.0],
            "curve": [],
            "beyond": dict(zip(keys, values, strict=True)),
        }

    results = {
        "ppo/seed1": record("ppo", 1, (0.3, 12.0, 0.4, 0.5, 0.2)),
        "ppo/seed0": record("ppo", 0, (0.1, 10.0, 0.2, 0.7, 0.4)),
        "random/seed0": record("random", 0, (0.2, 11.0, 0.9, 0.1, 0.05)),
    }
    summary = summarize(cfg, results)
    ppo = summary["methods"]["ppo"]
    assert ppo["beyond"] == pytest.approx(dict(zip(keys, (0.2, 11.0, 0.3, 0.6, 0.3), strict=True)))
    assert [r["coverage"] for r in ppo["beyond_runs"]] == [0.2, 0.4]  # seed order
    assert summary["methods"]["random"]["beyond"]["coverage"] == 0.9
    table = markdown(summary, "x")
    row = next(line for line in table.splitlines() if line.startswith("| ppo |"))
    assert row.endswith("| 0.200 | 11.00 | 0.300 | 0.600 | 0.300 |")
    assert "World: preset `long-term`;" in table  # the default preset


def test_the_report_names_what_replaced_the_presets_world():
    from envs.spec import world_label

    cfg = CompareConfig(out="x", preset="classic", env_config="calib/env_config.yaml", env=["budget=30"])
    assert world_label(cfg) == "preset `classic` with --env-config `calib/env_config.yaml`, --env `budget=30`"


def test_compare_run_again_reuses_finished_runs(compare_dir, capsys):
    before = json.loads((compare_dir / "compare.json").read_text())
    assert main(["compare", "--out", str(compare_dir), *TINY]) == 0
    assert "6 runs reused, 0 to run" in capsys.readouterr().out
    after = json.loads((compare_dir / "compare.json").read_text())
    assert after["methods"] == before["methods"]


def test_compare_runs_puts_groups_of_runs_side_by_side_with_compares_statistics(
    compare_dir, tmp_path, capsys
):
    """``python -m trainers.compare_runs``: the same means and paired difference as the compare, and a
    clear error for groups that were not evaluated on the same test users."""
    from trainers import compare_runs

    summary = json.loads((compare_dir / "compare.json").read_text())
    groups = [
        "--group",
        f"p={compare_dir / 'runs' / 'ppo'}",
        "--group",
        f"s={compare_dir / 'runs' / 'slateq'}",
    ]
    assert compare_runs.main(groups) == 0
    out = capsys.readouterr().out
    ppo, slateq = summary["methods"]["ppo"], summary["methods"]["slateq"]
    assert out.startswith("32 test users")
    assert f"| p | 1 | {ppo['mean']:.2f} [" in out and f"| s | 1 | {slateq['mean']:.2f} [" in out
    assert f"- p - s (paired): {summary['differences']['ppo - slateq']['mean']:+.2f} [" in out
    assert "Settings that differ: none" in out
    other = tmp_path / "other"
    other.mkdir()
    record = json.loads((compare_dir / "runs" / "ppo" / "seed0.json").read_text())
    (other / "seed0.json").write_text(json.dumps({**record, "test_seed": record["test_seed"] + 1}))
    assert compare_runs.main([*groups[:2], "--group", f"o={other}"]) == 2
    assert "different test users" in capsys.readouterr().err
    assert compare_runs.main(groups[:2]) == 2
    assert "at least twice" in capsys.readouterr().err


def test_with_observe_hidden_every_policy_that_reads_the_features_sees_hidden_state(compare_dir):
    """A re-ranker sees what its base sees."""
    from trainers.compare import summarize

    records = {p: json.loads(p.read_text()) for p in (compare_dir / "runs").glob("*/seed0.json")}
    random = next(r for r in records.values() if r["name"] == "random")
    for wrapped in ("mmr:greedy", "fair@2:mmr:myopic-true", "mmr:random"):  # re-rankers around a base
        records[compare_dir / wrapped] = {**random, "name": wrapped}
    methods = ["ppo", "slateq"]
    baselines = ["random", "linear-cem", "myopic-true", "mmr:greedy", "fair@2:mmr:myopic-true", "mmr:random"]
    for env, readers in (
        ([], {"myopic-true", "fair@2:mmr:myopic-true"}),
        (
            ["observe_hidden=true"],
            {"ppo", "slateq", "linear-cem", "myopic-true", "mmr:greedy", "fair@2:mmr:myopic-true"},
        ),
    ):
        cfg = CompareConfig(
            out=str(compare_dir), methods=methods, baselines=baselines, env=env, bootstrap_reps=10
        )
        summary = summarize(cfg, records)
        assert {name for name, m in summary["methods"].items() if m["hidden_state"]} == readers


def test_a_record_or_checkpoint_of_other_settings_is_not_reused(tmp_path):
    from trainers.compare import SETTINGS_FILE, Job, _load_result, job_settings, train_config

    cfg = CompareConfig(out=str(tmp_path), iterations=10, methods=["ppo"], baselines=["random"])
    learn, fixed = Job("ppo", 0, "learn"), Job("random", 0, "fixed")
    for job in (learn, fixed):
        record = {"version": 3, "settings": job_settings(cfg, job)}
        (tmp_path / f"{job.name}.json").write_text(json.dumps(record))
    longer = CompareConfig(out=str(tmp_path), iterations=30, methods=["ppo"], baselines=["random"])
    assert _load_result(tmp_path / "ppo.json", cfg, learn) is not None
    assert _load_result(tmp_path / "ppo.json", longer, learn) is None  # more iterations: train on
    assert _load_result(tmp_path / "random.json", longer, fixed) is not None  # a baseline does not train
    other_env = CompareConfig(out=str(tmp_path), methods=["ppo"], baselines=["random"], env=["budget=30"])
    assert _load_result(tmp_path / "random.json", other_env, fixed) is None
    # A run directory trained with other training settings starts again instead of resuming.
    run_dir = tmp_path / "runs" / "ppo" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "leftover").write_text("from another run")
    (run_dir / SETTINGS_FILE).write_text(json.dumps({"train": ["lr=0.1"]}))
    assert train_config(cfg, learn, run_dir).resume is False
    assert not (run_dir / "leftover").exists()
    assert json.loads((run_dir / SETTINGS_FILE).read_text())["train"] == []


def test_compare_config_errors_are_clear():
    with pytest.raises(ConfigError, match="unknown method 'dqn'"):
        CompareConfig(out="x", methods=["dqn"])
    with pytest.raises(ConfigError, match="both a method and a baseline"):
        CompareConfig(out="x", methods=["ppo"], baselines=["ppo"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        CompareConfig(out="x", train=["lr"])
