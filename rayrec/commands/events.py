"""``rayrec events stats``: what an event log shows — coverage, exposure Gini, diversity, novelty per arm.

rayrec events stats --events runs/serve/events --index runs/index --data data/ml     # a server's log
rayrec events stats --events runs/ab/events --by policy --json stats.json             # a simulated A/B's log
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

from rayrec import storage
from rayrec.cli import add_command
from rayrec.config import RayConfig, add_config_args, config_from_args, load_config
from rayrec.errors import ConfigError, DataError
from rayrec.metrics.session import METRICS

COLUMNS = ("ild", "novelty", "coverage", "gini_items", "gini_categories")


@dataclasses.dataclass(kw_only=True)
class EventStatsConfig(RayConfig):
    """``rayrec events stats``: beyond-accuracy metrics of the slates an event log records, per arm or policy."""

    events: str
    """Event-log directory (a server's --events, or DIR/events of `rayrec ab`)."""
    index: str | None = None
    """The item index the log was written with (embeddings for diversity, popularity for novelty); default:
    the simulator recorded in EVENTS/simulator.yaml by `rayrec ab`."""
    data: str | None = None
    """Data directory whose items.parquet gives item categories (with --index; else one category)."""
    by: str = "arm"
    """Group impressions by arm or policy."""
    resamples: int = 200
    """Bootstrap resamples of users for coverage and Gini intervals."""
    seed: int = 0
    """Seed of the bootstrap."""
    json: str | None = None
    """Also write the statistics as JSON here."""

    def __post_init__(self) -> None:
        if self.by not in ("arm", "policy"):
            raise ConfigError(f"--by must be arm or policy, got {self.by!r}")
        if self.resamples < 20:
            raise ConfigError(f"--resamples must be >= 20, got {self.resamples}")
        if self.data is not None and self.index is None:
            raise ConfigError("--data gives the categories of --index's items: pass --index too")


def log_catalog(config: EventStatsConfig):
    """The :class:`rayrec.metrics.event_log.CatalogView` the log's items come from, and whether it is simulated."""
    from rayrec.metrics.event_log import CatalogView

    if config.index is not None:
        from rayrec.index.item_index import ItemIndex  # FAISS: loaded when the command runs

        index = ItemIndex.load(config.index)
        categories = None
        if config.data is not None:
            from rayrec.data.io import load_dataset
            from rayrec.index.item_index import item_categories

            categories = item_categories(load_dataset(config.data).items, index.item_ids)
        return CatalogView(index.item_ids, index.embeddings, index.popularity, categories), False
    from envs.config import SlateEnvConfig  # the simulator: heavy, imported when the command runs
    from envs.factory import load_world
    from rayrec.logs.reader import SIMULATOR_FILE

    sim_file = storage.join(config.events, SIMULATOR_FILE)
    if not storage.exists(sim_file):
        raise ConfigError(f"{config.events} has no {SIMULATOR_FILE}: pass --index DIR, the log's index")
    catalog = load_world(load_config(SlateEnvConfig, sim_file)).catalog
    view = CatalogView(catalog.item_ids, catalog.embeddings, catalog.popularity_counts, catalog.categories)
    return view, True


def _cell(metric: dict) -> str:
    lo, hi = metric["ci95_low"], metric["ci95_high"]
    bounds = f" [{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) and math.isfinite(hi) else ""
    return f"{metric['mean']:.3f}{bounds}"


def format_stats(stats: dict[str, dict], by: str, namespace: str | None) -> str:
    """Markdown table: per group, impressions, users and every beyond-accuracy metric with its interval."""
    keys = [name if namespace is None else f"{namespace}/{name}" for name in COLUMNS]
    header = " | ".join(f"{key} ({METRICS[name].unit})" for key, name in zip(keys, COLUMNS, strict=True))
    lines = [f"| {by} | requests | users | {header} |", "| --- " * (3 + len(keys)) + "|"]
    for group, row in stats.items():
        cells = " | ".join(_cell(row[key]) for key in keys)
        lines.append(f"| {group} | {row['requests']} | {row['users']} | {cells} |")
    return "\n".join(lines)


def run_stats(args: argparse.Namespace) -> int:
    from rayrec.events import read_impressions
    from rayrec.metrics.event_log import log_metrics

    config = config_from_args(EventStatsConfig, args)
    if not storage.exists(config.events):
        raise DataError(f"{config.events}: no such event-log directory")
    impressions = read_impressions(config.events)
    catalog, simulated = log_catalog(config)
    namespace = "sim" if simulated else None
    stats = log_metrics(impressions, catalog, config.by, config.resamples, config.seed, namespace)
    print(f"{config.events}: {impressions.num_rows} impressions")
    print(format_stats(stats, config.by, namespace))
    if config.json:
        storage.write_text(
            config.json,
            json.dumps({"events": config.events, "by": config.by, "groups": stats}, indent=2) + "\n",
        )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    events = add_command(subparsers, "events", _usage, help="inspect an event log")
    sub = events.add_subparsers(title="sub-commands", metavar="stats", dest="events_command")
    stats = add_command(
        sub,
        "stats",
        run_stats,
        help="coverage, exposure Gini, diversity and novelty of the logged slates, per arm or policy",
    )
    add_config_args(stats, EventStatsConfig)


def _usage(args: argparse.Namespace) -> int:
    raise ConfigError("rayrec events needs a sub-command: stats")
