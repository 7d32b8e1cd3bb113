"""A policy run's directory: what it is bound to, its checkpoints, its progress log, remote upload.

Layout under ``--out``: ``config.yaml``, ``run.json`` (the env and network a checkpoint is only valid
for), ``checkpoints/`` (RLlib checkpoints and ``latest.json``), ``progress.csv`` + ``progress.jsonl`` +
``tensorboard/`` (one row of namespaced metrics per iteration), ``policy/`` (the export), ``eval.*``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from envs.config import SlateEnvConfig
from rayrec import storage
from rayrec.config import to_plain
from rayrec.errors import ArtifactError, ConfigError
from rayrec.slate_scorer import ScorerConfig
from trainers.policy_config import TrainPolicyConfig

RUN_FILE = "run.json"
PROGRESS_CSV = "progress.csv"
PROGRESS_JSONL = "progress.jsonl"
CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "latest.json"
POLICY_DIR = "policy"


def run_binding(env_config: SlateEnvConfig, scorer: ScorerConfig) -> dict[str, Any]:
    """What a checkpoint in this run directory is only valid for."""
    return {"env": to_plain(env_config), "scorer": dataclasses.asdict(scorer)}


def check_run_binding(out: str, binding: dict[str, Any], resume: bool) -> None:
    """Refuse to mix runs: resuming needs the same env and network; a fresh run needs an empty slate."""
    path = storage.join(out, RUN_FILE)
    if not storage.exists(path):
        if resume:
            raise ArtifactError(f"--resume: {out} holds no run to resume ({RUN_FILE} is missing)")
        return
    stored = json.loads(storage.read_text(path))
    if not resume:
        raise ConfigError(
            f"{out} already holds a training run: pass --resume to continue it, or another --out"
        )
    diffs = [
        f"{part}.{key}: checkpoint {stored.get(part, {}).get(key)!r} vs now {value!r}"
        for part in ("env", "scorer")
        for key, value in binding[part].items()
        if stored.get(part, {}).get(key) != value
    ]
    if "algo" in binding and stored.get("algo", "ppo") != binding["algo"]:
        diffs.append(f"algo: checkpoint {stored.get('algo', 'ppo')!r} vs now {binding['algo']!r}")
    if diffs:
        raise ArtifactError(
            f"{out}: the checkpoint was trained with another configuration: " + "; ".join(diffs)
        )


@contextlib.contextmanager
def local_run_dir(cfg: TrainPolicyConfig) -> Iterator[Path]:
    """The run directory to work in: ``--out`` itself, or for a URI a local copy (holding the existing run when
    resuming) that is uploaded when the run ends."""
    with storage.local_output_dir(cfg.out) as out:
        if cfg.resume and storage.is_remote(cfg.out):
            with storage.local_input_dir(cfg.out) as existing:
                shutil.copytree(existing, out, dirs_exist_ok=True)
        yield out.absolute()


def upload_checkpoint(out: Path, uri: str, checkpoint: Path) -> None:
    """Copy a remote run's progress so far to ``uri``: everything but the checkpoints already there, so that a
    run that dies can ``--resume`` from the last one."""
    for child in out.iterdir():
        if child.is_file():
            storage.write_bytes(storage.join(uri, child.name), child.read_bytes())
        elif child.name != CHECKPOINT_DIR:
            storage.upload_dir(child, storage.join(uri, child.name))
    storage.upload_dir(checkpoint, storage.join(uri, CHECKPOINT_DIR, checkpoint.name))
    latest = checkpoint.parent / LATEST_FILE
    storage.write_bytes(storage.join(uri, CHECKPOINT_DIR, LATEST_FILE), latest.read_bytes())


def latest_checkpoint(out: Path) -> tuple[Path, int] | None:
    path = out / CHECKPOINT_DIR / LATEST_FILE
    if not path.exists():
        return None
    latest = json.loads(path.read_text())
    return out / CHECKPOINT_DIR / latest["path"], int(latest["iteration"])


def save_checkpoint(algo, out: Path, iteration: int) -> Path:
    name = f"iter_{iteration:05d}"
    path = out / CHECKPOINT_DIR / name
    algo.save_to_path(str(path))
    (out / CHECKPOINT_DIR / LATEST_FILE).write_text(json.dumps({"path": name, "iteration": iteration}) + "\n")
    return path


class ProgressLog:
    """One row per iteration to progress.jsonl, progress.csv and TensorBoard (rows past a resume point dropped)."""

    def __init__(self, out: Path, start_iteration: int) -> None:
        self.out = out
        self.rows: list[dict[str, float]] = []
        jsonl = out / PROGRESS_JSONL
        if jsonl.exists():
            rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
            self.rows = [r for r in rows if r["iteration"] <= start_iteration]
        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=start_iteration + 1)
        self._rewrite()

    def add(self, row: dict[str, float]) -> None:
        self.rows.append(row)
        for key, value in row.items():
            if key != "iteration" and isinstance(value, float) and math.isfinite(value):
                self.writer.add_scalar(key, value, global_step=int(row["iteration"]))
        self.writer.flush()
        self._rewrite()

    def _rewrite(self) -> None:
        (self.out / PROGRESS_JSONL).write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        keys = sorted({k for r in self.rows for k in r}, key=lambda k: (k != "iteration", k))
        with open(self.out / PROGRESS_CSV, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)

    def close(self) -> None:
        self.writer.close()


def progress_line(row: dict[str, float], total: int) -> str:
    val = row.get("eval/session_return")
    extra = f"  eval/session_return {val:.3f}" if val is not None else ""
    if math.isfinite(row.get("train/entropy", math.nan)):  # PPO
        learner = f"train/entropy {row['train/entropy']:.2f}  train/kl {row['train/kl']:.4f}"
    else:  # SlateQ
        learner = f"train/qf_loss {row.get('train/qf_loss', math.nan):.4f}  train/q_mean {row.get('train/q_mean', math.nan):.3f}"
    return (
        f"iter {int(row['iteration']):>3}/{total}  steps {int(row['train/env_steps']):>8}  "
        f"sim/session_return {row['sim/session_return']:.3f}  sim/ctr {row['sim/ctr']:.3f}  "
        f"sim/session_length {row['sim/session_length']:.2f}  {learner}{extra}  {row['train/wall_s']:.0f}s"
    )


def exported_validation_return(policy_dir: str) -> float:
    """The validation return recorded with the current export (-inf when there is none)."""
    meta_path = Path(policy_dir) / "policy.json"
    if not meta_path.exists():
        return float("-inf")
    value = json.loads(meta_path.read_text()).get("metadata", {}).get("validation_return")
    return float(value) if value is not None else float("-inf")
