"""Beyond accuracy: each policy and its re-ranked versions (``python -m benchmarks.fairness``).

Every policy meets the same held-out users (one seed: user ``i`` starts the same way under every policy) of
the ``--preset`` world (default ``classic``), once per candidate mode: the preset's own FAISS candidates
(K=20 nearest unseen items to the user's profile), diversified FAISS candidates (the same with at most 4
per category: ``candidates=faiss-diverse``) and RecSim's uniformly random candidates (K=50). The first table gives return,
coverage, exposure Gini over items and categories, intra-list diversity, novelty and calibration, each
with its 95% interval (Student-t over users; bootstrap over users for the corpus-level ones). The second
gives the paired difference of every exposure-fair re-ranker against its base — session return (paired
t) and category exposure Gini (the same bootstrap draw of users re-weights both runs) — and checks the
bar of issue 20: category exposure Gini down by at least 30% at a loss of session return of at most 5%.
A last table pairs each fair re-ranker over diversified candidates with its base over plain FAISS
candidates: the whole change a team would ship against what it ships today.

    python -m benchmarks.fairness --users 2000 --fair-beta 0.25 --fair-beta 0.5 --fair-beta 1
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from envs import build_simulator, make_policy
from envs.beyond import evaluate_beyond
from envs.presets import preset
from envs.rollout import StepRecord
from rayrec.metrics.beyond import Exposure, encode_categories, paired_corpus_difference
from rayrec.metrics.session import SessionOutcomes, paired_difference

BASES = ("retrieval", "greedy")
GINI_CUT = 0.30
"""The bar: category exposure Gini at least 30% lower than the base's ..."""
RETURN_LOSS = 0.05
"""... at a session-return loss of at most 5%."""
MODES = {"faiss": 20, "faiss-diverse": 20, "random": 50}
"""Candidate mode → K (the preset's FAISS retrieval, and RecSim's uniform sampler)."""
COLUMNS = (
    ("session_return", "return"),
    ("coverage", "coverage"),
    ("gini_items", "Gini items"),
    ("gini_categories", "Gini categories"),
    ("ild", "ILD"),
    ("novelty", "novelty (bits)"),
    ("calibration", "calibration (nats)"),
)

Run = tuple[SessionOutcomes, Exposure, dict]


def run_mode(
    world: str, mode: str, specs: list[str], users: int, seed: int, resamples: int
) -> tuple[dict[str, Run], float]:
    """Every policy's outcomes, exposure and summary on ``users`` users with ``mode`` candidates, and the
    mean number of distinct categories among a request's K candidates (what any re-ranker can choose from)."""
    config = preset(world).replace(candidates=mode, num_candidates=MODES[mode])
    runs, distinct = {}, []
    for spec in specs:
        sim = build_simulator(config, batch=users)
        codes, _ = encode_categories(sim.catalog.categories, sim.catalog.size)

        def count(step: StepRecord, codes=codes) -> None:
            cats = np.sort(codes[step.candidates], axis=1)  # [R, K]
            distinct.append((1 + (np.diff(cats, axis=1) != 0).sum(axis=1)).astype(float))

        observers = [count] if spec == specs[0] else []
        outcomes, exposure = evaluate_beyond(make_policy(spec, sim), sim, users, seed, observers=observers)
        summary = outcomes.summary(namespace=None) | exposure.summary(None, resamples, seed)
        runs[spec] = (outcomes, exposure, summary)
    return runs, float(np.concatenate(distinct).mean())


def _ci(m: dict, digits: int = 3) -> str:
    return f"{m['mean']:.{digits}f} [{m['ci95_low']:.{digits}f}, {m['ci95_high']:.{digits}f}]"


