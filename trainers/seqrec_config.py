"""Options of ``rayrec train-retrieval-model``, in a light module (no torch import at ``rayrec --help`` time).

The training itself is in :mod:`trainers.seqrec`; the model it trains is :mod:`rayrec.seqrec.model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rayrec.errors import ConfigError

Holdout = Literal["test", "validation"]


@dataclass(kw_only=True)
class SeqRecTrainConfig:
    """Train the sequential retrieval model (hybrid text + ID item tower, SASRec user tower) on the temporal split.

    Next-item prediction on the train rows of the split only (each user's last interaction is never seen),
    sampled softmax over in-batch candidates with the logQ correction plus hard negatives mined from a FAISS
    index of the current item vectors, refreshed every epoch. Writes the model (safetensors + JSON), its item
    index (out/index) and metrics.json.
    """

    data: str
    """Data directory with items.parquet and interactions.parquet."""
    index: str
    """Item index of the frozen text encoder (e.g. build-index's zero-shot output): its embeddings are the item
    tower's text input."""
    out: str
    """Output directory: model.safetensors, model.json, metrics.json, config.yaml and the item index in out/index."""
    seed: int = 0
    """Seed of the initialisation, the windows, the ID dropout and the negative sampling."""
    user_tower: Literal["sequential", "mean"] = "mean"
    """mean (mean pooling of the history through a learned linear map: the higher validation Recall@10 on
    MovieLens, docs/retrieval.md) or sequential (SASRec causal transformer over the history)."""
    use_id: bool = True
    """Hybrid item tower: text part plus a learned ID embedding (--no-use-id: text part only)."""
    id_dropout: float = 0.25
    """Probability that an item's ID embedding is dropped for a training step (it falls back to its text)."""
    dim: int = 64
    """Dimension of the item and user vectors."""
    history: int = 20
    """Items the user tower reads; also the length of the training windows."""
    layers: int = 2
    """Transformer blocks of the sequential tower."""
    heads: int = 2
    """Attention heads per block."""
    dropout: float = 0.2
    """Dropout inside the sequential tower."""
    epochs: int = 15
    """Passes over the training windows (15: the best validation epoch on MovieLens, docs/retrieval.md)."""
    max_windows: int = 2
    """Most recent windows per user per epoch (0: all); caps the weight of the few very long histories and the
    cost of an epoch."""
    batch_size: int = 64
    """Windows (user sub-sequences of --history items) per step; every position is a next-item example."""
    lr: float = 1e-3
    """Adam learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    temperature: float = 0.07
    """Softmax temperature over inner products of unit vectors."""
    logq: bool = True
    """Subtract log(item frequency) from the in-batch logits (sampling-bias correction, Yi et al. 2019)."""
    hard_negatives: int = 16
    """Hard negatives per window, drawn from the top --mine-depth unseen items of the user's current query in a
    FAISS index of the current item vectors (0 turns them off)."""
    mine_depth: int = 100
    """Ranks of the FAISS search (after removing the user's train items) the hard negatives are drawn from."""
    mine_from_epoch: int = 1
    """First epoch (0-based) that mines hard negatives; before it, in-batch negatives only."""
    cold_fraction: float = 0.0
    """Share of the distinct held-out items made cold (rayrec.data.split.cold_item_split); must match the
    eval-retrieval run that scores the model."""
    split_seed: int = 0
    """Seed of the cold-item draw."""
    holdout: Holdout = "test"
    """test: train on every train row of the split. validation: also hold out each user's last train row
    (their second-to-last interaction) and report validation Recall/NDCG on it (for model choices)."""
    eval_every: int = 5
    """validation: epochs between validation evaluations (the last epoch is always evaluated)."""
    threads: int | None = None
    """torch threads (default: torch's choice)."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_every", "mine_depth"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_windows < 0:
            raise ConfigError(f"--max-windows must be >= 0, got {self.max_windows}")
        if self.hard_negatives < 0 or self.hard_negatives > self.mine_depth:
            raise ConfigError(
                f"--hard-negatives must be in [0, --mine-depth={self.mine_depth}], got {self.hard_negatives}"
            )
        if self.lr <= 0 or self.temperature <= 0:
            raise ConfigError(f"--lr and --temperature must be > 0, got {self.lr}, {self.temperature}")
        if not 0.0 <= self.cold_fraction < 1.0:
            raise ConfigError(f"--cold-fraction must be in [0, 1), got {self.cold_fraction}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")
