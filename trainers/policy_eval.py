"""Held-out evaluation of a trained slate policy against the baselines, and the learning-curve plot.

Every policy plays one session with each of the same ``n`` held-out simulated users (the same env seed,
so the same users start the same way), which makes the per-user differences paired: the confidence
interval of "trained minus baseline" is the paired one, much tighter than comparing two independent means.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from envs.beyond import evaluate_beyond
from envs.config import SlateEnvConfig
from envs.factory import build_simulator
from envs.policies import make_policy
from envs.rollout import arrival_histories, evaluate_policy
from envs.spec import users_used
from envs.users import LoggedUserSampler
from rayrec.click_logit import SlateClickModel
from rayrec.html_report import write_html_report
from rayrec.metrics.beyond import Exposure
from rayrec.metrics.session import (
    BEYOND,
    BEYOND_PER_USER,
    REPORTED,
    SessionOutcomes,
    namespaced,
    paired_difference,
)
from rayrec.metrics.session import METRICS as SESSION_METRICS
from rayrec.slate_policy import SlatePolicy
from rayrec.slate_scorer import ExportConfig, ExportedPolicy, SlateScorer

matplotlib.use("Agg")  # headless: plots are written to files
import matplotlib.pyplot as plt  # after choosing the backend

METRICS = tuple(namespaced(name) for name in REPORTED)
METRIC_UNITS = {namespaced(name): SESSION_METRICS[name].unit for name in REPORTED}
ROLLOUT_SLOTS = 4096
"""Users simulated at once (simulator rows)."""


def validation_return(
    scorer: SlateScorer,
    env_config: SlateEnvConfig,
    num_users: int,
    seed: int,
    choice_model: SlateClickModel | None = None,
) -> float:
    """Mean session return of ``scorer``'s deterministic policy over ``num_users`` held-out users: the top-k
    scores, or SlateQ's greedy slate when ``choice_model`` is given (see :class:`ExportedPolicy`)."""
    policy = ExportedPolicy(
        scorer,
        ExportConfig(
            scorer=scorer.config,
            slate_size=env_config.slate_size,
            num_candidates=env_config.num_candidates,
            budget=env_config.budget,
            feature_names=env_config.feature_names,
            choice_model=choice_model,
        ),
    )
    return float(play(policy, env_config, num_users, seed).session_return.mean())


def play(spec: str | SlatePolicy, env_config: SlateEnvConfig, num_users: int, seed: int) -> SessionOutcomes:
    """One session each of ``num_users`` users (seed ``seed``) under a policy or policy spec."""
    sim = build_simulator(env_config, batch=min(num_users, ROLLOUT_SLOTS))
    policy = make_policy(spec, sim) if isinstance(spec, str) else spec
    return evaluate_policy(policy, sim, num_users, seed)


def play_beyond(
    spec: str | SlatePolicy, env_config: SlateEnvConfig, num_users: int, seed: int
) -> tuple[SessionOutcomes, Exposure]:
    """:func:`play` with the beyond-accuracy metrics measured (:func:`envs.beyond.evaluate_beyond`)."""
    sim = build_simulator(env_config, batch=min(num_users, ROLLOUT_SLOTS))
    policy = make_policy(spec, sim) if isinstance(spec, str) else spec
    return evaluate_beyond(policy, sim, num_users, seed)


def session_clusters(env_config: SlateEnvConfig, num_users: int, seed: int) -> np.ndarray | None:
    """[num_users] which logged history each of :func:`play`'s sessions starts from, or None.

    In a world of logged users (``data_dir`` with interactions) sessions are started from the logged users'
    histories, so with more sessions than histories several sessions share one and are not independent:
    an interval must resample histories (clusters), not sessions. Sessions that arrive with the same
    history share a cluster. None where users are drawn afresh (the built-in worlds), as every user is
    its own cluster there.
    """
    sim = build_simulator(env_config, batch=min(num_users, ROLLOUT_SLOTS))
    if not isinstance(sim.sampler, LoggedUserSampler):
        return None
    _, clusters = np.unique(arrival_histories(sim, num_users, seed), axis=0, return_inverse=True)
    return clusters.ravel()


