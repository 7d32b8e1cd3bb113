"""``rayrec train-policy``: PPO slate policy in the simulator, exported for serving, evaluated against baselines.

rayrec train-policy --out runs/policy                                  # built-in synthetic world
rayrec train-policy --index runs/index --data data/ml --out runs/policy --iterations 80 --env-runners 2
rayrec train-policy --hparams ppo-default --out runs/policy            # the checked-in tuned settings
rayrec train-policy --tune --algo slateq --tune-samples 8 --out runs/tune-slateq  # Ray Tune + ASHA
"""

from __future__ import annotations

import argparse

from rayrec.cli import add_command
from rayrec.config import add_config_args
from trainers.policy_config import TrainPolicyConfig
from trainers.tune_config import TuneOptions


def _run(args: argparse.Namespace) -> int:
    from trainers.policy import run_from_args  # Ray and RLlib: heavy, imported only to train

    return run_from_args(args)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "train-policy",
        _run,
        help="train the slate re-ranking policy with RLlib PPO in the simulator, export it and evaluate it "
        "(--tune: search its hyperparameters with Ray Tune)",
    )
    add_config_args(parser, TrainPolicyConfig)
    add_config_args(parser, TuneOptions)
