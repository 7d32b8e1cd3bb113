"""Fine-tune a text encoder for retrieval with Ray Train (``python -m trainers.encoder`` / ``rayrec train-encoder``).

A ``TorchTrainer`` (Train V2) runs DDP over ``--workers`` CPU or GPU workers. Next-item examples are read
with Ray Data from Parquet and sharded with ``ray.train.get_dataset_shard``. Each step encodes the batch's
distinct items once and gathers them for histories and targets. Objectives, each with a weight: next-item
contrastive (in-batch negatives, logQ correction), SimCSE on item text, text augmentation of the SimCSE views,
and FGM adversarial training. Validation Recall@K / NDCG@K on a temporal split runs each epoch; every report
carries a checkpoint, and a restarted worker group (``--max-failures``) or a rerun with the same ``--out``
resumes from the latest one. The best model is written to ``--out`` in Hugging Face format with its
tokenizer and sentence-transformers files, next to ``metrics.json`` and ``config.yaml`` (and ``ray.log``).
Rank 0's progress lines are printed by the driver (:class:`ProgressRelay`), so a quiet run shows them too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import ray
import ray.data
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.util.queue import Queue

from rayrec import storage
from rayrec.config import add_config_args, config_from_args, save_config
from rayrec.encoding import TextEncoder, embed_batch, resolve_model
from rayrec.errors import ConfigError, RayrecError
from rayrec.index.evaluate import EvalSet, evaluate_rankings
from rayrec.index.exact import exact_search, popularity_search
from rayrec.runtime import init_ray
from trainers.adversarial import FGM
from trainers.augmentation import TextAugmenter
from trainers.encoder_config import EncoderTrainConfig
from trainers.encoder_data import CATALOG_FILE, VALIDATION_FILE, prepare_training_data, read_validation
from trainers.encoder_losses import NextItemLoss, SimCSELoss
from trainers.tracking import Tracker, start_tracking

METRICS_FILE = "metrics.json"
STATE_FILE = "training_state.pt"


# ----------------------------------------------------------------------------------------------------------
# The per-worker training loop
# ----------------------------------------------------------------------------------------------------------


class _Worker:
    """State of one training worker: model, optimizer, catalog, losses; built once per (re)start."""

    def __init__(self, cfg: EncoderTrainConfig, model_source: str, prepared_root: str, steps_per_epoch: int):
        self.cfg = cfg
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed + 1000 * self.rank)
        self._load_catalog(prepared_root)
        self.validation = self._load_validation(prepared_root)
        self._load_model(model_source)
        self._build_optimizer(steps_per_epoch)
        self._build_objectives()
        self.autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()
        )
        self.step, self.epoch, self.step_in_epoch = 0, 0, 0
        self.best: dict[str, float] = {}
        self.start_step = 0
        self.history: list[dict[str, Any]] = []
        self.tracking_run_id: str | None = None
        """Rank 0's MLflow run, kept in the checkpoints: a retried worker group resumes it (one run per training)."""

    # --- construction, one piece each ------------------------------------------------------------------

    def _load_catalog(self, prepared_root: str) -> None:
        """Item texts and each item's log sampling probability (``log_q``) from the prepared catalog."""
        fs, root = storage.resolve(prepared_root)
        catalog = pq.read_table(f"{root}/{CATALOG_FILE}", filesystem=fs)
        self.texts: list[str] = catalog.column("text").to_pylist()
        counts = catalog.column("count").to_numpy().astype(np.float64)
        # popularity with add-one smoothing as the in-batch sampling probability of an item
        self.log_q = torch.tensor(
            np.log((counts + 1) / (counts + 1).sum()), dtype=torch.float32, device=self.device
        )

    def _load_validation(self, prepared_root: str) -> EvalSet | None:
        """The validation users (rank 0 only; at most ``val_users`` of them)."""
        if self.rank != 0:
            return None
        validation = read_validation(f"{prepared_root}/{VALIDATION_FILE}")
        return _subsample(validation, self.cfg.val_users, self.cfg.seed)

    def _load_model(self, model_source: str) -> None:
        """The encoder in training mode, frozen where asked, wrapped for DDP."""
        self.encoder = TextEncoder.load(model_source, device=str(self.device), max_length=self.cfg.max_length)
        self._freeze(self.encoder.model)
        self.encoder.model.train()
        self.model = ray.train.torch.prepare_model(self.encoder.model)

    def _build_optimizer(self, steps_per_epoch: int) -> None:
        """AdamW (no decay on biases and LayerNorm) with linear warmup, then linear decay to zero."""
        cfg = self.cfg
        groups = _parameter_groups(self.encoder.model, cfg.weight_decay, exclude=self.gradient_only)
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
        self.total_steps = _total_steps(cfg, steps_per_epoch)
        schedule = _warmup_then_decay(self.total_steps, int(cfg.warmup_ratio * self.total_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)

    def _build_objectives(self) -> None:
        """The losses, the SimCSE views' augmenter and FGM, each only when its option asks for it."""
        cfg = self.cfg
        self.next_item = NextItemLoss(cfg.temperature)
        self.simcse = SimCSELoss(cfg.temperature)
        mask_token = self.encoder.tokenizer.mask_token or "[MASK]"
        p = cfg.augment_prob
        self.augmenter = (
            TextAugmenter(p, p, p, mask_token, seed=cfg.seed + self.rank) if cfg.augment else None
        )
        embeddings = self.encoder.model.get_input_embeddings()
        self.fgm = (
            FGM(embeddings, cfg.fgm_epsilon)
            if cfg.fgm_epsilon > 0 and embeddings.weight.requires_grad
            else None
        )

    def _freeze(self, model) -> None:
        """Freeze what gets no gradient (the BERT pooler: DDP needs every trainable parameter used) and,
        when asked, the embeddings and the lower layers."""
        for name, param in model.named_parameters():
            if name.startswith("pooler."):
                param.requires_grad_(False)
        # frozen, yet given a gradient: no optimizer holds them
        self.gradient_only: list[torch.nn.Parameter] = []
        if self.cfg.freeze_layers > 0:
            model.get_input_embeddings().requires_grad_(False)
            if hasattr(model, "embeddings"):
                model.embeddings.requires_grad_(False)
            layers = getattr(getattr(model, "encoder", None), "layer", None)
            if layers is None:
                raise ConfigError("--freeze-layers: this model has no encoder.layer list")
            for layer in layers[: self.cfg.freeze_layers]:
                layer.requires_grad_(False)
            if self.cfg.fgm_epsilon > 0:
                # FGM moves the word embeddings along their gradient: they keep one, frozen all the same (without
                # it FGM had nothing to follow and silently did nothing when the lower layers were frozen)
                weight = model.get_input_embeddings().weight
                weight.requires_grad_(True)
                self.gradient_only.append(weight)

    # --- checkpoints ------------------------------------------------------------------------------------

    def resume(self) -> bool:
        """Restore this run's latest checkpoint, if any; True when resumed. Sets ``start_step``."""
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            self.restore(checkpoint)
        self.start_step = self.step
        return checkpoint is not None

    def restore(self, checkpoint) -> None:
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / STATE_FILE, map_location=self.device, weights_only=False)
        self.encoder.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.step_in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
        self.best, self.history = state["best"], state["history"]
        self.tracking_run_id = state.get("tracking_run_id")

    def report(self, metrics: dict[str, Any]) -> None:
        """Report ``metrics`` from every worker (a barrier) with a checkpoint written by rank 0."""
        metrics = {
            **metrics,
            "train/step": self.step,
            "train/epoch": self.epoch,
            "train/start_step": self.start_step,
        }
        if self.rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="rayrec-ckpt-") as directory:
            state = {
                "model": self.encoder.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "step": self.step,
                "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch,
                "best": self.best,
                "history": self.history,
                "tracking_run_id": self.tracking_run_id,
            }
            torch.save(state, Path(directory) / STATE_FILE)
            ray.train.report(
                {**metrics, "history": self.history, "best": self.best},
                checkpoint=ray.train.Checkpoint.from_directory(directory),
            )

    # --- one optimizer step -----------------------------------------------------------------------------

    def _loss(self, history, target, simcse_texts):
        """The weighted objective for one micro-batch, from one forward pass over every text it needs."""
        cfg = self.cfg
        texts: list[str] = []
        parts: dict[str, Any] = {}
        if cfg.next_item_weight > 0:
            distinct, inverse = np.unique(
                np.concatenate([history[history >= 0], target]), return_inverse=True
            )
            hist_rows = np.full(history.shape, -1, dtype=np.int64)
            hist_rows[history >= 0] = inverse[: int((history >= 0).sum())]
            target_rows = inverse[int((history >= 0).sum()) :]
            texts += [self.texts[i] for i in distinct]
        if simcse_texts:
            views = [self.augmenter.batch(simcse_texts) if self.augmenter else simcse_texts for _ in range(2)]
            texts += views[0] + views[1]
        batch = self.encoder.tokenize(texts)
        with self.autocast:
            embeddings = embed_batch(self.model, batch)  # [U + 2S, d]
        loss = torch.zeros((), device=self.device)
        offset = 0
        if cfg.next_item_weight > 0:
            u = len(distinct)
            item_embeddings = embeddings[:u]  # [U, d]
            log_q = self.log_q[torch.as_tensor(distinct, device=self.device)] if cfg.logq else None  # [U]
            parts["next_item"] = self.next_item(
                item_embeddings,
                torch.as_tensor(hist_rows, device=self.device),
                torch.as_tensor(target_rows, device=self.device),
                log_q,
            )
            loss = loss + cfg.next_item_weight * parts["next_item"]
            offset = u
        if simcse_texts:
            s = len(simcse_texts)
            parts["simcse"] = self.simcse(
                embeddings[offset : offset + s], embeddings[offset + s : offset + 2 * s]
            )
            loss = loss + cfg.simcse_weight * parts["simcse"]
        return loss, parts

    def micro_step(self, batch: dict, sync: bool) -> dict[str, float]:
        """Forward and backward of one micro-batch; gradients are all-reduced only when ``sync``."""
        cfg = self.cfg
        history = np.stack(list(batch["history"])).astype(np.int64)  # [B, H], -1 padded on the left
        target = np.asarray(batch["target"], dtype=np.int64)  # [B]
        simcse_texts = (
            [self.texts[i] for i in self.rng.integers(0, len(self.texts), cfg.simcse_batch)]
            if cfg.simcse_weight > 0
            else []
        )
        no_sync = getattr(self.model, "no_sync", None)
        # the clean pass only syncs when it is the last backward of the step
        with no_sync() if no_sync and (not sync or self.fgm) else nullcontext():
            loss, parts = self._loss(history, target, simcse_texts)
            (loss / cfg.grad_accum).backward()
        out = {"train/loss": float(loss.detach())} | {
            f"train/{k}_loss": float(v.detach()) for k, v in parts.items()
        }
        if self.fgm is not None and self.fgm.attack():
            with no_sync() if no_sync and not sync else nullcontext():
                adversarial, _ = self._loss(history, target, simcse_texts)
                (adversarial / cfg.grad_accum).backward()
            self.fgm.restore()
            out["train/adversarial_loss"] = float(adversarial.detach())
        return out

    def optimizer_step(self) -> None:
        trained = [p for group in self.optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.encoder.model.zero_grad(set_to_none=True)  # the gradient-only parameters' too
        self.step += 1
        self.step_in_epoch += 1

    # --- validation -------------------------------------------------------------------------------------

    def catalog_embeddings(self):
        """[N, d] embeddings of the whole catalog: each worker encodes a slice, then all-gather."""
        n = len(self.texts)
        chunk = math.ceil(n / self.world)
        start, stop = self.rank * chunk, min(n, (self.rank + 1) * chunk)
        self.encoder.model.eval()
        with self.autocast:
            local = self.encoder.encode(self.texts[start:stop], batch_size=128) if stop > start else None
        self.encoder.model.train()
        part = torch.zeros(chunk, self.encoder.dim)
        if local is not None:
            part[: len(local)] = torch.from_numpy(local)
        if self.world == 1:
            return part[:n].numpy()
        parts = [torch.zeros_like(part) for _ in range(self.world)]
        backend_device = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        gathered = [p.to(backend_device) for p in parts]
        dist.all_gather(gathered, part.to(backend_device))
        return np.concatenate([g.cpu().numpy() for g in gathered])[:n]

    def validate(self) -> dict[str, float]:
        """Validation metrics (rank 0; other ranks return {} after taking their share of the encoding)."""
        embeddings = self.catalog_embeddings()
        if self.validation is None:
            return {}
        val, k = self.validation, self.cfg.eval_k
        queries = val.queries(embeddings)
        ks = tuple(sorted({k, 50, 100} & set(range(1, len(self.texts) + 1))) or (k,))
        model = evaluate_rankings(lambda seen, d: exact_search(queries, embeddings, d, seen)[1], val, k, ks)
        pop = evaluate_rankings(
            lambda seen, d: popularity_search(val.train_counts, len(val), d, seen)[1], val, k, ks
        )
        return {f"val/{m}": v for m, v in model.items()} | {f"val/popularity/{m}": v for m, v in pop.items()}

    def save_best(self) -> None:
        """Write the current model as the best one to ``out`` (rank 0)."""
        with storage.local_output_dir(self.cfg.out) as directory:
            self.encoder.save(directory)


def _subsample(validation: EvalSet, users: int, seed: int) -> EvalSet:
    """At most ``users`` validation users: a fixed random subset (by ``seed``) when there are more."""
    if len(validation) <= users:
        return validation
    keep = np.sort(np.random.default_rng(seed).choice(len(validation), users, replace=False))
    return type(validation)(
        histories=[validation.histories[i] for i in keep],
        seen=[validation.seen[i] for i in keep],
        targets=validation.targets[keep],
        train_counts=validation.train_counts,
    )


def _parameter_groups(model, weight_decay: float, exclude: list[torch.nn.Parameter]) -> list[dict[str, Any]]:
    """AdamW groups of the trainable parameters but ``exclude``: biases and LayerNorm weights get no weight decay."""
    decay, no_decay = [], []
    excluded = {id(p) for p in exclude}
    for name, param in model.named_parameters():
        if param.requires_grad and id(param) not in excluded:
            (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _total_steps(cfg: EncoderTrainConfig, steps_per_epoch: int) -> int:
    """Optimizer steps of the whole run: every epoch's, or ``max_steps`` when that is fewer (at least 1)."""
    total = (
        cfg.epochs * steps_per_epoch
        if cfg.max_steps is None
        else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
    )
    return max(total, 1)


def _warmup_then_decay(total_steps: int, warmup: int):
    """Learning-rate factor per step: linear warmup over ``warmup`` steps, then linear decay to zero."""

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(total_steps - warmup, 1))

    return schedule


def _say(progress: Queue | None, line: str) -> None:
    """Send a progress line to the driver, which prints it (see :class:`ProgressRelay`); print it without one."""
    if progress is None:
        print(line, flush=True)
    else:
        progress.put(line)


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry point of each worker."""
    cfg = EncoderTrainConfig(**loop_config["config"])
    progress: Queue | None = loop_config.get("progress")
    worker = _Worker(
        cfg, loop_config["model_source"], loop_config["prepared_root"], loop_config["steps_per_epoch"]
    )
    resumed = worker.resume()
    tracker = Tracker()  # rank 0 logs to MLflow (Ray's setup_mlflow) and TensorBoard: trainers/tracking.py
    if worker.rank == 0:
        where = f"resuming from step {worker.step}" if resumed else "starting"
        _say(progress, f"[train-encoder] {where}: {worker.total_steps} steps, {cfg.workers} workers")
        tracker = start_tracking(
            cfg.tracking_uri,
            cfg.out,
            experiment="rayrec-train-encoder",
            run_name=cfg.name,
            params=loop_config["config"],
            tags={"resumed_from_step": str(worker.step), "workers": str(cfg.workers)},
            resume_run_id=worker.tracking_run_id,
        )
        worker.tracking_run_id = tracker.run_id
    shard = ray.train.get_dataset_shard("train")
    key = f"val/recall@{cfg.eval_k}"
    started, last = time.perf_counter(), {}
    while worker.epoch < cfg.epochs and worker.step < worker.total_steps:
        skip = worker.step_in_epoch * cfg.grad_accum  # micro-batches this epoch already trained on
        batches = shard.iter_batches(
            batch_size=cfg.batch_size,
            batch_format="numpy",
            drop_last=True,
            local_shuffle_buffer_size=cfg.batch_size * 8,
            local_shuffle_seed=cfg.seed + worker.epoch,
        )
        micro = 0
        for index, batch in enumerate(batches):
            if index < skip:
                continue
            micro += 1
            sync = micro % cfg.grad_accum == 0
            last = worker.micro_step(batch, sync)
            if not sync:
                continue
            worker.optimizer_step()
            if cfg.fail_at_step == worker.step and worker.start_step == 0 and worker.rank == worker.world - 1:
                _say(
                    progress, f"[train-encoder] chaos drill: worker {worker.rank} exits at step {worker.step}"
                )
                os._exit(1)
            if worker.rank == 0 and (worker.step % cfg.log_every == 0 or worker.step == 1):
                rate = (worker.step - worker.start_step) / (time.perf_counter() - started)
                tracker.log(
                    last | {"train/lr": worker.scheduler.get_last_lr()[0], "train/steps_per_s": rate},
                    step=worker.step,
                )
                _say(
                    progress,
                    f"[train-encoder] step {worker.step}/{worker.total_steps} loss {last['train/loss']:.4f} "
                    f"lr {worker.scheduler.get_last_lr()[0]:.2e} ({rate:.2f} steps/s)",
                )
            if worker.step >= worker.total_steps:
                break
            if cfg.checkpoint_every and worker.step % cfg.checkpoint_every == 0:
                worker.report(last)
        else:
            worker.epoch += 1
            worker.step_in_epoch = 0
        metrics = worker.validate()
        if worker.rank == 0:
            metrics["train/seconds"] = time.perf_counter() - started
            worker.history.append({"step": worker.step, "epoch": worker.epoch, **last, **metrics})
            if not worker.best or metrics[key] > worker.best[key]:
                worker.best = {"step": worker.step, **metrics}
                worker.save_best()
            _say(progress, f"[train-encoder] validation at step {worker.step}: {key} {metrics[key]:.4f}")
            tracker.log(last | metrics, step=worker.step)
        worker.report(last | metrics)
    tracker.close()


# ----------------------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------------------


class ProgressRelay:
    """The workers' progress lines, printed by the driver while ``trainer.fit()`` runs.

    A quiet command does not forward the workers' stdout to the driver (it stays in Ray's session logs), so the
    workers never print their progress: they put each line on a Ray queue that the driver creates (an actor
    with no CPU, owned by the driver, so it outlives restarts of the worker group), and a background thread of
    the driver prints what arrives. Verbose and quiet runs show the same lines, once. Used as a context
    manager: entering gives the queue to hand to the workers; leaving prints what is left and removes it.
    """

    def __init__(self, poll_s: float = 0.5):
        self.poll_s = poll_s
        self.queue = Queue(actor_options={"num_cpus": 0})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="train-encoder-progress", daemon=True)

    def __enter__(self) -> Queue:
        self._thread.start()
        return self.queue

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self._drain()  # lines put after the thread's last look
        except ray.exceptions.RayError:
            pass  # Ray itself failed: that error, not this one, is the news
        finally:
            self.queue.shutdown(force=True)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._drain()
            except ray.exceptions.RayError:
                return  # __exit__ tries once more

    def _drain(self) -> None:
        """Print every line queued so far, in order (this is the queue's only consumer)."""
        count = self.queue.qsize()
        if count:
            for line in self.queue.get_nowait_batch(count):
                print(line, flush=True)


RUN_SETTINGS_FILE = "settings.json"
"""Written into a run's directory under ``storage_path``: the settings its checkpoints were trained with."""
RESUMABLE_CHANGES = frozenset(
    {
        "address",
        "verbose",
        "out",
        "storage_path",
        "name",
        "max_steps",
        "epochs",
        "log_every",
        "checkpoint_every",
    }
    | {"max_failures", "fail_at_step", "tracking_uri"}
)
"""Options a rerun may change and still resume the run's checkpoints: where things go, how long it trains (a
longer run continues), logging and fault handling. Any other change would mix two trainings in one model."""


def check_resumable(cfg: EncoderTrainConfig) -> None:
    """Refuse to resume a run (same ``storage_path`` and ``name``) whose checkpoints were trained with other
    settings, and record the settings of a new one. A run directory made before settings were recorded cannot be
    checked, so it is refused too."""
    run_dir = storage.join(cfg.run_storage, cfg.name)
    marker = storage.join(run_dir, RUN_SETTINGS_FILE)
    wanted = {k: v for k, v in json.loads(json.dumps(asdict(cfg))).items() if k not in RESUMABLE_CHANGES}
    if storage.exists(marker):
        recorded = json.loads(storage.read_text(marker))
        changed = sorted(k for k in wanted.keys() | recorded.keys() if wanted.get(k) != recorded.get(k))
        if changed:
            shown = ", ".join(f"{k} {recorded.get(k)!r} → {wanted.get(k)!r}" for k in changed[:4])
            raise ConfigError(
                f"run {cfg.name!r} in {cfg.run_storage} was trained with other settings ({shown}); its "
                "checkpoints would be resumed: pass another --name, or remove that directory to start over"
            )
        return
    if storage.exists(run_dir):
        raise ConfigError(
            f"run {cfg.name!r} in {cfg.run_storage} has no record of its settings (made by an older rayrec), so "
            "resuming it could mix two trainings: pass another --name, or remove that directory to start over"
        )
    storage.write_text(marker, json.dumps(wanted, indent=2, sort_keys=True) + "\n")


def train_encoder(cfg: EncoderTrainConfig) -> dict[str, Any]:
    """Prepare the data, run the TorchTrainer, and write metrics.json and config.yaml next to the best model.

    A rerun with the same ``storage_path`` and ``name`` resumes from the run's latest checkpoint, only when
    it has the same training settings (:func:`check_resumable`)."""
    model_source = resolve_model(cfg.model)
    check_resumable(cfg)
    init_ray(cfg.address, log_dir=None if storage.is_remote(cfg.out) else cfg.out, verbose=cfg.verbose)
    prepared = prepare_training_data(
        cfg.data,
        storage.join(cfg.run_storage, f"{cfg.name}-data"),
        history=cfg.history,
        seed=cfg.seed,
        cold_fraction=cfg.cold_fraction,
        split_seed=cfg.split_seed,
    )
    per_worker = prepared.examples // cfg.workers
    steps_per_epoch = per_worker // (cfg.batch_size * cfg.grad_accum)
    if steps_per_epoch < 1:
        raise ConfigError(
            f"{prepared.examples} examples over {cfg.workers} workers do not fill one step of "
            f"{cfg.batch_size}×{cfg.grad_accum}: lower --batch-size or --workers"
        )
    print(
        f"[train-encoder] {prepared.examples} examples, {prepared.items} items, "
        f"{prepared.validation_users} validation users, {steps_per_epoch} steps per epoch",
        flush=True,
    )
    # read before the workers start: on a small cluster they hold every CPU, and a lazy read would wait for a
    # CPU forever; the examples are a few ints per row
    examples = ray.data.read_parquet(prepared.examples_uri).materialize()
    started = time.perf_counter()
    with ProgressRelay() as progress:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={
                "config": asdict(cfg),
                "model_source": model_source,
                "prepared_root": prepared.root,
                "steps_per_epoch": steps_per_epoch,
                "progress": progress,
            },
            scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpu),
            run_config=RunConfig(
                name=cfg.name,
                storage_path=cfg.run_storage,
                failure_config=FailureConfig(max_failures=cfg.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
            ),
            datasets={"train": examples},
        )
        try:
            result = trainer.fit()
        except Exception as exc:  # Train wraps worker errors in its own exception types
            raise RayrecError(
                f"encoder training failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
            ) from exc
    metrics = result.metrics or {}
    summary = {
        "model": cfg.model,
        "best": metrics.get("best", {}),
        "final": {k: v for k, v in metrics.items() if k not in ("history", "best")},
        "history": metrics.get("history", []),
        "wall_seconds": time.perf_counter() - started,
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
    }
    storage.write_text(
        storage.join(cfg.out, METRICS_FILE), json.dumps(summary, indent=2, default=float) + "\n"
    )
    save_config(cfg, cfg.out)
    return summary


def main(argv: list[str] | None = None) -> int:
    """``python -m trainers.encoder``: the same options as ``rayrec train-encoder``."""
    parser = argparse.ArgumentParser(
        prog="python -m trainers.encoder", description=EncoderTrainConfig.__doc__
    )
    add_config_args(parser, EncoderTrainConfig)
    try:
        summary = train_encoder(config_from_args(EncoderTrainConfig, parser.parse_args(argv)))
    except RayrecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    best = summary["best"]
    print(json.dumps({k: v for k, v in best.items() if not k.startswith("val/popularity")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
