"""Every preset's policy table: does planning pay there? (``python -m benchmarks.presets``)

For each preset (:mod:`envs.presets`), every baseline, the simulation-only references (``myopic-true``,
``oracle``, the fixed per-item rules of :data:`envs.item_rules.FIXED_RULES`, the planner's satisfaction
switches, and switches on the session's clock and on the observable session feedback) and the ``planner``
meet the same held-out users (one seed: user ``i`` starts the same way under every policy). The table gives
each policy's mean return with its 95% interval and its share of the planner's; the last lines say whether
the preset needs planning (the best fixed per-item rule at or below 85% of the planner) and which library
policy the planner took as its base.

    python -m benchmarks.presets --users 1000 --preset long-term --preset classic
    python -m benchmarks.presets --users 100 --preset retention --library-users 4000

``--library-users N`` adds every policy of the planner's library on N users, each minus the base policy the
planner chose: fixed rules are cheap, so this says whether that base is the library's best or only within
noise of it where the planner's own table has too few users to tell.
"""

from __future__ import annotations

import argparse
import time

from envs import build_simulator, make_policy
from envs.beyond import evaluate_beyond, run_values
from envs.item_rules import FIXED_RULES, ItemRule, Switch
from envs.planner import LIBRARY, PlannerPolicy
from envs.policies import ItemRulePolicy
from envs.presets import PRESETS, preset
from envs.rollout import evaluate_policy
from envs.spec import parse_overrides
from rayrec.metrics.beyond import Exposure, table_cells, table_header
from rayrec.metrics.session import SessionOutcomes, mean_interval, paired_difference

POLICIES = ("random", "retrieval", "greedy", "myopic-true", "oracle")
SWITCHES = tuple(rule for rule in LIBRARY if isinstance(rule, Switch))
"""The planner's satisfaction switches, shown beside it: state-aware rules it should match or beat."""
CLOCK_SWITCHES = tuple(
    Switch(spend=ItemRule(0.0), build=ItemRule(p, clickbait_ban=True), signal=None, endgame=steps)
    for p in (1.0, 4.0)
    for steps in (12, 8)
)
"""Switches on the session's clock instead of the hidden satisfaction: what a spend-and-rebuild policy that
knows the items but, of the user, only what every observation says can do."""
FEEDBACK_SWITCHES = tuple(
    Switch(
        spend=ItemRule(0.5),
        build=ItemRule(p, clickbait_ban=True),
        signal="last_engagement",
        threshold=0.75,
        endgame=2,
    )
    for p in (1.0, 4.0)
)
"""Switches on the observable ``last_engagement`` (the satisfaction the user's last click met): what a policy
that knows the items and reads the session-feedback column (``--env observe_feedback=true``) can do. The
threshold and patience were chosen on 2,000 users of seed 17, not on a table's users."""
NEEDS_PLANNING = 0.85
"""A preset needs planning when its best fixed per-item rule reaches at most this share of the planner."""


def run_preset(
    name: str, users: int, seed: int, overrides: dict[str, object] | None = None
) -> tuple[dict[str, tuple[SessionOutcomes, Exposure]], str]:
    """Outcomes and exposure of every policy, every fixed rule and the planner on ``users`` users of ``name``
    (with the simulator settings ``overrides``, e.g. ``{"candidates": "faiss-diverse"}``), and the name of
    the library policy the planner took as its base."""
    config = preset(name).replace(**(overrides or {}))
    runs = {}
    for spec in POLICIES:
        sim = build_simulator(config, batch=users)
        runs[spec] = evaluate_beyond(make_policy(spec, sim), sim, users, seed)
    sim = build_simulator(config, batch=users)
    planner = PlannerPolicy(sim)
    runs["planner"] = evaluate_beyond(planner, sim, users, seed)
    for rule in (*FIXED_RULES, *SWITCHES, *CLOCK_SWITCHES, *FEEDBACK_SWITCHES):
        sim = build_simulator(config, batch=users)
        runs[rule.name] = evaluate_beyond(ItemRulePolicy(sim, rule), sim, users, seed)
    return runs, planner.base_name


def _interval(m: dict[str, float], digits: int, sign: str = "") -> str:
    """``mean [low, high]`` of a :func:`mean_interval` or :func:`paired_difference` result (``sign="+"``: signed)."""
    f = f"{sign}.{digits}f"
    return f"{m['mean']:{f}} [{m['ci95_low']:{f}}, {m['ci95_high']:{f}}]"


