"""Retrieval quality of a fine-tuned MiniLM on MovieLens-small against zero-shot MiniLM and the classical peers.

Temporal leave-last-out, full catalog, seen items excluded, user query = mean of the last 20 train items
(`rayrec eval-retrieval`). Every peer is fitted and measured in this run on the same split and metrics, by
`eval-retrieval` itself: popularity, item-kNN (cosine on the user-item matrix) and ALS/BPR matrix
factorisation (the `implicit` library). The encoder is fine-tuned with `rayrec train-encoder` (Ray Train, 2 CPU
workers). Recall@10 and NDCG@10 are also given for warm targets (items with train interactions) and cold ones
(none: the CF peers cannot score them); `--cold-fraction` makes that share of the held-out items cold on
purpose, for the encoder's training as well as for the evaluation. Prints markdown tables with the time each
step took.

    python -m benchmarks.encoder_quality [--src ../shared/data/movielens-small] [--work runs/encoder-quality]
        [--max-steps 300] [--workers 2] [--cold-fraction 0.2] [--reuse-zero-shot] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SRC = REPO.parent / "shared" / "data" / "movielens-small"


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
        "--cold-fraction", type=float, default=0.0, help="share of held-out items made cold (train and eval)"
    )
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument(
        "--reuse-zero-shot",
        action="store_true",
        help="reuse WORK/index-zero-shot (its embeddings) from an earlier run; the evaluation is redone",
    )
    parser.add_argument(
        "--quick", action="store_true", help="60 fine-tuning steps: a smoke run, not a result"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.max_steps = min(args.max_steps, 60)
    if not Path(args.src).exists() and not (Path(args.work) / "data" / "items.parquet").exists():
        print(f"no MovieLens data at {args.src}: nothing to measure", file=sys.stderr)
        return 2

    from rayrec.data.movielens import import_movielens
    from rayrec.encoding import DEFAULT_MODEL
    from rayrec.index.build import BuildIndexConfig, build_index
    from rayrec.index.evaluate import EvalRetrievalConfig, evaluate_retrieval
    from trainers.encoder import EncoderTrainConfig, train_encoder

    work = Path(args.work)
    data = work / "data"
    if not (data / "items.parquet").exists():
        import_movielens(args.src, str(data))

    def index_and_eval(encoder: str, name: str, build: bool = True, peers: bool = True) -> tuple[dict, float]:
        started = time.perf_counter()
        if build:
            build_index(BuildIndexConfig(data=str(data), out=str(work / name), encoder=encoder))
        result = evaluate_retrieval(
            EvalRetrievalConfig(
                index=str(work / name),
                data=str(data),
                json=str(work / f"{name}.json"),
                cold_fraction=args.cold_fraction,
                split_seed=args.split_seed,
                peers=peers,
            )
        )
        return result, time.perf_counter() - started

    reuse = args.reuse_zero_shot and (work / "index-zero-shot" / "index.json").exists()
    zero_shot, zero_seconds = index_and_eval(DEFAULT_MODEL, "index-zero-shot", build=not reuse)
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
        cold_fraction=args.cold_fraction,
        split_seed=args.split_seed,
    )
    summary, train_seconds = _timed(train_encoder, train_config)
    tuned, tuned_seconds = index_and_eval(str(work / "encoder"), "index-fine-tuned", peers=False)

    baselines = zero_shot["baselines"]  # fitted on the same split in this run; the index does not matter
    popularity = baselines["popularity"]
    tuned_name = f"fine-tuned MiniLM ({args.max_steps} steps, {args.workers} workers)"
    rows = [(name.replace("_", "-"), baselines[name], "baselines", name, None) for name in baselines]
    rows += [
        ("zero-shot MiniLM", zero_shot, "model", None, zero_seconds),
        (tuned_name, tuned, "model", None, train_seconds + tuned_seconds),
    ]

    def section(name: str, kind: str, peer: str | None, result: dict) -> dict:
        part = result[name]
        return part["model"] if kind == "model" else part["baselines"][peer]

    split = zero_shot["split"]
    print(
        f"\nMovieLens-small, {zero_shot['users']} users, {zero_shot['index']['items']} items, temporal leave-last-out"
        f" ({split['kind']} split, {split['cold_items']} items made cold); warm targets: "
        f"{zero_shot['warm']['users']}, cold targets: {zero_shot['cold']['users']}\n"
    )
    print(
        "| model | recall@10 | recall@50 | recall@100 | ndcg@10 | mrr | vs popularity (R@10) "
        "| warm R@10 | warm NDCG@10 | cold R@10 | cold NDCG@10 | seconds |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, m, kind, peer, seconds in rows:
        source = tuned if name == tuned_name else zero_shot
        warm, cold = section("warm", kind, peer, source), section("cold", kind, peer, source)
        ratio = m["recall@10"] / popularity["recall@10"] if popularity["recall@10"] else float("nan")
        no_cold = kind == "baselines" and peer != "popularity"
        cold_cells = (
            "0 (n/a: no train interactions) | 0 (n/a)"
            if no_cold
            else f"{cold['recall@10']:.4f} | {cold['ndcg@10']:.4f}"
        )
        shown = "in eval" if seconds is None else f"{seconds:.0f}"
        print(
            f"| {name} | {m['recall@10']:.4f} | {m['recall@50']:.4f} | {m['recall@100']:.4f} | "
            f"{m['ndcg@10']:.4f} | {m['mrr']:.4f} | {ratio:.2f}x | {warm['recall@10']:.4f} | "
            f"{warm['ndcg@10']:.4f} | {cold_cells} | {shown} |"
        )
    for name, why in zero_shot.get("skipped", {}).items():
        print(f"\n{name} not measured: {why}")
    print(f"\n{zero_shot['cold']['note']}")
    print(
        f"\ntraining: {train_seconds:.0f}s wall; best validation: "
        f"{json.dumps({k: round(v, 4) for k, v in summary['best'].items() if k.startswith('val/recall')})}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
