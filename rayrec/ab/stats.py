"""Two-sample comparisons of per-user metrics: Welch's t-test, the bootstrap, and the sample-ratio check.

Every estimator is vectorised over leading axes: pass ``[n]`` arrays for one comparison or ``[S, n]``
arrays for S independent experiments at once (the A/A calibration test runs thousands that way).
The randomisation unit is the user, so every array holds one value per user.

References:
    - Welch, B. L. (1947). "The generalization of Student's problem when several different population
      variances are involved." Biometrika 34.
    - Efron, B. & Tibshirani, R. (1993). "An Introduction to the Bootstrap." Chapman & Hall.
    - Kohavi, R., Tang, D. & Xu, Y. (2020). "Trustworthy Online Controlled Experiments", ch. 3 (sample
      ratio mismatch) and ch. 18 (variance of relative lifts by the delta method).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats as sps

from rayrec.errors import DataError

Method = Literal["welch", "bootstrap", "auto"]

SKEW_THRESHOLD = 1.0
"""``method="auto"`` bootstraps a metric whose sample skewness exceeds this in either arm, since the
t-interval's coverage degrades with skew at moderate n; otherwise it uses Welch."""

_BOOTSTRAP_CELLS = 4_000_000
"""Resample count x sample size held in memory at once; the bootstrap works through chunks of this."""


@dataclass(frozen=True)
class LiftEstimate:
    """Treatment minus control for one metric, over any leading batch shape ``[...]``.

    Attributes:
        control_mean, treatment_mean: [...] arm means.
        lift: [...] absolute lift ``treatment_mean - control_mean``.
        ci_low, ci_high: [...] two-sided confidence interval of ``lift``.
        relative_lift: [...] ``lift / control_mean`` (NaN when the control mean is 0).
        relative_ci_low, relative_ci_high: [...] its confidence interval.
        p_value: [...] two-sided p-value of "no difference in means".
        method: ``"welch"`` or ``"bootstrap"``.
    """

    control_mean: np.ndarray
    treatment_mean: np.ndarray
    lift: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    relative_lift: np.ndarray
    relative_ci_low: np.ndarray
    relative_ci_high: np.ndarray
    p_value: np.ndarray
    method: str


def _validate(control: np.ndarray, treatment: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    control = np.asarray(control, dtype=np.float64)
    treatment = np.asarray(treatment, dtype=np.float64)
    if control.shape[:-1] != treatment.shape[:-1]:
        raise ValueError(f"batch shapes differ: control {control.shape}, treatment {treatment.shape}")
    if control.shape[-1] < 2 or treatment.shape[-1] < 2:
        raise DataError(
            f"a comparison needs at least 2 users per arm, got {control.shape[-1]} (control) and "
            f"{treatment.shape[-1]} (treatment)"
        )
    if not (np.isfinite(control).all() and np.isfinite(treatment).all()):
        raise DataError("metric values must be finite")
    return control, treatment


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan)


