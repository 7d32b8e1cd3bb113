"""The sequential retrieval model (hybrid text + ID item tower, SASRec user tower) against item-kNN and ALS.

Temporal leave-last-out on a data directory (MovieLens ml-latest-small in the README), full catalog, seen items
excluded — exactly `rayrec eval-retrieval`: the peers (popularity, item-kNN, ALS, BPR) and the zero-shot text
model (mean of the history's text embeddings) are fitted and measured in this run by one `eval-retrieval` call
per split, and every trained model is scored by `eval-retrieval --user-model` on the same split, exclusions and
users. Each model variant is trained with `rayrec train-retrieval-model` once per seed; the tables give the
mean over seeds with a 95% Student-t interval.

Tables: (1) the full model beside the peers; (2) the ablations (mean pooling instead of the sequential tower,
no hard negatives, no ID embedding); (3) the cold-item split (``--cold-fraction``, default 0.2): warm and cold
targets apart. Every run's eval JSON is kept under ``--work`` and reused by ``--resume``.

    python -m benchmarks.sequential_retrieval --data runs/encoder-quality/data \
        --text-index runs/encoder-quality/index-zero-shot [--seeds 3] [--epochs 8] [--resume]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
VARIANTS: dict[str, tuple[str, dict]] = {
    "full": ("hybrid item tower + sequential tower + hard negatives", {}),
    "mean": ("mean pooling instead of the sequential tower", {"user_tower": "mean"}),
    "no-hard": ("no hard negatives (in-batch + logQ only)", {"hard_negatives": 0}),
    "no-id": ("no ID embedding (text part only)", {"use_id": False}),
}
PEERS = ("popularity", "item_knn", "als", "bpr")
PEER_NAMES = {"popularity": "popularity", "item_knn": "item-kNN", "als": "ALS", "bpr": "BPR"}


def _peers(args, cold_fraction: float) -> dict:
    from rayrec.index.evaluate import EvalRetrievalConfig, evaluate_retrieval

    target = Path(args.work) / f"cold{cold_fraction:g}" / "peers.json"
    if args.resume and target.exists():
        return json.loads(target.read_text())
    config = EvalRetrievalConfig(
        index=args.text_index, data=args.data, cold_fraction=cold_fraction, split_seed=args.split_seed
    )
    result = evaluate_retrieval(config)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _train_and_eval(args, variant: str, seed: int, cold_fraction: float) -> dict | None:
    from rayrec.index.evaluate import EvalRetrievalConfig, evaluate_retrieval
    from trainers.seqrec import INDEX_DIR, train_retrieval_model
    from trainers.seqrec_config import SeqRecTrainConfig

    out = Path(args.work) / f"cold{cold_fraction:g}" / f"{variant}-s{seed}"
    target = out / "eval.json"
    if (args.resume or args.report_only) and target.exists():
        return json.loads(target.read_text())
    if args.report_only:
        return None
    config = SeqRecTrainConfig(
        data=args.data,
        index=args.text_index,
        out=str(out),
        seed=seed,
        epochs=args.epochs,
        dim=args.dim,
        history=args.history,
        max_windows=args.max_windows,
        temperature=args.temperature,
        cold_fraction=cold_fraction,
        split_seed=args.split_seed,
        threads=args.threads,
        **VARIANTS[variant][1],
    )
    started = time.perf_counter()
    record = train_retrieval_model(config)
    result = evaluate_retrieval(
        EvalRetrievalConfig(
            index=str(out / INDEX_DIR),
            data=args.data,
            user_model=str(out),
            cold_fraction=cold_fraction,
            split_seed=args.split_seed,
            peers=False,
        )
    )
    result["train_seconds"] = record["seconds"]
    result["seconds"] = time.perf_counter() - started
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{variant} seed {seed} cold {cold_fraction:g}: recall@10 {result['recall@10']:.4f} "
        f"({result['seconds']:.0f} s)",
        file=sys.stderr,
        flush=True,
    )
    return result


BEYOND_COLUMNS = [
    ("ILD", None, "ild@10"),
    ("novelty (bits)", None, "novelty@10"),
    ("coverage", None, "coverage@10"),
    ("Gini items", None, "gini_items@10"),
    ("Gini categories", None, "gini_categories@10"),
]
"""Beyond-accuracy columns (``eval-retrieval``'s keys at K=10), overall."""


def _interval(values: list[float]) -> str:
    from rayrec.metrics.session import mean_interval

    if len(values) < 2:
        return f"{values[0]:.4f}" if values else "–"
    ci = mean_interval(np.asarray(values))
    return f"{ci['mean']:.4f} [{ci['ci95_low']:.4f}, {ci['ci95_high']:.4f}]"


def _get(result: dict, section: str | None, name: str | None, key: str) -> float:
    """``key`` of the model (``name`` None) or of baseline ``name``, overall or in ``section`` (warm/cold)."""
    part = result if section is None else result[section]
    if section is None:
        return result[key] if name is None else result["baselines"][name][key]
    return part["model"][key] if name is None else part["baselines"][name][key]


def _table(peers: dict, runs: dict[str, list[dict]], columns: list[tuple[str, str | None, str]]) -> list[str]:
    header = "| model | " + " | ".join(title for title, _, _ in columns) + " |"
    lines = [header, "|" + " --- |" * (len(columns) + 1)]
    for name in PEERS:
        if name in peers["baselines"]:
            cells = [f"{_get(peers, s, name, k):.4f}" for _, s, k in columns]
            lines.append(f"| {PEER_NAMES[name]} | " + " | ".join(cells) + " |")
    cells = [f"{_get(peers, s, None, k):.4f}" for _, s, k in columns]
    lines.append("| zero-shot text (mean of history) | " + " | ".join(cells) + " |")
    for variant, results in runs.items():
        if not results:
            continue
        cells = [_interval([_get(r, s, None, k) for r in results]) for _, s, k in columns]
        lines.append(
            f"| {VARIANTS[variant][0]} ({len(results)} seed{'s' if len(results) > 1 else ''}) | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(REPO / "runs" / "encoder-quality" / "data"))
    parser.add_argument("--text-index", default=str(REPO / "runs" / "encoder-quality" / "index-zero-shot"))
    parser.add_argument("--work", default=str(REPO / "runs" / "sequential-retrieval"))
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per variant")
    parser.add_argument("--variants", default="full,mean,no-hard,no-id", help="temporal split variants")
    parser.add_argument(
        "--ablation-seeds", type=int, default=None, help="seeds per ablation variant (default: --seeds)"
    )
    parser.add_argument("--cold-variants", default="full", help="cold split variants ('' to skip the split)")
    parser.add_argument("--cold-fraction", type=float, default=0.2)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument(
        "--epochs", type=int, default=15, help="chosen on the validation split (see the notes)"
    )
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--history", type=int, default=20)
    parser.add_argument("--max-windows", type=int, default=2)
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--resume", action="store_true", help="reuse the eval JSON of runs already done")
    parser.add_argument(
        "--report-only", action="store_true", help="train nothing: tables from the runs already under --work"
    )
    parser.add_argument("--json", default=None, help="also write every result here")
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    cold_variants = [v for v in args.cold_variants.split(",") if v]
    unknown = sorted(set(variants + cold_variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")

    k = 10
    overall = [
        (f"Recall@{k}", None, f"recall@{k}"),
        (f"NDCG@{k}", None, f"ndcg@{k}"),
        ("Recall@100", None, "recall@100"),
    ]
    warm_cold = [
        (f"warm Recall@{k}", "warm", f"recall@{k}"),
        (f"warm NDCG@{k}", "warm", f"ndcg@{k}"),
        (f"cold Recall@{k}", "cold", f"recall@{k}"),
        (f"cold NDCG@{k}", "cold", f"ndcg@{k}"),
        ("cold Recall@100", "cold", "recall@100"),
    ]
    report: dict = {"args": vars(args)}

    def train_all(variant: str, cold_fraction: float) -> list[dict]:
        seeds = args.seeds if variant == "full" or args.ablation_seeds is None else args.ablation_seeds
        results = [_train_and_eval(args, variant, seed, cold_fraction) for seed in range(seeds)]
        return [r for r in results if r is not None]  # --report-only: the runs on disk

    # Order of work: the full model, then the cold split, then the ablations (the longest part last).
    temporal_peers = _peers(args, 0.0)
    runs = {v: train_all(v, 0.0) for v in variants if v == "full"}
    cold_peers = _peers(args, args.cold_fraction) if cold_variants else None
    cold_runs = {v: train_all(v, args.cold_fraction) for v in cold_variants}
    runs.update({v: train_all(v, 0.0) for v in variants if v != "full"})
    report["temporal"] = {"peers": temporal_peers, "runs": runs}
    print(f"## Temporal split ({temporal_peers['users']} users, {temporal_peers['index']['items']} items)\n")
    print(
        "\n".join(
            _table(temporal_peers, {v: r for v, r in runs.items() if v == "full"}, overall + warm_cold[:3])
        )
    )
    if len(runs) > 1:
        print("\n## Ablations (temporal split)\n")
        print("\n".join(_table(temporal_peers, runs, overall)))
        print("\n## Beyond accuracy of the same top-10 lists (temporal split)\n")
        print("\n".join(_table(temporal_peers, runs, BEYOND_COLUMNS)))
    if cold_peers is not None:
        report["cold"] = {"peers": cold_peers, "runs": cold_runs}
        split = cold_peers["split"]
        print(
            f"\n## Cold-item split (--cold-fraction {args.cold_fraction:g}: {split['cold_items']} items cold; "
            f"{cold_peers['warm']['users']} warm and {cold_peers['cold']['users']} cold targets)\n"
        )
        print("\n".join(_table(cold_peers, cold_runs, overall[:2] + warm_cold)))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
