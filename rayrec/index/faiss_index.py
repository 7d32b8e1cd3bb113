"""FAISS index construction for normalised embeddings under inner product: ``flat``, ``ivf``, ``hnsw``, ``ivfpq``.

FAISS ids are row numbers of ``item_embeddings.parquet``; :class:`rayrec.index.ItemIndex` maps them to item ids.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from rayrec.errors import ConfigError

IndexType = Literal["flat", "ivf", "hnsw", "ivfpq"]
INDEX_TYPES: tuple[str, ...] = ("flat", "ivf", "hnsw", "ivfpq")
_MIN_POINTS_PER_CENTROID = 39  # FAISS warns below this many training points per centroid
_MAX_TRAIN_POINTS_PER_CENTROID = 40


@dataclass(frozen=True)
class IndexSpec:
    """Which FAISS index to build and its parameters; validated up front."""

    type: IndexType = "flat"
    """``flat`` exact inner product; ``ivf`` inverted lists; ``hnsw`` graph; ``ivfpq`` inverted lists + product quantisation."""
    nlist: int | None = None
    """ivf/ivfpq: number of inverted lists (None: 4·sqrt(n), at most n/39)."""
    nprobe: int = 16
    """ivf/ivfpq: lists visited per query (recall against speed)."""
    pq_m: int | None = None
    """ivfpq: sub-quantisers; must divide the dimension (None: the divisor of d nearest d/8)."""
    pq_bits: int = 8
    """ivfpq: bits per sub-quantiser code (lowered automatically when there are fewer than 2^bits points)."""
    hnsw_m: int = 32
    """hnsw: neighbours per node."""
    ef_construction: int = 80
    """hnsw: candidate list size while building."""
    ef_search: int = 128
    """hnsw: candidate list size while searching (recall against speed)."""

    def __post_init__(self) -> None:
        if self.type not in INDEX_TYPES:
            raise ConfigError(f"index type {self.type!r}: expected one of {', '.join(INDEX_TYPES)}")
        for name in ("nprobe", "pq_bits", "hnsw_m", "ef_construction", "ef_search"):
            if getattr(self, name) < 1:
                raise ConfigError(f"index parameter {name} must be >= 1, got {getattr(self, name)}")
        if self.nlist is not None and self.nlist < 1:
            raise ConfigError(f"index parameter nlist must be >= 1, got {self.nlist}")
        if self.pq_m is not None and self.pq_m < 1:
            raise ConfigError(f"index parameter pq_m must be >= 1, got {self.pq_m}")
        if self.pq_bits > 16:
            raise ConfigError(f"index parameter pq_bits must be <= 16, got {self.pq_bits}")

    def resolved(self, n: int, dim: int) -> IndexSpec:
        """This spec with automatic values filled in for ``n`` vectors of dimension ``dim``."""
        values = asdict(self)
        if self.type in ("ivf", "ivfpq"):
            auto = int(4 * math.sqrt(n))
            values["nlist"] = max(1, min(self.nlist or auto, n // _MIN_POINTS_PER_CENTROID or 1, n))
            values["nprobe"] = min(self.nprobe, values["nlist"])
        if self.type == "ivfpq":
            m = self.pq_m or min(
                (m for m in range(1, dim + 1) if dim % m == 0), key=lambda m: abs(m - dim / 8)
            )
            if dim % m:
                raise ConfigError(f"ivfpq: pq_m={m} does not divide the embedding dimension {dim}")
            values["pq_m"] = m
            values["pq_bits"] = max(1, min(self.pq_bits, int(math.log2(max(n, 2)))))
        return IndexSpec(**values)

    def params(self) -> dict[str, Any]:
        """The parameters that matter for this type (what ``index.json`` records)."""
        keep = {
            "flat": (),
            "ivf": ("nlist", "nprobe"),
            "hnsw": ("hnsw_m", "ef_construction", "ef_search"),
            "ivfpq": ("nlist", "nprobe", "pq_m", "pq_bits"),
        }[self.type]
        return {name: getattr(self, name) for name in keep}


def build_faiss_index(embeddings: np.ndarray, spec: IndexSpec, seed: int = 0):
    """A FAISS inner-product index over ``embeddings`` [N, d] (row i gets id i); ``spec`` must be resolved."""
    import faiss  # heavy (FAISS): rayrec.index loads at `rayrec --help` time

    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, dim = vectors.shape
    metric = faiss.METRIC_INNER_PRODUCT
    if spec.type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif spec.type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, spec.hnsw_m, metric)
        index.hnsw.efConstruction = spec.ef_construction
    else:
        quantizer = faiss.IndexFlatIP(dim)
        if spec.type == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, spec.nlist, metric)
        else:
            index = faiss.IndexIVFPQ(quantizer, dim, spec.nlist, spec.pq_m, spec.pq_bits, metric)
        index.cp.seed = seed
        centroids = max(spec.nlist, 2**spec.pq_bits if spec.type == "ivfpq" else 1)
        sample = min(n, _MAX_TRAIN_POINTS_PER_CENTROID * centroids)
        rows = (
            np.random.default_rng(seed).choice(n, size=sample, replace=False) if sample < n else slice(None)
        )
        index.train(vectors[rows])
    index.add(vectors)
    apply_search_params(index, spec)
    return index


def apply_search_params(index, spec: IndexSpec) -> None:
    """Set the query-time knobs (``nprobe``, ``efSearch``) recorded in ``spec`` on a built or loaded index."""
    import faiss  # heavy (FAISS): rayrec.index loads at `rayrec --help` time

    if spec.type in ("ivf", "ivfpq"):
        faiss.extract_index_ivf(index).nprobe = spec.nprobe
    elif spec.type == "hnsw":
        index.hnsw.efSearch = spec.ef_search
