"""``rayrec train-policy``: PPO slate policy in the simulator, exported for serving, evaluated against baselines.

rayrec train-policy --out runs/policy                                  # built-in synthetic world
rayrec train-policy --index runs/index --data data/ml --out runs/policy --iterations 80 --env-runners 2
"""

from __future__ import annotations

import argparse

from rayrec.cli import add_command
from rayrec.config import add_config_args
from trainers.policy_config import TrainPolicyConfig


def _run(args: argparse.Namespace) -> int:
    from trainers.policy import run_from_args  # Ray and RLlib: heavy, imported only to train

    return run_from_args(args)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "train-policy",
        _run,
        help="train the slate re-ranking policy with RLlib PPO in the simulator, export it and evaluate it",
    )
    add_config_args(parser, TrainPolicyConfig)
