"""PNG plots of an A/B test (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import io

import numpy as np

from rayrec import storage
from rayrec.ab.analysis import AbAnalysis
from rayrec.ab.metrics import METRICS, UserMetrics
from rayrec.ab.sequential import msprt

METRICS_PNG = "metrics_by_arm.png"
LIFT_PNG = "cumulative_lift.png"


def _save(fig, uri: str) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    storage.write_bytes(uri, buffer.getvalue())


def plot_metrics_by_arm(analysis: AbAnalysis, uri: str) -> None:
    """One panel per metric: each arm's mean with its confidence interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 3.4), layout="constrained")
    names = [f"{arm.name}\n{arm.policy}" for arm in analysis.arms]
    x = np.arange(len(names))
    for ax, metric in zip(axes, METRICS, strict=True):
        means = np.array([arm.means[metric] for arm in analysis.arms])
        lo = np.array([arm.ci95[metric][0] for arm in analysis.arms])
        hi = np.array([arm.ci95[metric][1] for arm in analysis.arms])
        ax.errorbar(x, means, yerr=[means - lo, hi - means], fmt="o", capsize=5)
        ax.set_xticks(x, names)
        ax.set_xlim(-0.5, len(names) - 0.5)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Mean per user by arm ({(1 - analysis.alpha) * 100:g}% CI)")
    _save(fig, uri)
    plt.close(fig)


def plot_cumulative_lift(
    users: UserMetrics, analysis: AbAnalysis, uri: str, metric: str = "session_return", tau_sd: float = 0.1
) -> None:
    """Each treatment's lift over the control as users arrive, with the always-valid confidence sequence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    values = users.metric(metric)
    for arm in analysis.arms:
        if arm.name == analysis.control:
            continue
        pair = users.arm_mask(analysis.control) | users.arm_mask(arm.name)
        trace = msprt(values[pair], users.arm[pair] == arm.name, analysis.alpha, tau_sd)
        treat = users.arm[pair] == arm.name
        n_t, n_c = np.cumsum(treat), np.cumsum(~treat)
        with np.errstate(divide="ignore", invalid="ignore"):
            lift = np.cumsum(values[pair] * treat) / n_t - np.cumsum(values[pair] * ~treat) / n_c
        line = ax.plot(trace.users, lift, label=f"{arm.name} - {analysis.control}")[0]
        ax.fill_between(trace.users, trace.ci_low, trace.ci_high, color=line.get_color(), alpha=0.2)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("users so far (control + treatment)")
    ax.set_ylabel(f"lift in mean {metric}")
    ax.set_title("Cumulative lift with always-valid confidence sequence (mSPRT)")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, uri)
    plt.close(fig)
