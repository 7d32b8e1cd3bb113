"""``rayrec build-index``, ``rayrec eval-retrieval``: the item index and its retrieval quality.

rayrec build-index --encoder runs/encoder --data data/ml --out runs/index [--index-type hnsw]
rayrec eval-retrieval --index runs/index --data data/ml --k 10 --json runs/index/eval.json
"""

from __future__ import annotations

import argparse

from rayrec.cli import add_command
from rayrec.config import add_config_args, config_from_args
from rayrec.index.build import BuildIndexConfig, build_index
from rayrec.index.evaluate import EvalRetrievalConfig, evaluate_retrieval


def _build_index(args: argparse.Namespace) -> int:
    build_index(config_from_args(BuildIndexConfig, args))
    return 0


def _eval_retrieval(args: argparse.Namespace) -> int:
    config = config_from_args(EvalRetrievalConfig, args)
    result = evaluate_retrieval(config)
    names = list(result["baselines"])
    keys = [key for key in result if "@" in key or key == "mrr"]
    width = max(map(len, keys))
    split = result["split"]
    print(
        f"{result['users']} users, {result['index']['items']} items ({result['index']['type']} index), "
        f"{split['kind']} split: {result['warm']['users']} warm and {result['cold']['users']} cold targets"
    )
    print(f"{'metric':<{width}}  {'model':>8}  " + "  ".join(f"{name:>10}" for name in names))
    for key in keys:
        row = "  ".join(f"{result['baselines'][name][key]:10.4f}" for name in names)
        print(f"{key:<{width}}  {result[key]:8.4f}  {row}")
    k = result["k"]
    for section in ("warm", "cold"):
        part = result[section]
        row = "  ".join(f"{part['baselines'][name][f'recall@{k}']:10.4f}" for name in names)
        print(f"{section + f' recall@{k}':<{width}}  {part['model'][f'recall@{k}']:8.4f}  {row}")
    for name, why in result.get("skipped", {}).items():
        print(f"{name}: skipped, {why}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    for name, run, help_text, config in (
        (
            "build-index",
            _build_index,
            "embed every item with Ray Data and build a FAISS index",
            BuildIndexConfig,
        ),
        (
            "eval-retrieval",
            _eval_retrieval,
            "Recall/NDCG/MRR of an index on the temporal split, warm and cold targets, beside popularity, item-kNN and MF",
            EvalRetrievalConfig,
        ),
    ):
        parser = add_command(subparsers, name, run, help=help_text, description=config.__doc__)
        add_config_args(parser, config)
