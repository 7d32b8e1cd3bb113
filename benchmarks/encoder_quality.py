"""Retrieval quality of a fine-tuned MiniLM on MovieLens-small against zero-shot MiniLM and popularity.

Temporal leave-last-out, full catalog, seen items excluded, user query = mean of the last 20 train items
(`rayrec eval-retrieval`). The encoder is fine-tuned with `rayrec train-encoder` (Ray Train, 2 CPU workers),
sized to finish in about 10-15 minutes on 2 cores. Prints a markdown table with the time each step took.

    python -m benchmarks.encoder_quality [--src ../shared/data/movielens-small] [--work runs/encoder-quality]
        [--max-steps 300] [--workers 2] [--reuse-zero-shot]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SRC = REPO.parent / "shared" / "data" / "movielens-small"
ITEM_KNN_RECALL_AT_10 = 0.073
"""Item-kNN (cosine, last 20 items) on the same split, measured once on this machine: a typed-in peer that
issue #19 replaces with item-kNN and matrix factorisation measured in the same run."""


def _timed(fn, *args):
    started = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--src", default=str(DEFAULT_SRC), help="MovieLens folder (ml-latest-small layout)")
    parser.add_argument("--work", default=str(REPO / "runs" / "encoder-quality"), help="working directory")
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--history", type=int, default=3)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--freeze-layers", type=int, default=4, help="train only the top 6 - N layers")
    parser.add_argument(
        "--reuse-zero-shot", action="store_true", help="reuse WORK/index-zero-shot.json from an earlier run"
    )
    args = parser.parse_args(argv)

    from rayrec.data.movielens import import_movielens
    from rayrec.encoding import DEFAULT_MODEL
    from rayrec.index.build import BuildIndexConfig, build_index
    from rayrec.index.evaluate import EvalRetrievalConfig, evaluate_retrieval
    from trainers.encoder import EncoderTrainConfig, train_encoder

    work = Path(args.work)
    data = work / "data"
    if not (data / "items.parquet").exists():
        import_movielens(args.src, str(data))

    def index_and_eval(encoder: str, name: str) -> tuple[dict, float]:
        started = time.perf_counter()
        build_index(BuildIndexConfig(data=str(data), out=str(work / name), encoder=encoder))
        result = evaluate_retrieval(
            EvalRetrievalConfig(index=str(work / name), data=str(data), json=str(work / f"{name}.json"))
        )
        return result, time.perf_counter() - started

    zero_json = work / "index-zero-shot.json"
    if args.reuse_zero_shot and zero_json.exists():
        zero_shot, zero_seconds = json.loads(zero_json.read_text()), float("nan")
    else:
        zero_shot, zero_seconds = index_and_eval(DEFAULT_MODEL, "index-zero-shot")
    train_config = EncoderTrainConfig(
        data=str(data),
        out=str(work / "encoder"),
        name=f"quality-{int(time.time())}",
        workers=args.workers,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        history=args.history,
        lr=args.lr,
        freeze_layers=args.freeze_layers,
    )
    summary, train_seconds = _timed(train_encoder, train_config)
    tuned, tuned_seconds = index_and_eval(str(work / "encoder"), "index-fine-tuned")

    popularity = zero_shot["baselines"]["popularity"]
    rows = [
        ("popularity", popularity, 0.0),
        ("zero-shot MiniLM", zero_shot, zero_seconds),
        (
            f"fine-tuned MiniLM ({args.max_steps} steps, {args.workers} workers)",
            tuned,
            train_seconds + tuned_seconds,
        ),
    ]
    print(
        f"\nMovieLens-small, {zero_shot['users']} users, {zero_shot['index']['items']} items, temporal leave-last-out\n"
    )
    print("| model | recall@10 | recall@50 | recall@100 | ndcg@10 | mrr | vs popularity (R@10) | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, m, seconds in rows:
        ratio = m["recall@10"] / popularity["recall@10"] if popularity["recall@10"] else float("nan")
        print(
            f"| {name} | {m['recall@10']:.4f} | {m['recall@50']:.4f} | {m['recall@100']:.4f} | "
            f"{m['ndcg@10']:.4f} | {m['mrr']:.4f} | {ratio:.2f}x | {seconds:.0f} |"
        )
    print(
        f"| item-kNN (measured once, same split) | {ITEM_KNN_RECALL_AT_10:.4f} | | | | | "
        f"{ITEM_KNN_RECALL_AT_10 / popularity['recall@10']:.2f}x | |"
    )
    print(
        f"\ntraining: {train_seconds:.0f}s wall; best validation: "
        f"{json.dumps({k: round(v, 4) for k, v in summary['best'].items() if k.startswith('val/recall')})}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
