"""The int8 query encoder for CPU serving against the float one: query speed and retrieval recall, same run.

    python -m benchmarks.int8_query [--src ../shared/data/movielens-small] [--index DIR] [--users 610]
        [--queries 200] [--repeats 3] [--quick]

The item index stays float32 (built offline by build-index, or passed with ``--index``); only the query side is
quantised (``TextEncoder.load(..., int8=True)``: dynamic int8 quantisation of every Linear layer, as
``rayrec serve --query-int8`` loads it). Speed: the same item texts encoded as queries one at a time (a serving
request) and in batches of 32, float and int8 interleaved ``--repeats`` times, medians compared. Recall: on the
temporal leave-last-out split, each user's query is the mean of their last 20 train items re-embedded by the
query encoder under test and searched against the float index (seen items excluded) — Recall@10 with float
queries against int8 queries, and how many of the top 10 the two share.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SRC = REPO.parent / "shared" / "data" / "movielens-small"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--src", default=str(DEFAULT_SRC), help="MovieLens folder (ml-latest-small layout)")
    parser.add_argument("--work", default=str(REPO / "runs" / "int8-query"), help="working directory")
    parser.add_argument("--index", default=None, help="float index of the same data (default: build one)")
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--users", type=int, default=0, help="evaluate at most this many users (0: all)")
    parser.add_argument("--queries", type=int, default=200, help="texts timed as queries")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="200 users, 100 queries, 2 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.queries, args.repeats = 200, 100, 2
    if not Path(args.src).exists():
        print(f"no MovieLens data at {args.src}: nothing to measure", file=sys.stderr)
        return 2

    import numpy as np
    import torch

    from rayrec.data.io import load_dataset
    from rayrec.data.movielens import import_movielens
    from rayrec.data.split import temporal_split
    from rayrec.encoding import TextEncoder, item_texts
    from rayrec.features import l2_normalize
    from rayrec.index.build import BuildIndexConfig, build_index
    from rayrec.index.evaluate import make_eval_set
    from rayrec.index.exact import exact_search
    from rayrec.index.item_index import ItemIndex
    from rayrec.metrics.retrieval import ranking_metrics

    work = Path(args.work)
    data = work / "data"
    if not (data / "items.parquet").exists():
        import_movielens(args.src, str(data))
    index_dir = args.index or str(work / "index")
    if args.index is None and not (Path(index_dir) / "index.json").exists():
        build_index(BuildIndexConfig(data=str(data), out=index_dir, encoder=args.model, embed="local"))
    index = ItemIndex.load(index_dir)
    dataset = load_dataset(str(data))
    texts = item_texts(dataset.items)
    if dataset.items.column("item_id").to_pylist() != index.item_ids.tolist():
        print(f"{index_dir} was not built from {data}", file=sys.stderr)
        return 2

    exact = TextEncoder.load(args.model)
    int8 = TextEncoder.load(args.model, int8=True)
    rng = np.random.default_rng(0)
    queries = [texts[i] for i in rng.choice(len(texts), min(args.queries, len(texts)), replace=False)]
    timings: dict[tuple[str, int], list[float]] = {}
    for encoder in (exact, int8):  # warm-up
        encoder.encode(queries[:8], batch_size=8)
    for _ in range(args.repeats):
        for label, encoder in (("float32", exact), ("int8", int8)):
            for batch in (1, 32):
                started = time.perf_counter()
                encoder.encode(queries, batch_size=batch)
                timings.setdefault((label, batch), []).append(time.perf_counter() - started)

    train, test = temporal_split(dataset.interactions)
    eval_set = make_eval_set(train, test, index.item_ids)
    users = np.arange(len(eval_set))
    if args.users and args.users < len(users):
        users = np.sort(rng.choice(len(users), args.users, replace=False))
    histories = [eval_set.histories[u] for u in users]
    seen = [eval_set.seen[u] for u in users]
    targets = eval_set.targets[users]
    needed = np.unique(np.concatenate(histories))
    results = {}
    for label, encoder in (("float32", exact), ("int8", int8)):
        table = np.zeros_like(index.embeddings)
        table[needed] = encoder.encode([texts[i] for i in needed], batch_size=64)
        q = np.stack([l2_normalize(table[h].mean(axis=0)) for h in histories])
        _, ranked = exact_search(q, index.embeddings, 100, exclude=seen)
        results[label] = (ranking_metrics(ranked, targets), ranked)
    overlap = np.mean(
        [
            len(set(a[:10]) & set(b[:10])) / 10
            for a, b in zip(results["float32"][1], results["int8"][1], strict=True)
        ]
    )

    print(
        f"\nall-MiniLM-L6-v2 query encoder on CPU ({torch.get_num_threads()} threads), {len(queries)} MovieLens "
        f"texts as queries, {args.repeats} interleaved repeats (median)\n"
    )
    print("| query encoder | batch 1: ms/query | batch 32: ms/query | speed-up batch 1 | speed-up batch 32 |")
    print("| --- | --- | --- | --- | --- |")
    base = {b: float(np.median(timings[("float32", b)])) for b in (1, 32)}
    for label in ("float32", "int8"):
        t = {b: float(np.median(timings[(label, b)])) for b in (1, 32)}
        print(
            f"| {label} | {1000 * t[1] / len(queries):.1f} | {1000 * t[32] / len(queries):.2f} | "
            f"{base[1] / t[1]:.2f}x | {base[32] / t[32]:.2f}x |"
        )
    print(
        f"\nRetrieval, float32 index of {len(index)} items, {len(users)} users (temporal leave-last-out, "
        "query = mean of the last 20 train items embedded by the query encoder)\n"
    )
    print("| query encoder | recall@10 | recall@100 | ndcg@10 | top-10 shared with float32 |")
    print("| --- | --- | --- | --- | --- |")
    for label in ("float32", "int8"):
        m = results[label][0]
        share = 1.0 if label == "float32" else overlap
        print(
            f"| {label} | {m['recall@10']:.4f} | {m['recall@100']:.4f} | {m['ndcg@10']:.4f} | {share:.3f} |"
        )
    change = results["int8"][0]["recall@10"] - results["float32"][0]["recall@10"]
    print(f"\nRecall@10 change with the int8 query encoder: {change:+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
