"""Simulator throughput on one core: the native vector env next to the same env stepped one user at a time.

    python -m benchmarks.env [--users 1024] [--seconds 3]

Measures user-steps per second (one user shown one slate and answering it) with K=50 candidates and
k=5 slates: with ``candidates="random"`` (the simulator alone; target >= 50,000) and with FAISS
retrieval from 10k and 100k items (exact inner product, one batched search per step), each also with
``retrieval_shortlist`` (:mod:`envs.shortlist`: a click is served from the items kept at the last search
where that is certified to give the same K). The peer is
``gymnasium.make("rayrec/SlateRec-v0")`` stepped in a Python loop, in the same run. Policy cost is
excluded: every step shows the same fixed slate. A second table steps every preset (:mod:`envs.presets`) on
the random-candidate path, so the cost of the richer dynamics (satiation, fatigue, returning users) is a
ratio against ``classic`` (the SlateEnvConfig defaults) measured in the same run (target: at most 2x);
FAISS from 10k items has its own target (>= 30,000).
"""

from __future__ import annotations

import os

# One core: set before numpy/faiss start their thread pools.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

TARGET = 50_000
FAISS_TARGET = 30_000
"""User-steps/s with FAISS retrieval from 10k items (K=50, k=5, one core)."""
DYNAMICS_COST = 2.0
"""Largest slow-down a preset's dynamics may cost against ``classic`` on the random-candidate path."""
K, SLATE = 50, 5


def user_steps_per_second(env, num_users: int, seconds: float) -> float:
    """Step ``env`` (vector, ``num_users`` rows, or single when 0) for about ``seconds``."""
    env.reset(seed=0)
    actions = np.tile(np.arange(SLATE), (num_users, 1)) if num_users else np.arange(SLATE)
    steps = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or steps < 3:
        *_, terminated, truncated, _ = env.step(actions)
        steps += 1
        if not num_users and (terminated or truncated):
            env.reset()
    return steps * max(num_users, 1) / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=1024, help="users in the vector env")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    args = parser.parse_args(argv)

    import faiss

    faiss.omp_set_num_threads(1)
    import envs
    from envs.config import SlateEnvConfig

    rows = []
    for mode, shortlist, items in (
        ("random", False, 10_000),
        ("faiss", False, 10_000),
        ("faiss", True, 10_000),
        ("faiss", False, 100_000),
        ("faiss", True, 100_000),
    ):
        config = SlateEnvConfig(
            num_candidates=K,
            slate_size=SLATE,
            candidates=mode,
            num_items=items,
            retrieval_shortlist=shortlist,
        )
        vector = user_steps_per_second(envs.make_vector_env(config, args.users), args.users, args.seconds)
        single = user_steps_per_second(envs.make_env(config), 0, args.seconds)
        rows.append((mode + (" + shortlist" if shortlist else ""), items, vector, single))

    print(
        f"### Simulator throughput (K={K}, k={SLATE}, dim 32, {args.users} users per vector env, one core)\n"
    )
    print("| candidates | items | vector env user-steps/s | gym.make loop user-steps/s | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for mode, items, vector, single in rows:
        print(f"| {mode} | {items:,} | {vector:,.0f} | {single:,.0f} | {vector / single:.1f}x |")
    random_rate, faiss_rate, shortlist_rate = rows[0][2], rows[1][2], rows[2][2]
    verdict = "meets" if random_rate >= TARGET else "MISSES"
    print(
        f"\nWithout retrieval cost the vector env {verdict} the {TARGET:,} user-steps/s target ({random_rate:,.0f})."
    )
    verdict = "meets" if faiss_rate >= FAISS_TARGET else "MISSES"
    print(
        f"With FAISS from 10k items, searching at every click, it {verdict} the {FAISS_TARGET:,} target "
        f"({faiss_rate:,.0f})."
    )
    verdict = "meets" if shortlist_rate >= FAISS_TARGET else "MISSES"
    print(
        f"With the certified shortlist (retrieval_shortlist=true) it {verdict} it ({shortlist_rate:,.0f}, "
        f"{shortlist_rate / faiss_rate:.2f}x the search at every click)."
    )

    from envs.presets import PRESETS, with_preset

    presets = {}
    for name in PRESETS:
        config = with_preset(name, num_candidates=K, slate_size=SLATE, candidates="random", num_items=10_000)
        presets[name] = user_steps_per_second(
            envs.make_vector_env(config, args.users), args.users, args.seconds
        )
    print("\n### Cost of each preset's dynamics (random candidates, 10k items, same run)\n")
    print("| preset | vector env user-steps/s | slow-down vs classic |")
    print("| --- | --- | --- |")
    for name, rate in presets.items():
        print(f"| {name} | {rate:,.0f} | {presets['classic'] / rate:.2f}x |")
    worst = max(presets, key=lambda name: presets["classic"] / presets[name])
    cost = presets["classic"] / presets[worst]
    verdict = "within" if cost <= DYNAMICS_COST else "OVER"
    print(f"\nThe costliest dynamics ({worst}, {cost:.2f}x) are {verdict} the {DYNAMICS_COST:g}x budget.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
