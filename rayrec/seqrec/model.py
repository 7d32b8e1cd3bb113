"""The towers of the sequential retrieval model: a hybrid item tower and a sequential (or mean-pooling) user tower.

Item tower (hybrid, text + ID): ``v_i = normalize(W t_i + b + m_i · e_i)`` with ``t_i`` the item's frozen text
embedding (the text encoder's output, computed once), ``e_i`` a learned ID embedding and ``m_i`` 1 for an item
with train interactions. While training, ``m_i`` is also dropped to 0 with probability ``id_dropout`` per item
and step (ID dropout), so the text part learns to stand on its own; an item never seen in training (a cold item)
always has ``m_i = 0`` and gets exactly its text part. The hybrid of content features and ID embeddings follows
the two-tower models of Yi et al. (RecSys 2019) and the ID dropout of DropoutNet (Volkovs et al., NeurIPS 2017).

User tower, ``sequential``: SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018) — a
small causal transformer over the user's last ``history`` item vectors plus learned positional embeddings; the
output at position t is the query for the item at t + 1, the last position's output is the user's query.
``mean``: the ablation — a learned linear map of the (causal) mean of the history vectors, no order.

Scores are inner products of unit vectors, so the item vectors can be stored in an inner-product FAISS index.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rayrec.errors import ConfigError

UserTowerKind = Literal["sequential", "mean"]
PAD = -1
"""Item row of an empty history slot (histories are left-padded)."""


@dataclass(frozen=True)
class SeqRecModelConfig:
    """Architecture of the retrieval model (what ``model.json`` stores and loading needs)."""

    text_dim: int
    """Dimension of the frozen text embeddings (the text index's dimension)."""
    dim: int = 64
    """Dimension of the item and user vectors (the index built from the model)."""
    user_tower: UserTowerKind = "sequential"
    """sequential (SASRec causal transformer) or mean (mean pooling of the history, the ablation)."""
    use_id: bool = True
    """Add a learned ID embedding to each item's text part (hybrid item tower); False: text part only."""
    id_dropout: float = 0.25
    """Training only: probability that an item's ID embedding is dropped for a step (it falls back to text)."""
    history: int = 50
    """Most recent items the user tower reads (longer histories are cut, shorter ones left-padded)."""
    layers: int = 2
    """Transformer blocks of the sequential tower."""
    heads: int = 2
    """Attention heads per block (must divide ``dim``)."""
    dropout: float = 0.2
    """Dropout on the sequential tower's inputs and inside its blocks."""

    def __post_init__(self) -> None:
        if min(self.text_dim, self.dim, self.history, self.layers, self.heads) < 1:
            raise ConfigError(
                f"text_dim, dim, history, layers and heads must be >= 1, got {self.text_dim}, {self.dim}, "
                f"{self.history}, {self.layers}, {self.heads}"
            )
        if self.dim % self.heads:
            raise ConfigError(f"--heads {self.heads} must divide --dim {self.dim}")
        if self.user_tower not in ("sequential", "mean"):
            raise ConfigError(f"user tower must be 'sequential' or 'mean', got {self.user_tower!r}")
        for name in ("id_dropout", "dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


class HybridItemTower(nn.Module):
    """Item vectors from frozen text embeddings plus (optionally) learned ID embeddings with ID dropout."""

    def __init__(
        self, text_embeddings: torch.Tensor, has_id: torch.Tensor, config: SeqRecModelConfig
    ) -> None:
        """``text_embeddings`` [N, text_dim] float32 (frozen), ``has_id`` [N] bool (item has train interactions)."""
        super().__init__()
        if text_embeddings.ndim != 2 or text_embeddings.shape[1] != config.text_dim:
            raise ConfigError(
                f"text embeddings have shape {tuple(text_embeddings.shape)}, expected [items, {config.text_dim}]"
            )
        if has_id.shape != (text_embeddings.shape[0],):
            raise ConfigError(f"has_id has shape {tuple(has_id.shape)} for {text_embeddings.shape[0]} items")
        self.register_buffer("text_embeddings", text_embeddings.float())  # [N, text_dim]
        self.register_buffer("has_id", has_id.bool())  # [N]
        self.text_projection = nn.Linear(config.text_dim, config.dim)
        self.id_embeddings = nn.Embedding(len(has_id), config.dim) if config.use_id else None
        if self.id_embeddings is not None:
            nn.init.normal_(self.id_embeddings.weight, std=0.02)
        self.id_dropout = config.id_dropout

    @property
    def num_items(self) -> int:
        return int(self.has_id.shape[0])

    def text_part(self) -> torch.Tensor:
        """[N, dim] unit vectors from the text alone (what a cold item gets)."""
        return self.project_text(self.text_embeddings)

    def project_text(self, text: torch.Tensor) -> torch.Tensor:
        """``text`` [B, text_dim] text embeddings → [B, dim] unit vectors ``normalize(W t + b)``: the text path
        alone, as a cold item gets it (also what a free-text query is mapped through)."""
        return F.normalize(self.text_projection(text), dim=-1)

    def forward(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """[R, dim] unit vectors of the items ``rows`` [R] (default: all N); in training mode each item's ID part
        is dropped with probability ``id_dropout``."""
        text = self.text_embeddings if rows is None else self.text_embeddings[rows]  # [R, text_dim]
        raw = self.text_projection(text)  # [R, dim]
        if self.id_embeddings is not None:
            keep = (self.has_id if rows is None else self.has_id[rows]).float()  # [R]
            if self.training and self.id_dropout > 0:
                keep = keep * (torch.rand_like(keep) >= self.id_dropout).float()
            ids = self.id_embeddings.weight if rows is None else self.id_embeddings(rows)  # [R, dim]
            raw = raw + keep[:, None] * ids
        return F.normalize(raw, dim=-1)


def _causal_mask(real: torch.Tensor, heads: int) -> torch.Tensor:
    """[B·heads, H, H] bool attention mask (True = blocked) from ``real`` [B, H] (False on left padding).

    A position attends to itself and to earlier real positions; the diagonal is always open so a padding
    row never has every key blocked (which would give NaN).
    """
    h = real.shape[1]
    future = torch.triu(torch.ones(h, h, dtype=torch.bool, device=real.device), diagonal=1)  # [H, H]
    blocked = future[None] | ~real[:, None, :]  # [B, H, H]
    blocked = blocked & ~torch.eye(h, dtype=torch.bool, device=real.device)[None]
    return blocked.repeat_interleave(heads, dim=0)


class SequentialUserTower(nn.Module):
    """SASRec: causal self-attention over the history's item vectors plus positional embeddings."""

    def __init__(self, config: SeqRecModelConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.scale = math.sqrt(config.dim)
        self.positions = nn.Embedding(config.history, config.dim)
        nn.init.normal_(self.positions.weight, std=0.02)
        self.input_dropout = nn.Dropout(config.dropout)
        block = nn.TransformerEncoderLayer(
            config.dim,
            config.heads,
            dim_feedforward=2 * config.dim,
            dropout=config.dropout,
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(block, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.dim)
        self.out = nn.Linear(config.dim, config.dim)

    def forward(self, items: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """``items`` [B, H, dim] history vectors (zeros on padding), ``real`` [B, H] bool → [B, H, dim] unit
        queries; position t's query predicts the item after position t."""
        h = items.shape[1]
        x = (
            items * self.scale + self.positions.weight[-h:][None]
        )  # [B, H, dim]: the last slot is position H-1
        x = self.input_dropout(x) * real[..., None]
        x = self.blocks(x, mask=_causal_mask(real, self.heads))  # [B, H, dim]
        return F.normalize(self.out(self.norm(x)), dim=-1)


class MeanUserTower(nn.Module):
    """The ablation: a linear map of the causal mean of the history vectors (order ignored)."""

    def __init__(self, config: SeqRecModelConfig) -> None:
        super().__init__()
        self.out = nn.Linear(config.dim, config.dim)
        with torch.no_grad():  # starts as the plain mean-of-history query
            self.out.weight.copy_(torch.eye(config.dim))
            self.out.bias.zero_()

    def forward(self, items: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """``items`` [B, H, dim], ``real`` [B, H] bool → [B, H, dim] unit queries (mean of positions ≤ t)."""
        weights = real.float()[..., None]  # [B, H, 1]
        mean = (items * weights).cumsum(dim=1) / weights.cumsum(dim=1).clamp_min(1.0)  # [B, H, dim]
        return F.normalize(self.out(mean), dim=-1)


class SeqRecModel(nn.Module):
    """Item tower + user tower; ``score(u, i) = <query_u, v_i>`` with both unit vectors."""

    def __init__(
        self, text_embeddings: torch.Tensor, has_id: torch.Tensor, config: SeqRecModelConfig
    ) -> None:
        super().__init__()
        self.config = config
        self.items = HybridItemTower(text_embeddings, has_id, config)
        self.user = (
            SequentialUserTower(config) if config.user_tower == "sequential" else MeanUserTower(config)
        )

    def user_queries(self, item_vectors: torch.Tensor, histories: torch.Tensor) -> torch.Tensor:
        """``item_vectors`` [N, dim], ``histories`` [B, H] item rows (``PAD`` = empty) → [B, H, dim] queries."""
        real = histories != PAD  # [B, H]
        items = item_vectors[histories.clamp_min(0)] * real[..., None]  # [B, H, dim]
        return self.user(items, real)

    @torch.inference_mode()
    def item_vectors(self) -> np.ndarray:
        """[N, dim] float32 unit item vectors as served (no ID dropout): what the item index stores."""
        was_training = self.training
        self.eval()
        vectors = self.items().numpy().astype(np.float32)
        self.train(was_training)
        return vectors

    @torch.inference_mode()
    def queries(self, item_vectors: np.ndarray, histories: list[np.ndarray], batch: int = 512) -> np.ndarray:
        """[U, dim] float32 query of each history (item rows, oldest first) from ``item_vectors`` [N, dim]: the
        model's own item vectors, or those of a grown catalog indexed with it (N may differ from the model's)."""
        if item_vectors.ndim != 2 or item_vectors.shape[1] != self.config.dim:
            raise ConfigError(
                f"item vectors have shape {item_vectors.shape}, the model expects [N, {self.config.dim}]"
            )
        was_training = self.training
        self.eval()
        vectors = torch.from_numpy(np.ascontiguousarray(item_vectors, dtype=np.float32))
        padded = left_pad(histories, self.config.history)  # [U, H]
        out = [
            self.user_queries(vectors, torch.from_numpy(padded[a : a + batch]))[:, -1]
            for a in range(0, len(padded), batch)
        ]
        self.train(was_training)
        return torch.cat(out).numpy() if out else np.zeros((0, self.config.dim), np.float32)

    @torch.inference_mode()
    def text_queries(self, text: np.ndarray) -> np.ndarray:
        """[B, dim] float32 unit vectors of ``text`` [B, text_dim] (the text encoder's embeddings of free text)
        through the item tower's text path, so a text query lands where a cold item with that text would."""
        if text.ndim != 2 or text.shape[1] != self.config.text_dim:
            raise ConfigError(
                f"text embeddings have shape {text.shape}, the model expects [B, {self.config.text_dim}]"
            )
        tensor = torch.from_numpy(np.ascontiguousarray(text, dtype=np.float32))
        return self.items.project_text(tensor).numpy().astype(np.float32)


def left_pad(sequences: list[np.ndarray], length: int) -> np.ndarray:
    """[len(sequences), length] int64: the last ``length`` items of each sequence, left-padded with ``PAD``."""
    out = np.full((len(sequences), length), PAD, dtype=np.int64)
    for row, seq in enumerate(sequences):
        tail = np.asarray(seq, dtype=np.int64)[-length:]
        if len(tail):
            out[row, length - len(tail) :] = tail
    return out