def table(name: str, runs: dict[str, tuple[SessionOutcomes, Exposure]]) -> str:
    """Markdown: return [95% CI], share of planner, paired difference to the planner, ctr, sessions, and the
    beyond-accuracy metrics (ILD, novelty, coverage, exposure Gini over items and categories)."""
    outcomes = {policy: outcome for policy, (outcome, _) in runs.items()}
    planner = outcomes["planner"]
    top = float(planner.session_return.mean())
    lines = [
        f"### {name}: {PRESETS[name].description}",
        "",
        "| policy | return [95% CI] | % of planner | minus planner (paired) | ctr | sessions "
        f"| {table_header()} |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    ordered = sorted(outcomes.items(), key=lambda kv: -kv[1].session_return.mean())
    for policy, outcome in ordered:
        ret = mean_interval(outcome.session_return)
        diff = paired_difference(outcome, planner, "session_return")
        lines.append(
            f"| {policy} | {_interval(ret, 2)} | {ret['mean'] / top:.1%} | {_interval(diff, 2, '+')} | "
            f"{outcome.values('ctr').mean():.3f} | {outcome.sessions.mean():.2f} | "
            f"{table_cells(run_values(*runs[policy]))} |"
        )
    best_rule = max((r.name for r in FIXED_RULES), key=lambda r: outcomes[r].session_return.mean())
    share = outcomes[best_rule].session_return.mean() / top
    verdict = "needs planning" if share <= NEEDS_PLANNING else "does not need planning"
    lines += ["", f"Best fixed per-item rule: {best_rule}, {share:.1%} of the planner: the preset {verdict}."]
    return "\n".join(lines)


def library_table(name: str, users: int, seed: int, overrides: dict[str, object], base: str) -> str:
    """Markdown: every policy of the planner's library on ``users`` users, minus the planner's ``base`` (paired).

    Rules are cheap to run, so many more users than the planner's table can say whether the base the
    planner's rollouts chose is the best of its library or only within noise of it.
    """
    config = preset(name).replace(**overrides)
    outcomes = {}
    for rule in LIBRARY:
        sim = build_simulator(config, batch=min(users, 1000))
        outcomes[rule.name] = evaluate_policy(ItemRulePolicy(sim, rule), sim, users, seed)
    lines = [
        f"The planner's library on {users} users ({name}, seed {seed}), minus its base policy {base}:",
        "",
        "| library policy | return [95% CI] | minus the planner's base (paired) |",
        "| --- | --- | --- |",
    ]
    for policy, outcome in sorted(outcomes.items(), key=lambda kv: -kv[1].session_return.mean()):
        ret = mean_interval(outcome.session_return)
        diff = paired_difference(outcome, outcomes[base], "session_return")
        lines.append(f"| {policy} | {_interval(ret, 3)} | {_interval(diff, 3, '+')} |")
    best = max(outcomes, key=lambda policy: outcomes[policy].session_return.mean())
    diff = paired_difference(outcomes[best], outcomes[base], "session_return")
    verdict = "above it" if diff["ci95_low"] > 0 else "not distinguishable from it"
    lines += [
        "",
        f"Best of the library: {best}, {_interval(diff, 3, '+')} against the planner's base: {verdict}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1_000_003)
    parser.add_argument("--preset", action="append", help="preset to run (repeatable; default: all)")
    parser.add_argument(
        "--env", action="append", default=[], help="simulator setting KEY=VALUE applied to every preset"
    )
    parser.add_argument(
        "--library-users",
        type=int,
        default=0,
        help="also run every policy of the planner's library on this many users (same seed) against the "
        "base the planner chose (0: skip)",
    )
    args = parser.parse_args()
    overrides = parse_overrides(args.env)
    for name in args.preset or list(PRESETS):
        started = time.perf_counter()
        runs, base = run_preset(name, args.users, args.seed, overrides)
        print(table(name, runs))
        print(f"The planner's base policy: {base}.")
        if args.library_users:
            print("\n" + library_table(name, args.library_users, args.seed, overrides, base))
        print(
            f"\n({args.users} users, seed {args.seed}{''.join(f', {o}' for o in args.env)}, "
            f"{time.perf_counter() - started:.0f} s)\n",
            flush=True,
        )


if __name__ == "__main__":
    main()
