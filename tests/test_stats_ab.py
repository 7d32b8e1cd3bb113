"""Known-answer tests of the A/B statistics, vectorised over thousands of simulated experiments.

Every experiment is drawn with a fixed seed, so the rates below are deterministic; the tolerances are
about three binomial standard errors of the rate over that many experiments.
"""

from __future__ import annotations

import numpy as np
import pytest

from rayrec.ab.plan import pilot_moments, plan_sample_size, t_test_power
from rayrec.ab.sequential import msprt
from rayrec.ab.stats import bootstrap_test, compare, srm_p_value, welch_test
from rayrec.errors import ConfigError, DataError


def within(rate: float, target: float, experiments: int) -> bool:
    """``rate`` within 3.5 binomial standard errors of ``target``."""
    return abs(rate - target) <= 3.5 * np.sqrt(target * (1 - target) / experiments)


def test_welch_aa_rejects_at_nominal_rate_and_interval_covers():
    rng = np.random.default_rng(1)
    experiments = 4000
    control = rng.exponential(2.0, size=(experiments, 300))  # skewed, like session returns
    treatment = rng.exponential(2.0, size=(experiments, 280))  # unequal arms
    est = welch_test(control, treatment)
    rejected = est.p_value < 0.05
    covers = (est.ci_low <= 0) & (est.ci_high >= 0)
    assert within(rejected.mean(), 0.05, experiments)
    assert np.array_equal(rejected, ~covers)  # the p-value and the interval say the same thing
    # The relative interval covers the true relative lift (0) at its nominal rate too.
    rel_covers = (est.relative_ci_low <= 0) & (est.relative_ci_high >= 0)
    assert within(rel_covers.mean(), 0.95, experiments)


def test_bootstrap_aa_rejects_at_nominal_rate():
    rng = np.random.default_rng(2)
    experiments = 800
    control = rng.exponential(1.0, size=(experiments, 400))
    treatment = rng.exponential(1.0, size=(experiments, 420))
    est = bootstrap_test(control, treatment, resamples=400, seed=3)
    assert within((est.p_value < 0.05).mean(), 0.05, experiments)
    covers = (est.ci_low <= 0) & (est.ci_high >= 0)
    assert within(covers.mean(), 0.95, experiments)


def test_relative_lift_interval_covers_a_planted_relative_lift():
    rng = np.random.default_rng(4)
    experiments = 3000
    control = rng.normal(10.0, 3.0, size=(experiments, 250))
    treatment = rng.normal(11.0, 3.0, size=(experiments, 250))  # +10%
    est = welch_test(control, treatment)
    covers = (est.relative_ci_low <= 0.1) & (est.relative_ci_high >= 0.1)
    assert within(covers.mean(), 0.95, experiments)
    assert np.allclose(est.relative_lift.mean(), 0.1, atol=0.005)


def test_planted_lift_is_detected_with_the_power_the_plan_promised():
    plan = plan_sample_size(baseline_sd=2.0, mde=0.05, baseline_mean=5.0, relative=True, power=0.8)
    assert plan.mde == pytest.approx(0.25)
    assert plan.achieved_power >= 0.8 > t_test_power(plan.users_per_arm - 1, 0.25, 2.0)
    rng = np.random.default_rng(5)
    experiments = 3000
    n = plan.users_per_arm
    control = rng.normal(5.0, 2.0, size=(experiments, n))
    treatment = rng.normal(5.25, 2.0, size=(experiments, n))
    power = (welch_test(control, treatment).p_value < 0.05).mean()
    assert within(power, plan.achieved_power, experiments)


def test_plan_agrees_with_the_normal_formula_for_large_samples():
    plan = plan_sample_size(baseline_sd=1.0, mde=0.05)
    z = 1.959963984540054 + 0.8416212335729143
    assert abs(plan.users_per_arm - 2 * (z / 0.05) ** 2) <= 3
    assert plan.total_users == 2 * plan.users_per_arm
    assert plan_sample_size(baseline_sd=1.0, mde=0.05, arms=3).total_users == 3 * plan.users_per_arm


def test_msprt_keeps_false_positives_under_continuous_peeking_where_naive_peeking_does_not():
    rng = np.random.default_rng(6)
    experiments, users = 2000, 2000
    values = rng.exponential(1.0, size=(experiments, users))
    is_treatment = np.broadcast_to(np.arange(users) % 2 == 1, values.shape)
    trace = msprt(values, is_treatment)
    assert trace.rejected(0.05).mean() <= 0.05 + 3.5 * np.sqrt(0.05 * 0.95 / experiments)
    assert np.all(np.diff(trace.p_value, axis=-1) <= 0)  # always-valid p never goes back up
    # The same data, with a fixed-horizon t-test checked after every 100 users: far above 5%.
    ever = np.zeros(experiments, dtype=bool)
    for looked in range(100, users + 1, 100):
        ever |= welch_test(values[:, 0:looked:2], values[:, 1:looked:2]).p_value < 0.05
    assert ever.mean() > 0.15


def test_msprt_detects_a_real_effect_and_its_confidence_sequence_covers():
    rng = np.random.default_rng(7)
    experiments, users = 500, 4000
    is_treatment = np.broadcast_to(np.arange(users) % 2 == 1, (experiments, users))
    values = rng.normal(0.0, 1.0, size=(experiments, users)) + 0.2 * is_treatment
    trace = msprt(values, is_treatment)
    assert trace.rejected(0.05).mean() > 0.8
    covers = (trace.ci_low[:, -1] <= 0.2) & (trace.ci_high[:, -1] >= 0.2)
    assert covers.mean() >= 0.95


def test_srm_check():
    assert srm_p_value({"a": 5012, "b": 4988}, {"a": 1, "b": 1}) > 0.5
    assert srm_p_value({"a": 5600, "b": 4400}, {"a": 1, "b": 1}) < 1e-6
    assert srm_p_value({"a": 7500, "b": 2500}, {"a": 3, "b": 1}) > 0.5  # a planned 3:1 split is no mismatch
    with pytest.raises(DataError, match="no users"):
        srm_p_value({"a": 0, "b": 0}, {"a": 1, "b": 1})


def test_auto_method_bootstraps_skewed_metrics_only():
    rng = np.random.default_rng(8)
    assert compare(rng.normal(size=200), rng.normal(size=200)).method == "welch"
    assert (
        compare(rng.lognormal(0, 1.5, 200), rng.lognormal(0, 1.5, 200), resamples=200).method == "bootstrap"
    )


def test_bad_inputs_are_clear_errors():
    with pytest.raises(DataError, match="at least 2 users per arm"):
        welch_test(np.array([1.0]), np.array([1.0, 2.0]))
    with pytest.raises(DataError, match="finite"):
        welch_test(np.array([1.0, np.nan]), np.array([1.0, 2.0]))
    with pytest.raises(ConfigError, match="non-zero"):
        plan_sample_size(baseline_sd=1.0, mde=0.0)
    with pytest.raises(ConfigError, match="baseline mean"):
        plan_sample_size(baseline_sd=1.0, mde=0.1, relative=True)
    with pytest.raises(ConfigError, match="sd"):
        plan_sample_size(baseline_sd=0.0, mde=0.1)
    with pytest.raises(DataError, match="pilot"):
        pilot_moments(np.array([1.0]))


def test_zero_variance_arms_do_not_produce_nan_p_values():
    same = welch_test(np.ones(10), np.ones(12))
    assert same.p_value == 1.0 and same.lift == 0.0
    apart = welch_test(np.ones(10), np.full(12, 2.0))
    assert apart.p_value == 0.0
