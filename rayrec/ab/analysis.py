"""An A/B test's analysis: per-arm summaries, every treatment against the control, the SRM check.

The statistics live in :mod:`rayrec.ab.stats` and :mod:`rayrec.ab.sequential`; this module applies them
to :class:`rayrec.ab.metrics.UserMetrics` and holds the result that reports and plots are made from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from rayrec.ab.metrics import METRICS, UserMetrics
from rayrec.ab.sequential import msprt
from rayrec.ab.stats import Method, compare, srm_p_value
from rayrec.errors import ConfigError, DataError
from rayrec.metrics.session import mean_interval


@dataclass(frozen=True)
class ArmSummary:
    """One arm's users and metric means with Student-t intervals (level ``1 - alpha``; :mod:`rayrec.metrics.session`)."""

    name: str
    policy: str
    weight: float
    users: int
    means: dict[str, float]
    ci95: dict[str, tuple[float, float]]


@dataclass(frozen=True)
class Comparison:
    """One metric, one treatment against the control.

    Attributes:
        lift: treatment mean minus control mean; ``ci95`` its interval.
        relative_lift: ``lift / control_mean``; ``relative_ci95`` its interval.
        p_value: fixed-horizon two-sided p-value (``method``: welch or bootstrap).
        sequential_p_value: always-valid mSPRT p-value after the last user (None when not monitored).
    """

    metric: str
    control: str
    treatment: str
    method: str
    control_mean: float
    treatment_mean: float
    lift: float
    ci95: tuple[float, float]
    relative_lift: float
    relative_ci95: tuple[float, float]
    p_value: float
    sequential_p_value: float | None = None


@dataclass(frozen=True)
class AbAnalysis:
    """Everything the report says about one experiment."""

    control: str
    alpha: float
    arms: list[ArmSummary]
    comparisons: list[Comparison]
    srm_p_value: float
    sequential_tau_sd: float | None = None
    notes: list[str] = field(default_factory=list)

    def comparison(self, metric: str, treatment: str) -> Comparison:
        for c in self.comparisons:
            if c.metric == metric and c.treatment == treatment:
                return c
        raise KeyError((metric, treatment))


def analyse(
    users: UserMetrics,
    arms: Sequence[tuple[str, str, float]],
    *,
    control: str | None = None,
    method: Method = "auto",
    alpha: float = 0.05,
    resamples: int = 2000,
    seed: int = 0,
    sequential_tau_sd: float | None = 0.1,
) -> AbAnalysis:
    """Summarise every arm and compare every other arm with ``control`` on every metric.

    Args:
        users: per-user outcomes, in arrival order (the order sequential monitoring replays).
        arms: (name, policy, weight) of every planned arm, control first unless ``control`` names it.
        control: the control arm's name (default: the first arm).
        method: ``welch``, ``bootstrap`` or ``auto`` (bootstrap for skewed metrics).
        sequential_tau_sd: mSPRT mixing sd in pooled-sd units; None switches sequential monitoring off.
    """
    names = [name for name, _, _ in arms]
    if len(names) < 2:
        raise ConfigError(f"an A/B test needs at least two arms, got {names}")
    control = control if control is not None else names[0]
    if control not in names:
        raise ConfigError(f"control arm {control!r} is not one of the arms {names}")
    counts = {name: int(users.arm_mask(name).sum()) for name in names}
    unknown = sorted(set(users.arm.tolist()) - set(names))
    if unknown:
        raise DataError(f"users were assigned to arms that are not planned: {unknown}")
    summaries = []
    values = {m: users.metric(m) for m in METRICS}
    for name, policy, weight in arms:
        mask = users.arm_mask(name)
        intervals = {m: mean_interval(values[m][mask], alpha) for m in METRICS}
        summaries.append(
            ArmSummary(
                name=name,
                policy=policy,
                weight=float(weight),
                users=counts[name],
                means={m: intervals[m]["mean"] for m in METRICS},
                ci95={m: (intervals[m]["ci95_low"], intervals[m]["ci95_high"]) for m in METRICS},
            )
        )
    comparisons = []
    for treatment in (n for n in names if n != control):
        pair = users.arm_mask(control) | users.arm_mask(treatment)
        is_treatment = users.arm[pair] == treatment
        for metric in METRICS:
            est = compare(
                values[metric][users.arm_mask(control)],
                values[metric][users.arm_mask(treatment)],
                method=method,
                alpha=alpha,
                resamples=resamples,
                seed=seed,
            )
            seq_p = None
            if sequential_tau_sd is not None:
                seq_p = float(msprt(values[metric][pair], is_treatment, alpha, sequential_tau_sd).p_value[-1])
            comparisons.append(
                Comparison(
                    metric=metric,
                    control=control,
                    treatment=treatment,
                    method=est.method,
                    control_mean=float(est.control_mean),
                    treatment_mean=float(est.treatment_mean),
                    lift=float(est.lift),
                    ci95=(float(est.ci_low), float(est.ci_high)),
                    relative_lift=float(est.relative_lift),
                    relative_ci95=(float(est.relative_ci_low), float(est.relative_ci_high)),
                    p_value=float(est.p_value),
                    sequential_p_value=seq_p,
                )
            )
    srm = srm_p_value(counts, {name: weight for name, _, weight in arms})
    notes = []
    if srm < 0.001:
        notes.append(
            f"sample ratio mismatch (p = {srm:.2g}): users per arm do not match the planned split; "
            "the assignment or the logging is broken and the comparisons cannot be trusted"
        )
    return AbAnalysis(
        control=control,
        alpha=alpha,
        arms=summaries,
        comparisons=comparisons,
        srm_p_value=srm,
        sequential_tau_sd=sequential_tau_sd,
        notes=notes,
    )
