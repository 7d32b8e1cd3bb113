"""Options of ``rayrec train-encoder`` / ``python -m trainers.encoder``, in a light module.

The command line builds its parser from :class:`EncoderTrainConfig` at ``rayrec --help`` time, so this
module imports neither Ray nor torch; the training itself is in :mod:`trainers.encoder`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rayrec import storage
from rayrec.config import RayConfig
from rayrec.encoding import DEFAULT_MODEL
from rayrec.errors import ConfigError


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
    cold_fraction: float = 0.0
    """Hold out cold items as ``eval-retrieval --cold-fraction`` does (same split, same --split-seed): their
    interactions never reach training, so the cold-item evaluation stays clean. 0: the temporal split."""
    split_seed: int = 0
    """Seed of the cold-item draw (match eval-retrieval's --split-seed)."""
    fail_at_step: int | None = None
    """Chaos drill: the last worker exits hard at this step of a run not started from a checkpoint (recovery check)."""
    tracking_uri: str | None = None
    """MLflow tracking URI the run logs its parameters and metrics to (through Ray's ``setup_mlflow``):
    default a local file store, ``<out>/mlruns``; ``none``: no MLflow. TensorBoard events always go to
    ``<out>/tensorboard`` (see ``trainers/tracking.py``)."""

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
        if not 0 <= self.cold_fraction < 1:
            raise ConfigError(f"--cold-fraction must be in [0, 1), got {self.cold_fraction}")
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
