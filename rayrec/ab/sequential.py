"""Always-valid sequential monitoring: the mixture sequential probability ratio test (mSPRT).

A fixed-horizon p-value checked after every batch of users ("peeking") rejects a true null far more
often than alpha. The mSPRT's p-value stays valid at every look: the probability that it *ever* drops
below alpha under the null is at most alpha, however often one looks.

For the difference of means Δ = mean_t - mean_c with squared standard error V_n = s_t²/n_t + s_c²/n_c
(the sample variances plugged in, as Johari et al. do for A/B tests), the mixture likelihood ratio of
"Δ = θ, θ ~ N(0, τ²)" against "Δ = 0" is::

    Λ_n = sqrt(V_n / (V_n + τ²)) · exp(τ² Δ_n² / (2 V_n (V_n + τ²)))

and the always-valid p-value is ``p_n = min(1, min_{m <= n} 1/Λ_m)``.

Mixing variance τ²: the normal prior on the effect that the test averages over. The test has most power
for effects near τ; a τ far above the effects one cares about delays detection, one far below wastes
power on tiny effects. rayrec sets ``τ = tau_sd × (pooled per-user standard deviation)``, the standard
deviation measured once on the burn-in users and then held fixed (so τ does not depend on the data it
later tests), with ``tau_sd = 0.1`` by default: standardised effects of about a tenth of a standard
deviation are the typical size of product A/B effects.

References:
    - Robbins, H. (1970). "Statistical methods related to the law of the iterated logarithm." Ann. Math. Stat.
    - Johari, R., Koomen, P., Pekelis, L. & Walsh, D. (2017). "Peeking at A/B Tests: Why it matters, and
      what to do about it." KDD.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SequentialTrace:
    """Always-valid inference after each user, for a batch ``[...]`` of experiments of T users.

    Attributes:
        users: [T] users seen so far at each look (1-based).
        p_value: [..., T] always-valid p-value (non-increasing; 1.0 during burn-in).
        ci_low, ci_high: [..., T] always-valid confidence sequence for the difference of means
            (NaN during burn-in).
        tau: [...] mixing standard deviation used.
    """

    users: np.ndarray
    p_value: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    tau: np.ndarray

    def rejected(self, alpha: float) -> np.ndarray:
        """[...] whether the test ever rejected at level ``alpha``."""
        return self.p_value[..., -1] <= alpha


def _running_moments(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count, mean and unbiased variance of the masked values after each position of the last axis."""
    n = np.cumsum(mask, axis=-1)  # [..., T]
    s1 = np.cumsum(values * mask, axis=-1)
    s2 = np.cumsum(values**2 * mask, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = s1 / n
        var = (s2 - n * mean**2) / (n - 1)
    return n, mean, np.maximum(var, 0.0)


def msprt(
    values: np.ndarray,
    is_treatment: np.ndarray,
    alpha: float = 0.05,
    tau_sd: float = 0.1,
    burn_in: int = 20,
) -> SequentialTrace:
    """Run the mSPRT over users in arrival order.

    Args:
        values: [..., T] per-user metric values in the order users arrived.
        is_treatment: [..., T] bool, True for treatment users, False for control.
        alpha: level of the confidence sequence (the p-value itself does not depend on it).
        tau_sd: mixing standard deviation in units of the pooled per-user standard deviation.
        burn_in: looks start once each arm has this many users (the variance plug-in needs a few).
    """
    values = np.asarray(values, dtype=np.float64)
    treat = np.asarray(is_treatment, dtype=bool)
    if values.shape != treat.shape:
        raise ValueError(f"values {values.shape} and is_treatment {treat.shape} differ in shape")
    if not tau_sd > 0 or burn_in < 2:
        raise ValueError(f"tau_sd must be > 0 and burn_in >= 2, got {tau_sd}, {burn_in}")
    n_t, m_t, s_t = _running_moments(values, treat)  # [..., T] each
    n_c, m_c, s_c = _running_moments(values, ~treat)
    ready = (n_t >= burn_in) & (n_c >= burn_in)  # [..., T]
    # τ from the pooled standard deviation at the first look, then fixed.
    first = np.argmax(ready, axis=-1)[..., None]  # [..., 1]
    pooled_var = np.take_along_axis(
        np.where(ready, ((n_t - 1) * s_t + (n_c - 1) * s_c) / np.maximum(n_t + n_c - 2, 1), np.nan), first, -1
    )
    tau2 = (tau_sd**2) * np.where(np.isfinite(pooled_var) & (pooled_var > 0), pooled_var, 1.0)  # [..., 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        v = s_t / n_t + s_c / n_c  # [..., T] squared std error of the difference
        v = np.where(ready & (v > 0), v, np.nan)
        delta = m_t - m_c
        log_lambda = 0.5 * np.log(v / (v + tau2)) + tau2 * delta**2 / (2.0 * v * (v + tau2))
        p = np.where(ready, np.minimum(1.0, np.exp(-np.nan_to_num(log_lambda, nan=-np.inf))), 1.0)
        half = np.sqrt(v * (v + tau2) / tau2 * (np.log((v + tau2) / v) - 2.0 * np.log(alpha)))
    p = np.minimum.accumulate(p, axis=-1)
    return SequentialTrace(
        users=np.arange(1, values.shape[-1] + 1),
        p_value=p,
        ci_low=np.where(ready, delta - half, np.nan),
        ci_high=np.where(ready, delta + half, np.nan),
        tau=np.sqrt(tau2[..., 0]),
    )
