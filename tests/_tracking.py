"""Read back what a training run tracked: its MLflow runs (with MLflow's own client) and TensorBoard events."""

from __future__ import annotations

import os
from pathlib import Path


def mlflow_runs(tracking_uri: str, experiment: str) -> list:
    """Every run of ``experiment`` in the store at ``tracking_uri`` (``mlflow.entities.Run``), newest first."""
    from mlflow.tracking import MlflowClient

    if tracking_uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r} at {tracking_uri}"
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time DESC"])


def metric_history(tracking_uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of every logged value of ``key`` in a run."""
    from mlflow.tracking import MlflowClient

    return [(m.step, m.value) for m in MlflowClient(tracking_uri).get_metric_history(run_id, key)]


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalar tag → [(step, value)] of the event files under ``log_dir`` (TensorBoard's own reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(Path(log_dir).glob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file in {log_dir}"
    out: dict[str, list[tuple[int, float]]] = {}
    for path in files:
        accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return out
