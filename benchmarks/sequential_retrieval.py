"""Retrieval on item text, one ablation ladder: zero-shot text → fine-tuned text encoder (supervised, + SimCSE,
+ augmentation, + FGM) → the hybrid sequential model (text + ID item tower, hard negatives, SASRec user tower).

Temporal leave-last-out on a data directory (MovieLens ml-latest-small in the README), full catalog, seen items
excluded — exactly `rayrec eval-retrieval`: the peers (popularity, item-kNN, ALS, BPR) and the zero-shot text
model (mean of the history's text embeddings) are fitted and measured in this run by one `eval-retrieval` call
per split, and every trained model is scored by `eval-retrieval` on the same split, exclusions and users. The
text-encoder variants are fine-tuned with `rayrec train-encoder` (Ray Train) and scored through their own
`build-index`, query = mean of the history's vectors; the sequential-model variants are trained with
`rayrec train-retrieval-model` and scored with `--user-model`. Each variant is trained once per seed; the tables
give the mean over seeds with a 95% Student-t interval.

Tables: (1) the chosen model (mean pooling, chosen on validation) and the sequential tower beside the peers;
(2) paired per-user Recall@10 differences against item-kNN, ALS and zero-shot text (a variant's hits averaged
over its seeds); (3) the ablation ladder, every variant, and what each step buys (paired per user); (4) beyond
accuracy of the same lists; (5) the cold-item split (``--cold-fraction``, default 0.2): warm and cold targets
apart, and the paired difference on the cold targets against zero-shot text. Every run's eval JSON is kept
under ``--work`` and reused by ``--resume``.

    python -m benchmarks.sequential_retrieval --data runs/encoder-quality/data \
        --text-index runs/encoder-quality/index-zero-shot [--seeds 3] [--resume]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from rayrec.metrics.session import mean_interval

REPO = Path(__file__).resolve().parent.parent
TEXT_VARIANTS: dict[str, tuple[str, dict]] = {
    "text-supervised": ("text encoder fine-tuned: next-item InfoNCE + logQ only", {}),
    "text-simcse": ("+ SimCSE on item text", {"simcse_weight": 0.5}),
    "text-augment": ("+ augmentation of the SimCSE views", {"simcse_weight": 0.5, "augment": True}),
    "text-fgm": ("+ adversarial training (FGM)", {"simcse_weight": 0.5, "augment": True, "fgm_epsilon": 1.0}),
}
"""Fine-tuned text encoders (``train-encoder`` options), each adding one seed of the project to the one before."""
SEQUENTIAL_VARIANTS: dict[str, tuple[str, dict]] = {
    "no-id": (
        "sequential model without ID embeddings (text part only)",
        {"user_tower": "sequential", "use_id": False},
    ),
    "no-hard": (
        "hybrid item tower + sequential tower, no hard negatives",
        {"user_tower": "sequential", "hard_negatives": 0},
    ),
    "full": ("hybrid item tower + sequential tower + hard negatives", {"user_tower": "sequential"}),
    "mean": ("hybrid item tower + hard negatives, mean pooling user tower (chosen)", {"user_tower": "mean"}),
}
"""Sequential-model variants (``train-retrieval-model`` options) on the frozen zero-shot text vectors."""
VARIANTS = {**TEXT_VARIANTS, **SEQUENTIAL_VARIANTS}
"""Every variant, in the order of the ablation table."""
STEPS: tuple[tuple[str, str, str], ...] = (
    ("fine-tuning the text encoder", "text-supervised", "zero-shot"),
    ("+ SimCSE", "text-simcse", "text-supervised"),
    ("+ augmentation", "text-augment", "text-simcse"),
    ("+ FGM", "text-fgm", "text-augment"),
    ("ID embeddings (hybrid item tower)", "full", "no-id"),
    ("mined hard negatives", "full", "no-hard"),
    ("mean pooling instead of the transformer tower", "mean", "full"),
)
"""What each step of the ladder buys: (title, variant with it, variant without it; ``zero-shot``: the text index)."""
HEADLINE = ("mean", "full")
"""The model chosen on the validation split (mean pooling: the higher validation Recall@10 on each of three
seeds, see docs/retrieval.md) and the sequential tower it was chosen over: trained first, shown first."""
PEERS = ("popularity", "item_knn", "als", "bpr")
PEER_NAMES = {"popularity": "popularity", "item_knn": "item-kNN", "als": "ALS", "bpr": "BPR"}


def _peers(args, cold_fraction: float) -> dict:
    from rayrec.index.evaluate import EvalRetrievalConfig, evaluate_retrieval

    target = Path(args.work) / f"cold{cold_fraction:g}" / "peers.json"
    if args.resume and target.exists() and "per_user" in (cached := json.loads(target.read_text())):
        return cached
    config = EvalRetrievalConfig(
        index=args.text_index, data=args.data, cold_fraction=cold_fraction, split_seed=args.split_seed
    )
    result = evaluate_retrieval(config)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _train_and_eval(args, variant: str, seed: int, cold_fraction: float) -> dict | None:
    """The eval JSON of one variant and seed: reused (``--resume``), re-scored from the trained model when it
    predates the per-user ranks, or trained and scored."""
    out = Path(args.work) / f"cold{cold_fraction:g}" / f"{variant}-s{seed}"
    target = out / "eval.json"
    cached = json.loads(target.read_text()) if (args.resume or args.report_only) and target.exists() else None
    if cached is not None and "per_user" in cached:
        return cached
    if cached is not None:  # scored before eval-retrieval kept per-user ranks: score the same model again
        result = {
            **_evaluate(args, variant, cold_fraction, out),
            "train_seconds": cached.get("train_seconds"),
        }
        target.write_text(json.dumps(result, indent=2) + "\n")
        return result
    if args.report_only:
        return None
    started = time.perf_counter()
    train = _train_text if variant in TEXT_VARIANTS else _train_sequential
    train_seconds = train(args, variant, seed, cold_fraction, out)
    result = {**_evaluate(args, variant, cold_fraction, out), "train_seconds": train_seconds}
    result["seconds"] = time.perf_counter() - started
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{variant} seed {seed} cold {cold_fraction:g}: recall@10 {result['recall@10']:.4f} "
        f"({result['seconds']:.0f} s)",
        file=sys.stderr,
        flush=True,
    )
    return result


def _evaluate(args, variant: str, cold_fraction: float, out: Path) -> dict:
    """``eval-retrieval`` of a trained variant: a text encoder through its own index (query = mean of the
    history's vectors), a sequential model through its index and user tower."""
    from rayrec.index.evaluate import EvalRetrievalConfig, evaluate_retrieval
    from trainers.seqrec import INDEX_DIR

    text = variant in TEXT_VARIANTS
    config = EvalRetrievalConfig(
        index=str(out / ("index" if text else INDEX_DIR)),
        data=args.data,
        user_model=None if text else str(out),
        cold_fraction=cold_fraction,
        split_seed=args.split_seed,
        peers=False,
    )
    return evaluate_retrieval(config)


def _train_text(args, variant: str, seed: int, cold_fraction: float, out: Path) -> float:
    """``train-encoder`` with the variant's options, then ``build-index`` of that encoder; the training seconds."""
    from rayrec.index.build import BuildIndexConfig, build_index
    from trainers.encoder import EncoderTrainConfig, train_encoder

    config = EncoderTrainConfig(
        data=args.data,
        out=str(out / "encoder"),
        name=f"{variant}-s{seed}",
        workers=args.text_workers,
        max_steps=args.text_steps,
        batch_size=args.text_batch,
        history=args.text_history,
        lr=args.text_lr,
        freeze_layers=args.text_freeze_layers,
        simcse_batch=args.text_batch,
        seed=seed,
        cold_fraction=cold_fraction,
        split_seed=args.split_seed,
        tracking_uri="none",
        **TEXT_VARIANTS[variant][1],
    )
    started = time.perf_counter()
    train_encoder(config)
    train_seconds = time.perf_counter() - started
    build_index(BuildIndexConfig(data=args.data, out=str(out / "index"), encoder=str(out / "encoder")))
    return train_seconds


def _train_sequential(args, variant: str, seed: int, cold_fraction: float, out: Path) -> float:
    """``train-retrieval-model`` with the variant's options; the training seconds."""
    from trainers.seqrec import train_retrieval_model
    from trainers.seqrec_config import SeqRecTrainConfig

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
        **SEQUENTIAL_VARIANTS[variant][1],
    )
    return train_retrieval_model(config)["seconds"]


