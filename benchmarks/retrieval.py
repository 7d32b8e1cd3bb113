"""FAISS index types against exact search: build time, QPS and recall@10, on clustered 384-d vectors.

    python -m benchmarks.retrieval [--sizes 100000,1000000] [--queries 1000] [--types flat,ivf,hnsw,ivfpq]

The vectors are a Gaussian mixture (``n / 100`` centres, noise of about the centres' own spread), L2
normalised: real encoder embeddings have neighbourhoods, and on i.i.d. random Gaussian
vectors ANN recall collapses (HNSW recall@10 0.29 at 100k) because no point has near neighbours, which
measures nothing useful. Queries are fresh draws from the same mixture. The peer is ``flat`` (exact inner
product, the default) in the same run: QPS ratios and recall@10 are against it. Batched QPS searches all
queries in one call; single QPS searches them one at a time, as a server does. The default size is 100k (a
few minutes on 2 cores); the full run adds 1M (HNSW alone takes several minutes to build there).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

DIM = 384
K = 10


def mixture(n: int, dim: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    """``n`` normalised points around random ``centres`` [C, dim], spread comparable to the centres' own."""
    out = np.empty((n, dim), dtype=np.float32)
    step = 100_000
    for start in range(0, n, step):
        m = min(step, n - start)
        points = centres[rng.integers(0, len(centres), m)] + 0.6 * rng.standard_normal(
            (m, dim), dtype=np.float32
        )
        out[start : start + m] = points / np.linalg.norm(points, axis=1, keepdims=True)
    return out


def measure(index, queries: np.ndarray, single: int) -> tuple[float, float, np.ndarray]:
    """(batched QPS, one-at-a-time QPS, ids [Q, K] of the batched search)."""
    started = time.perf_counter()
    _, ids = index.search(queries, K)
    batched = len(queries) / (time.perf_counter() - started)
    started = time.perf_counter()
    for row in range(single):
        index.search(queries[row : row + 1], K)
    return batched, single / (time.perf_counter() - started), ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100000", help="comma-separated catalog sizes")
    parser.add_argument("--queries", type=int, default=1000, help="queries per batched measurement")
    parser.add_argument("--single", type=int, default=100, help="queries searched one at a time")
    parser.add_argument("--types", default="flat,ivf,hnsw,ivfpq", help="index types (flat is always run)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from rayrec.index.faiss_index import IndexSpec, build_faiss_index

    types = ["flat", *[t for t in args.types.split(",") if t and t != "flat"]]
    print(
        "Clustered Gaussian-mixture vectors (n/100 centres), 384-d, normalised, inner product; "
        f"{args.queries} queries; recall@{K} and QPS ratios against exact flat search in the same run.\n"
    )
    print("| n | index | params | build s | batched QPS | vs flat | single QPS | vs flat | recall@10 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n in (int(s) for s in args.sizes.split(",")):
        rng = np.random.default_rng(args.seed)
        centres = rng.standard_normal((max(n // 100, 1), DIM), dtype=np.float32) / np.sqrt(DIM) * 6
        vectors = mixture(n, DIM, rng, centres)
        queries = mixture(args.queries, DIM, rng, centres)
        flat_ids = None
        flat_qps = (1.0, 1.0)
        for index_type in types:
            spec = IndexSpec(type=index_type).resolved(n, DIM)
            started = time.perf_counter()
            index = build_faiss_index(vectors, spec, seed=args.seed)
            build = time.perf_counter() - started
            batched, single, ids = measure(index, queries, args.single)
            if index_type == "flat":
                flat_ids, flat_qps = ids, (batched, single)
            recall = np.mean([len(set(a) & set(b)) / K for a, b in zip(ids, flat_ids, strict=True)])
            params = ", ".join(f"{k}={v}" for k, v in spec.params().items()) or "exact"
            print(
                f"| {n:,} | {index_type} | {params} | {build:.1f} | {batched:,.0f} | {batched / flat_qps[0]:.1f}x | "
                f"{single:,.0f} | {single / flat_qps[1]:.1f}x | {recall:.3f} |",
                flush=True,
            )
            del index
    return 0


if __name__ == "__main__":
    sys.exit(main())
