"""``rayrec train-policy --tune``: Ray Tune over a small search space of PPO or SlateQ hyperparameters.

Each trial is one real short training run — :func:`trainers.policy.train`, the loop, checkpoints and export
of ``rayrec train-policy`` — with settings sampled at random from the algorithm's search space
(:data:`trainers.tune_config.SEARCH_SPACES`); every other setting is the command line's (or ``--hparams``').
After each of its validations a trial reports its **validation return** to Tune: the mean session return of
the deterministic policy (top-k, or SlateQ's greedy slate) on ``--validate-users`` validation users
(``user_split=validation``, seed ``eval_seed + 1``: the same users for every trial, so trials are compared
on paired users). The test users are never played: ``eval_users`` is 0 in every trial.

ASHA (asynchronous successive halving) stops a trial at a rung (``grace_period * 2^r`` iterations) when its
validation return is below the top half of what the trials that reached that rung had there; survivors train
all ``--tune-iterations``. The best trial is the one with the highest final validation return among those
that trained every iteration; its searched settings (and ``algo``) are written as a preset for
``rayrec train-policy --hparams FILE``.

Each trial holds what RLlib asks for its training config (``Algorithm.default_resource_request``: one CPU for
the trial's own sampler and learner with the defaults, plus one per env runner and per learner, GPUs per
``--gpus-per-learner``); Tune runs as many trials at once as the cluster's free resources hold.

Outputs under ``--out`` (a local directory): ``trials/TRIAL_ID/`` (each trial's run directory: config,
progress, checkpoints, ``policy/``), ``ray_tune/`` (Tune's experiment state and per-trial result logs),
``tune.json`` and ``tune.md`` (every trial, the search, the best settings) and ``preset.yaml`` (or
``--tune-preset``).

References:
    - Li, L. et al. (2020). "A System for Massively Parallel Hyperparameter Tuning." MLSys (ASHA).
    - Liaw, R. et al. (2018). "Tune: A Research Platform for Distributed Model Selection and Training."
      arXiv:1807.05118.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from envs.spec import resolve_env_config
from rayrec import storage
from rayrec.config import to_plain
from rayrec.errors import ConfigError, RayrecError
from rayrec.runtime import init_ray
from trainers.policy_config import TrainPolicyConfig
from trainers.tune_config import Distribution, TuneOptions, search_space, write_hparams

METRIC = "validation_return"
"""What ASHA and the best-trial choice maximise: the mean validation session return (deterministic policy)."""
TIME_ATTR = "iteration"
"""ASHA's clock: the trial's training iteration."""
REDUCTION_FACTOR = 2
"""ASHA keeps the top 1/2 of the trials at each rung (rungs at grace_period * 2^r iterations)."""
TRIALS_DIR = "trials"
TUNE_DIR = "ray_tune"
PRESET_FILE = "preset.yaml"
PATH_FIELDS = ("index", "data", "env_config")
"""Settings that name local files: made absolute, since Tune runs each trial in its own working directory."""


def _distribution(dist: Distribution):
    from ray import tune

    if dist.kind == "loguniform":
        return tune.loguniform(dist.low, dist.high)
    return tune.choice(list(dist.values))


def trial_settings(cfg: TrainPolicyConfig, iterations: int) -> dict[str, Any]:
    """The fixed settings of every trial: ``cfg`` for ``iterations`` iterations, no held-out evaluation."""
    base = to_plain(cfg)
    for name in PATH_FIELDS:
        value = base.get(name)
        if value and not storage.is_remote(value):
            base[name] = str(Path(value).absolute())
    base.pop("out")
    return base | {
        "iterations": iterations,
        "eval_users": 0,  # the test users are for the final comparison, never for choosing settings
        "resume": False,
        "tracking_uri": cfg.tracking_uri or "none",  # Tune logs every trial's results itself
    }


def trial_resources(cfg: TrainPolicyConfig, env_config):
    """The placement group RLlib asks for a run of ``cfg`` (main process, env runners, learners). PPO's and
    SlateQ's are the same: both get their runners and learners from :func:`trainers.rllib_setup.with_slate_env`."""
    from trainers.rllib_setup import build_algorithm_config

    algo_config = build_algorithm_config(cfg, env_config)
    return algo_config.algo_class.default_resource_request(algo_config)


