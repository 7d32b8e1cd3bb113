"""An A/B test's analysis: per-arm summaries, every treatment against the control, the SRM check.

The statistics live in :mod:`rayrec.ab.stats` and :mod:`rayrec.ab.sequential`; this module applies them
to :class:`rayrec.ab.metrics.UserMetrics` and holds the result that reports and plots are made from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rayrec.ab.metrics import METRICS, UserMetrics
from rayrec.ab.sequential import msprt
from rayrec.ab.stats import Method, compare, srm_p_value
from rayrec.errors import ConfigError, DataError
from rayrec.metrics.beyond import Exposure, independent_corpus_difference
from rayrec.metrics.session import BEYOND_PER_USER, CORPUS, mean_interval


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


CORPUS_RESAMPLES = 500
"""At most this many bootstrap resamples of users for the corpus-level metrics (each one re-counts every
impression of the arm)."""


def _corpus_comparisons(
    exposures: Mapping[str, Exposure], control: str, treatment: str, resamples: int, seed: int, alpha: float
) -> list[Comparison]:
    """Treatment minus control of every corpus-level metric (bootstrap over each arm's users)."""
    diffs = independent_corpus_difference(exposures[treatment], exposures[control], resamples, seed, alpha)
    out = []
    for metric in CORPUS:
        d = diffs[metric]
        base = d["control"]
        scale = abs(base) if base else float("nan")
        out.append(
            Comparison(
                metric=metric,
                control=control,
                treatment=treatment,
                method="bootstrap-users (equal users)",
                control_mean=base,
                treatment_mean=d["treatment"],
                lift=d["mean"],
                ci95=(d["ci95_low"], d["ci95_high"]),
                relative_lift=d["mean"] / scale,
                relative_ci95=(d["ci95_low"] / scale, d["ci95_high"] / scale),
                p_value=d["p_value"],
            )
        )
    return out


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
    exposures: Mapping[str, Exposure] | None = None,
) -> AbAnalysis:
    """Summarise every arm and compare every other arm with ``control`` on every metric.

    Args:
        users: per-user outcomes, in arrival order (the order sequential monitoring replays).
        arms: (name, policy, weight) of every planned arm, control first unless ``control`` names it.
        control: the control arm's name (default: the first arm).
        method: ``welch``, ``bootstrap`` or ``auto`` (bootstrap for skewed metrics).
        sequential_tau_sd: mSPRT mixing sd in pooled-sd units; None switches sequential monitoring off.
        exposures: each arm's logged impressions (:func:`rayrec.metrics.beyond.group_exposures`): adds the
            corpus-level metrics (coverage, exposure Gini), compared by the bootstrap over each arm's users.

    The beyond-accuracy per-user metrics (``ild``, ``novelty``, ``calibration``) are summarised and compared
    like the others wherever every user has them (they are NaN where they were not measured).
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
    measured = [m for m in BEYOND_PER_USER if len(users) and np.isfinite(users.metric(m)).all()]
    per_user = (*METRICS, *measured)
    values = {m: users.metric(m) for m in per_user}
    corpus, notes = {}, []
    if exposures is not None:
        missing = sorted(set(names) - set(exposures))
        if missing:
            notes.append(f"no logged impressions for arms {missing}: coverage and exposure Gini not compared")
            exposures = None
        else:
            draws = min(resamples, CORPUS_RESAMPLES)
            corpus = {name: exposures[name].summary(None, draws, seed, alpha) for name in names}
    for name, policy, weight in arms:
        mask = users.arm_mask(name)
        intervals = {m: mean_interval(values[m][mask], alpha) for m in per_user} | corpus.get(name, {})
        summaries.append(
            ArmSummary(
                name=name,
                policy=policy,
                weight=float(weight),
                users=counts[name],
                means={m: v["mean"] for m, v in intervals.items()},
                ci95={m: (v["ci95_low"], v["ci95_high"]) for m, v in intervals.items()},
            )
        )
    comparisons = []
    for treatment in (n for n in names if n != control):
        pair = users.arm_mask(control) | users.arm_mask(treatment)
        is_treatment = users.arm[pair] == treatment
        if exposures is not None:
            draws = min(resamples, CORPUS_RESAMPLES)
            comparisons += _corpus_comparisons(exposures, control, treatment, draws, seed, alpha)
        for metric in per_user:
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
