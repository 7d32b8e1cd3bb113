"""The coverage benchmark (``python -m benchmarks.ope_coverage``) in small, and in full as a slow test.

The fast test runs a few simulated experiments of the rare-click one-step setting with many users each,
logged half by the random and half by the deterministic greedy arm, for a target that ranks by retrieval
score: the multi-logger IPS must be unbiased on average, and the weighting of each request by its own
logged propensity (how ``rayrec ope`` weighted before) must not be. The slow test runs the benchmark as
documented in docs/ope.md and checks the coverage of every estimator claimed there.
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.ope_coverage import OWN_ARM, SETTINGS, SoftmaxPolicy, build_world, replicate, run
from rayrec.baselines import RetrievalPolicy

TRUTH_USERS = 15_000
"""Users per slate size of the fast test's on-policy truth."""


def test_mixed_logger_ips_is_unbiased_where_own_arm_weights_are_not():
    world = build_world(  # rare-click, one step: the item-position model nearly holds
        SETTINGS[0],
        target=SoftmaxPolicy(RetrievalPolicy(), 0.1, "target", log_propensities=False),
        arms=(("random", 0.5), ("greedy", 0.5)),
        truth_users=TRUTH_USERS,
    )
    results = [replicate(world, 6000, seed, resamples=200) for seed in range(3)]
    truth_se = np.sqrt(world.truth / (TRUTH_USERS * 2))  # the on-policy truth is a mean of rare clicks
    for name in ("ips", OWN_ARM):
        values = np.array([r[name] for r in results])  # [R, 3] value, ci low, ci high
        se = (values[:, 2] - values[:, 1]).mean() / 3.92 / np.sqrt(len(values))  # of the mean over R
        tolerance = 3.0 * np.hypot(se, truth_se)
        bias = values[:, 0].mean() - world.truth
        if name == "ips":
            assert abs(bias) < tolerance, (name, bias, tolerance)
        else:  # the greedy arm's requests count only where the target agrees with greedy
            assert bias < -tolerance, (name, bias, tolerance)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # 200 simulated experiments: minutes on 2 idle cores, far more on busy ones
def test_intervals_cover_the_on_policy_truth():
    rows = {(r.setting, r.estimator): r for r in run(replications=50, users=2000, resamples=400, workers=2)}
    claimed = {
        "rare-click, one step": ("ips", "snips", "dr"),
        "default clicks, one step": ("dr",),
        "rare-click, sessions": ("pdis", "sdr"),
        "classic world, sessions": ("pdis", "sdr"),
    }
    for setting, names in claimed.items():
        for name in names:
            assert rows[setting, name].coverage >= 0.9, rows[setting, name]
    assert rows["rare-click, one step", OWN_ARM].bias < 0
