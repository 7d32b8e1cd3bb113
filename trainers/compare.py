"""``rayrec compare``: N training seeds of every learning method and every baseline on the same held-out users.

One command for the evidence that a learned slate policy beats what a team would otherwise ship:

1. every (learning method, seed) trains as one Ray task (``trainers.policy.train``: PPO, SlateQ, their
   ``-bandit`` variants with gamma 0) and the tuned linear ranker is fitted per seed by CEM
   (``trainers.linear_ranker``), all on training users only and in parallel across the cluster's CPUs
   (``greedy``'s click model, too, is fitted to exploration clicks of training users);
2. every run and every fixed baseline plays one session with each of the same ``test_users`` held-out
   users (``user_split=test``, one seed), so every comparison is paired user by user; the rollout measures
   the beyond-accuracy metrics too (:func:`envs.beyond.evaluate_beyond`);
3. :mod:`trainers.compare_stats` aggregates: mean and IQM over runs with bootstrap 95% intervals over runs
   and users, and paired differences of every learning method against every other policy. Each policy's
   beyond-accuracy values (ILD, novelty, coverage, exposure Gini over items and categories:
   :func:`envs.beyond.run_values`) are measured per run and averaged over its runs (not pooled: a run's
   coverage and Gini are over the impressions of ``test_users`` users, like a fixed baseline's one run).

Outputs under ``--out``: ``runs/NAME/seedS.json`` (one per finished run or baseline: per-user returns and
the beyond-accuracy values and the learning curve; a compare that is run again reuses them, so an
interrupted compare resumes),
``runs/NAME/seedS/`` (each training run's directory, resumed from its last checkpoint when interrupted),
``compare.json``, ``compare.md`` (the table), ``compare.png`` (learning curves with bands, final scores) and
``compare.html`` (the table and the plot in one self-contained page).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from envs.beyond import run_values
from envs.planner import REVISION as PLANNER_REVISION
from envs.policies import SIMULATION_POLICIES
from envs.spec import SimulatorOptions, parse_overrides, resolve_env_config, world_label
from rayrec.errors import ConfigError
from rayrec.html_report import write_html_report
from rayrec.metrics.beyond import TABLE_COLUMNS, table_cells, table_header
from rayrec.rerank import innermost_spec
from trainers.compare_config import BANDIT_SUFFIX, FITTED, LINEAR, CompareConfig
from trainers.compare_stats import bootstrap_intervals, curve_band

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the backend

RESULT_VERSION = 3
"""Version of a run's result record (2: with the beyond-accuracy values; 3: with the settings it was made
with); other versions run again."""
SETTINGS_FILE = "compare_settings.json"
"""In a learning run's directory: the settings its checkpoints were trained with (iterations aside)."""


@dataclass(frozen=True)
class Job:
    """One unit of work: a run of a learning method, a CEM fit, or a fixed baseline's evaluation."""

    name: str
    seed: int
    kind: str  # "learn" | "linear" | "fixed"

    @property
    def key(self) -> str:
        return f"{self.name}/seed{self.seed}"


def jobs(cfg: CompareConfig) -> list[Job]:
    out = [Job(m, s, "learn") for m in cfg.methods for s in range(cfg.seeds)]
    for b in cfg.baselines:
        out += [Job(b, s, "linear") for s in range(cfg.seeds)] if b in FITTED else [Job(b, 0, "fixed")]
    return out


def result_path(out: Path, job: Job) -> Path:
    return out / "runs" / job.name / f"seed{job.seed}.json"


def _simulator_options(cfg: CompareConfig) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(SimulatorOptions)}


def job_settings(cfg: CompareConfig, job: Job) -> dict[str, Any]:
    """What a job's result depends on besides its name and seed: a record (or a checkpoint) made with
    other settings is not reused — a compare run again with more iterations or other training settings
    trains again, resuming only from checkpoints of the same settings."""
    settings: dict[str, Any] = {
        "simulator": _simulator_options(cfg),
        "test_users": cfg.test_users,
        "test_seed": cfg.test_seed,
    }
    if job.kind == "learn":
        settings |= {"train": sorted(cfg.train), "iterations": cfg.iterations}
    elif job.kind == "linear":
        settings |= {"cem": [cfg.cem_iterations, cfg.cem_population, cfg.cem_users]}
    elif job.name == "planner":
        settings |= {"planner": PLANNER_REVISION}
    return json.loads(json.dumps(settings))  # as a record holds it (tuples as lists)