def policy_table(runs: dict[str, Run]) -> str:
    """Markdown: every policy's metrics with 95% intervals."""
    lines = [
        "| policy | " + " | ".join(label for _, label in COLUMNS) + " |",
        "| --- |" + " --- |" * len(COLUMNS),
    ]
    for spec, (_, _, summary) in runs.items():
        digits = {"session_return": 2, "novelty": 2}
        cells = [_ci(summary[name], digits.get(name, 3)) for name, _ in COLUMNS]
        lines.append(f"| {spec} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pct(value: float, base: float) -> str:
    return f"{100 * value / base:+.1f}%"


def fairness_table(
    runs: dict[str, Run],
    betas: list[float],
    resamples: int,
    seed: int,
    base_runs: dict[str, Run] | None = None,
) -> tuple[str, list[str]]:
    """Markdown: each fair re-ranker minus its base (paired), and which meet the bar.

    ``base_runs``: where the bases come from (default ``runs``): another candidate mode's runs compare a
    re-ranker over diversified candidates with its base over plain ones, the same users paired.
    """
    base_runs = runs if base_runs is None else base_runs
    lines = [
        "| fair re-ranker | return change (paired, 95% CI) | category Gini change (paired, 95% CI) | "
        "item Gini change | coverage change | bar met (intervals / point) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    met = []
    for base in BASES:
        out_b, exp_b, sum_b = base_runs[base]
        for beta in betas:
            spec = f"fair@{beta:g}:{base}"
            out_f, exp_f, _ = runs[spec]
            ret = paired_difference(out_f, out_b, "session_return")
            corpus = paired_corpus_difference(exp_f, exp_b, resamples, seed)
            r0, g0 = sum_b["session_return"]["mean"], sum_b["gini_categories"]["mean"]
            gini = corpus["gini_categories"]
            by_interval = gini["ci95_high"] <= -GINI_CUT * g0 and ret["ci95_low"] >= -RETURN_LOSS * r0
            by_point = gini["mean"] <= -GINI_CUT * g0 and ret["mean"] >= -RETURN_LOSS * r0
            verdict = "yes / yes" if by_interval else f"no / {'yes' if by_point else 'no'}"
            if by_interval:
                met.append(spec)
            lines.append(
                f"| {spec} vs {base} | {_pct(ret['mean'], r0)} [{_pct(ret['ci95_low'], r0)}, "
                f"{_pct(ret['ci95_high'], r0)}] | {_pct(gini['mean'], g0)} [{_pct(gini['ci95_low'], g0)}, "
                f"{_pct(gini['ci95_high'], g0)}] | {corpus['gini_items']['mean']:+.3f} | "
                f"{corpus['coverage']['mean']:+.3f} | {verdict} |"
            )
    return "\n".join(lines), met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="classic", help="simulator world (envs.presets)")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1_000_003)
    parser.add_argument("--resamples", type=int, default=200, help="bootstrap resamples of users")
    parser.add_argument(
        "--fair-beta", type=float, action="append", help="β of the fair re-ranker (repeatable)"
    )
    parser.add_argument(
        "--mode", action="append", choices=sorted(MODES), help="candidate mode (default: both)"
    )
    args = parser.parse_args()
    betas = args.fair_beta or [0.25, 0.5, 1.0]
    specs = [
        *BASES,
        *(f"{name}:{base}" for base in BASES for name in ("mmr", "dpp")),
        *(f"fair@{beta:g}:{base}" for base in BASES for beta in betas),
    ]
    by_mode = {}
    for mode in args.mode or list(MODES):
        started = time.perf_counter()
        runs, distinct = run_mode(args.preset, mode, specs, args.users, args.seed, args.resamples)
        by_mode[mode] = runs
        print(f"### preset {args.preset}, {mode} candidates (K={MODES[mode]}, k=5)\n")
        print(f"A request's K candidates span {distinct:.2f} categories on average ({specs[0]} run).\n")
        print(policy_table(runs))
        table, met = fairness_table(runs, betas, args.resamples, args.seed)
        print("\nExposure-fair re-ranker minus its base, same users (changes relative to the base):\n")
        print(table)
        bar = f"category exposure Gini -{GINI_CUT:.0%} at <= {RETURN_LOSS:.0%} loss of session return"
        print(
            f"\nBar ({bar}, both paired intervals): "
            + (f"met by {', '.join(met)}." if met else "not met by any β tried.")
        )
        print(
            f"\n({args.users} users, seed {args.seed}, {time.perf_counter() - started:.0f} s)\n", flush=True
        )
    if {"faiss", "faiss-diverse"} <= by_mode.keys():
        # The whole pipeline change: diversified retrieval plus the fair re-ranker, against what plain
        # retrieval plus the base ships (users start alike in both modes: the candidates draw nothing).
        table, met = fairness_table(
            by_mode["faiss-diverse"], betas, args.resamples, args.seed, by_mode["faiss"]
        )
        print("### faiss-diverse candidates + fair re-ranker minus faiss candidates + its base, same users\n")
        print(table)
        print("\nBar met by " + (", ".join(met) if met else "none") + ".\n", flush=True)


if __name__ == "__main__":
    main()