BEYOND_COLUMNS = [
    ("ILD", None, "ild@10"),
    ("novelty (bits)", None, "novelty@10"),
    ("coverage", None, "coverage@10"),
    ("Gini items", None, "gini_items@10"),
    ("Gini categories", None, "gini_categories@10"),
]
"""Beyond-accuracy columns (``eval-retrieval``'s keys at K=10), overall."""


def _interval(values: list[float]) -> str:
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


def _hits(result: dict, name: str, k: int) -> np.ndarray:
    """[U] 1.0 where method ``name`` (``model`` or a peer) has the user's held-out item in its top ``k``."""
    ranks = np.asarray(result["per_user"]["target_rank"][name])
    return ((ranks >= 0) & (ranks < k)).astype(np.float64)


def _paired_table(
    peers: dict, runs: dict[str, list[dict]], against: dict[str, str], ks: tuple[int, ...], cold: bool
) -> list[str]:
    """Per-user paired Recall@k differences (each k of ``ks``) of each variant, its hits averaged over seeds,
    against each method of ``against`` (key in the peers' eval → title), with a 95% Student-t interval over
    users; ``cold``: over the users whose held-out item is cold only."""
    users = np.asarray(peers["per_user"]["cold"], dtype=bool) if cold else slice(None)
    titles = [f"R@{k} vs {title}" for k in ks for title in against.values()]
    lines = ["| model | seeds | " + " | ".join(titles) + " |", "|" + " --- |" * (len(titles) + 2)]
    for variant, results in runs.items():
        scored = [r for r in results if "per_user" in r]
        if not scored:
            continue
        cells = []
        for k in ks:
            model = np.mean([_hits(r, "model", k) for r in scored], axis=0)[users]  # [U]
            for name in against:
                ci = mean_interval(model - _hits(peers, name, k)[users])
                cells.append(f"{ci['mean']:+.4f} [{ci['ci95_low']:+.4f}, {ci['ci95_high']:+.4f}]")
        lines.append(f"| {VARIANTS[variant][0]} | {len(scored)} | " + " | ".join(cells) + " |")
    return lines