def welch_test(control: np.ndarray, treatment: np.ndarray, alpha: float = 0.05) -> LiftEstimate:
    """Welch's unequal-variance t-test and interval for the difference of means.

    The relative lift's interval uses the delta method on ``mean_t / mean_c`` (normal quantiles).

    Args:
        control: [..., n_c] per-user values of the control arm.
        treatment: [..., n_t] per-user values of the treatment arm.
        alpha: 1 - confidence level of the intervals.
    """
    control, treatment = _validate(control, treatment, alpha)
    n_c, n_t = control.shape[-1], treatment.shape[-1]
    m_c, m_t = control.mean(-1), treatment.mean(-1)  # [...]
    v_c, v_t = control.var(-1, ddof=1) / n_c, treatment.var(-1, ddof=1) / n_t  # [...] squared std errors
    se = np.sqrt(v_c + v_t)
    # Welch-Satterthwaite degrees of freedom; a zero-variance pair degenerates to the exact-difference case.
    with np.errstate(divide="ignore", invalid="ignore"):
        df = (v_c + v_t) ** 2 / (v_c**2 / (n_c - 1) + v_t**2 / (n_t - 1))
        t_stat = (m_t - m_c) / se
    df = np.where(np.isfinite(df), df, n_c + n_t - 2.0)
    diff = m_t - m_c
    p = np.where(se > 0, 2.0 * sps.t.sf(np.abs(np.nan_to_num(t_stat)), df), np.where(diff == 0, 1.0, 0.0))
    half = sps.t.ppf(1.0 - alpha / 2.0, df) * se
    rel = _safe_ratio(diff, m_c)
    # Delta method: Var(m_t/m_c) ≈ v_t/m_c² + m_t² v_c/m_c⁴.
    rel_se = np.sqrt(_safe_ratio(v_t, m_c**2) + _safe_ratio(m_t**2 * v_c, m_c**4))
    z = sps.norm.ppf(1.0 - alpha / 2.0)
    return LiftEstimate(
        control_mean=m_c,
        treatment_mean=m_t,
        lift=diff,
        ci_low=diff - half,
        ci_high=diff + half,
        relative_lift=rel,
        relative_ci_low=rel - z * rel_se,
        relative_ci_high=rel + z * rel_se,
        p_value=np.clip(p, 0.0, 1.0),
        method="welch",
    )


