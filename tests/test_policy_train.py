"""``rayrec train-policy`` end to end with tiny settings on the session's real Ray: train, checkpoint,
resume, export, evaluate — and the clear errors for a run directory of another configuration."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _chromium import render
from _tracking import metric_history, mlflow_runs, tensorboard_scalars
from mlflow.tracking import MlflowClient
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModule

from envs import make_vector_env
from rayrec.cli import build_parser, main
from rayrec.config import config_from_args
from rayrec.features import FEATURE_NAMES, HIDDEN_FEATURE_NAMES, ITEM_RATING
from rayrec.slate_scorer import load_exported_policy
from trainers import policy as trainer
from trainers import run_dir as layout
from trainers.policy_config import TrainPolicyConfig
from trainers.rllib_setup import MODULE_ID

TINY = [
    "--num-candidates", "10", "--slate-size", "3",
    "--train-batch-size", "256", "--minibatch-size", "128", "--num-epochs", "1", "--envs-per-runner", "8",
    "--hidden", "16", "--attention-heads", "2",
    "--checkpoint-every", "1", "--validate-every", "1", "--validate-users", "16",
    "--eval-users", "32", "--baselines", "greedy", "--baselines", "random",
]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("policy-run")
    # a file:// URI names the same directory: the tests below read it as a path
    assert main(["train-policy", "--out", out.as_uri(), "--iterations", "1", *TINY]) == 0
    return out


def test_train_writes_metrics_checkpoint_export_and_evaluation(run_dir):
    rows = [json.loads(line) for line in (run_dir / layout.PROGRESS_JSONL).read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1.0]
    for key in ("sim/session_return", "sim/ctr", "sim/session_length", "train/entropy", "train/vf_loss"):
        assert np.isfinite(rows[0][key]), key
    assert rows[0]["sim/sessions"] > 0 and 0 <= rows[0]["sim/ctr"] <= 1
    assert (run_dir / layout.PROGRESS_CSV).read_text().startswith("iteration,")
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "config.yaml").exists() and (run_dir / "learning_curve.png").stat().st_size > 0

    report = json.loads((run_dir / "eval.json").read_text())
    assert set(report["policies"]) == {"ppo", "greedy", "random"}
    assert report["users"] == 32
    for metrics in report["policies"].values():
        ci = metrics["sim/session_return"]
        assert ci["ci95_low"] <= ci["mean"] <= ci["ci95_high"]
    assert set(report["comparisons"]) == {"greedy", "random"}
    assert "| **ppo** (trained) |" in (run_dir / "eval.md").read_text()
    # tracked in MLflow (the default store under --out, through Ray's setup_mlflow) as well as TensorBoard
    uri = (run_dir / "mlruns").as_uri()
    (run,) = mlflow_runs(uri, "rayrec-train-policy")
    assert run.info.status == "FINISHED" and run.data.params["iterations"] == "1"
    assert (
        run.data.params["num_candidates"] == "10" and run.data.params["baselines"] == "['greedy', 'random']"
    )
    returns = metric_history(uri, run.info.run_id, "sim/session_return")
    assert returns == [(1, pytest.approx(rows[0]["sim/session_return"]))]
    test_return = report["policies"]["ppo"]["sim/session_return"]["mean"]
    assert run.data.metrics["test/ppo/sim/session_return"] == pytest.approx(test_return)
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(run.info.run_id)}
    assert {"eval.json", "eval.html", "learning_curve.png"} <= artifacts
    assert [step for step, _ in tensorboard_scalars(run_dir / "tensorboard")["sim/session_return"]] == [1]


def test_evaluation_report_is_one_html_page_that_renders(run_dir, tmp_path):
    page = run_dir / "eval.html"
    assert page.read_text().count("data:image/png;base64,") == 1, "the learning curve, embedded"
    rendered = render(page, tmp_path)
    assert rendered.console == [], rendered.console
    assert rendered.pixels.std() > 20 and rendered.saturated_pixels() > 500


def test_export_has_the_checkpointed_modules_scores(run_dir):
    """The RLlib module restored from the checkpoint and the RLlib-free export score alike."""
    checkpoint = run_dir / layout.CHECKPOINT_DIR / "iter_00001"
    module_dir = checkpoint / "learner_group" / "learner" / "rl_module" / MODULE_ID
    module = RLModule.from_checkpoint(str(module_dir))
    policy = load_exported_policy(str(run_dir / layout.POLICY_DIR))
    env = make_vector_env(None, num_envs=5, num_candidates=10, slate_size=3)
    obs, _ = env.reset(seed=3)
    batch = {Columns.OBS: {key: torch.as_tensor(v) for key, v in obs.items()}}
    expected = module.forward_inference(batch)[Columns.ACTION_DIST_INPUTS].numpy()
    np.testing.assert_allclose(policy.scores(obs), expected, rtol=1e-5, atol=1e-6)
    assert json.loads((run_dir / layout.POLICY_DIR / "policy.json").read_text())["metadata"]["iteration"] == 1


def test_resume_continues_and_refuses_another_configuration(run_dir, capsys):
    # Another network or another env shape in the same run directory: a clear error, nothing overwritten.
    before = (run_dir / layout.RUN_FILE).read_text()
    assert (
        trainer.main(["--out", str(run_dir), "--iterations", "2", "--resume", *TINY, "--hidden", "32"]) == 2
    )
    assert "another configuration" in capsys.readouterr().err
    changed_env = [*TINY, "--num-candidates", "12"]
    assert trainer.main(["--out", str(run_dir), "--iterations", "2", "--resume", *changed_env]) == 2
    assert "num_candidates" in capsys.readouterr().err
    assert trainer.main(["--out", str(run_dir), "--iterations", "2", *TINY]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (run_dir / layout.RUN_FILE).read_text() == before

    assert trainer.main(["--out", str(run_dir), "--iterations", "2", "--resume", *TINY]) == 0
    assert "resumed from" in capsys.readouterr().out
    rows = [json.loads(line) for line in (run_dir / layout.PROGRESS_JSONL).read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1.0, 2.0]
    assert (run_dir / layout.CHECKPOINT_DIR / "iter_00002").is_dir()


@pytest.mark.parametrize(
    ("flag", "appended"),
    [("observe_hidden=true", HIDDEN_FEATURE_NAMES), ("observe_rating=true", (ITEM_RATING,))],
    ids=["hidden", "rating"],
)
def test_a_policy_trained_on_appended_features_runs_only_where_the_simulator_provides_them(
    ray_session, tmp_path, capsys, flag, appended
):
    """``--env observe_hidden=true`` or ``observe_rating=true``: the network and the export take the
    appended columns; ``simulate`` runs the policy in such a simulator and refuses it, with the reason, in
    one without them."""
    out = tmp_path / "appended"
    slate = TINY[:4]  # --num-candidates 10 --slate-size 3
    quick = [*TINY[4:16], "--validate-every", "0", "--eval-users", "0"]  # TINY's batches and network
    args = [*slate, *quick, "--env", flag]
    assert main(["train-policy", "--out", str(out), "--iterations", "1", *args]) == 0
    policy = load_exported_policy(str(out / layout.POLICY_DIR))
    assert policy.config.feature_names == (*FEATURE_NAMES, *appended)
    assert policy.config.scorer.num_features == len(FEATURE_NAMES) + len(appended)
    assert policy.config.metadata["env"][flag.split("=")[0]] in (True, list(appended))
    report = tmp_path / "sim.json"
    simulate = ["simulate", "--policy", str(out / layout.POLICY_DIR), "--users", "8", *slate]
    assert main([*simulate, "--env", flag, "--json", str(report)]) == 0
    assert json.loads(report.read_text())["policies"]
    capsys.readouterr()
    assert main(simulate) == 2
    error = capsys.readouterr().err
    assert f"appended features {list(appended)}" in error
    assert (flag if appended == (ITEM_RATING,) else f"observe_hidden={list(appended)}") in error


def test_bad_arguments_are_config_errors(tmp_path, capsys):
    assert trainer.main(["--out", str(tmp_path), "--minibatch-size", "999999"]) == 2
    assert "minibatch_size" in capsys.readouterr().err
    assert trainer.main(["--out", str(tmp_path), "--resume"]) == 2
    assert "no run to resume" in capsys.readouterr().err


def test_rayrec_cli_registers_train_policy():
    from rayrec.commands import train_policy as command

    args = build_parser().parse_args(
        ["train-policy", "--out", "o", "--index", "i", "--data", "d", "--env-runners", "2"]
    )
    config = config_from_args(TrainPolicyConfig, args)
    assert (config.out, config.index, config.data, config.env_runners) == ("o", "i", "d", 2)
    assert args.func.__module__ == command.__name__