def _steps_table(peers: dict, runs: dict[str, list[dict]], k: int) -> list[str]:
    """Per-user paired Recall@k difference of each ladder step (:data:`STEPS`) whose two variants were run, each
    variant's hits averaged over its seeds, with a 95% Student-t interval over users."""

    def hits(variant: str) -> np.ndarray | None:
        if variant == "zero-shot":
            return _hits(peers, "model", k)
        scored = [r for r in runs.get(variant, []) if "per_user" in r]
        return np.mean([_hits(r, "model", k) for r in scored], axis=0) if scored else None

    lines = [f"| step | with | without | Recall@{k} difference |", "| --- | --- | --- | --- |"]
    for title, with_it, without in STEPS:
        a, b = hits(with_it), hits(without)
        if a is None or b is None:
            continue
        ci = mean_interval(a - b)
        lines.append(
            f"| {title} | {with_it} | {without} | {ci['mean']:+.4f} [{ci['ci95_low']:+.4f}, {ci['ci95_high']:+.4f}] |"
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
    parser.add_argument("--variants", default=",".join(VARIANTS), help="temporal split variants")
    parser.add_argument(
        "--ablation-seeds", type=int, default=None, help="seeds per ablation variant (default: --seeds)"
    )
    parser.add_argument(
        "--cold-variants", default=",".join(HEADLINE), help="cold split variants ('' to skip the split)"
    )
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
    parser.add_argument("--text-steps", type=int, default=100, help="fine-tuning steps of a text variant")
    parser.add_argument("--text-workers", type=int, default=2, help="Ray Train workers of a text variant")
    parser.add_argument("--text-batch", type=int, default=16, help="next-item and SimCSE examples per worker")
    parser.add_argument("--text-history", type=int, default=3, help="history items of a training query")
    parser.add_argument("--text-lr", type=float, default=2e-4)
    parser.add_argument("--text-freeze-layers", type=int, default=4, help="train only the top 6 - N layers")
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

    def seeds(variant: str) -> int:
        return args.seeds if variant in HEADLINE or args.ablation_seeds is None else args.ablation_seeds

    def train_all(variant: str, cold_fraction: float) -> list[dict]:
        results = [_train_and_eval(args, variant, seed, cold_fraction) for seed in range(seeds(variant))]
        return [r for r in results if r is not None]  # --report-only: the runs on disk

    def train_seed_major(names: list[str]) -> dict[str, list[dict]]:
        """Seed 0 of every variant, then seed 1, ...: a run stopped early still fills the whole table."""
        done: dict[str, list[dict]] = {v: [] for v in names}
        for seed in range(max((seeds(v) for v in names), default=0)):
            for v in (v for v in names if seed < seeds(v)):
                result = _train_and_eval(args, v, seed, 0.0)
                done[v] += [result] if result is not None else []
        return done

    # Order of work: the full model, the cold split, the sequential ablations, the text encoders (the longest).
    temporal_peers = _peers(args, 0.0)
    runs = {v: train_all(v, 0.0) for v in variants if v in HEADLINE}
    cold_peers = _peers(args, args.cold_fraction) if cold_variants else None
    cold_runs = {v: train_all(v, args.cold_fraction) for v in cold_variants}
    runs.update({v: train_all(v, 0.0) for v in variants if v in SEQUENTIAL_VARIANTS and v not in HEADLINE})
    runs.update(train_seed_major([v for v in variants if v in TEXT_VARIANTS]))
    runs = {v: runs[v] for v in VARIANTS if v in runs}  # the ablation table's order
    report["temporal"] = {"peers": temporal_peers, "runs": runs}
    print(f"## Temporal split ({temporal_peers['users']} users, {temporal_peers['index']['items']} items)\n")
    print(
        "\n".join(
            _table(temporal_peers, {v: r for v, r in runs.items() if v in HEADLINE}, overall + warm_cold[:3])
        )
    )
    print(
        f"\n## Paired per user: Recall@{k} of each variant (hits averaged over its seeds) minus the peer's, "
        f"{temporal_peers['users']} users, 95% t interval\n"
    )
    against = {"item_knn": "item-kNN", "als": "ALS", "model": "zero-shot text"}
    print("\n".join(_paired_table(temporal_peers, runs, against, (k,), cold=False)))
    if len(runs) > 1:
        print("\n## Ablation ladder (temporal split)\n")
        print("\n".join(_table(temporal_peers, runs, overall)))
        print(f"\n## What each step buys: paired per user, {temporal_peers['users']} users, 95% t interval\n")
        print("\n".join(_steps_table(temporal_peers, runs, k)))
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
        print(
            f"\nPaired per user, the {cold_peers['cold']['users']} cold targets only: cold recall minus the peer's\n"
        )
        print(
            "\n".join(_paired_table(cold_peers, cold_runs, {"model": "zero-shot text"}, (k, 100), cold=True))
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