def resample_counts(n: int, resamples: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Bootstrap multiplicities of n units for ``resamples`` resamples, in memory-bounded chunks.

    A statistic that is a sum over units is then one matrix product per chunk (``counts @ values``), so
    resampling S experiments or many per-unit quantities costs no Python loop over resamples.

    Yields:
        [b, n] float64 counts (each row sums to n), b summing to ``resamples`` over the chunks.
    """
    chunk = max(1, _BOOTSTRAP_CELLS // n)
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        draws = rng.integers(0, n, size=(b, n))  # [b, n] resampled unit positions
        # Row-offset trick: one bincount gives every resample's multiplicity of every unit.
        counts = np.bincount((draws + n * np.arange(b)[:, None]).ravel(), minlength=b * n)
        yield counts.reshape(b, n).astype(np.float64)


def bootstrap_moments(
    values: np.ndarray, resamples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Means and unbiased variances of ``resamples`` bootstrap resamples of the last axis.

    Args:
        values: [..., n] per-user values.

    Returns:
        ([..., resamples] means, [..., resamples] variances).
    """
    n = values.shape[-1]
    sums, squares = [], []
    for counts in resample_counts(n, resamples, rng):  # [b, n]
        sums.append(values @ counts.T)  # [..., b]
        squares.append(values**2 @ counts.T)  # [..., b]
    mean = np.concatenate(sums, axis=-1) / n
    var = (np.concatenate(squares, axis=-1) / n - mean**2) * (n / (n - 1))
    return mean, np.maximum(var, 0.0)


def bootstrap_test(
    control: np.ndarray,
    treatment: np.ndarray,
    alpha: float = 0.05,
    resamples: int = 2000,
    seed: int = 0,
) -> LiftEstimate:
    """Studentized (bootstrap-t) interval and p-value for the difference of means.

    Each arm is resampled independently (users are independent units). The bootstrap distribution of
    the Welch statistic ``t* = (Δ* - Δ) / se*`` replaces Student's t, which corrects the interval for
    skewness (second-order accurate, where the percentile interval is only first-order). The p-value
    is the equal-tailed one of the same distribution, ``2·min(P(t* <= t), P(t* >= t))`` with the +1
    correction, so it is consistent with the interval. The relative lift gets the percentile interval
    of the resampled ratios.

    Args:
        control: [..., n_c] per-user values of the control arm.
        treatment: [..., n_t] per-user values of the treatment arm.
        alpha: 1 - confidence level.
        resamples: bootstrap resamples B.
        seed: seed of the resampling generator (results are reproducible).
    """
    control, treatment = _validate(control, treatment, alpha)
    if resamples < 100:
        raise ValueError(f"resamples must be >= 100, got {resamples}")
    n_c, n_t = control.shape[-1], treatment.shape[-1]
    rng = np.random.default_rng(seed)
    b_mc, b_vc = bootstrap_moments(control, resamples, rng)  # [..., B] each
    b_mt, b_vt = bootstrap_moments(treatment, resamples, rng)
    m_c, m_t = control.mean(-1), treatment.mean(-1)  # [...]
    diff = m_t - m_c
    se = np.sqrt(control.var(-1, ddof=1) / n_c + treatment.var(-1, ddof=1) / n_t)  # [...]
    b_se = np.sqrt(b_vc / n_c + b_vt / n_t)  # [..., B]
    with np.errstate(divide="ignore", invalid="ignore"):
        # A resample with zero spread has no defined t; it is as extreme as its sign says.
        t_star = np.where(b_se > 0, (b_mt - b_mc - diff[..., None]) / b_se, 0.0)  # [..., B]
        t_obs = np.where(se > 0, diff / se, np.sign(diff) * np.inf)  # [...]
    q_lo, q_hi = np.quantile(t_star, [alpha / 2.0, 1.0 - alpha / 2.0], axis=-1)  # [...] each
    below = ((t_star <= t_obs[..., None]).sum(-1) + 1) / (resamples + 1)
    above = ((t_star >= t_obs[..., None]).sum(-1) + 1) / (resamples + 1)
    ratios = _safe_ratio(b_mt - b_mc, b_mc)  # [..., B]
    rel_lo, rel_hi = np.quantile(ratios, [alpha / 2.0, 1.0 - alpha / 2.0], axis=-1)
    return LiftEstimate(
        control_mean=m_c,
        treatment_mean=m_t,
        lift=diff,
        ci_low=diff - q_hi * se,
        ci_high=diff - q_lo * se,
        relative_lift=_safe_ratio(diff, m_c),
        relative_ci_low=rel_lo,
        relative_ci_high=rel_hi,
        p_value=np.minimum(1.0, 2.0 * np.minimum(below, above)),
        method="bootstrap",
    )


def is_skewed(values: np.ndarray) -> bool:
    """True when ``values`` [n] has |sample skewness| above :data:`SKEW_THRESHOLD`."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 3 or values.std() == 0:
        return False
    return bool(abs(sps.skew(values)) > SKEW_THRESHOLD)


def compare(
    control: np.ndarray,
    treatment: np.ndarray,
    method: Method = "auto",
    alpha: float = 0.05,
    resamples: int = 2000,
    seed: int = 0,
) -> LiftEstimate:
    """Compare one metric between two arms with ``method`` (``"auto"``: bootstrap if skewed, else Welch).

    Args:
        control: [n_c] per-user values.
        treatment: [n_t] per-user values.
    """
    if method == "auto":
        method = "bootstrap" if is_skewed(control) or is_skewed(treatment) else "welch"
    if method == "welch":
        return welch_test(control, treatment, alpha)
    if method == "bootstrap":
        return bootstrap_test(control, treatment, alpha, resamples, seed)
    raise ValueError(f"unknown method {method!r}; use welch, bootstrap or auto")


def srm_p_value(counts: Mapping[str, int], weights: Mapping[str, float]) -> float:
    """Sample-ratio-mismatch check: chi-square goodness of fit of users per arm to the planned split.

    A tiny p-value (Kohavi et al. use < 0.001) means the assignment or the logging is broken and the
    experiment's comparisons cannot be trusted.

    Args:
        counts: users observed per arm.
        weights: planned traffic weight per arm (same keys; any positive scale).
    """
    if set(counts) != set(weights):
        raise ValueError(f"arms differ: counts {sorted(counts)}, weights {sorted(weights)}")
    names = sorted(counts)
    observed = np.array([counts[n] for n in names], dtype=np.float64)
    total = observed.sum()
    if total == 0:
        raise DataError("sample-ratio check: no users in any arm")
    expected = np.array([weights[n] for n in names], dtype=np.float64)
    expected = expected / expected.sum() * total
    return float(sps.chisquare(observed, expected).pvalue)
