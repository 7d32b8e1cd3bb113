"""``rayrec train-encoder``: fine-tune the item text encoder on interactions with Ray Train.

rayrec train-encoder --data data/ml --out runs/encoder --workers 2 --max-steps 300
"""

from __future__ import annotations

import argparse
import json

from rayrec.cli import add_command
from rayrec.config import add_config_args, config_from_args
from trainers.encoder_config import EncoderTrainConfig


def _train_encoder(args: argparse.Namespace) -> int:
    from trainers.encoder import train_encoder  # heavy (Ray Train, torch): keeps `rayrec --help` fast

    summary = train_encoder(config_from_args(EncoderTrainConfig, args))
    best = {k: v for k, v in summary["best"].items() if not k.startswith("val/popularity")}
    print(f"best model written to {args.out}: {json.dumps(best)}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "train-encoder",
        _train_encoder,
        help="fine-tune a text encoder on interactions with Ray Train",
        description=EncoderTrainConfig.__doc__,
    )
    add_config_args(parser, EncoderTrainConfig)
