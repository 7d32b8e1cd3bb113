"""Train the sequential retrieval model (:mod:`rayrec.seqrec.model`) on the train rows of the temporal split.

Objective: next-item prediction at every position of user sub-sequences (SASRec, Kang & McAuley, ICDM 2018),
as a sampled softmax over

- in-batch candidates: the distinct target items of the batch, which are drawn in proportion to their
  frequency, so their logits get the logQ correction ``s(u, j) - log q_j`` (Yi et al., "Sampling-Bias-Corrected
  Neural Modeling for Large Corpus Item Recommendations", RecSys 2019);
- hard negatives: per window, items drawn from the top of a FAISS search with the user's current query over
  the current item vectors, the user's own train items removed; the index is rebuilt every epoch (ANCE-style
  asynchronous refresh, Xiong et al., ICLR 2021).

The held-out item of each user (the test row of the split) is never read; with ``holdout="validation"`` the
user's last train item (their second-to-last interaction) is held out too and scored as a validation target.
Plain torch on CPU; everything random is seeded.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from rayrec import storage
from rayrec.config import save_config
from rayrec.data.io import load_dataset
from rayrec.data.split import cold_item_split, temporal_split
from rayrec.errors import DataError
from rayrec.index.evaluate import EvalSet, evaluate_rankings, item_rows, make_eval_set, user_sequences
from rayrec.index.exact import exact_search
from rayrec.index.faiss_index import IndexSpec, build_faiss_index
from rayrec.index.item_index import item_categories, load_index_items
from rayrec.seqrec.artifact import load_model, save_model, write_model_index
from rayrec.seqrec.model import PAD, SeqRecModel, SeqRecModelConfig, left_pad
from trainers.seqrec_config import SeqRecTrainConfig

INDEX_DIR = "index"
METRICS_FILE = "metrics.json"
VAL_K = 10


@dataclass
class TrainingData:
    """What training reads: the catalog's text embeddings and the users' train sequences."""

    item_ids: np.ndarray
    """[N] str item ids (the text index's order)."""
    text_embeddings: np.ndarray
    """[N, text_dim] float32 frozen text embeddings."""
    sequences: list[np.ndarray]
    """[users] int64 item rows of each user's train interactions, oldest first."""
    counts: np.ndarray
    """[N] int64 train interactions per item (0: cold, text part only)."""
    categories: np.ndarray | None
    """[N] category of each item (stored in the exported index), None when the data has none."""
    validation: EvalSet | None
    """holdout=validation: each user's last train item as the target, the rest as history; else None."""
    split: dict
    """``{"cold_fraction", "split_seed", "holdout", "cold_items"}``."""
    text_encoder: str | None = None
    """The text index's encoder (recorded in ``model.json``: what embeds a served text query)."""


def load_training_data(config: SeqRecTrainConfig) -> TrainingData:
    """Text embeddings from ``config.index`` and train sequences from ``config.data``, checked against each other."""
    text = load_index_items(config.index)
    dataset = load_dataset(config.data)
    missing = set(map(str, dataset.items.column("item_id").to_pylist())) - set(map(str, text.item_ids))
    if missing:
        raise DataError(
            f"{config.data}: {len(missing)} items are not in text index {config.index} "
            f"(e.g. {sorted(missing)[0]!r}); build the index from this data"
        )
    train, _test, cold = cold_item_split(dataset.interactions, config.cold_fraction, config.split_seed)
    validation = None
    if config.holdout == "validation":
        train, val = temporal_split(train)
        validation = make_eval_set(train, val, text.item_ids, history=config.history)
    position = {str(item): row for row, item in enumerate(text.item_ids.tolist())}
    sequences = [s for s in user_sequences(train, position).values() if len(s) >= 2]
    if not sequences:
        raise DataError(f"{config.data}: no user has two or more train interactions to learn from")
    counts = np.bincount(item_rows(train, position), minlength=len(position)).astype(np.int64)
    return TrainingData(
        item_ids=text.item_ids,
        text_embeddings=text.embeddings,
        sequences=sequences,
        counts=counts,
        categories=item_categories(dataset.items, text.item_ids),
        validation=validation,
        text_encoder=text.meta.get("encoder"),
        split={
            "cold_fraction": config.cold_fraction,
            "split_seed": config.split_seed,
            "holdout": config.holdout,
            "cold_items": len(cold),
        },
    )


def epoch_windows(
    sequences: list[np.ndarray], history: int, rng: np.random.Generator, max_windows: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut every sequence into windows of at most ``history`` next-item steps, at a random offset per epoch;
    ``max_windows`` > 0 keeps each sequence's most recent ones.

    Returns ``inputs`` [W, history] and ``targets`` [W, history] item rows (left-padded with ``PAD``;
    ``targets[w, t]`` is the item after ``inputs[w, t]``) and ``owner`` [W], the sequence of each window.
    """
    inputs, targets, owner = [], [], []
    for user, seq in enumerate(sequences):
        first = 1 - int(rng.integers(0, history))  # targets are seq[1:]; the first chunk may be short
        starts = [s for s in range(first, len(seq), history) if max(s, 1) < min(s + history, len(seq))]
        for start in starts[-max_windows:] if max_windows else starts:
            a, b = max(start, 1), min(start + history, len(seq))
            inputs.append(seq[a - 1 : b - 1])
            targets.append(seq[a:b])
            owner.append(user)
    return left_pad(inputs, history), left_pad(targets, history), np.asarray(owner, dtype=np.int64)


def mine_hard_negatives(
    model: SeqRecModel,
    inputs: np.ndarray,
    owner: np.ndarray,
    seen: list[np.ndarray],
    depth: int,
) -> np.ndarray:
    """[W, depth] item rows: for each window, the top ``depth`` items of a FAISS search with the query at its last
    position over the current item vectors, the owner's train items removed (``PAD`` where fewer remain)."""
    vectors = model.item_vectors()  # [N, d]
    n, dim = vectors.shape
    index = build_faiss_index(vectors, IndexSpec("flat").resolved(n, dim))
    with torch.inference_mode():
        model.eval()
        queries = torch.cat(
            [
                model.user_queries(torch.from_numpy(vectors), torch.from_numpy(inputs[a : a + 512]))[:, -1]
                for a in range(0, len(inputs), 512)
            ]
        ).numpy()  # [W, d]
        model.train()
    fetch = min(n, depth + max(len(seen[u]) for u in np.unique(owner)))
    _, found = index.search(np.ascontiguousarray(queries), fetch)  # [W, fetch]
    pool = np.full((len(inputs), depth), PAD, dtype=np.int64)
    for row, user in enumerate(owner):
        kept = found[row][(found[row] >= 0) & ~np.isin(found[row], seen[user])][:depth]
        pool[row, : len(kept)] = kept
    return pool


def sampled_softmax_loss(
    model: SeqRecModel,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    log_q: torch.Tensor | None,
    hard: torch.Tensor | None,
    temperature: float,
) -> torch.Tensor:
    """Mean next-item cross-entropy over the real positions of a batch of windows.

    ``inputs``/``targets`` [B, H] item rows (``PAD`` = empty), ``log_q`` [N] log item frequency (None: no
    correction), ``hard`` [B, n_hard] hard negatives per window (``PAD`` = none; None: no hard negatives).
    """
    hard = torch.full((len(inputs), 0), PAD, dtype=torch.long) if hard is None else hard
    # Only the items the batch touches go through the item tower: ``local`` renumbers them 0..R-1.
    touched = torch.cat([inputs.flatten(), targets.flatten(), hard.flatten()])
    rows, local = torch.unique(touched.clamp_min(0), return_inverse=True)  # [R], [len(touched)]
    local = torch.where(touched == PAD, PAD, local)
    n_in, n_tgt = inputs.numel(), targets.numel()
    local_inputs = local[:n_in].view_as(inputs)  # [B, H]
    local_targets = local[n_in : n_in + n_tgt].view_as(targets)  # [B, H]
    local_hard = local[n_in + n_tgt :].view_as(hard)  # [B, n_hard]
    vectors = model.items(rows)  # [R, d], ID dropout applied in training mode
    queries = model.user_queries(vectors, local_inputs)  # [B, H, d]
    real = local_targets != PAD  # [B, H]
    q = queries[real]  # [P, d]
    positives = local_targets[real]  # [P]
    candidates, label = torch.unique(positives, return_inverse=True)  # [C], [P]
    logits = q @ vectors[candidates].T / temperature  # [P, C]
    if log_q is not None:
        logits = logits - log_q[rows[candidates]][None]
    if hard.shape[1]:
        window = torch.arange(len(inputs))[:, None].expand_as(targets)[real]  # [P]
        negatives = local_hard[window]  # [P, n_hard]
        hard_logits = (q[:, None] * vectors[negatives.clamp_min(0)]).sum(-1) / temperature  # [P, n_hard]
        blocked = (negatives == PAD) | (negatives == positives[:, None])
        logits = torch.cat(
            [logits, hard_logits.masked_fill(blocked, float("-inf"))], dim=1
        )  # [P, C + n_hard]
    return F.cross_entropy(logits, label)


def validation_metrics(model: SeqRecModel, eval_set: EvalSet, k: int = VAL_K) -> dict[str, float]:
    """Recall/NDCG/MRR of the model on ``eval_set`` (full catalog, train items excluded), as eval-retrieval."""
    vectors = model.item_vectors()
    queries = model.queries(vectors, eval_set.histories)
    return evaluate_rankings(lambda seen, depth: exact_search(queries, vectors, depth, seen)[1], eval_set, k)


def train_model(config: SeqRecTrainConfig, data: TrainingData) -> tuple[SeqRecModel, dict]:
    """Train on ``data``; returns the model (eval mode) and the training record (loss and validation per epoch)."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    model_config = SeqRecModelConfig(
        text_dim=data.text_embeddings.shape[1],
        dim=config.dim,
        user_tower=config.user_tower,
        use_id=config.use_id,
        id_dropout=config.id_dropout,
        history=config.history,
        layers=config.layers,
        heads=config.heads,
        dropout=config.dropout,
    )
    model = SeqRecModel(
        torch.from_numpy(data.text_embeddings), torch.from_numpy(data.counts > 0), model_config
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    freq = data.counts / max(data.counts.sum(), 1)
    log_q = torch.from_numpy(np.log(np.maximum(freq, 1e-12)).astype(np.float32)) if config.logq else None
    seen = [np.unique(s) for s in data.sequences]
    record: dict = {"epochs": [], "split": data.split}
    started = time.perf_counter()
    model.train()
    for epoch in range(config.epochs):
        inputs, targets, owner = epoch_windows(data.sequences, config.history, rng, config.max_windows)
        pool = None
        if config.hard_negatives and epoch >= config.mine_from_epoch:
            pool = mine_hard_negatives(model, inputs, owner, seen, config.mine_depth)
        order = rng.permutation(len(inputs))
        losses = []
        for a in range(0, len(order), config.batch_size):
            batch = order[a : a + config.batch_size]
            hard = None
            if pool is not None:
                picks = np.argsort(rng.random((len(batch), pool.shape[1])), axis=1)[
                    :, : config.hard_negatives
                ]
                hard = torch.from_numpy(np.take_along_axis(pool[batch], picks, axis=1))  # [B, n_hard]
            loss = sampled_softmax_loss(
                model,
                torch.from_numpy(inputs[batch]),
                torch.from_numpy(targets[batch]),
                log_q,
                hard,
                config.temperature,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            losses.append(loss.item())
        entry = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": time.perf_counter() - started}
        last = epoch + 1 == config.epochs
        if data.validation is not None and ((epoch + 1) % config.eval_every == 0 or last):
            entry["validation"] = validation_metrics(model, data.validation)
            model.train()
        record["epochs"].append(entry)
        print(json.dumps(entry), flush=True)
    model.eval()
    record["seconds"] = time.perf_counter() - started
    if data.validation is not None:
        scored = [e for e in record["epochs"] if "validation" in e]
        best = max(scored, key=lambda e: e["validation"][f"recall@{VAL_K}"])
        record["best_validation"] = {"epoch": best["epoch"], **best["validation"]}
    return model, record


def train_retrieval_model(config: SeqRecTrainConfig) -> dict:
    """Train, then write the model directory, its item index (``out/index``), metrics.json and config.yaml."""
    data = load_training_data(config)
    model, record = train_model(config, data)
    save_model(
        config.out,
        model,
        data.item_ids,
        split=data.split,
        text_index=config.index,
        text_encoder=data.text_encoder,
        seed=config.seed,
        validation=record.get("best_validation"),
    )
    loaded = load_model(config.out)  # the index is built from what was written, as any later user would
    write_model_index(
        loaded, config.out, storage.join(config.out, INDEX_DIR), data.counts, categories=data.categories
    )
    storage.write_text(storage.join(config.out, METRICS_FILE), json.dumps(record, indent=2) + "\n")
    save_config(config, config.out)
    return record