def _checkpoint_settings(cfg: CompareConfig, job: Job) -> dict[str, Any]:
    """The settings a learning run's checkpoints must share to be resumed: all but the iteration count."""
    return {k: v for k, v in job_settings(cfg, job).items() if k != "iterations"}


def train_config(cfg: CompareConfig, job: Job, run_dir: Path):
    """The ``TrainPolicyConfig`` of one learning run (resumed when its directory holds a checkpoint
    trained with the same settings; more iterations than before continue it)."""
    from trainers.policy_config import TrainPolicyConfig
    from trainers.run_dir import latest_checkpoint

    wanted = _checkpoint_settings(cfg, job)
    marker = run_dir / SETTINGS_FILE
    same = marker.exists() and json.loads(marker.read_text()) == wanted
    resume = same and latest_checkpoint(run_dir) is not None
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)  # died before its first checkpoint, or trained with other settings
    run_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(wanted, indent=2) + "\n")
    settings: dict[str, Any] = parse_overrides(cfg.train)
    algo = job.name.removesuffix(BANDIT_SUFFIX)
    if job.name.endswith(BANDIT_SUFFIX):
        settings["gamma"] = 0.0
    unknown = set(settings) - {f.name for f in dataclasses.fields(TrainPolicyConfig)}
    if unknown:
        raise ConfigError(f"--train: unknown train-policy settings {sorted(unknown)}")
    return TrainPolicyConfig(
        **_simulator_options(cfg),
        **settings,
        out=str(run_dir),
        algo=algo,
        policy_name=job.name,
        seed=job.seed,
        iterations=cfg.iterations,
        eval_users=0,
        eval_seed=cfg.test_seed,
        resume=resume,
    )


def run_job(cfg: CompareConfig, job: Job) -> dict[str, Any]:
    """Train or fit (when the job learns), then play the test users; the per-seed result record."""
    from trainers.policy_eval import play_beyond

    started = time.perf_counter()
    out = Path(cfg.out)
    test_env = resolve_env_config(cfg, user_split="test")
    curve: list[list[float]] = []
    spec: Any = job.name  # a policy spec, or a policy object
    if job.kind == "learn":
        import torch

        from trainers.policy import train

        torch.set_num_threads(1)
        summary = train(train_config(cfg, job, out / "runs" / job.name / f"seed{job.seed}"))
        spec = summary["policy_dir"]
        curve = [
            [r["train/env_steps"], r["eval/session_return"], r["sim/session_return"]]
            for r in summary["rows"]
            if "eval/session_return" in r
        ]
    elif job.kind == "linear":
        from trainers.linear_ranker import CEMConfig, fit_linear_ranker, fit_switch_ranker

        cem = CEMConfig(iterations=cfg.cem_iterations, population=cfg.cem_population, seed=job.seed)
        fit = fit_linear_ranker if job.name == LINEAR else fit_switch_ranker
        policy, result = fit(resolve_env_config(cfg, user_split="train"), cem, cfg.cem_users)
        spec = str(out / "runs" / job.name / f"seed{job.seed}")
        policy.save(spec, {"cem": dataclasses.asdict(cem), "history": result.history})
    elif job.name == "greedy":  # its click model is fitted to exploration clicks of training users, too
        from envs.policies import fitted_greedy

        spec = fitted_greedy(resolve_env_config(cfg, user_split="train"))
    outcomes, exposure = play_beyond(spec, test_env, cfg.test_users, cfg.test_seed)
    return {
        "version": RESULT_VERSION,
        "name": job.name,
        "seed": job.seed,
        "kind": job.kind,
        "test_users": cfg.test_users,
        "test_seed": cfg.test_seed,
        "settings": job_settings(cfg, job),
        "session_return": outcomes.session_return.tolist(),
        "beyond": run_values(outcomes, exposure),
        "curve": curve,
        "wall_s": time.perf_counter() - started,
    }


def _load_result(path: Path, cfg: CompareConfig, job: Job) -> dict[str, Any] | None:
    """The finished record of ``job``, if it was made by this version with the same settings."""
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    same = record.get("version") == RESULT_VERSION and record.get("settings") == job_settings(cfg, job)
    return record if same else None


