"""``rayrec build-index``: embed every item with Ray Data, then write embeddings (with the items' categories when
the data has them), FAISS index and ``index.json``."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from rayrec import storage
from rayrec.config import RayConfig, save_config
from rayrec.data.io import read_interactions, read_items
from rayrec.data.schema import INTERACTIONS_FILE, ITEMS_FILE
from rayrec.encoding import DEFAULT_MODEL, check_model_dir, encoder_reference, item_texts, resolve_model
from rayrec.errors import ConfigError, DataError
from rayrec.features import logged_rating_totals, rating_feature
from rayrec.index.faiss_index import IndexSpec, IndexType, build_faiss_index
from rayrec.index.item_index import item_categories, write_index
from rayrec.item_stats import event_log_item_counts
from rayrec.runtime import init_ray
from rayrec.seqrec.catalog import is_model_dir, model_item_vectors

EmbedMode = Literal["auto", "local", "ray"]


@dataclass(kw_only=True)
class BuildIndexConfig(RayConfig):
    """Build an item index from a data directory and an encoder."""

    data: str
    """Data directory (local path or URI) with items.parquet (and interactions.parquet for popularity); the
    items' ``category`` column, when present, is stored in the index (what the ``fair`` re-ranker and the
    category metrics read)."""
    out: str
    """Index directory to write (local path or URI)."""
    encoder: str = DEFAULT_MODEL
    """Encoder: a hub name, the packaged default, or a model directory (e.g. the output of train-encoder)."""
    index_type: IndexType = "flat"
    """FAISS index: flat (exact inner product), ivf, hnsw or ivfpq."""
    nlist: int | None = None
    """ivf/ivfpq: inverted lists (default 4·sqrt(items), at most items/39)."""
    nprobe: int = 16
    """ivf/ivfpq: lists searched per query."""
    pq_m: int | None = None
    """ivfpq: sub-quantisers, a divisor of the dimension (default near dim/8)."""
    pq_bits: int = 8
    """ivfpq: bits per code."""
    hnsw_m: int = 32
    """hnsw: neighbours per node."""
    ef_construction: int = 80
    """hnsw: build-time candidate list."""
    ef_search: int = 128
    """hnsw: query-time candidate list."""
    batch_size: int = 128
    """Texts per encoder forward pass (and per Ray Data batch)."""
    concurrency: int = 2
    """Encoder actors in the Ray Data actor pool."""
    cpus_per_actor: float = 1.0
    """CPUs (and torch threads) per encoder actor."""
    gpu: bool = False
    """Give each encoder actor one GPU."""
    max_length: int | None = None
    """Tokens per text (default: the encoder's max_seq_length)."""
    embed: EmbedMode = "auto"
    """Where items are embedded: local (this process, every core), ray (a Ray Data actor pool of --concurrency
    actors, for a cluster's cores), auto (ray when a cluster address is given by --address or RAY_ADDRESS,
    else local)."""
    threads: int | None = None
    """local: torch threads (default: torch's own choice, the physical cores)."""
    item_log: str | None = None
    """An event log (``rayrec serve``'s or ``rayrec ab``'s events directory) to store each item's
    ``item_ctr``, ``item_watch`` and ``item_lift`` from (:mod:`rayrec.item_stats`): what lets a server
    answer with a policy trained with ``observe_item_log`` / ``observe_lift``."""
    item_log_policies: list[str] | None = None
    """--item-log: count only the impressions of these policies (repeat the flag; default all), e.g. the
    exploration arm's, whose rates no ranker's preferences confound."""
    item_log_watch_scale: float = 1.0
    """--item-log: the longest watch a click's value can hold, which divides it (1 for the HTTP API's click
    values in [0, 1]; a simulated log of watch time: 1 + the world's clickbait_watch)."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.cpus_per_actor <= 0:
            raise ConfigError(f"--cpus-per-actor must be > 0, got {self.cpus_per_actor}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")
        if not self.item_log_watch_scale > 0:
            raise ConfigError(f"--item-log-watch-scale must be > 0, got {self.item_log_watch_scale}")

    def embed_mode(self) -> str:
        """``local`` or ``ray``: ``auto`` resolved (ray exactly when a cluster address is configured)."""
        if self.embed != "auto":
            return self.embed
        return "ray" if (self.address or os.environ.get("RAY_ADDRESS")) else "local"

    def spec(self) -> IndexSpec:
        return IndexSpec(
            type=self.index_type,
            nlist=self.nlist,
            nprobe=self.nprobe,
            pq_m=self.pq_m,
            pq_bits=self.pq_bits,
            hnsw_m=self.hnsw_m,
            ef_construction=self.ef_construction,
            ef_search=self.ef_search,
        )


def interaction_stats(data_dir: str, item_ids: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """From ``interactions.parquet``: ([N] int64 interactions per item, zeros when the file is absent;
    [N] float32 each item's ``item_rating`` (:func:`rayrec.features.rating_feature` of its logged ratings),
    None when the interactions have no rating event)."""
    uri = storage.join(data_dir, INTERACTIONS_FILE)
    if not storage.exists(uri):
        return np.zeros(len(item_ids), dtype=np.int64), None
    table = read_interactions(uri, item_ids=set(item_ids))
    position = {item: row for row, item in enumerate(item_ids)}
    rows = np.fromiter((position[i] for i in table.column("item_id").to_pylist()), dtype=np.int64)
    totals = logged_rating_totals(np.asarray(item_ids), table)
    rating = None if totals is None else rating_feature(*totals)
    return np.bincount(rows, minlength=len(item_ids)).astype(np.int64), rating


def embed_items(config: BuildIndexConfig, texts: list[str], model: str) -> tuple[np.ndarray, float]:
    """([N, d] embeddings of ``texts`` by the resolved encoder ``model``, seconds spent embedding them), in this
    process or by a Ray Data actor pool as ``config.embed_mode()`` says (Ray's start-up is not counted)."""
    from rayrec.index.embed import ProgressLine, embed_local, embed_texts  # heavy: keeps `rayrec --help` fast

    mode = config.embed_mode()
    if mode == "local":
        where = "GPU" if config.gpu else "CPU" + (f", {config.threads} threads" if config.threads else "")
        print(f"embedding {len(texts)} items in this process ({where})", flush=True)
        started = time.perf_counter()
        embeddings = embed_local(
            texts,
            model,
            batch_size=config.batch_size,
            gpu=config.gpu,
            max_length=config.max_length,
            threads=config.threads,
            progress=ProgressLine("embedding items"),
        )
    else:
        init_ray(
            config.address,
            log_dir=None if storage.is_remote(config.out) else config.out,
            verbose=config.verbose,
        )
        # Progress comes from this process (the driver), which reads the actors' batches back: the actors print
        # nothing, so a quiet run (workers' output not forwarded) shows the same lines as a verbose one.
        each = "1 GPU" if config.gpu else f"{config.cpus_per_actor:g} CPU"
        actors = "actor" if config.concurrency == 1 else "actors"
        print(
            f"embedding {len(texts)} items with {config.concurrency} encoder {actors} ({each} each)",
            flush=True,
        )
        started = time.perf_counter()
        embeddings = embed_texts(
            texts,
            model,
            batch_size=config.batch_size,
            concurrency=config.concurrency,
            cpus_per_actor=config.cpus_per_actor,
            gpu=config.gpu,
            max_length=config.max_length,
            progress=ProgressLine("embedding items"),
        )
    return embeddings, time.perf_counter() - started


def build_index(config: BuildIndexConfig) -> dict[str, Any]:
    """Embed, index and write ``config.out``; returns ``index.json``'s content plus timing figures.

    With ``config.encoder`` a retrieval model (a ``train-retrieval-model`` output), the vectors are the model's
    item tower's (:func:`rayrec.seqrec.catalog.model_item_vectors`): only the items it does not know are embedded.
    """
    spec = config.spec()  # parameter errors before any work
    items_uri = storage.join(config.data, ITEMS_FILE)
    if not storage.exists(items_uri):
        raise DataError(
            f"{config.data}: no {ITEMS_FILE} (expected a data directory, see `rayrec data --help`)"
        )
    items = read_items(items_uri)
    texts = item_texts(items, source=items_uri)
    item_ids = items.column("item_id").to_pylist()
    counts = summary = None
    if config.item_log is not None:  # before the embedding: a bad log fails in seconds
        counts = event_log_item_counts(
            config.item_log,
            np.asarray(item_ids),
            config.item_log_watch_scale,
            tuple(config.item_log_policies or ()),
        )
        summary = counts.summary()
        print(
            f"item log {config.item_log}: {summary['impressions']} impressions, {summary['clicks']} clicks, "
            f"{summary['lift_pairs']} measured lifts",
            flush=True,
        )
    spent: list[tuple[int, float]] = []  # (texts embedded, seconds) of each embedding pass

    def embed(texts: list[str], model: str) -> np.ndarray:
        vectors, seconds = embed_items(config, texts, model)
        spent.append((len(texts), seconds))
        return vectors

    catalog = None
    if is_model_dir(config.encoder):  # a train-retrieval-model output: its item tower makes the vectors
        popularity, rating = interaction_stats(config.data, item_ids)
        catalog = model_item_vectors(config.encoder, item_ids, texts, embed)
        embeddings, encoder = catalog.vectors, catalog.encoder
    else:
        model = resolve_model(config.encoder)
        if storage.is_remote(model):
            with storage.local_input_dir(model) as local:
                check_model_dir(local)
        popularity, rating = interaction_stats(config.data, item_ids)
        embeddings, encoder = embed(texts, model), encoder_reference(config.encoder)
    embedded, embed_seconds = sum(n for n, _ in spent), sum(seconds for _, seconds in spent)
    spec = spec.resolved(len(item_ids), embeddings.shape[1])
    started = time.perf_counter()
    faiss_index = build_faiss_index(embeddings, spec)
    index_seconds = time.perf_counter() - started
    print(
        f"index {spec.type} of {len(item_ids)} items ({embeddings.shape[1]}-d) built in {index_seconds:.1f}s",
        flush=True,
    )
    meta = write_index(
        config.out,
        item_ids,
        embeddings,
        popularity,
        faiss_index,
        spec,
        encoder=encoder,
        categories=item_categories(items, item_ids),
        rating=rating,
        item_log=None if counts is None else counts.statistics(),
        item_log_summary=summary,
    )
    save_config(config, config.out)
    embedding = (
        f"embedding {embed_seconds:.1f}s ({embedded / max(embed_seconds, 1e-9):.0f} items/s)"
        if embedded
        else "nothing to embed"
    )
    print(f"index written to {config.out}: {embedding}, index {index_seconds:.1f}s", flush=True)
    extra = {"embed_mode": config.embed_mode()}
    if catalog is not None:
        print(f"from user model {config.encoder}: {catalog.summary()}", flush=True)
        extra["model"] = {"known": catalog.known, "new": catalog.new, "dropped": catalog.dropped}
    return {**meta, "embed_seconds": embed_seconds, "index_seconds": index_seconds, **extra}
