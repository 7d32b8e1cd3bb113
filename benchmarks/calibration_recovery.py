"""Sim-to-sim recovery of the calibration: logs generated with known parameters, fitted back, over seeds.

    python -m benchmarks.calibration_recovery [--users 5000] [--seeds 3] [--draws 16] [--noise]

Generates logs on a small synthetic world (1,000 items, 16 dims, the users' histories from its data) with
the parameters of ``envs.calibration.RECOVERY_TRUTH`` under the ``random`` logging policy, fits
the choice model by simulated maximum likelihood and the dynamics by the likelihood of the session ends
(:mod:`envs.calibration`), starting from the preset values, and prints per parameter: the truth, the mean
estimate, the mean and spread of the relative error over seeds, the mean standard error relative to the
truth, and how many seeds landed within ±10%. One core (thread pools set to 1), process CPU seconds.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one core, before numpy loads
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from envs.calibration import RECOVERY_TRUTH as TRUTH  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--draws", type=int, default=16)
    parser.add_argument("--particles", type=int, default=32)
    parser.add_argument("--noise", action="store_true", help="also fit interest_noise (true value 0.3)")
    parser.add_argument("--json", help="write the per-seed results here")
    args = parser.parse_args()

    from envs.calibration import fit_choice
    from envs.calibration_choice import CHOICE_PARAMETERS, slate_choice_data
    from envs.calibration_dynamics import DynamicsLikelihood, dynamics_values, session_steps
    from envs.calibration_sim import simulate_log
    from envs.config import SlateEnvConfig
    from envs.factory import load_world
    from rayrec.synth import WorldConfig, write_world

    directory = tempfile.mkdtemp(prefix="rayrec-recovery-bench-")
    write_world(WorldConfig(items=1000, users=300, topics=8, dim=16, seed=0), directory)
    truth_values = {**TRUTH, **({"interest_noise": 0.3} if args.noise else {})}
    truth = SlateEnvConfig(data_dir=directory, **truth_values)
    start = SlateEnvConfig(data_dir=directory)
    catalog = load_world(truth).catalog
    choice_free = [n for n in truth_values if n in CHOICE_PARAMETERS]
    dynamics_free = [n for n in truth_values if n not in CHOICE_PARAMETERS]
    runs = []
    for seed in range(1, args.seeds + 1):
        clock = time.process_time()
        log, _ = simulate_log(truth, "random", args.users, seed)
        generated = time.process_time()
        fit = fit_choice(slate_choice_data(log, truth), catalog, start, choice_free, args.draws, seed)
        fitted_choice = time.process_time()
        dynamics = DynamicsLikelihood(session_steps(log, catalog, truth), start, args.particles, seed).fit(
            dynamics_values(start), dynamics_free
        )
        done = time.process_time()
        runs.append(
            {
                "seed": seed,
                "requests": log.size,
                "values": {**fit.values, **dynamics.values},
                "std_errors": {**fit.std_errors, **dynamics.std_errors},
                "cpu_s": {
                    "generate": generated - clock,
                    "choice": fitted_choice - generated,
                    "dynamics": done - fitted_choice,
                },
            }
        )
    print(
        f"{args.users} users per log ({np.mean([r['requests'] for r in runs]):.0f} requests), {args.seeds} seeds, "
        f"{args.draws} draws, random logging policy; CPU s per seed: "
        + ", ".join(f"{k} {np.mean([r['cpu_s'][k] for r in runs]):.1f}" for k in runs[0]["cpu_s"])
    )
    print()
    print(
        "| parameter | true | mean fitted | mean rel. error | sd of rel. error | mean s.e. / true | within ±10% |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, true in truth_values.items():
        fitted = np.asarray([r["values"][name] for r in runs])
        rel = fitted / true - 1.0
        se = np.asarray([r["std_errors"][name] for r in runs]) / true
        print(
            f"| {name} | {true:g} | {fitted.mean():.4f} | {rel.mean():+.1%} | {rel.std():.1%} | {se.mean():.1%} | "
            f"{int((np.abs(rel) <= 0.10).sum())}/{len(runs)} |"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"truth": truth_values, "runs": runs}, out, indent=2)


if __name__ == "__main__":
    main()
