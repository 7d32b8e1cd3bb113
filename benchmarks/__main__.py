"""Run every benchmark and write ``benchmarks/RESULTS.md`` (``python -m benchmarks`` or ``make bench``).

Each benchmark runs in its own process (its own Ray instance, its own thread settings) and prints a
markdown table that compares rayrec with a peer measured in the same run. This runner collects those
tables with the machine and date, so every figure in RESULTS.md says where and when it was taken.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

BENCHMARKS: dict[str, list[str]] = {
    "synth": ["--items", "1000000"],
    "env": [],
    "embed": ["--items", "9125"],
    "int8_query": [],
    "retrieval": ["--sizes", "100000,1000000"],
    "serve": [],
    "encoder_quality": [],
    "sequential_retrieval": [],  # after encoder_quality: it reads that run's data and zero-shot index
    "presets": ["--users", "400", "--preset", "long-term", "--preset", "classic", "--preset", "satiation"],
    "state_estimate": ["--users", "4000"],
    "ope_coverage": ["--replications", "50", "--workers", "2"],
    "offline_learning": ["--log-users", "5000", "--eval-users", "4000", "--iterations", "1000"],
    "fairness": ["--users", "2000"],
    "calibration_recovery": ["--users", "5000", "--seeds", "3", "--draws", "16", "--noise"],
    "train_throughput": ["--iterations", "3", "--batch", "4096"],
}
"""Benchmark module → its arguments for the full run (``--quick`` runs each script's own defaults)."""


def machine_summary() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return (
        f"{platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{memory / 2**30:.0f} GiB, Python {platform.python_version()}"
    )


def run_benchmark(name: str, args: list[str]) -> tuple[str, float, int]:
    """Run ``python -m benchmarks.<name> args``; returns (its stdout, seconds, exit code)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", *args],
        cwd=HERE.parent,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    output = proc.stdout.strip()
    if proc.returncode != 0:
        output += "\n\n```\n" + proc.stderr.strip()[-3000:] + "\n```"
    return output, seconds, proc.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), help="run only these benchmarks")
    parser.add_argument("--quick", action="store_true", help="each script's small default sizes")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="where to write the results")
    parser.add_argument(
        "--args",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help="one benchmark's arguments instead of the full run's, e.g. --args \"retrieval=--sizes 100000\"",
    )
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.args:
        name, sep, value = item.partition("=")
        if not sep or name not in BENCHMARKS:
            parser.error(f"--args {item!r}: expected NAME=ARGS with NAME one of {sorted(BENCHMARKS)}")
        overrides[name] = shlex.split(value)

    names = args.only or list(BENCHMARKS)
    sections = [
        "# rayrec benchmarks",
        "",
        f"- machine: {machine_summary()}",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- command: `python -m benchmarks {' '.join(argv if argv is not None else sys.argv[1:])}`".rstrip(),
        "",
        "Each section compares rayrec with a peer measured in the same run; ratios hold better across "
        "machines than absolute figures.",
    ]
    failed = []
    for name in names:
        bench_args = overrides.get(name, [] if args.quick else BENCHMARKS[name])
        print(f"[bench] {name} {' '.join(bench_args)}", flush=True)
        output, seconds, code = run_benchmark(name, bench_args)
        status = "" if code == 0 else f" — FAILED (exit {code})"
        sections += [
            "",
            f"## {name} ({seconds:.0f} s){status}",
            "",
            f"`python -m benchmarks.{name} {' '.join(bench_args)}`".replace(" `", "`"),
            "",
            output,
        ]
        print(output, flush=True)
        if code != 0:
            failed.append(name)
    args.out.write_text("\n".join(sections) + "\n")
    print(f"[bench] wrote {args.out}")
    if failed:
        print(f"[bench] failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
