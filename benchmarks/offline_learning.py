"""Learning from an exploration log: does a policy trained offline beat the policy that wrote the log?

(``python -m benchmarks.offline_learning``.) The ``epsilon-greedy`` exploration arm (the fitted greedy
ranker, a uniformly random slate with probability 0.2: :class:`rayrec.baselines.EpsilonGreedyPolicy`)
serves ``--log-users`` simulated training users and writes an event log exactly as ``rayrec ab`` does
(:func:`rayrec.ab.simulate.simulate_arm_users`). ``rayrec train-policy --from-events`` then learns from
that log with each offline method — behaviour cloning and MARWIL on RLlib's offline API, REINFORCE with
the top-K off-policy correction — selecting weights on validation users. Every trained policy, the
logging policy and its greedy part then play the same ``--eval-users`` held-out test users with the one
rollout engine (:func:`envs.beyond.evaluate_beyond`): the table gives each one's mean session return, the
paired 95% interval of its difference from the logging policy (:func:`rayrec.metrics.session.
paired_difference`) and its beyond-accuracy values on those users (:func:`envs.beyond.run_values`: ILD,
novelty, catalog coverage, exposure Gini over items and over categories).

    python -m benchmarks.offline_learning --log-users 3000 --eval-users 2000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from envs.beyond import evaluate_beyond, run_values
from envs.factory import build_simulator
from envs.policies import make_policy
from envs.presets import preset
from rayrec.ab.simulate import simulate_arm_users, simulated_user_ids
from rayrec.assignment import Arm
from rayrec.config import save_config
from rayrec.logs.reader import SIMULATOR_FILE
from rayrec.metrics.beyond import TABLE_COLUMNS, Exposure, table_cells, table_header
from rayrec.metrics.session import SessionOutcomes, mean_interval, paired_difference
from trainers.offline import train_offline
from trainers.policy_config import TrainPolicyConfig

LOGGER = "epsilon-greedy"
METHODS = ("bc", "marwil", "reinforce-topk")


def write_log(config, users: int, seed: int, events: str) -> None:
    """The exploration arm's event log of ``users`` simulated users, its simulator config beside it."""
    simulate_arm_users(config, Arm("explore", LOGGER), simulated_user_ids(users, seed), seed, events)
    save_config(config, events, name=SIMULATOR_FILE)


def train_all(
    events: str, work: Path, methods: list[str], iterations: int, seed: int, preset_name: str
) -> dict[str, str]:
    """Each method's exported policy directory, trained on the log under ``events``."""
    dirs = {}
    for method in methods:
        cfg = TrainPolicyConfig(
            out=str(work / method),
            preset=preset_name,
            from_events=events,
            offline_algo=method,
            iterations=iterations,
            train_batch_size=512,
            minibatch_size=512,
            lr=1e-3,
            validate_every=max(iterations // 5, 1),
            validate_users=500,
            eval_users=0,
            seed=seed,
        )
        started = time.perf_counter()
        dirs[method] = train_offline(cfg)["policy_dir"]
        print(f"trained {method} in {time.perf_counter() - started:.0f}s", flush=True)
    return dirs


def evaluate(
    specs: dict[str, str], config, users: int, seed: int
) -> dict[str, tuple[SessionOutcomes, Exposure]]:
    """Every policy's outcomes (beyond-accuracy metrics filled in) and exposure on the same ``users``
    held-out test users."""
    sim = build_simulator(config.replace(user_split="test"), batch=min(users, 2048))
    return {name: evaluate_beyond(make_policy(spec, sim), sim, users, seed) for name, spec in specs.items()}


def table(runs: dict[str, tuple[SessionOutcomes, Exposure]]) -> str:
    """Markdown: session return [95% CI], paired difference from the logging policy, ratio, and the
    beyond-accuracy values (ILD and novelty averaged over users; coverage and Gini of all impressions)."""
    base = runs[LOGGER][0]
    lines = [
        f"| policy | session return [95% CI] | minus {LOGGER} (paired 95% CI) | ratio | {table_header()} |",
        "| --- | --- | --- | --- |" + " ---: |" * len(TABLE_COLUMNS),
    ]
    for name, (out, exposure) in runs.items():
        ret = mean_interval(out.session_return)
        cell = f"{ret['mean']:.3f} [{ret['ci95_low']:.3f}, {ret['ci95_high']:.3f}]"
        beyond = table_cells(run_values(out, exposure))
        if name == LOGGER:
            lines.append(f"| {name} (logging policy) | {cell} | — | 100% | {beyond} |")
            continue
        diff = paired_difference(out, base, "session_return")
        verdict = " **>0**" if diff["ci95_low"] > 0 else (" **<0**" if diff["ci95_high"] < 0 else "")
        lines.append(
            f"| {name} | {cell} | {diff['mean']:+.3f} [{diff['ci95_low']:+.3f}, {diff['ci95_high']:+.3f}]"
            f"{verdict} | {ret['mean'] / base.session_return.mean():.1%} | {beyond} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="classic", help="simulator world (envs.presets)")
    parser.add_argument(
        "--log-users", type=int, default=2000, help="training users the logging policy serves"
    )
    parser.add_argument("--eval-users", type=int, default=2000, help="held-out test users of the evaluation")
    parser.add_argument("--iterations", type=int, default=400, help="training iterations (512 requests each)")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    config = preset(args.preset)
    with tempfile.TemporaryDirectory(prefix="rayrec-offline-") as tmp:
        work = Path(tmp)
        events = str(work / "events")
        started = time.perf_counter()
        write_log(config.replace(user_split="train"), args.log_users, args.seed, events)
        print(f"log: {args.log_users} users ({time.perf_counter() - started:.0f}s)", flush=True)
        dirs = train_all(events, work, args.methods, args.iterations, args.seed, args.preset)
        runs = evaluate(
            {LOGGER: LOGGER, "greedy": "greedy", **dirs}, config, args.eval_users, args.seed + 1_000_003
        )
    print()
    print(
        f"### Learning from an {LOGGER} log ({args.preset} world; log of {args.log_users} training users; "
        f"{args.eval_users} held-out test users, paired)"
    )
    print()
    print(table(runs))
    print(
        "\nOne run per policy. ILD (cosine distance) and novelty (bits): mean over the test users of each "
        "user's mean over their slates; coverage and exposure Gini over items and over categories: of all "
        "the run's impressions."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
