"""``rayrec compare``: N seeds of every learning method and every baseline on the same held-out users.

rayrec compare --out runs/compare                                   # 5 seeds of ppo, slateq, ppo-bandit
rayrec compare --out runs/compare --preset satiation --seeds 3 --train train_batch_size=2048
"""

from __future__ import annotations

import argparse

from rayrec.cli import add_command
from rayrec.config import add_config_args, config_from_args
from trainers.compare_config import CompareConfig


def _run(args: argparse.Namespace) -> int:
    from trainers.compare import compare  # Ray, RLlib, matplotlib: heavy, imported only to run

    summary = compare(config_from_args(CompareConfig, args))
    print(summary["markdown"])
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "compare",
        _run,
        help="train N seeds of each learning method, evaluate them and the baselines on the same held-out "
        "users: mean, IQM, bootstrap intervals, paired differences, a table and a plot",
    )
    add_config_args(parser, CompareConfig)
