"""``rayrec train-retrieval-model``: the sequential retrieval model (hybrid item tower, SASRec user tower).

rayrec train-retrieval-model --data data/ml --index runs/index-zs --out runs/seqrec --seed 0
rayrec eval-retrieval --index runs/seqrec/index --data data/ml --user-model runs/seqrec
"""

from __future__ import annotations

import argparse

from rayrec.cli import add_command
from rayrec.config import add_config_args, config_from_args
from trainers.seqrec_config import SeqRecTrainConfig


def _train_retrieval_model(args: argparse.Namespace) -> int:
    from trainers.seqrec import INDEX_DIR, train_retrieval_model  # heavy (torch): keeps `rayrec --help` fast

    config = config_from_args(SeqRecTrainConfig, args)
    record = train_retrieval_model(config)
    print(
        f"model written to {config.out}, its item index to {config.out}/{INDEX_DIR} ({record['seconds']:.0f} s)"
    )
    if "best_validation" in record:
        print(f"best validation: {record['best_validation']}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "train-retrieval-model",
        _train_retrieval_model,
        help="train the sequential retrieval model (text + ID item tower, SASRec user tower) and export its index",
        description=SeqRecTrainConfig.__doc__,
    )
    add_config_args(parser, SeqRecTrainConfig)
