"""``rayrec``: one console script, one sub-command module per stage of the pipeline.

Each module in :data:`COMMAND_MODULES` exposes ``register(subparsers)``, adds its parsers with
:func:`add_command` and sets ``func`` to the function that runs it. Heavy imports (Ray, torch) stay
inside those functions so that ``rayrec --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from rayrec import __version__
from rayrec.errors import RayrecError

COMMAND_MODULES = (
    "rayrec.commands.data",
    "rayrec.commands.encoder",
    "rayrec.commands.seqrec",
    "rayrec.commands.index",
    "rayrec.commands.simulate",
    "rayrec.commands.train_policy",
    "rayrec.commands.compare",
    "rayrec.commands.ab",
    "rayrec.commands.loop",
    "rayrec.commands.events",
    "rayrec.commands.serve",
    "rayrec.commands.explain",
    "rayrec.commands.submit",
    "rayrec.commands.demo",
)


def add_command(
    subparsers: argparse._SubParsersAction,
    name: str,
    func: Callable[[argparse.Namespace], int | None],
    *,
    help: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """A sub-command parser whose ``func`` runs it."""
    parser = subparsers.add_parser(
        name,
        help=help,
        description=description or help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rayrec",
        description="Reinforcement-learning slate recommender on Ray: data, encoder, index, simulator, "
        "policy, serving and simulated A/B tests.",
    )
    parser.add_argument("--version", action="version", version=f"rayrec {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except RayrecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
