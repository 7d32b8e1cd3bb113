"""``rayrec ab`` end to end: simulate (in-process or against a server), analyse, write the report.

Output directory::

    config.yaml          the resolved AbConfig
    users.parquet        per-user metrics (the unit of analysis; `rayrec ab plan --pilot` reads it)
    report.json          arms, comparisons (beyond-accuracy metrics included), srm_p_value, verdicts
    report.md            the same for people, with the plots
    metrics_by_arm.png   mean per arm with intervals
    cumulative_lift.png  lift as users arrive, with the always-valid confidence sequence
    events/              the event log (impressions, feedback, requests) and simulator.yaml
"""

from __future__ import annotations

import os

from envs.factory import load_world
from envs.policies import check_policy_spec
from envs.spec import resolve_env_config, users_used
from rayrec import storage
from rayrec.ab.analysis import AbAnalysis, analyse
from rayrec.ab.config import AbConfig
from rayrec.ab.guardrails import parse_guardrail, verdicts
from rayrec.ab.http_client import run_http_ab
from rayrec.ab.plots import LIFT_PNG, METRICS_PNG, plot_cumulative_lift, plot_metrics_by_arm
from rayrec.ab.report import write_report
from rayrec.ab.simulate import run_simulated_ab, simulated_user_ids
from rayrec.assignment import Arm, parse_arm
from rayrec.config import save_config
from rayrec.errors import ConfigError
from rayrec.events import read_impressions
from rayrec.logs.reader import SIMULATOR_FILE  # beside a simulated log: `rayrec ope` rebuilds its catalog
from rayrec.metrics.event_log import CatalogView, log_exposures
from rayrec.runtime import init_ray

EVENTS_DIR = "events"


def parse_arms(specs: list[str]) -> list[Arm]:
    """``NAME=POLICY[:WEIGHT]`` specs → arms, checked: two or more, known policies."""
    arms = [parse_arm(spec) for spec in specs]
    if len(arms) < 2:
        raise ConfigError(f"an A/B test needs at least two --arm NAME=POLICY, got {len(arms)}")
    for arm in arms:
        check_policy_spec(arm.policy)  # loads a policy directory now, or says the spec is unknown
    return arms


def _server_arms(config: AbConfig, info) -> list[tuple[str, str, float]]:
    arms = [(name, info.policies.get(name, "unknown"), float(weight)) for name, weight in info.arms.items()]
    if config.arm:
        wanted = {(a.name, a.policy) for a in (parse_arm(s) for s in config.arm)}
        served = {(name, policy) for name, policy, _ in arms}
        if wanted != served:
            raise ConfigError(f"--arm {sorted(wanted)} do not match the server's arms {sorted(served)}")
    return arms


def run_experiment(config: AbConfig) -> AbAnalysis:
    """Run the experiment ``config`` describes and write everything under ``config.out``."""
    if config.out is None:
        raise ConfigError("--out DIR is required")
    events_dir = storage.join(config.out, EVENTS_DIR)
    if storage.exists(storage.join(events_dir, "impressions")):
        raise ConfigError(f"{events_dir} already holds an event log; choose a new --out so runs do not mix")
    env_config = resolve_env_config(config, user_split="test")  # A/B tests meet held-out users only
    user_ids = simulated_user_ids(config.users, config.seed)
    storage.makedirs(config.out)
    save_config(config, config.out)
    if config.url:
        if config.index is None:
            raise ConfigError(
                "--url needs --index (the server's index) so simulated users can react to its items"
            )
        print(f"ab: {config.users} simulated users against {config.url}")
        users, info = run_http_ab(
            config.url,
            env_config,
            user_ids,
            events_dir=events_dir,
            seed=config.seed,
            concurrency=config.concurrency,
            progress=config.progress,
            api_key=config.api_key or os.environ.get("RAYREC_API_KEY"),
        )
        arms = _server_arms(config, info)
    else:
        planned = parse_arms(config.arm)
        init_ray(
            config.address,
            log_dir=None if storage.is_remote(config.out) else config.out,
            verbose=config.verbose,
        )
        save_config(env_config, events_dir, name=SIMULATOR_FILE)
        print(
            f"ab: {config.users} simulated users, arms {', '.join(f'{a.name}={a.policy}' for a in planned)}"
        )
        users = run_simulated_ab(
            env_config,
            planned,
            user_ids,
            salt=config.salt,
            seed=config.seed,
            events_dir=events_dir,
            users_per_task=config.users_per_task,
            slots=config.slots,
            progress=config.progress,
        )
        arms = [(a.name, a.policy, a.weight) for a in planned]
    users.save(config.out)
    catalog = load_world(env_config).catalog
    exposures = log_exposures(
        read_impressions(events_dir),
        CatalogView(catalog.item_ids, catalog.embeddings, catalog.popularity_counts, catalog.categories),
    )
    analysis = analyse(
        users,
        arms,
        control=config.control,
        method=config.method,
        alpha=config.alpha,
        resamples=config.resamples,
        seed=config.seed,
        sequential_tau_sd=config.tau_sd if config.sequential else None,
        exposures=exposures,
    )
    decisions = verdicts(analysis, config.primary, [parse_guardrail(g) for g in config.guardrail])
    analysis.notes.extend(v.line() for v in decisions)
    plot_metrics_by_arm(analysis, storage.join(config.out, METRICS_PNG))
    plot_cumulative_lift(users, analysis, storage.join(config.out, LIFT_PNG), tau_sd=config.tau_sd)
    write_report(
        analysis,
        config.out,
        plots=[METRICS_PNG, LIFT_PNG],
        extra={
            "mode": "url" if config.url else "simulated",
            "total_users": len(users),
            "seed": config.seed,
            "preset": config.preset,
            "users_from": users_used(env_config),
            "verdicts": [v.to_dict() for v in decisions],
        },
    )
    return analysis
