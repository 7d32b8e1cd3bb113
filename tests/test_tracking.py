"""Experiment tracking (trainers/tracking.py): MLflow through Ray's ``setup_mlflow``, and TensorBoard.

The end-to-end checks ride on the tiny training runs of test_encoder.py and test_policy_train.py; these
are the parts that need no training.
"""

from __future__ import annotations

import math

import pytest
from _tracking import metric_history, mlflow_runs, tensorboard_scalars

from trainers.tracking import (
    evaluation_metrics,
    metric_name,
    numeric_metrics,
    resolve_tracking_uri,
    run_params,
    start_tracking,
)


def test_where_runs_go(tmp_path):
    assert resolve_tracking_uri(None, tmp_path) == (tmp_path / "mlruns").resolve().as_uri()
    assert resolve_tracking_uri("http://mlflow:5000", tmp_path) == "http://mlflow:5000"
    assert resolve_tracking_uri("none", tmp_path) is None
    assert resolve_tracking_uri(None, "s3://bucket/run") is None, "no default store on object storage"


def test_names_values_and_params_are_what_mlflow_accepts():
    assert metric_name("val/recall@10") == "val/recall_at_10"
    assert metric_name("sim/session_return") == "sim/session_return"
    got = numeric_metrics({"a": 1, "b": 2.5, "c": math.nan, "d": "x", "e": [1], "f": True, "g@k": 3.0})
    assert got == {"a": 1.0, "b": 2.5, "g_at_k": 3.0}
    params = run_params({"x": None, "y": "z" * 900, "n": {"m": 1, "o": None}, "l": ["a", "b"]})
    assert set(params) == {"y", "n", "l"} and len(params["y"]) == 500 and params["n"] == {"m": "1"}
    summary = {"policies": {"ppo": {"sim/session_return": {"mean": 3.0, "ci95_low": 2.0}, "coverage": 0.5}}}
    assert evaluation_metrics(summary) == {"test/ppo/sim/session_return": 3.0, "test/ppo/coverage": 0.5}


def test_a_run_logs_params_and_metrics_to_mlflow_and_tensorboard(tmp_path):
    with start_tracking(
        None, tmp_path, experiment="unit", run_name="r", params={"lr": 0.1, "model": {"hidden": 16}}
    ) as tracker:
        assert tracker.run_id is not None
        for step in (1, 2):
            tracker.log({"train/loss": 1.0 / step, "val/recall@10": 0.1 * step, "note": "x"}, step=step)
        # A baseline given as a directory (the demo's tuned rankers): one level of the name, which MLflow takes.
        path_baseline = {"policies": {str(tmp_path / "switch-ranker"): {"sim/ctr": {"mean": 0.25}}}}
        tracker.log(evaluation_metrics(path_baseline), step=3)
    uri = (tmp_path / "mlruns").as_uri()
    (run,) = mlflow_runs(uri, "unit")
    assert run.info.status == "FINISHED" and run.info.run_name == "r"
    assert run.data.params == {"lr": "0.1", "model/hidden": "16"}
    assert metric_history(uri, run.info.run_id, "val/recall_at_10") == [(1, 0.1), (2, 0.2)]
    label = str(tmp_path / "switch-ranker").strip("/").replace("/", "_")
    assert metric_history(uri, run.info.run_id, f"test/{label}/sim/ctr") == [(3, 0.25)]
    scalars = tensorboard_scalars(tmp_path / "tensorboard")
    assert [(s, pytest.approx(v)) for s, v in scalars["train/loss"]] == [(1, 1.0), (2, 0.5)]


def test_a_failed_run_is_marked_failed_and_none_turns_mlflow_off(tmp_path):
    with (
        pytest.raises(RuntimeError),
        start_tracking(None, tmp_path, experiment="unit", run_name="r", params={}),
    ):
        raise RuntimeError("training diverged")
    (run,) = mlflow_runs((tmp_path / "mlruns").as_uri(), "unit")
    assert run.info.status == "FAILED"
    off = tmp_path / "off"
    with start_tracking(
        "none", off, experiment="unit", run_name="r", params={}, tensorboard=False
    ) as tracker:
        tracker.log({"a": 1.0}, step=1)
        assert tracker.run_id is None
    assert not off.exists()


def test_a_resumed_run_continues_the_same_mlflow_run_and_keeps_its_first_params(tmp_path, capsys):
    """What a retried or rerun training does: the run its checkpoint names goes on (one training, one run); a
    changed setting that MLflow cannot overwrite is a ``resumed/`` tag; a run the store lacks starts anew."""
    params = {"lr": 0.1, "max_steps": 4, "model": {"hidden": 16}}
    with start_tracking(None, tmp_path, experiment="unit", run_name="r", params=params) as first:
        first.log({"train/loss": 1.0}, step=1)
        run_id = first.run_id
    longer = {**params, "max_steps": 8}
    with start_tracking(
        None, tmp_path, experiment="unit", run_name="r", params=longer, resume_run_id=run_id,
        tags={"resumed_from_step": "4"},
    ) as resumed:  # fmt: skip
        assert resumed.run_id == run_id
        resumed.log({"train/loss": 0.5}, step=8)
    uri = (tmp_path / "mlruns").as_uri()
    (run,) = mlflow_runs(uri, "unit")
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.1", "max_steps": "4", "model/hidden": "16"}
    assert run.data.tags["resumed/max_steps"] == "8" and run.data.tags["resumed_from_step"] == "4"
    assert metric_history(uri, run_id, "train/loss") == [(1, 1.0), (8, 0.5)]
    with start_tracking(
        None, tmp_path, experiment="unit", run_name="r", params=params, resume_run_id="0" * 32
    ) as fresh:
        assert fresh.run_id not in (None, run_id)
    assert "cannot be resumed" in capsys.readouterr().out
    assert len(mlflow_runs(uri, "unit")) == 2