def run_all(cfg: CompareConfig) -> dict[str, dict[str, Any]]:
    """Every job's result, reusing finished ones; the others run as Ray tasks, saved as each finishes."""
    import ray

    from rayrec.runtime import init_ray

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    results = {}
    todo = []
    for job in jobs(cfg):
        found = _load_result(result_path(out, job), cfg, job)
        if found is not None:
            results[job.key] = found
        else:
            todo.append(job)
    print(f"compare: {len(results)} runs reused, {len(todo)} to run", flush=True)
    if todo:
        init_ray(cfg.address, log_dir=out, verbose=cfg.verbose)
        task = ray.remote(run_job).options(num_cpus=cfg.cpus_per_run, max_retries=1)
        pending = {task.remote(cfg, job): job for job in todo}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            record = ray.get(done[0])
            path = result_path(out, job)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record) + "\n")
            results[job.key] = record
            mean = float(np.mean(record["session_return"]))
            print(f"  done {job.key}: test return {mean:.3f} ({record['wall_s']:.0f} s)", flush=True)
    return results


def summarize(cfg: CompareConfig, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The statistics of :func:`trainers.compare_stats.bootstrap_intervals` plus what each policy is and its
    beyond-accuracy values (``beyond``: the mean over its runs; ``beyond_runs``: each run's, in seed order)."""
    names = [*cfg.methods, *cfg.baselines]
    scores = {
        name: np.array([r["session_return"] for r in results.values() if r["name"] == name]) for name in names
    }
    primary = [m for m in cfg.methods if not m.endswith(BANDIT_SUFFIX)] or list(cfg.methods)
    pairs = [(m, other) for m in primary for other in names if other != m]
    from trainers.policy_eval import session_clusters  # heavy (plots): only where runs are summarised

    clusters = session_clusters(resolve_env_config(cfg, user_split="test"), cfg.test_users, cfg.test_seed)
    stats = bootstrap_intervals(scores, pairs, reps=cfg.bootstrap_reps, seed=0, clusters=clusters)
    # With observe_hidden every policy that reads all of the candidates' features reads the hidden state too,
    # and so does a re-ranker around one (`mmr:greedy` ranks by greedy's scores).
    feature_readers = {*cfg.methods, *FITTED, "greedy"} if resolve_env_config(cfg).observe_hidden else set()
    for name, entry in stats["methods"].items():
        entry["kind"] = "learned" if name in cfg.methods else ("fitted" if name in FITTED else "fixed")
        base = innermost_spec(name)
        entry["hidden_state"] = base in SIMULATION_POLICIES or base in feature_readers
        runs = sorted((r for r in results.values() if r["name"] == name), key=lambda r: r["seed"])
        entry["beyond_runs"] = [r["beyond"] for r in runs]
        entry["beyond"] = {
            key: float(np.mean([r["beyond"][key] for r in runs])) for key, _, _ in TABLE_COLUMNS
        }
    planner = stats["methods"].get("planner", {}).get("mean")
    for entry in stats["methods"].values():
        entry["pct_of_planner"] = entry["mean"] / planner if planner else None
    curves = {}
    for method in cfg.methods:
        runs = [r["curve"] for r in results.values() if r["name"] == method and r["curve"]]
        if runs and len({len(c) for c in runs}) == 1:
            arr = np.array(runs)  # [runs, T, 3]
            curves[method] = {
                "env_steps": arr[:, :, 0].mean(axis=0).tolist(),
                "validation": curve_band(arr[:, :, 1]).tolist(),
                "sampled": curve_band(arr[:, :, 2]).tolist(),
            }
    return {
        "test_users": cfg.test_users,
        "test_seed": cfg.test_seed,
        "histories": None if clusters is None else int(clusters.max()) + 1,
        "seeds": cfg.seeds,
        "iterations": cfg.iterations,
        "preset": cfg.preset,
        "world": world_label(cfg),
        **stats,
        "curves": curves,
    }


def _ci(lo_hi: list[float]) -> str:
    return f"[{lo_hi[0]:.2f}, {lo_hi[1]:.2f}]"


def markdown(summary: dict[str, Any], command: str) -> str:
    lines = [
        f"Command: `{command}`",
        "",
        f"World: {summary['world']}; {summary['test_users']} held-out test users (seed "
        f"{summary['test_seed']}) play every policy once, so comparisons are paired. Learning methods: "
        f"{summary['seeds']} training seeds × {summary['iterations']} iterations. Intervals: 95% bootstrap "
        "over runs and users (Agarwal et al. 2021's stratified bootstrap, with paired users"
        + (
            f"; the sessions start from {summary['histories']} logged histories, so users are resampled by "
            "history, a cluster bootstrap"
            if summary.get("histories")
            else ""
        )
        + "). Beyond "
        "accuracy, the mean over a policy's runs (not pooled) of each run's values on the test users: ILD "
        "and novelty averaged over users, coverage and exposure Gini over items and over categories of "
        "all the run's impressions.",
        "",
        "| policy | kind | sees hidden state | runs | mean session return [95% CI] | IQM [95% CI] | % of planner "
        f"| {table_header()} |",
        "| --- | --- | --- | --- | --- | --- | --- |" + " ---: |" * len(TABLE_COLUMNS),
    ]
    for name, m in summary["methods"].items():
        pct = f"{m['pct_of_planner']:.1%}" if m["pct_of_planner"] is not None else "–"
        lines.append(
            f"| {name} | {m['kind']} | {'yes' if m['hidden_state'] else 'no'} | {m['runs']} | "
            f"{m['mean']:.3f} {_ci(m['mean_ci'])} | {m['iqm']:.3f} {_ci(m['iqm_ci'])} | {pct} | "
            f"{table_cells(m['beyond'])} |"
        )
    lines += ["", "Paired differences of mean session return (method minus other, same users):", ""]
    lines += ["| difference | mean [95% CI] | above 0 |", "| --- | --- | --- |"]
    for key, d in summary["differences"].items():
        lines.append(
            f"| {key} | {d['mean']:+.3f} {_ci(d['ci'])} | {'**yes**' if d['above_zero'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    """Left: validation (deterministic) learning curves, mean and 95% band over seeds. Right: final scores."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [1.2, 1]})
    for i, (name, c) in enumerate(summary["curves"].items()):
        steps = np.array(c["env_steps"])
        mean, lo, hi = np.array(c["validation"])
        left.plot(steps, mean, color=f"C{i}", label=f"{name} (deterministic, validation users)")
        left.fill_between(steps, lo, hi, color=f"C{i}", alpha=0.2)
        left.plot(
            steps, np.array(c["sampled"])[0], color=f"C{i}", ls=":", lw=1, label=f"{name} (sampled, training)"
        )
    left.set_xlabel("environment steps")
    left.set_ylabel("mean session return")
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    names = list(summary["methods"])
    means = [summary["methods"][n]["mean"] for n in names]
    lows = [summary["methods"][n]["mean_ci"][0] for n in names]
    highs = [summary["methods"][n]["mean_ci"][1] for n in names]
    y = np.arange(len(names))
    colors = [
        "C3"
        if summary["methods"][n]["hidden_state"]
        else ("C0" if summary["methods"][n]["kind"] == "learned" else "C7")
        for n in names
    ]
    right.errorbar(
        means,
        y,
        xerr=[np.subtract(means, lows), np.subtract(highs, means)],
        fmt="none",
        ecolor="k",
        capsize=3,
    )
    right.scatter(means, y, c=colors, zorder=3)
    right.set_yticks(
        y,
        [f"{n}{' (hidden state)' if summary['methods'][n]['hidden_state'] else ''}" for n in names],
        fontsize=8,
    )
    right.invert_yaxis()
    right.set_xlabel("mean session return on test users (95% CI)")
    right.grid(alpha=0.3, axis="x")
    fig.suptitle(f"rayrec compare: {summary['world'].replace('`', '')}, {summary['seeds']} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare(cfg: CompareConfig, command: str | None = None) -> dict[str, Any]:
    """Run (or reuse) every job, then write ``compare.json``, ``compare.md``, ``compare.png`` and ``compare.html``."""
    command = command or " ".join(["rayrec", *sys.argv[1:]])
    summary = summarize(cfg, run_all(cfg))
    out = Path(cfg.out)
    summary["markdown"] = markdown(summary, command)
    (out / "compare.json").write_text(json.dumps(summary | {"command": command}, indent=2) + "\n")
    (out / "compare.md").write_text(summary["markdown"])
    plot(summary, out / "compare.png")
    write_html_report(
        summary["markdown"], str(out / "compare.html"), title="rayrec compare", plots=["compare.png"]
    )
    return summary
