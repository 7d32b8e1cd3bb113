"""Train the slate re-ranking policy (RLlib, new API stack) in the ``rayrec/SlateRec-v0`` simulator.

``--algo ppo`` (default): PPO with a Plackett–Luce policy and the per-position loss of
:mod:`trainers.slate_ppo`. ``--algo slateq``: SlateQ (:mod:`trainers.slateq`). ``--gamma 0``: either as a
contextual bandit.

    python -m trainers.policy --out runs/policy                       # built-in synthetic world
    python -m trainers.policy --out runs/slateq --algo slateq
    python -m trainers.policy --index runs/index --data data/ml --out runs/policy --env-runners 2
    rayrec train-policy --out runs/policy --iterations 60 --resume     # continue from the last checkpoint
    rayrec train-policy --from-events runs/ab/events --offline-algo marwil --out runs/offline  # from a log
    rayrec train-policy --hparams ppo-default --out runs/policy        # the checked-in tuned settings
    rayrec train-policy --tune --tune-samples 8 --out runs/tune-ppo     # Ray Tune search (trainers.policy_tune)

The same command scales from a laptop to a cluster: ``--env-runners``/``--envs-per-runner`` add
sampling actors, ``--learners``/``--gpus-per-learner`` add (GPU) learners, ``--address`` picks the cluster.

Outputs under ``--out``: ``config.yaml``, ``run.json`` (what the run is bound to: env and network),
``checkpoints/`` (RLlib checkpoints every ``--checkpoint-every`` iterations, for ``--resume``),
``progress.csv`` + ``progress.jsonl`` + ``tensorboard/`` (namespaced metrics, one row per iteration),
``policy/`` (the RLlib-free export, see :mod:`rayrec.slate_scorer`), and the final held-out evaluation
against the baselines: ``eval.json``, ``eval.md`` and ``learning_curve.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from envs.spec import resolve_env_config
from rayrec import storage
from rayrec.config import add_config_args, save_config, to_plain
from rayrec.errors import ArtifactError, RayrecError
from rayrec.runtime import init_ray
from rayrec.slate_scorer import ExportConfig, ScorerConfig, save_exported_policy
from trainers.policy_config import TrainPolicyConfig
from trainers.policy_eval import evaluate_policies, validation_return, write_evaluation
from trainers.rllib_setup import build_algorithm_config, current_scorer, iteration_metrics, probe_env
from trainers.run_dir import (
    CHECKPOINT_DIR,
    POLICY_DIR,
    RUN_FILE,
    ProgressLog,
    check_run_binding,
    exported_validation_return,
    latest_checkpoint,
    local_run_dir,
    progress_line,
    run_binding,
    save_checkpoint,
    upload_checkpoint,
)
from trainers.tracking import evaluation_metrics, start_tracking
from trainers.tune_config import TuneOptions, train_config_from_args, tune_options_from_args


def train(
    cfg: TrainPolicyConfig, on_iteration: Callable[[dict[str, float]], None] | None = None
) -> dict[str, Any]:
    """Train, checkpoint, export and evaluate; returns the evaluation summary (also in ``eval.json``).

    ``on_iteration`` is called with each iteration's metrics row once it is logged and checkpointed
    (``rayrec train-policy --tune`` reports the validation return of its trials to Ray Tune with it).
    """
    if cfg.from_events is not None:
        from trainers.offline import train_offline  # learns from a log: no simulator sampling, no PPO

        return train_offline(cfg)
    env_config = resolve_env_config(cfg, user_split="train")  # validation and evaluation meet other users
    dim, num_candidates, slate_size = probe_env(env_config)
    features = env_config.feature_names
    scorer_config = ScorerConfig(
        dim=dim,
        num_features=len(features),
        hidden=cfg.hidden,
        attention_layers=cfg.attention_layers,
        attention_heads=cfg.attention_heads,
    )
    binding = run_binding(env_config, scorer_config) | {"algo": cfg.algo}
    check_run_binding(cfg.out, binding, cfg.resume)
    with local_run_dir(cfg) as out:
        save_config(cfg, out)
        (out / RUN_FILE).write_text(json.dumps(binding, indent=2) + "\n")
        torch.set_num_threads(cfg.torch_threads)
        init_ray(cfg.address, log_dir=None if storage.is_remote(cfg.out) else out, verbose=cfg.verbose)
        choice_model = None
        if cfg.algo == "slateq":
            from trainers.slateq import build_slateq_config, fit_choice_model

            choice_model = fit_choice_model(env_config, cfg.choice_users, cfg.seed)
            algo = build_slateq_config(cfg, env_config, choice_model).build_algo()
        else:
            algo = build_algorithm_config(cfg, env_config).build_algo()
        policy_dir = str(out / POLICY_DIR)

        def export(iteration: int, validation: float | None) -> None:
            config = ExportConfig(
                scorer=scorer_config,
                slate_size=slate_size,
                num_candidates=num_candidates,
                budget=env_config.budget,
                name=cfg.policy_name,
                feature_names=features,
                choice_model=choice_model,
                metadata={
                    "trainer": f"rllib-{cfg.algo}",
                    "gamma": cfg.gamma,
                    "iteration": iteration,
                    "validation_return": validation,
                    "seed": cfg.seed,
                    "env": to_plain(env_config),
                },
            )
            save_exported_policy(current_scorer(algo), config, policy_dir)

        tracker = None
        try:
            start, best = 0, float("-inf")
            if cfg.resume:
                found = latest_checkpoint(out)
                if found is None:
                    raise ArtifactError(f"--resume: no checkpoint under {out / CHECKPOINT_DIR}")
                algo.restore_from_path(str(found[0]))
                start, best = found[1], exported_validation_return(policy_dir)
                print(f"resumed from {found[0]} (iteration {start})", flush=True)
            progress = ProgressLog(out, start)  # progress.jsonl, progress.csv and TensorBoard
            tracker = start_tracking(
                # a remote --out is staged here and uploaded at the end: no default store for it
                cfg.tracking_uri or ("none" if storage.is_remote(cfg.out) else None),
                out,
                experiment="rayrec-train-policy",
                run_name=f"{cfg.algo}-{out.name}",
                params=to_plain(cfg),
                tensorboard=False,
                tags={"algo": cfg.algo, "resumed_from_iteration": str(start)},
            )
            started = time.perf_counter() - (progress.rows[-1]["train/wall_s"] if progress.rows else 0.0)
            for iteration in range(start + 1, cfg.iterations + 1):
                row = {"iteration": float(iteration), **iteration_metrics(algo.train(), slate_size)}
                if cfg.validate_every and (
                    iteration % cfg.validate_every == 0 or iteration == cfg.iterations
                ):
                    value = validation_return(
                        current_scorer(algo),
                        env_config.replace(user_split="validation"),
                        cfg.validate_users,
                        cfg.eval_seed + 1,
                        choice_model,
                    )
                    row["eval/session_return"] = value
                    if cfg.export == "best" and value > best:
                        best = value
                        export(iteration, value)
                row["train/wall_s"] = time.perf_counter() - started
                progress.add(row)
                tracker.log(row, step=iteration)
                print(progress_line(row, cfg.iterations), flush=True)
                if (
                    cfg.checkpoint_every and iteration % cfg.checkpoint_every == 0
                ) or iteration == cfg.iterations:
                    checkpoint = save_checkpoint(algo, out, iteration)
                    if storage.is_remote(cfg.out):
                        upload_checkpoint(out, cfg.out, checkpoint)
                if on_iteration is not None:
                    on_iteration(row)
            progress.close()
            if cfg.export == "last" or not math.isfinite(best):
                export(cfg.iterations, None)
            print(f"exported policy → {storage.join(cfg.out, POLICY_DIR)}", flush=True)
        except BaseException:
            if tracker is not None:
                tracker.close(failed=True)
            raise
        finally:
            algo.stop()

        if cfg.eval_users == 0:  # evaluated elsewhere (rayrec compare): metrics, checkpoints and export only
            tracker.close()
            return {"policy_dir": policy_dir, "rows": progress.rows, "markdown": "(no held-out evaluation)\n"}
        summary = evaluate_policies(
            policy_dir,
            env_config.replace(user_split="test"),
            cfg.baselines,
            cfg.eval_users,
            cfg.eval_seed,
            cfg.policy_name,
        )
        write_evaluation(
            summary, out, progress.rows, command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        )
        with tracker:  # the held-out evaluation joins the run: test metrics and the report
            tracker.log(evaluation_metrics(summary), step=cfg.iterations)
            for name in ("eval.json", "eval.md", "eval.html", "learning_curve.png"):
                tracker.log_artifact(out / name)
        return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainers.policy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(parser, TrainPolicyConfig)
    add_config_args(parser, TuneOptions)
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    cfg = train_config_from_args(args)  # defaults, then --hparams, then the flags given
    options = tune_options_from_args(args)
    if options.tune:
        from trainers.policy_tune import tune_policy

        summary = tune_policy(cfg, options)
    else:
        summary = train(cfg)
    print(summary["markdown"])
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_from_args(args)
    except RayrecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