def evaluate_policies(
    policy_dir: str,
    env_config: SlateEnvConfig,
    baselines: list[str],
    num_users: int,
    seed: int,
    name: str,
) -> dict[str, Any]:
    """Session metrics (95% CIs) of the trained policy and each baseline on the same held-out users.

    Returns:
        ``{"users", "seed", "policies": {name: {metric: {mean, ci95_low, ci95_high}}}, "comparisons":
        {baseline: {"diff": {mean, ci95_low, ci95_high}, "ratio", "significant"}}, "markdown"}`` where
        ``diff`` is the paired difference of session returns (trained minus baseline).
    """
    runs = {
        key: play_beyond(spec, env_config, num_users, seed)
        for key, spec in [(name, policy_dir)] + [(spec, spec) for spec in baselines]
    }
    outcomes = {key: o for key, (o, _) in runs.items()}
    policies = {
        key: o.summary((*REPORTED, *BEYOND_PER_USER)) | exposure.summary(seed=seed)
        for key, (o, exposure) in runs.items()
    }
    trained = outcomes[name]
    comparisons = {}
    for spec in baselines:
        diff = paired_difference(trained, outcomes[spec], "session_return")
        base = float(outcomes[spec].session_return.mean())
        comparisons[spec] = {
            "metric": namespaced("session_return"),
            "diff": diff,
            "ratio": float(trained.session_return.mean()) / base if base else float("nan"),
            "significant": bool(diff["ci95_low"] > 0 or diff["ci95_high"] < 0),
        }
    summary = {
        "users": num_users,
        "user_split": users_used(env_config),
        "seed": seed,
        "trained": name,
        "policies": policies,
        "comparisons": comparisons,
    }
    summary["markdown"] = evaluation_markdown(summary)
    return summary


def _fmt(ci: dict[str, float], digits: int = 2) -> str:
    return f"{ci['mean']:.{digits}f} [{ci['ci95_low']:.{digits}f}, {ci['ci95_high']:.{digits}f}]"


def evaluation_markdown(summary: dict[str, Any]) -> str:
    """The evaluation as a Markdown table plus the paired comparisons."""
    lines = [
        f"Held-out evaluation: {summary['users']} simulated users ({summary['user_split']}, seed "
        f"{summary['seed']}), one episode each; mean [95% CI].",
        "",
        "| policy | " + " | ".join(f"{m} ({METRIC_UNITS[m]})" for m in METRICS) + " |",
        "| --- |" + " --- |" * len(METRICS),
    ]
    for key, metrics in summary["policies"].items():
        label = f"**{key}** (trained)" if key == summary["trained"] else key
        lines.append(f"| {label} | " + " | ".join(_fmt(metrics[m], 3) for m in METRICS) + " |")
    beyond = [namespaced(m) for m in BEYOND]
    lines += [
        "",
        "Beyond accuracy (coverage and Gini: bootstrap over users):",
        "",
        "| policy | " + " | ".join(f"{m} ({SESSION_METRICS[m.split('/')[-1]].unit})" for m in beyond) + " |",
        "| --- |" + " --- |" * len(beyond),
    ]
    for key, metrics in summary["policies"].items():
        if all(m in metrics for m in beyond):
            lines.append(f"| {key} | " + " | ".join(_fmt(metrics[m], 3) for m in beyond) + " |")
    lines += [
        "",
        f"Paired differences of session return ({summary['trained']} minus baseline, same users):",
        "",
    ]
    for spec, comp in summary["comparisons"].items():
        verdict = "CI excludes 0" if comp["significant"] else "CI includes 0"
        lines.append(f"- vs {spec}: {_fmt(comp['diff'])} ({verdict}); ratio {comp['ratio']:.1%}")
    return "\n".join(lines) + "\n"


def plot_learning_curve(rows: list[dict[str, float]], summary: dict[str, Any], path: Path) -> None:
    """Training and validation session return per env step, with the baselines' held-out returns."""
    fig, ax = plt.subplots(figsize=(10, 4.5))
    steps = np.array([r["train/env_steps"] for r in rows])
    name = summary["trained"]
    ax.plot(
        steps, [r["sim/session_return"] for r in rows], label=f"{name}, training (sampled slates)", color="C0"
    )
    val = [(r["train/env_steps"], r["eval/session_return"]) for r in rows if "eval/session_return" in r]
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label=f"{name}, validation users (deterministic)", color="C1")
    for i, (key, metrics) in enumerate(summary["policies"].items()):
        if key != summary["trained"]:
            ax.axhline(
                metrics["sim/session_return"]["mean"],
                ls="--",
                lw=1,
                color=f"C{i + 2}",
                label=f"{key} (held-out)",
            )
    ax.set_xlabel("environment steps")
    ax.set_ylabel("mean session return")
    ax.set_title(f"rayrec: {name} slate policy in rayrec/SlateRec-v0")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_evaluation(summary: dict[str, Any], out: Path, rows: list[dict[str, float]], command: str) -> None:
    """``eval.json``, ``eval.md``, ``learning_curve.png`` and ``eval.html`` (all in one page) under ``out``."""
    wall = rows[-1]["train/wall_s"] if rows else float("nan")
    record = {k: v for k, v in summary.items() if k != "markdown"} | {
        "command": command,
        "train_wall_s": wall,
    }
    (out / "eval.json").write_text(json.dumps(record, indent=2) + "\n")
    header = f"Command: `{command}`\n\nTraining wall time: {wall:.0f} s ({len(rows)} iterations).\n\n"
    (out / "eval.md").write_text(header + summary["markdown"])
    if rows:
        plot_learning_curve(rows, summary, out / "learning_curve.png")
    plots = ["learning_curve.png"] if rows else []
    write_html_report(
        header + summary["markdown"], str(out / "eval.html"), title="rayrec policy evaluation", plots=plots
    )
