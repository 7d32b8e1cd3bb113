"""The ``long-term`` preset needs planning: the planner beats every fixed per-item rule, on the same users,
paired. (The README's figure, 400 users, puts the best rule at 81.5% of the planner, interval about 75-88%;
on these 300 users it is 86%. The test asserts what holds on both: a paired gain above 0 and a share below
90%; a planner that stopped switching would equal its base rule and fail both.)"""

from __future__ import annotations

import pytest

from envs import build_simulator
from envs.item_rules import FIXED_RULES
from envs.planner import PlannerPolicy
from envs.policies import ItemRulePolicy
from envs.presets import preset
from envs.rollout import evaluate_policy
from rayrec.metrics.session import paired_difference

USERS, SEED = 300, 1_000_003


@pytest.mark.slow
def test_the_planner_beats_every_fixed_rule_on_the_long_term_preset():
    config = preset("long-term")
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
    assert share < 0.90, (best, share)