def run_trial(params: dict[str, Any], *, base: dict[str, Any], root: str) -> None:
    """Tune's trainable: train with ``base | params`` in ``root/trials/TRIAL_ID``, reporting each validation."""
    from ray import tune

    from trainers.policy import train

    run_dir = Path(root) / TRIALS_DIR / tune.get_context().get_trial_id()
    cfg = TrainPolicyConfig(**(base | params), out=str(run_dir))

    def report(row: dict[str, float]) -> None:
        if "eval/session_return" in row:
            tune.report(
                {
                    METRIC: row["eval/session_return"],
                    TIME_ATTR: int(row["iteration"]),
                    "sampled_return": row["sim/session_return"],
                    "env_steps": row["train/env_steps"],
                    "train_wall_s": row["train/wall_s"],
                }
            )

    train(cfg, on_iteration=report)


def _progress_callback():
    from ray import tune

    class Progress(tune.Callback):
        """One line per trial result, end and error (Tune's own table only with ``--verbose``)."""

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            print(
                f"  trial {trial.trial_id} iteration {result[TIME_ATTR]}: {METRIC} {result[METRIC]:.3f}",
                flush=True,
            )

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            print(f"  trial {trial.trial_id} ended", flush=True)

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            print(f"  trial {trial.trial_id} failed (see {trial.path})", flush=True)

    return Progress()


def _one_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__


def trial_rows(grid, space: dict[str, Distribution], iterations: int) -> list[dict[str, Any]]:
    """One record per trial: its settings, status, final and best validation return, where its run is."""
    rows = []
    for result in grid:
        trial_id = Path(result.path).name
        history = result.metrics_dataframe
        metrics = result.metrics or {}  # empty when a trial failed before its first report
        values = [] if history is None or METRIC not in history else history[METRIC].dropna().tolist()
        reached = int(metrics.get(TIME_ATTR, 0) or 0)
        if result.error is not None:
            status = f"error: {_one_line(result.error)}"
        elif reached >= iterations:
            status = "complete"
        else:
            status = f"stopped by ASHA at iteration {reached}"
        rows.append(
            {
                "trial": trial_id,
                "status": status,
                "settings": {name: to_plain(result.config[name]) for name in space},
                "iterations": reached,
                "validation_return": float(values[-1]) if values else math.nan,
                "best_validation_return": float(max(values)) if values else math.nan,
                "validations": [float(v) for v in values],
                "sampled_return": float(metrics.get("sampled_return", math.nan)),
                "env_steps": float(metrics.get("env_steps", math.nan)),
                "train_wall_s": float(metrics.get("train_wall_s", math.nan)),
                "run_dir": str(Path(TRIALS_DIR) / trial_id),
            }
        )
    return sorted(rows, key=lambda r: r["trial"])


