"""``rayrec data``: make a dataset (synthetic world, MovieLens, any mapped table) and describe one.

rayrec data synth --out data/synth --items 2000 --users 500 --seed 0
rayrec data import-movielens ~/ml-latest-small --out data/ml
rayrec data import log.parquet --items items.csv --map user_id=uid --map items.title=name --out data/x
rayrec data stats data/ml --json data/ml/stats.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Literal

from rayrec import storage
from rayrec.cli import add_command
from rayrec.config import RayConfig, add_config_args, config_from_args, save_config
from rayrec.data.io import load_dataset
from rayrec.data.mapped_import import import_table, parse_mapping
from rayrec.data.movielens import import_movielens
from rayrec.data.stats import dataset_stats, format_stats
from rayrec.data.tables import ImportReport
from rayrec.errors import ConfigError
from rayrec.synth import WorldConfig, write_world


@dataclasses.dataclass(kw_only=True)
class SynthConfig(RayConfig):
    """``rayrec data synth``: a synthetic world whose item text carries topic and clickbait signal."""

    out: str
    """Dataset directory to write (path or URI)."""
    items: int = WorldConfig.items
    """Number of items in the catalog."""
    users: int = WorldConfig.users
    """Number of users whose interactions are simulated."""
    topics: int = WorldConfig.topics
    """Number of topics, each with its own vocabulary."""
    seed: int = WorldConfig.seed
    """Seed of everything random: the same seed gives the same files."""


@dataclasses.dataclass(kw_only=True)
class ImportMovieLensConfig(RayConfig):
    """``rayrec data import-movielens``: a MovieLens folder as a pseudonymized rayrec dataset."""

    src: str
    """MovieLens folder: ml-latest-small layout (movies.csv, ratings.csv, tags.csv) or ml-100k (u.item, u.data)."""
    out: str
    """Dataset directory to write (path or URI); its pseudonym.key is created or reused."""
    skip_bad_rows: bool = False
    """Drop rows that do not parse or point at unknown items, and report how many, instead of failing."""


@dataclasses.dataclass(kw_only=True)
class ImportConfig(RayConfig):
    """``rayrec data import``: any interactions table (CSV, TSV, Parquet), columns mapped to the contract."""

    src: str
    """Interactions file: CSV, TSV or Parquet (file or directory of parts)."""
    out: str
    """Dataset directory to write (path or URI); its pseudonym.key is created or reused."""
    items: str | None = None
    """Items file (CSV, TSV or Parquet); without it the catalog is the item ids seen, titled by id."""
    map: list[str] = dataclasses.field(default_factory=list)
    """FIELD=COLUMN, repeatable: the column holding a contract field (``user_id=uid``; ``items.title=name``
    for one table only). Unmapped fields are looked up by their own name."""
    event: Literal["click", "rating", "view", "purchase", "impression"] = "click"
    """Event type of every row when the interactions have no event column."""
    delimiter: str | None = None
    """Field separator of text files (default: tab for .tsv/.tab, else comma)."""
    skip_bad_rows: bool = False
    """Drop rows that do not parse or point at unknown items, and report how many, instead of failing."""

    def __post_init__(self) -> None:
        parse_mapping(self.map)  # a typo in --map fails here, before any file is read
        if self.delimiter == r"\t":  # what a shell passes for a typed tab
            self.delimiter = "\t"
        if self.delimiter is not None and len(self.delimiter) != 1:
            raise ConfigError(f"--delimiter must be one character, got {self.delimiter!r}")


@dataclasses.dataclass(kw_only=True)
class StatsConfig(RayConfig):
    """``rayrec data stats``: counts, sparsity, popularity Gini, activity, event and category mixes."""

    data: str
    """Dataset directory (items.parquet and interactions.parquet)."""
    json: str | None = None
    """Also write the statistics as JSON to this file."""


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_synth(args: argparse.Namespace) -> int:
    config = config_from_args(SynthConfig, args)
    world = WorldConfig(items=config.items, users=config.users, topics=config.topics, seed=config.seed)
    write_world(world, config.out, progress=True)
    save_config(config, config.out)
    print(f"wrote a synthetic world of {config.items:,} items and {config.users:,} users to {config.out}")
    return 0


def _print_report(report: ImportReport) -> None:
    print(
        f"imported {report.format}: {report.items:,} items, {report.interactions:,} interactions, "
        f"{report.users:,} users (pseudonymized) → {report.out}"
    )
    if report.skipped:
        detail = ", ".join(f"{Path(name).name}: {count:,}" for name, count in report.skipped.items())
        print(f"skipped {sum(report.skipped.values()):,} bad rows ({detail})")
    if report.dropped_columns:
        print(f"left out unmapped interaction columns: {', '.join(report.dropped_columns)}")


def run_import_movielens(args: argparse.Namespace) -> int:
    config = config_from_args(ImportMovieLensConfig, args)
    report = import_movielens(config.src, config.out, skip_bad_rows=config.skip_bad_rows, progress=_progress)
    save_config(config, config.out)
    _print_report(report)
    return 0


def run_import(args: argparse.Namespace) -> int:
    config = config_from_args(ImportConfig, args)
    report = import_table(
        config.src,
        config.out,
        mapping=parse_mapping(config.map),
        items=config.items,
        event=config.event,
        delimiter=config.delimiter,
        skip_bad_rows=config.skip_bad_rows,
        progress=_progress,
    )
    save_config(config, config.out)
    _print_report(report)
    return 0


def run_stats(args: argparse.Namespace) -> int:
    config = config_from_args(StatsConfig, args)
    stats = dataset_stats(load_dataset(config.data))
    print(format_stats(stats))
    if config.json:
        storage.write_text(config.json, json.dumps(stats, indent=2) + "\n")
        # beside the JSON under its own name: a dataset directory's config.yaml says how the data was made
        directory = config.json.rsplit("/", 1)[0] if "/" in config.json else "."
        save_config(config, directory, name=Path(config.json).stem + ".config.yaml")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data", help="make and describe datasets", description="Make and describe datasets."
    )
    commands = parser.add_subparsers(title="data commands", metavar="COMMAND", required=True)
    synth = add_command(
        commands, "synth", run_synth, help="generate a synthetic world (items, users, interactions)"
    )
    add_config_args(synth, SynthConfig)
    movielens = add_command(
        commands,
        "import-movielens",
        run_import_movielens,
        help="import MovieLens (ml-latest-small or ml-100k)",
    )
    add_config_args(movielens, ImportMovieLensConfig, positional=("src",))
    table = add_command(
        commands, "import", run_import, help="import a CSV/TSV/Parquet table with a column mapping"
    )
    add_config_args(table, ImportConfig, positional=("src",), flags={"map": "--map"})
    stats = add_command(
        commands, "stats", run_stats, help="print dataset statistics (and write them as JSON)"
    )
    add_config_args(stats, StatsConfig, positional=("data",))
