"""The default preset (``long-term``) needs planning: the planner beats every fixed per-item rule, on the
same users, paired, and the best of them stays at or below the 85% of the planner that :mod:`envs.presets` asks of a
preset. (On these 300 users the planner of revision 5 puts the best rule at 75.6%, paired gain +2.27
[+1.39, +3.16]; revision 3 put it at 78.9%; the README's 400 users are measured by ``python -m
benchmarks.presets``. A planner without
its satisfaction switches scored 86% here and fails the share; one reduced to a fixed rule would fail
both.) ``benchmarks.presets``' library table, which checks the planner's base against its whole library on
more users, is tested here too."""

from __future__ import annotations

import pytest

from envs import build_simulator
from envs.item_rules import FIXED_RULES
from envs.planner import PlannerPolicy
from envs.policies import ItemRulePolicy
from envs.presets import DEFAULT_PRESET, preset
from envs.rollout import evaluate_policy
from rayrec.metrics.session import paired_difference

USERS, SEED = 300, 1_000_003


@pytest.mark.slow
def test_the_planner_beats_every_fixed_rule_on_the_default_preset():
    config = preset(DEFAULT_PRESET)
    rules = {}
    for rule in FIXED_RULES:
        sim = build_simulator(config, batch=USERS)
        rules[rule.name] = evaluate_policy(ItemRulePolicy(sim, rule), sim, USERS, SEED)
    sim = build_simulator(config, batch=USERS)
    planner = evaluate_policy(PlannerPolicy(sim), sim, USERS, SEED)
    best = max(rules, key=lambda name: rules[name].session_return.mean())
    share = rules[best].session_return.mean() / planner.session_return.mean()
    gain = paired_difference(planner, rules[best], "session_return")
    assert gain["ci95_low"] > 0, (best, gain)
    assert share <= 0.85, (best, share)


def test_the_library_table_runs_every_library_policy_against_the_planners_base():
    from benchmarks.presets import library_table
    from envs.planner import LIBRARY

    base = "rule(p=4)"
    text = library_table("retention", 30, 5, {"num_items": 600, "num_topics": 6}, base)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert sorted(row.split(" | ")[0][2:] for row in rows) == sorted(rule.name for rule in LIBRARY)
    assert next(row for row in rows if row.startswith(f"| {base} |")).endswith("| +0.000 [+0.000, +0.000] |")
    assert "Best of the library: " in text and "against the planner's base" in text


def test_the_observable_feedback_columns_estimate_the_hidden_satisfaction():
    """``benchmarks.state_estimate``: each column a server has adds to what the estimate explains of the hidden
    satisfaction, and the completion rate with the rating of the clicked item explains most of it (R² 0.93 on
    4,000 users; a broken column, or one read from the wrong position, falls back towards the clock's 0.29).
    The satisfaction estimate of ``observe_lift`` explains more (0.98)."""
    from benchmarks.state_estimate import measure

    _, table, scores = measure("long-term", 400, 0, "feedback-switch")
    r2 = [scores[name]["r2"] for name in ("session clock", "+ completion rate", "+ rating of that item")]
    assert r2[0] < 0.5 < r2[1] < r2[2] and r2[2] > 0.85, scores
    assert scores["+ rating of that item"]["wrong_side"] < scores["session clock"]["wrong_side"] / 2
    assert scores["+ satisfaction estimate"]["r2"] > r2[2]
    assert (table["clicks"] == 0).any() and (table["clicks"] > 0).any()
