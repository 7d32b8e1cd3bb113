"""``rayrec ab`` (simulated A/B test), ``rayrec ab plan`` (sample size) and ``rayrec ope`` (off-policy)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import PurePosixPath

from rayrec import storage
from rayrec.ab.config import AbConfig, AbPlanConfig, OpeConfig
from rayrec.ab.metrics import UserMetrics
from rayrec.ab.plan import pilot_moments, plan_sample_size
from rayrec.cli import add_command
from rayrec.config import add_config_args, config_from_args, save_config, to_plain


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4g}"


def run_ab(args: argparse.Namespace) -> int:
    config = config_from_args(AbConfig, args)
    from rayrec.ab.experiment import run_experiment  # Ray and the simulator: heavy, keeps --help fast

    analysis = run_experiment(config)
    print(f"{'metric':<16}{'treatment':<12}{'lift':>10}  {'ci95':<24}{'p':>9}")
    for c in analysis.comparisons:
        ci = f"[{_fmt(c.ci95[0])}, {_fmt(c.ci95[1])}]"
        flag = " *" if c.p_value < analysis.alpha else ""
        print(f"{c.metric:<16}{c.treatment:<12}{_fmt(c.lift):>10}  {ci:<24}{_fmt(c.p_value):>9}{flag}")
    for note in analysis.notes:
        if note.startswith("Verdict"):
            print(note.replace("**", ""))
    print(f"srm p-value {_fmt(analysis.srm_p_value)}; report: {storage.join(config.out, 'report.md')}")
    return 0


def _save_beside(config, json_path: str) -> None:
    """Write the config next to a JSON output (local path or URI) as ``<name>.config.yaml``."""
    parent, _, name = str(json_path).rpartition("/")
    save_config(config, parent or ".", name=f"{PurePosixPath(name).stem}.config.yaml")


def run_plan(args: argparse.Namespace) -> int:
    config = config_from_args(AbPlanConfig, args)
    mean, sd = config.baseline_mean, config.baseline_sd
    if config.pilot is not None:
        users = UserMetrics.load(config.pilot)
        report = json.loads(storage.read_text(storage.join(config.pilot, "report.json")))
        control = users.metric(config.metric)[users.arm_mask(report["control"])]
        pilot_mean, pilot_sd = pilot_moments(control)
        mean = pilot_mean if mean is None else mean
        sd = pilot_sd if sd is None else sd
        print(
            f"pilot {config.pilot}: control {report['control']!r}, {len(control)} users, "
            f"{config.metric} mean {pilot_mean:.4g}, sd {pilot_sd:.4g}"
        )
    if mean is not None and not math.isfinite(mean):
        mean = None
    plan = plan_sample_size(
        sd,
        config.mde,
        baseline_mean=mean,
        relative=config.relative,
        alpha=config.alpha,
        power=config.power,
        arms=config.arms,
    )
    print(
        f"{plan.users_per_arm} users per arm ({plan.total_users} in all, {plan.arms} arms) detect an effect of "
        f"{plan.mde:.4g} (sd {plan.baseline_sd:.4g}) with power {plan.achieved_power:.3f} at alpha {plan.alpha:g}"
    )
    if config.json:
        storage.write_text(
            config.json, json.dumps(to_plain(plan) | {"metric": config.metric}, indent=2, default=str) + "\n"
        )
        _save_beside(config, config.json)
    return 0


def _print_estimates(title: str, estimates: dict, diagnostics: dict) -> None:
    print(title)
    for name, est in estimates.items():
        bound = f"  (clipping bias <= {est['bias_bound']:.4g})" if "bias_bound" in est else ""
        print(f"  {name:<9}{est['value']:.4f}  ci95 [{est['ci95'][0]:.4f}, {est['ci95'][1]:.4f}]{bound}")
    unsupported = diagnostics["unsupported_mass"]
    print(
        "  support: "
        + (f"unsupported target mass {unsupported:.3g}, " if unsupported is not None else "")
        + f"effective sample size {diagnostics['ess']:.4g} ({diagnostics['ess_share']:.2%}), "
        f"largest weight {diagnostics['max_weight']:.4g}, mean weight {diagnostics['mean_weight']:.4g}"
    )


def run_ope(args: argparse.Namespace) -> int:
    config = config_from_args(OpeConfig, args)
    print(f"ope: replaying {config.target!r} on {config.events}")
    from rayrec.ab.offline import evaluate_offline  # the simulator and FAISS: heavy, keeps --help fast

    result = evaluate_offline(config)
    shares = ", ".join(f"{name} {share:.0%}" for name, share in result["logger_shares"].items())
    print(f"{result['n']} requests from {result['users']} users; logging policies: {shares}")
    if result["dropped_users"]:
        print(
            f"{result['dropped_users']} users left out: a logged slate their own policy could not reproduce"
        )
    _print_estimates(f"per request: {result['value']}", result["estimators"], result["diagnostics"])
    _print_estimates(
        f"per user: {result['session_value']}", result["session_estimators"], result["session_diagnostics"]
    )
    if config.json:
        storage.write_text(config.json, json.dumps(result, indent=2) + "\n")
        _save_beside(config, config.json)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    ab = add_command(
        subparsers,
        "ab",
        run_ab,
        help="simulated A/B test of slate policies (in-process on Ray, or against a server with --url)",
    )
    add_config_args(ab, AbConfig)
    plan_parsers = ab.add_subparsers(title="sub-commands", metavar="plan", dest="ab_command")
    plan = add_command(
        plan_parsers,
        "plan",
        run_plan,
        help="users per arm needed to detect a minimum effect with a given power",
    )
    add_config_args(plan, AbPlanConfig)
    ope = add_command(
        subparsers,
        "ope",
        run_ope,
        help="off-policy estimates of a policy's value from an event log: per request (IPS, SNIPS, DM, DR) "
        "and per user (FQE, PDIS, sequential DR)",
    )
    add_config_args(ope, OpeConfig)
