"""Experiment tracking of ``train-encoder`` and ``train-policy``: MLflow through Ray's integration, and TensorBoard.

MLflow runs are started with Ray's own integration, :func:`ray.air.integrations.mlflow.setup_mlflow`: in a
Ray Train worker (the encoder's training loop) it gives the rank-0 worker the run and the others a no-op,
and in the driver (RLlib's training loop runs there) it is a plain run. Each run gets the command's
resolved config as parameters (nested fields as ``a/b``) and the same metrics as ``progress.jsonl`` /
``metrics.json``, per step; names MLflow does not accept are spelled out (``val/recall@10`` →
``val/recall_at_10``).

Where the runs go (``--tracking-uri``):

- by default a local MLflow file store under the run's output directory, ``<out>/mlruns`` (read it with
  ``mlflow ui --backend-store-uri <out>/mlruns`` or :class:`mlflow.tracking.MlflowClient`). MLflow 3 keeps
  the file store in maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE=true``; this module
  sets that for ``file:`` URIs only. An output directory on object storage has no default store.
- any MLflow tracking URI (``http://mlflow:5000``, ``sqlite:///runs.db``, ``databricks``);
- ``none``: no MLflow.

MLflow is an extra (``pip install 'rayrec[tracking]'``, the ``mlflow-skinny`` client): without it the default
is TensorBoard only, with a note, and an explicit ``--tracking-uri`` is an error.

TensorBoard event files go to ``<out>/tensorboard`` (the policy trainer's :class:`trainers.run_dir.ProgressLog`
writes its own there).
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rayrec import storage
from rayrec.errors import ConfigError

TRACKING_DIR = "mlruns"
TENSORBOARD_DIR = "tensorboard"
OFF = "none"
MAX_PARAM_CHARS = 500
"""Longer parameter values (long lists) are cut: MLflow stores parameters as short strings."""


def resolve_tracking_uri(tracking_uri: str | None, out: str | Path) -> str | None:
    """The MLflow tracking URI of a run writing to ``out``: the flag's, else ``file:<out>/mlruns`` for a local
    ``out``; None when tracking is off (``none``) or ``out`` is remote and no URI was given."""
    if tracking_uri is not None:
        return None if tracking_uri.strip().lower() == OFF else tracking_uri
    if storage.is_remote(str(out)):
        return None
    return (Path(storage.local_path(str(out))).resolve() / TRACKING_DIR).as_uri()


def metric_name(key: str) -> str:
    """``key`` in the characters MLflow accepts in a metric name (letters, digits, ``_-./`` and space)."""
    return re.sub(r"[^0-9A-Za-z_\-./ ]", "_", key.replace("@", "_at_"))


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of ``metrics`` under MLflow-safe names (lists, dicts, strings and NaN left out)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(float(value)):
            out[metric_name(str(key))] = float(value)
    return out


def run_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config as MLflow parameters: None left out, long values cut to :data:`MAX_PARAM_CHARS`."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            nested = run_params(value)
            if nested:
                out[key] = nested
            continue
        text = str(value)
        out[key] = text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 1] + "…"
    return out


class Tracker:
    """One training run's MLflow run and TensorBoard writer; either may be absent (then nothing is logged).

    Args:
        mlflow: the ``mlflow`` module with an active run (from ``setup_mlflow``), or None.
        writer: a ``torch.utils.tensorboard.SummaryWriter``, or None.
    """

    def __init__(self, mlflow=None, writer=None) -> None:
        self.mlflow = mlflow
        self.writer = writer

    @property
    def run_id(self) -> str | None:
        if self.mlflow is None:
            return None
        run = self.mlflow.active_run()
        return run.info.run_id if run is not None else None

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log the numeric ``metrics`` at ``step`` to both."""
        values = numeric_metrics(metrics)
        if not values:
            return
        if self.mlflow is not None:
            self.mlflow.log_metrics(values, step=int(step))
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, global_step=int(step))
            self.writer.flush()

    def log_artifact(self, path: str | Path) -> None:
        """Attach a file (a report, a plot) to the MLflow run."""
        if self.mlflow is not None and Path(path).exists():
            self.mlflow.log_artifact(str(path))

    def close(self, failed: bool = False) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.mlflow is not None:
            self.mlflow.end_run(status="FAILED" if failed else "FINISHED")
            self.mlflow = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, *_exc) -> None:
        self.close(failed=exc_type is not None)


