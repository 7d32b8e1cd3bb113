"""Fine-tune a text encoder for retrieval with Ray Train (``python -m trainers.encoder`` / ``rayrec train-encoder``).

A ``TorchTrainer`` (Train V2) runs DDP over ``--workers`` CPU or GPU workers. Next-item examples are read
with Ray Data from Parquet and sharded with ``ray.train.get_dataset_shard``. Each step encodes the batch's
distinct items once and gathers them for histories and targets. Objectives, each with a weight: next-item
contrastive (in-batch negatives, logQ correction), SimCSE on item text, text augmentation of the SimCSE views,
and FGM adversarial training. Validation Recall@K / NDCG@K on a temporal split runs each epoch; every report
carries a checkpoint, and a restarted worker group (``--max-failures``) or a rerun with the same ``--out``
resumes from the latest one. The best model is written to ``--out`` in Hugging Face format with its
tokenizer and sentence-transformers files, next to ``metrics.json`` and ``config.yaml``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rayrec import storage
from rayrec.config import RayConfig, save_config
from rayrec.encoding import DEFAULT_MODEL
from rayrec.errors import ConfigError, RayrecError

METRICS_FILE = "metrics.json"
STATE_FILE = "training_state.pt"


@dataclass(kw_only=True)
class EncoderTrainConfig(RayConfig):
    """Fine-tune a text encoder on interaction logs with Ray Train."""

    data: str
    """Data directory (local path or URI) with items.parquet and interactions.parquet."""
    out: str
    """Output directory: the best model (HF format + tokenizer), metrics.json and config.yaml."""
    model: str = DEFAULT_MODEL
    """Encoder to start from: a hub name, the packaged default, or a model directory."""
    workers: int = 2
    """Ray Train workers (DDP processes)."""
    gpu: bool = False
    """One GPU per worker (bf16 autocast)."""
    epochs: int = 1
    """Passes over the next-item examples."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (across epochs); validation runs at the stop."""
    batch_size: int = 32
    """Next-item examples per worker per micro-batch (in-batch negatives come from these)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 5e-5
    """AdamW peak learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases and LayerNorm weights)."""
    warmup_ratio: float = 0.1
    """Share of the steps spent warming the learning rate up linearly; then linear decay to zero."""
    max_length: int = 32
    """Tokens per item text (titles, genres and tags are short; this bounds the cost of a step)."""
    history: int = 5
    """Most recent items pooled into a training user's query (the cost of a step grows with it)."""
    temperature: float = 0.05
    """Softmax temperature of the contrastive losses."""
    next_item_weight: float = 1.0
    """Weight of the next-item contrastive loss (0 turns it off)."""
    logq: bool = True
    """Subtract log popularity from in-batch logits (sampling-bias correction)."""
    simcse_weight: float = 0.0
    """Weight of the SimCSE loss on item text (0 turns it off)."""
    simcse_batch: int = 32
    """Catalog items drawn uniformly per micro-batch for SimCSE (covers items without interactions)."""
    augment: bool = False
    """Word dropout / swap / mask on the SimCSE views."""
    augment_prob: float = 0.1
    """Per-word probability of each augmentation."""
    fgm_epsilon: float = 0.0
    """FGM adversarial perturbation size on word embeddings (0 turns it off; doubles the cost of a step)."""
    freeze_layers: int = 0
    """Freeze the embeddings and the first N transformer layers (less compute per step on small machines)."""
    eval_k: int = 10
    """Cut-off of the validation Recall@K / NDCG@K; the best model is chosen on Recall@K."""
    val_users: int = 2000
    """Validation users at most (a fixed random subset when there are more)."""
    checkpoint_every: int = 0
    """Also checkpoint every N optimizer steps within an epoch (0: only at validation)."""
    log_every: int = 10
    """Print a progress line every N optimizer steps."""
    storage_path: str | None = None
    """Where Ray Train keeps checkpoints (default: OUT/train_runs); a rerun with the same path and name resumes."""
    name: str = "train-encoder"
    """Run name under storage_path."""
    max_failures: int = 1
    """Worker-group restarts allowed (each resumes from the latest checkpoint)."""
    seed: int = 0
    """Seed of example order, sampling and initialisation."""
    fail_at_step: int | None = None
    """Chaos drill: the last worker exits hard at this step of a run not started from a checkpoint (recovery check)."""

    def __post_init__(self) -> None:
        positive = (
            "workers",
            "epochs",
            "batch_size",
            "grad_accum",
            "max_length",
            "history",
            "eval_k",
            "val_users",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"--max-steps must be >= 1, got {self.max_steps}")
        if self.lr <= 0 or self.temperature <= 0:
            raise ConfigError("--lr and --temperature must be > 0")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if min(self.next_item_weight, self.simcse_weight, self.fgm_epsilon) < 0:
            raise ConfigError("loss weights and --fgm-epsilon must be >= 0")
        if self.next_item_weight == 0 and self.simcse_weight == 0:
            raise ConfigError("all objectives are off: set --next-item-weight or --simcse-weight above 0")
        if self.simcse_weight > 0 and self.simcse_batch < 2:
            raise ConfigError("--simcse-batch must be >= 2 (the other texts are the negatives)")

    @property
    def run_storage(self) -> str:
        path = self.storage_path or storage.join(self.out, "train_runs")
        return (
            path if storage.is_remote(path) else str(Path(storage.local_path(path)).expanduser().absolute())
        )


