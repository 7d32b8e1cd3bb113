"""Simulator → train → evaluate: PPO in the simulator, exported, then compared with the baselines on held-out users.

    python examples/train_and_evaluate.py --out runs/example-policy --iterations 20

:func:`trainers.policy.train` runs RLlib PPO (on the Ray it finds, else a local one), exports the policy to
``OUT/policy`` (safetensors + JSON, loadable without RLlib by :func:`rayrec.load_policy`) and evaluates it on
held-out simulated users against the baselines.
"""

from __future__ import annotations

import argparse

from envs import build_simulator, evaluate_policy, resolve_env_config
from rayrec import load_policy, paired_difference
from trainers.policy import train
from trainers.policy_config import TrainPolicyConfig


def main(out: str, iterations: int = 20, users: int = 1000, **overrides) -> dict:
    """Train, then play the exported policy and ``retrieval`` on the same held-out users."""
    config = TrainPolicyConfig(out=out, iterations=iterations, eval_users=users, **overrides)
    summary = train(config)
    env_config = resolve_env_config(config)  # the simulator the policy was trained in
    held_out = config.eval_seed + 7  # users neither training nor the run's own evaluation saw
    trained = evaluate_policy(
        load_policy(f"{out}/policy"), build_simulator(env_config, batch=users), users, held_out
    )
    retrieval = evaluate_policy(
        load_policy("retrieval"), build_simulator(env_config, batch=users), users, held_out
    )
    diff = paired_difference(trained, retrieval, "session_return")
    print(summary["markdown"])
    print(
        f"trained minus retrieval on {users} other users: {diff['mean']:+.2f} [{diff['ci95_low']:+.2f}, {diff['ci95_high']:+.2f}]"
    )
    return {"summary": summary, "vs_retrieval": diff}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--users", type=int, default=1000)
    main(**vars(parser.parse_args()))
