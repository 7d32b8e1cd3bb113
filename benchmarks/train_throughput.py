"""Training throughput of the slate learners on 2 CPUs, beside the simulator's own stepping speed.

    python -m benchmarks.train_throughput [--iterations 3] [--batch 4096] [--runners 1,2]

Env steps per second of whole training iterations (sampling + learning, RLlib new API stack, local
learner) for PPO (per-position loss) and SlateQ, with 1 and 2 remote env runners (1 CPU each, 128
vector users each) on a local Ray limited to 2 CPUs, after one warm-up iteration. The peer, measured in
the same run: the simulator alone (the native vector env with 128 users, FAISS candidates, a fixed slate,
no policy), so the ratio says what share of the simulator's speed the learning loop keeps.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

USERS = 128


def simulator_steps_per_second(seconds: float) -> float:
    """User-steps/s of the classic world's vector env (128 users), policy cost excluded."""
    import envs
    from envs.config import SlateEnvConfig

    config = SlateEnvConfig()
    env = envs.make_vector_env(config, USERS)
    env.reset(seed=0)
    actions = np.tile(np.arange(config.slate_size), (USERS, 1))
    steps, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or steps < 3:
        env.step(actions)
        steps += 1
    env.close()
    return steps * USERS / elapsed


def learner_steps_per_second(algo_name: str, runners: int, iterations: int, batch: int) -> float:
    """Env steps/s over ``iterations`` training iterations after one warm-up iteration."""
    from envs.spec import resolve_env_config
    from trainers.policy_config import TrainPolicyConfig
    from trainers.rllib_setup import build_algorithm_config

    cfg = TrainPolicyConfig(
        out="unused",
        algo=algo_name,
        env_runners=runners,
        envs_per_runner=USERS,
        train_batch_size=batch,
        minibatch_size=min(1024, batch),
        learning_starts=0,
        choice_users=256,
    )
    env_config = resolve_env_config(cfg, user_split="train")
    if algo_name == "slateq":
        from trainers.slateq import build_slateq_config, fit_choice_model

        config = build_slateq_config(cfg, env_config, fit_choice_model(env_config, cfg.choice_users, 0))
    else:
        config = build_algorithm_config(cfg, env_config)
    algo = config.build_algo()
    try:
        first = algo.train()["num_env_steps_sampled_lifetime"]
        start = time.perf_counter()
        for _ in range(iterations):
            last = algo.train()["num_env_steps_sampled_lifetime"]
        return (last - first) / (time.perf_counter() - start)
    finally:
        algo.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per configuration")
    parser.add_argument("--batch", type=int, default=4096, help="env steps sampled per iteration")
    parser.add_argument("--runners", default="1,2", help="env runner counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=3.0, help="time of the simulator measurement")
    args = parser.parse_args(argv)

    import ray
    import torch

    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    sim = simulator_steps_per_second(args.seconds)
    rows = [f"| simulator alone (vector env, {USERS} users, fixed slate) | – | {sim:,.0f} | 1.000 |"]
    for algo_name in ("ppo", "slateq"):
        for runners in (int(r) for r in args.runners.split(",")):
            rate = learner_steps_per_second(algo_name, runners, args.iterations, args.batch)
            rows.append(
                f"| {algo_name} training (sample + learn) | {runners} | {rate:,.0f} | {rate / sim:.3f} |"
            )
    ray.shutdown()
    print(
        f"Env steps per second on a local Ray of 2 CPUs ({args.iterations} iterations of {args.batch} env "
        "steps after a warm-up; local learner, 1 torch thread):\n"
    )
    print("| loop | env runners | env steps/s | ratio to the simulator |")
    print("| --- | --- | --- | --- |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