# ----------------------------------------------------------------------------------------------------------
# The per-worker training loop
# ----------------------------------------------------------------------------------------------------------


class _Worker:
    """State of one training worker: model, optimizer, catalog, losses; built once per (re)start."""

    def __init__(self, cfg: EncoderTrainConfig, model_source: str, prepared_root: str, steps_per_epoch: int):
        import numpy as np
        import pyarrow.parquet as pq
        import ray.train
        import ray.train.torch
        import torch

        from rayrec.encoding import TextEncoder
        from trainers.encoder_data import CATALOG_FILE, VALIDATION_FILE, read_validation
        from trainers.encoder_losses import FGM, NextItemLoss, SimCSELoss, TextAugmenter

        self.cfg = cfg
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed + 1000 * self.rank)
        fs, root = storage.resolve(prepared_root)
        catalog = pq.read_table(f"{root}/{CATALOG_FILE}", filesystem=fs)
        self.texts: list[str] = catalog.column("text").to_pylist()
        counts = catalog.column("count").to_numpy().astype(np.float64)
        # popularity with add-one smoothing as the in-batch sampling probability of an item
        self.log_q = torch.tensor(
            np.log((counts + 1) / (counts + 1).sum()), dtype=torch.float32, device=self.device
        )
        self.validation = read_validation(f"{prepared_root}/{VALIDATION_FILE}") if self.rank == 0 else None
        if self.validation is not None and len(self.validation) > cfg.val_users:
            keep = np.sort(
                np.random.default_rng(cfg.seed).choice(len(self.validation), cfg.val_users, replace=False)
            )
            v = self.validation
            self.validation = type(v)(
                histories=[v.histories[i] for i in keep],
                seen=[v.seen[i] for i in keep],
                targets=v.targets[keep],
                train_counts=v.train_counts,
            )

        self.encoder = TextEncoder.load(model_source, device=str(self.device), max_length=cfg.max_length)
        self._freeze(self.encoder.model)
        self.encoder.model.train()
        self.model = ray.train.torch.prepare_model(self.encoder.model)
        decay, no_decay = [], []
        for name, param in self.encoder.model.named_parameters():
            if param.requires_grad:
                (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr,
        )
        total = (
            cfg.epochs * steps_per_epoch
            if cfg.max_steps is None
            else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
        )
        self.total_steps = max(total, 1)
        warmup = int(cfg.warmup_ratio * self.total_steps)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(0.0, (self.total_steps - step) / max(self.total_steps - warmup, 1))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
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
        self.autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()
        )
        self.step, self.epoch, self.step_in_epoch = 0, 0, 0
        self.best: dict[str, float] = {}
        self.start_step = 0
        self.history: list[dict[str, Any]] = []

    def _freeze(self, model) -> None:
        """Freeze what gets no gradient (the BERT pooler: DDP needs every trainable parameter used) and,
        when asked, the embeddings and the lower layers."""
        for name, param in model.named_parameters():
            if name.startswith("pooler."):
                param.requires_grad_(False)
        if self.cfg.freeze_layers > 0:
            model.get_input_embeddings().requires_grad_(False)
            if hasattr(model, "embeddings"):
                model.embeddings.requires_grad_(False)
            layers = getattr(getattr(model, "encoder", None), "layer", None)
            if layers is None:
                raise ConfigError("--freeze-layers: this model has no encoder.layer list")
            for layer in layers[: self.cfg.freeze_layers]:
                layer.requires_grad_(False)

    # --- checkpoints ------------------------------------------------------------------------------------

    def restore(self, checkpoint) -> None:
        import torch

        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / STATE_FILE, map_location=self.device, weights_only=False)
        self.encoder.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.step_in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
        self.best, self.history = state["best"], state["history"]

    def report(self, metrics: dict[str, Any]) -> None:
        """Report ``metrics`` from every worker (a barrier) with a checkpoint written by rank 0."""
        import ray.train
        import torch

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
            }
            torch.save(state, Path(directory) / STATE_FILE)
            ray.train.report(
                {**metrics, "history": self.history, "best": self.best},
                checkpoint=ray.train.Checkpoint.from_directory(directory),
            )

    # --- one optimizer step -----------------------------------------------------------------------------

    def _loss(self, history, target, simcse_texts):
        """The weighted objective for one micro-batch, from one forward pass over every text it needs."""
        import numpy as np
        import torch

        from rayrec.encoding import embed_batch

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
        import numpy as np

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
        import torch

        torch.nn.utils.clip_grad_norm_([p for p in self.encoder.model.parameters() if p.requires_grad], 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.step_in_epoch += 1

    # --- validation -------------------------------------------------------------------------------------

    def catalog_embeddings(self):
        """[N, d] embeddings of the whole catalog: each worker encodes a slice, then all-gather."""
        import numpy as np
        import torch
        import torch.distributed as dist

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
        from rayrec.index.evaluate import evaluate_rankings
        from rayrec.index.exact import exact_search, popularity_search

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


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry point of each worker."""
    import ray.train

    cfg = EncoderTrainConfig(**loop_config["config"])
    worker = _Worker(
        cfg, loop_config["model_source"], loop_config["prepared_root"], loop_config["steps_per_epoch"]
    )
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        worker.restore(checkpoint)
    worker.start_step = worker.step
    if worker.rank == 0:
        where = f"resuming from step {worker.step}" if checkpoint is not None else "starting"
        print(f"[train-encoder] {where}: {worker.total_steps} steps, {cfg.workers} workers", flush=True)
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
                print(
                    f"[train-encoder] chaos drill: worker {worker.rank} exits at step {worker.step}",
                    flush=True,
                )
                os._exit(1)
            if worker.rank == 0 and (worker.step % cfg.log_every == 0 or worker.step == 1):
                rate = (worker.step - worker.start_step) / (time.perf_counter() - started)
                print(
                    f"[train-encoder] step {worker.step}/{worker.total_steps} loss {last['train/loss']:.4f} "
                    f"lr {worker.scheduler.get_last_lr()[0]:.2e} ({rate:.2f} steps/s)",
                    flush=True,
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
            print(f"[train-encoder] validation at step {worker.step}: {key} {metrics[key]:.4f}", flush=True)
        worker.report(last | metrics)


# ----------------------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------------------


def train_encoder(cfg: EncoderTrainConfig) -> dict[str, Any]:
    """Prepare the data, run the TorchTrainer, and write metrics.json and config.yaml next to the best model."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from rayrec.encoding import resolve_model
    from rayrec.runtime import init_ray
    from trainers.encoder_data import prepare_training_data

    model_source = resolve_model(cfg.model)
    init_ray(cfg.address)
    prepared = prepare_training_data(
        cfg.data, storage.join(cfg.run_storage, f"{cfg.name}-data"), history=cfg.history, seed=cfg.seed
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
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": asdict(cfg),
            "model_source": model_source,
            "prepared_root": prepared.root,
            "steps_per_epoch": steps_per_epoch,
        },
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpu),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=cfg.run_storage,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
        # read before the workers start: on a small cluster they hold every CPU, and a lazy read would wait
        # for a CPU forever; the examples are a few ints per row
        datasets={"train": ray.data.read_parquet(prepared.examples_uri).materialize()},
    )
    started = time.perf_counter()
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
    import argparse

    from rayrec.config import add_config_args, config_from_args

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