def best_trial(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The complete trial with the highest final validation return."""
    complete = [r for r in rows if r["status"] == "complete" and math.isfinite(r["validation_return"])]
    if not complete:
        errors = sorted({r["status"] for r in rows if r["status"].startswith("error")})
        raise RayrecError(
            "--tune: no trial trained every iteration" + (f" ({'; '.join(errors)})" if errors else "")
        )
    return max(complete, key=lambda r: r["validation_return"])


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def tune_markdown(summary: dict[str, Any]) -> str:
    """The search and every trial as Markdown (the best trial in bold)."""
    space = summary["search_space"]
    names = list(space)
    lines = [
        f"Command: `{summary['command']}`",
        "",
        f"Ray Tune, `{summary['algo']}`: {summary['samples']} trials (random search, seed {summary['seed']}) "
        f"of up to {summary['iterations']} iteration(s) each, ASHA on the validation return (mean session "
        f"return of the deterministic policy on {summary['validation']['users']} validation users, seed "
        f"{summary['validation']['seed']}; grace period {summary['grace_period']} iteration(s), reduction "
        f"factor {summary['reduction_factor']}); {summary['resources_per_trial']} per trial. Wall time "
        f"{summary['wall_s']:.0f} s.",
        "",
        "Search space: " + "; ".join(f"`{k}` {v}" for k, v in space.items()) + ".",
        "",
        "| trial | " + " | ".join(f"`{n}`" for n in names) + " | status | iterations | validation return "
        "(final) | best validation | sampled return (last) |",
        "| --- |" + " ---: |" * len(names) + " --- | ---: | ---: | ---: | ---: |",
    ]
    best = summary["best"]["trial"]
    for row in sorted(summary["trials"], key=lambda r: -_sort_key(r["validation_return"])):
        label = f"**{row['trial']}** (best)" if row["trial"] == best else row["trial"]
        lines.append(
            f"| {label} | "
            + " | ".join(_fmt(row["settings"][n]) for n in names)
            + f" | {row['status']} | {row['iterations']} | {row['validation_return']:.3f} | "
            f"{row['best_validation_return']:.3f} | {row['sampled_return']:.3f} |"
        )
    chosen = ", ".join(f"{k}={_fmt(v)}" for k, v in summary["best"]["settings"].items())
    lines += ["", f"Best settings ({best}): {chosen}; preset `{summary['preset']}`."]
    return "\n".join(lines) + "\n"


def _sort_key(value: float) -> float:
    return value if math.isfinite(value) else -math.inf


def tune_policy(cfg: TrainPolicyConfig, options: TuneOptions, command: str | None = None) -> dict[str, Any]:
    """Run the search; write ``tune.json``, ``tune.md`` and the preset; returns the summary (with ``markdown``)."""
    if cfg.from_events is not None or cfg.resume:
        raise ConfigError(
            "--tune searches simulator training runs: it takes neither --from-events nor --resume"
        )
    if storage.is_remote(cfg.out):
        raise ConfigError(f"--tune needs a local --out directory (got {cfg.out})")
    if cfg.validate_every < 1:
        raise ConfigError("--tune chooses by the validation return: --validate-every must be >= 1")
    iterations = options.tune_iterations or cfg.iterations
    grace = options.tune_grace_period or min(cfg.validate_every, iterations)
    if grace > iterations:
        raise ConfigError(f"--tune-grace-period {grace} exceeds the {iterations} iterations of a trial")
    out = Path(cfg.out).absolute()
    if (out / "tune.json").exists() or (out / TRIALS_DIR).exists():
        raise ConfigError(f"{out} already holds a tune: choose another --out")
    space = search_space(cfg)
    env_config = resolve_env_config(cfg, user_split="train")  # a bad simulator setting fails before Ray
    command = command or " ".join(["rayrec", *sys.argv[1:]])
    preset = options.tune_preset or str(out / PRESET_FILE)

    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    out.mkdir(parents=True, exist_ok=True)
    init_ray(cfg.address, log_dir=out, verbose=cfg.verbose)
    resources = trial_resources(cfg, env_config)
    trainable = tune.with_parameters(run_trial, base=trial_settings(cfg, iterations), root=str(out))
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space={name: _distribution(dist) for name, dist in space.items()},
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            search_alg=BasicVariantGenerator(random_state=options.tune_seed),
            scheduler=ASHAScheduler(
                time_attr=TIME_ATTR,
                max_t=iterations,
                grace_period=grace,
                reduction_factor=REDUCTION_FACTOR,
                stop_last_trials=False,  # a survivor ends its own run: export and files complete
            ),
            num_samples=options.tune_samples,
            trial_dirname_creator=lambda trial: trial.trial_id,
        ),
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            storage_path=str(out),
            verbose=1 if cfg.verbose else 0,
            callbacks=[_progress_callback()],
        ),
    )
    cluster_cpus = ray.cluster_resources().get("CPU", 0.0)
    print(
        f"tune: {options.tune_samples} trials of {cfg.algo} × {iterations} iterations, "
        f"{resources.required_resources} each, {cluster_cpus:g} CPUs in the cluster",
        flush=True,
    )
    started = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - started
    rows = trial_rows(grid, space, iterations)
    best = best_trial(rows)
    summary: dict[str, Any] = {
        "command": command,
        "algo": cfg.algo,
        "search_space": {name: dist.describe() for name, dist in space.items()},
        "samples": options.tune_samples,
        "iterations": iterations,
        "grace_period": grace,
        "reduction_factor": REDUCTION_FACTOR,
        "seed": options.tune_seed,
        "resources_per_trial": resources.required_resources,
        "cluster_cpus": cluster_cpus,
        "validation": {"split": "validation", "users": cfg.validate_users, "seed": cfg.eval_seed + 1},
        "fixed_settings": trial_settings(cfg, iterations),
        "trials": rows,
        "best": {
            "trial": best["trial"],
            "settings": best["settings"],
            "validation_return": best["validation_return"],
            "run_dir": best["run_dir"],
        },
        "preset": preset,
        "wall_s": wall,
    }
    defaults = trial_settings(TrainPolicyConfig(out=str(out), algo=cfg.algo), iterations)
    changed = {k: v for k, v in summary["fixed_settings"].items() if k not in space and defaults.get(k) != v}
    write_hparams(
        preset,
        {"algo": cfg.algo, **best["settings"]},
        header=[
            f"rayrec train-policy --hparams preset: the best of {len(rows)} Ray Tune trials "
            f"(up to {iterations} iterations each, ASHA), validation return {best['validation_return']:.3f}",
            "(trial "
            + best["trial"]
            + "); the trials' other settings that differ from the defaults: "
            + (", ".join(f"{k}={v}" for k, v in changed.items()) or "none"),
            "made by: " + command,
        ],
    )
    summary["markdown"] = tune_markdown(summary)
    (out / "tune.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "tune.md").write_text(summary["markdown"])
    return summary
