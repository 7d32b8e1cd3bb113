"""Sample size planning: users per arm needed to detect a minimum effect with a given power.

The size is exact for the two-sided two-sample t-test with equal arms and equal variances: power is
computed from the noncentral t distribution (df = 2n - 2, noncentrality δ / (σ·sqrt(2/n))) and n is
the smallest integer reaching the target. The normal-approximation formula
``n = 2 σ² (z_{1-α/2} + z_{power})² / δ²`` is only the starting point of the search. With several
treatments each compared with the control, pass a Bonferroni-adjusted alpha if the family-wise error
rate matters.

Reference: Cohen, J. (1988). "Statistical Power Analysis for the Behavioral Sciences", ch. 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from rayrec.errors import ConfigError, DataError


@dataclass(frozen=True)
class SampleSizePlan:
    """The answer of :func:`plan_sample_size`.

    Attributes:
        users_per_arm: users needed in each arm.
        arms: number of arms (control plus treatments) sharing traffic equally.
        total_users: ``users_per_arm * arms``.
        mde: minimum detectable effect in metric units (absolute).
        baseline_mean: control mean the relative MDE was taken from (None if not given).
        baseline_sd: per-user standard deviation assumed.
        alpha: two-sided significance level.
        power: target power.
        achieved_power: exact power at ``users_per_arm`` (>= ``power``).
    """

    users_per_arm: int
    arms: int
    total_users: int
    mde: float
    baseline_mean: float | None
    baseline_sd: float
    alpha: float
    power: float
    achieved_power: float


def t_test_power(
    users_per_arm: int | np.ndarray, effect: float, sd: float, alpha: float = 0.05
) -> np.ndarray:
    """Exact power of the two-sided two-sample t-test with ``users_per_arm`` users in each arm."""
    from scipy import stats as sps  # here, not at import: `rayrec --help` registers this module's command

    n = np.asarray(users_per_arm, dtype=np.float64)
    df = 2.0 * n - 2.0
    ncp = abs(effect) / (sd * np.sqrt(2.0 / n))
    crit = sps.t.ppf(1.0 - alpha / 2.0, df)
    return sps.nct.sf(crit, df, ncp) + sps.nct.cdf(-crit, df, ncp)


def plan_sample_size(
    baseline_sd: float,
    mde: float,
    *,
    baseline_mean: float | None = None,
    relative: bool = False,
    alpha: float = 0.05,
    power: float = 0.8,
    arms: int = 2,
) -> SampleSizePlan:
    """Users per arm to detect an effect of ``mde`` with probability ``power`` at level ``alpha``.

    Args:
        baseline_sd: per-user standard deviation of the metric (from history or a pilot run).
        mde: minimum detectable effect: absolute, or a fraction of ``baseline_mean`` if ``relative``.
        baseline_mean: control mean; required when ``relative``.
        relative: read ``mde`` as a relative lift (0.05 = +5%).
        alpha: two-sided significance level.
        power: probability of detecting an effect of exactly ``mde``.
        arms: arms sharing traffic equally (the total grows with it).
    """
    if not baseline_sd > 0 or not math.isfinite(baseline_sd):
        raise ConfigError(f"baseline sd must be a positive number, got {baseline_sd}")
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ConfigError(f"alpha and power must be in (0, 1), got {alpha} and {power}")
    if arms < 2:
        raise ConfigError(f"an experiment needs at least 2 arms, got {arms}")
    if relative:
        if baseline_mean is None or baseline_mean == 0:
            raise ConfigError("a relative MDE needs a non-zero baseline mean")
        effect = abs(mde * baseline_mean)
    else:
        effect = abs(mde)
    if not effect > 0:
        raise ConfigError(f"the minimum detectable effect must be non-zero, got {mde}")
    z = NormalDist().inv_cdf(1.0 - alpha / 2.0) + NormalDist().inv_cdf(power)
    n = max(2, math.ceil(2.0 * (baseline_sd * z / effect) ** 2))
    # The t-test needs a few more users than the normal formula; step up (and back down) to the exact size.
    while t_test_power(n, effect, baseline_sd, alpha) < power:
        n += max(1, n // 100)
    while n > 2 and t_test_power(n - 1, effect, baseline_sd, alpha) >= power:
        n -= 1
    return SampleSizePlan(
        users_per_arm=n,
        arms=arms,
        total_users=n * arms,
        mde=effect,
        baseline_mean=None if baseline_mean is None else float(baseline_mean),
        baseline_sd=float(baseline_sd),
        alpha=alpha,
        power=power,
        achieved_power=float(t_test_power(n, effect, baseline_sd, alpha)),
    )


def pilot_moments(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of a pilot run's per-user values [n] (the control arm's, usually)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        raise DataError(f"a pilot needs at least 2 users, got {values.size}")
    return float(values.mean()), float(values.std(ddof=1))
