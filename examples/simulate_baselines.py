"""World → simulator → evaluate: every baseline on the same simulated users, with intervals.

    python examples/simulate_baselines.py --users 2000

Uses rayrec as a library: a :class:`envs.SlateEnvConfig` describes the simulator, :func:`envs.build_simulator`
builds it, :func:`envs.make_policy` makes each policy in it, and the rollout engine
(:func:`envs.evaluate_policy`) runs one session per user. Every policy meets the same users (same seed), so
the paired difference against ``retrieval`` is a per-user comparison.
"""

from __future__ import annotations

import argparse

from envs import SlateEnvConfig, build_simulator, evaluate_policy, make_policy
from rayrec import paired_difference


def main(users: int = 2000, seed: int = 0, num_items: int = 5000) -> dict[str, dict]:
    """Session metrics of each policy and its paired difference in session return against ``retrieval``."""
    config = SlateEnvConfig(num_items=num_items)
    outcomes = {}
    for name in ("random", "retrieval", "greedy", "oracle"):
        sim = build_simulator(config, batch=min(users, 4096))
        outcomes[name] = evaluate_policy(make_policy(name, sim), sim, users, seed)
    results = {}
    for name, outcome in outcomes.items():
        summary = outcome.summary()
        diff = paired_difference(outcome, outcomes["retrieval"], "session_return")
        results[name] = {**summary, "vs_retrieval": diff}
        ret = summary["sim/session_return"]
        print(
            f"{name:>10}  session return {ret['mean']:.2f} [{ret['ci95_low']:.2f}, {ret['ci95_high']:.2f}]"
            f"  ctr {summary['sim/ctr']['mean']:.3f}"
            f"  vs retrieval {diff['mean']:+.2f} [{diff['ci95_low']:+.2f}, {diff['ci95_high']:+.2f}]"
        )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    main(**vars(parser.parse_args()))
