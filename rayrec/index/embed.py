"""Embedding a catalog: in this process (:func:`embed_local`) or with Ray Data (:func:`embed_texts`), ``map_batches``
over an actor pool with one encoder loaded per actor, for more cores than one machine has."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import ray

from rayrec.encoding import TextEncoder

ROW_COLUMN = "row"
TEXT_COLUMN = "text"


class EmbedBatch:
    """Ray Data actor: loads the encoder once, then turns batches of ``{row, text}`` into ``{row, embedding}``."""

    def __init__(self, model: str, device: str | None, threads: int, batch_size: int, max_length: int | None):
        import torch  # heavy, and only the actor runs the encoder: the driver never loads torch

        # Ray sizes the actor by num_cpus; torch should use exactly that many threads, not every core
        torch.set_num_threads(max(1, threads))
        self.encoder = TextEncoder.load(model, device=device, max_length=max_length)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch[TEXT_COLUMN]]
        return {
            ROW_COLUMN: batch[ROW_COLUMN],
            "embedding": self.encoder.encode(texts, batch_size=self.batch_size),
        }


def embed_texts(
    texts: list[str],
    model: str,
    *,
    batch_size: int = 128,
    concurrency: int = 2,
    cpus_per_actor: float = 1.0,
    gpu: bool = False,
    max_length: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """[N, d] float32 embeddings of ``texts`` in input order, computed by a pool of ``concurrency`` actors.

    ``model`` must be loadable on every node (a hub name, the packaged default, a shared path or a URI).
    ``progress(done, total)`` is called in this process (the driver) as batches come back, so its lines show
    even when the workers' output is not forwarded (a quiet command); the actors print nothing.
    """
    if not texts:
        raise ValueError("no texts to embed")
    n = len(texts)
    # several blocks per actor so that the pool stays busy and the driver sees steady progress
    rows_per_block = max(batch_size, math.ceil(n / (4 * max(concurrency, 1))))
    # longest texts first across the whole catalog, so that every block (and batch) holds texts of about the
    # same length and pads little; the row column puts each vector back in input order
    order = np.argsort(-np.fromiter(map(len, texts), dtype=np.int64, count=n), kind="stable")
    table = pa.table({ROW_COLUMN: order.astype(np.int64), TEXT_COLUMN: [texts[i] for i in order]})
    blocks = [table.slice(start, rows_per_block) for start in range(0, n, rows_per_block)]
    dataset = ray.data.from_arrow(blocks).map_batches(
        EmbedBatch,
        fn_constructor_kwargs={
            "model": model,
            "device": "cuda" if gpu else None,
            "threads": int(cpus_per_actor),
            "batch_size": batch_size,
            "max_length": max_length,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=cpus_per_actor,
        num_gpus=1 if gpu else 0,
    )
    out: np.ndarray | None = None
    done = 0
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        vectors = np.asarray(batch["embedding"], dtype=np.float32)
        if out is None:
            out = np.zeros((n, vectors.shape[1]), dtype=np.float32)
        out[batch[ROW_COLUMN]] = vectors
        done += len(vectors)
        if progress is not None:
            progress(done, n)
    if out is None or done != n:
        raise RuntimeError(f"Ray Data returned {done} embeddings for {n} texts")
    return out


class ProgressLine:
    """A ``progress(done, total)`` callback that prints a line at most every ``every`` seconds."""

    def __init__(self, label: str, every: float = 5.0):
        self.label, self.every, self.start, self.last = label, every, time.perf_counter(), 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if done == total or now - self.last >= self.every:
            self.last = now
            rate = done / max(now - self.start, 1e-9)
            print(f"{self.label}: {done}/{total} ({rate:.0f}/s)", flush=True)


def embed_local(
    texts: list[str],
    model: str,
    *,
    batch_size: int = 128,
    gpu: bool = False,
    max_length: int | None = None,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """[N, d] float32 embeddings of ``texts`` in input order, computed in this process.

    One encoder, every core of the process (``threads`` torch threads when given, else torch's default),
    length-sorted batches (:meth:`rayrec.encoding.TextEncoder.encode`); on a GPU in bfloat16 autocast.
    """
    import torch  # heavy: only an in-process embedding loads torch in the driver

    if not texts:
        raise ValueError("no texts to embed")
    if threads is not None:
        torch.set_num_threads(max(1, threads))
    encoder = TextEncoder.load(model, device="cuda" if gpu else None, max_length=max_length)
    return encoder.encode(texts, batch_size=batch_size, progress=progress)