def start_tracking(
    tracking_uri: str | None,
    out: str | Path,
    *,
    experiment: str,
    run_name: str,
    params: Mapping[str, Any],
    tensorboard: bool = True,
    tags: Mapping[str, str] | None = None,
    resume_run_id: str | None = None,
) -> Tracker:
    """Start the MLflow run (Ray's ``setup_mlflow``; rank 0 only inside Ray Train) and the TensorBoard writer.

    Args:
        tracking_uri: the ``--tracking-uri`` flag (None: the default store under ``out``; ``none``: off).
        out: the run's output directory.
        experiment: MLflow experiment name (created when missing).
        run_name: MLflow run name.
        params: the resolved config, logged as the run's parameters.
        tensorboard: also write TensorBoard events to ``<out>/tensorboard`` (a local ``out`` only).
        tags: extra MLflow run tags.
        resume_run_id: an MLflow run to continue instead of starting one (a worker group retried after a
            failure resumes the run its checkpoint names, so one training is one run, not an abandoned
            ``RUNNING`` one and a second); a run the store does not have starts a new one.
    """
    uri = resolve_tracking_uri(tracking_uri, out)
    mlflow = None
    if uri is not None and importlib.util.find_spec("mlflow") is None:
        if tracking_uri is not None:
            raise ConfigError(
                f"--tracking-uri {tracking_uri}: MLflow is not installed (pip install 'rayrec[tracking]')"
            )
        print(
            "[tracking] MLflow is not installed: TensorBoard only (pip install 'rayrec[tracking]')",
            flush=True,
        )
        uri = None
    if uri is not None:
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # see the module docstring
        from ray.air.integrations.mlflow import setup_mlflow

        logged = run_params(params)
        if resume_run_id is not None:
            logged = _reopen_run(uri, resume_run_id, logged, tags or {})  # setup_mlflow keeps an active run
        mlflow = setup_mlflow(
            logged,
            tracking_uri=uri,
            experiment_name=experiment,
            run_name=run_name,
            create_experiment_if_not_exists=True,
            tags=dict(tags or {}),
            rank_zero_only=True,
        )
        if not isinstance(mlflow, types.ModuleType):  # the no-op stand-in of a worker other than rank 0
            mlflow = None
    writer = None
    if tensorboard and not storage.is_remote(str(out)):
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(Path(storage.local_path(str(out))) / TENSORBOARD_DIR))
    return Tracker(mlflow, writer)


def _flat(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested parameters as MLflow stores them: ``a/b`` keys, string values."""
    out: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            out |= _flat(value, f"{prefix}{key}/")
        else:
            out[f"{prefix}{key}"] = str(value)
    return out


def _reopen_run(
    uri: str, run_id: str, params: Mapping[str, Any], tags: Mapping[str, str]
) -> Mapping[str, Any]:
    """Make MLflow run ``run_id`` at ``uri`` the active run again, if the store has it, with ``tags`` set on it
    (``setup_mlflow`` tags only the runs it starts); returns the parameters still to log. MLflow refuses to
    change a logged parameter, and a resumed run may change some (a longer ``max_steps``): those keep their
    first value and the new one is a ``resumed/<name>`` tag."""
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(uri)
    try:
        run = mlflow.start_run(run_id=run_id)
    except MlflowException as exc:
        print(f"[tracking] MLflow run {run_id} cannot be resumed ({exc}): a new run starts", flush=True)
        return params
    before = run.data.params
    flat = _flat(params)
    changed = {key: value for key, value in flat.items() if key in before and before[key] != value}
    mlflow.set_tags({**tags, **{f"resumed/{key}": value for key, value in changed.items()}})
    return {key: value for key, value in flat.items() if key not in changed}


def evaluation_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The held-out evaluation's means (:func:`trainers.policy_eval.evaluate_policies`) as metrics named
    ``test/<policy>/<metric>``. A baseline given as a directory (``/runs/switch-ranker``) is named by its path
    with ``_`` for ``/`` (``runs_switch-ranker``): MLflow refuses a name with ``//``, and the policy is one level
    of the name."""
    out = {}
    for policy, metrics in summary.get("policies", {}).items():
        label = policy.strip("/").replace("/", "_")
        for metric, stats in metrics.items():
            if isinstance(stats, Mapping) and "mean" in stats:
                out[f"test/{label}/{metric}"] = stats["mean"]
            elif isinstance(stats, int | float):
                out[f"test/{label}/{metric}"] = stats
    return numeric_metrics(out)
