"""Synthetic world generation speed and memory: rayrec.synth next to a plain per-row pandas build.

The peer builds the same kind of item rows (topic, clickbait trait, quality, popularity, a title and a
two-sentence description from the same vocabularies) one row at a time in Python, collects them in a
``pandas.DataFrame`` and writes it with ``to_parquet``: what a straightforward generator does. Each
measurement runs in a fresh process so its peak RSS is its own.

    python -m benchmarks.synth                      # 100k items
    python -m benchmarks.synth --items 1000000      # the 1M-item figure
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

KEY_ENV_VALUE = "benchmark-key-0123456789abcdef"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_rayrec(items: int, users: int) -> dict:
    """``write_world`` in this process: seconds, rows written, peak RSS."""
    os.environ["RAYREC_PSEUDONYM_KEY"] = KEY_ENV_VALUE
    from rayrec.synth import WorldConfig, write_world

    with tempfile.TemporaryDirectory(prefix="rayrec-bench-synth-") as out:
        start = time.perf_counter()
        files = write_world(WorldConfig(items=items, users=users, seed=0), out)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "interactions": files.interactions, "peak_rss_mb": _peak_rss_mb()}


def run_pandas_peer(items: int) -> dict:
    """The per-row peer: Python loop → list of dicts → DataFrame → Parquet."""
    import pandas as pd

    from rayrec.synth.vocabulary import CLICKBAIT_OPENERS, CLICKBAIT_WORDS, FILLER_WORDS, TOPIC_WORDS

    rng = random.Random(0)
    names = list(TOPIC_WORDS)[:12]
    with tempfile.TemporaryDirectory(prefix="rayrec-bench-peer-") as out:
        start = time.perf_counter()
        rows = []
        for i in range(items):
            topic = rng.randrange(len(names))
            words = TOPIC_WORDS[names[topic]]
            bait = rng.random() < 0.15
            title_words = [rng.choice(words) for _ in range(rng.randint(2, 4))]
            if bait:
                title_words.insert(0, rng.choice(CLICKBAIT_OPENERS))
            sentences = []
            for _ in range(2):
                pool = [
                    rng.choice(CLICKBAIT_WORDS)
                    if bait and rng.random() < 0.15
                    else rng.choice(words if rng.random() < 0.6 else FILLER_WORDS)
                    for _ in range(rng.randint(8, 14))
                ]
                sentences.append(" ".join(pool).capitalize() + ".")
            title = " ".join(title_words).title()
            rows.append(
                {
                    "item_id": f"item-{i:07d}",
                    "title": title,
                    "text": f"{title}. {' '.join(sentences)}",
                    "category": names[topic],
                    "tags": [names[topic]],
                    "topic": topic,
                    "clickbait": bait,
                    "quality": rng.betavariate(2, 2),
                    "popularity": rng.paretovariate(1.25),
                }
            )
        pd.DataFrame(rows).to_parquet(os.path.join(out, "items.parquet"))
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "interactions": 0, "peak_rss_mb": _peak_rss_mb()}


def in_fresh_process(func, *args) -> dict:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(func, *args).result()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=100_000, help="items in the generated world")
    parser.add_argument("--users", type=int, default=None, help="users (default: items / 100)")
    parser.add_argument(
        "--peer-items", type=int, default=None, help="rows the per-row pandas peer builds (default: --items)"
    )
    args = parser.parse_args(argv)
    users = args.users or max(args.items // 100, 1)
    peer_items = min(args.peer_items or args.items, args.items)

    items_only = in_fresh_process(run_rayrec, args.items, 1)
    world = in_fresh_process(run_rayrec, args.items, users)
    peer = in_fresh_process(run_pandas_peer, peer_items)

    item_rate, peer_rate = args.items / items_only["seconds"], peer_items / peer["seconds"]
    print(f"Item rows/s, peak RSS, and the ratio to the per-row pandas peer ({os.cpu_count()} cores).\n")
    print("| generator | items | users | interactions | seconds | item rows/s | peak RSS (MB) | vs peer |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| rayrec.synth write_world, items only | {args.items:,} | 1 | {items_only['interactions']:,} | "
        f"{items_only['seconds']:.1f} | {item_rate:,.0f} | {items_only['peak_rss_mb']:.0f} | "
        f"{item_rate / peer_rate:.1f}x |"
    )
    print(
        f"| rayrec.synth write_world, whole world | {args.items:,} | {users:,} | {world['interactions']:,} | "
        f"{world['seconds']:.1f} | {args.items / world['seconds']:,.0f} | {world['peak_rss_mb']:.0f} | |"
    )
    print(
        f"| peer: per-row Python + pandas.DataFrame.to_parquet | {peer_items:,} | 0 | 0 | "
        f"{peer['seconds']:.1f} | {peer_rate:,.0f} | {peer['peak_rss_mb']:.0f} | 1.0x |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
