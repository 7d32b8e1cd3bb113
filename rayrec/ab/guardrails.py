"""The A/B verdict: ship a treatment only when the primary metric wins and every guardrail holds.

A *guardrail* is a metric the treatment may not make worse by more than a tolerated amount, declared as
``METRIC:TOLERANCE`` (``--guardrail sim/coverage:0.05``): the tolerance is relative, a share of the control
arm's mean (0.05: at most 5% worse). Which direction is worse comes from the metric's definition
(:attr:`rayrec.metrics.session.SessionMetric.better`). Each guardrail is a non-inferiority check on the
comparison's (1 - alpha) interval of the lift:

- ``ok``: the whole interval lies within the tolerance (the treatment is shown not to be worse than that),
- ``breached``: the whole interval lies beyond it (the treatment is shown to be worse than tolerated),
- ``inconclusive``: the interval straddles it (too few users to tell).

The primary metric *wins* when its interval excludes 0 on the better side. The verdict is ``ship`` when
the primary wins and every guardrail is ``ok``; otherwise ``do not ship``, with the reasons.

References:
    - Kohavi, R., Tang, D. & Xu, Y. (2020). Trustworthy Online Controlled Experiments, ch. 7 and 21
      (overall evaluation criterion and guardrail metrics).
    - Wellek, S. (2010). Testing Statistical Hypotheses of Equivalence and Noninferiority (interval
      inclusion as a non-inferiority test).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from rayrec.ab.analysis import AbAnalysis, Comparison
from rayrec.errors import ConfigError
from rayrec.metrics.session import METRICS, metric_definition


@dataclass(frozen=True)
class Guardrail:
    """A metric the treatment may not worsen by more than ``tolerance`` times the control mean."""

    metric: str
    """Bare metric name (``coverage``; ``sim/coverage`` is accepted and stripped)."""
    tolerance: float
    """Tolerated relative degradation, >= 0 (0.05: 5% of the control mean)."""


def parse_guardrail(spec: str) -> Guardrail:
    """``METRIC:TOLERANCE`` → :class:`Guardrail`; unknown metric or bad tolerance → ConfigError."""
    name, colon, tolerance = spec.rpartition(":")
    if not colon or not name:
        raise ConfigError(f"guardrail {spec!r}: expected METRIC:TOLERANCE, e.g. sim/coverage:0.05")
    bare = name.split("/", 1)[-1]
    if bare not in METRICS:
        raise ConfigError(f"guardrail {spec!r}: unknown metric {name!r}; known: {', '.join(METRICS)}")
    try:
        value = float(tolerance)
    except ValueError:
        raise ConfigError(f"guardrail {spec!r}: tolerance {tolerance!r} is not a number") from None
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"guardrail {spec!r}: tolerance must be a finite number >= 0, got {value}")
    return Guardrail(metric=bare, tolerance=value)


@dataclass(frozen=True)
class GuardrailCheck:
    """One guardrail on one treatment.

    Attributes:
        degradation: the lift turned into "how much worse" (positive = worse), with its interval
            ``degradation_ci95`` (low, high).
        tolerated: the largest tolerated degradation, ``tolerance * |control mean|``.
    """

    metric: str
    tolerance: float
    degradation: float
    degradation_ci95: tuple[float, float]
    tolerated: float
    status: Literal["ok", "breached", "inconclusive"]


@dataclass(frozen=True)
class Verdict:
    """The decision on one treatment against the control."""

    treatment: str
    control: str
    decision: Literal["ship", "do not ship"]
    primary: str
    primary_status: Literal["wins", "loses", "inconclusive"]
    guardrails: list[GuardrailCheck] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One sentence for reports."""
        why = "; ".join(self.reasons) if self.reasons else f"{self.primary} wins and every guardrail holds"
        return f"Verdict for {self.treatment} vs {self.control}: **{self.decision}** ({why})."

    def to_dict(self) -> dict:
        return {
            "treatment": self.treatment,
            "control": self.control,
            "decision": self.decision,
            "primary": self.primary,
            "primary_status": self.primary_status,
            "guardrails": [
                {
                    "metric": g.metric,
                    "tolerance": g.tolerance,
                    "degradation": _num(g.degradation),
                    "degradation_ci95": [_num(g.degradation_ci95[0]), _num(g.degradation_ci95[1])],
                    "tolerated": _num(g.tolerated),
                    "status": g.status,
                }
                for g in self.guardrails
            ],
            "reasons": self.reasons,
        }


def _num(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _worse(comparison: Comparison) -> tuple[float, float, float]:
    """(degradation, low, high): the lift and its interval in "how much worse" units (positive = worse)."""
    sign = -1.0 if metric_definition(comparison.metric).better == "higher" else 1.0
    lo, hi = sorted((sign * comparison.ci95[0], sign * comparison.ci95[1]))
    return sign * comparison.lift, lo, hi


def check_guardrail(comparison: Comparison, guardrail: Guardrail) -> GuardrailCheck:
    """Non-inferiority of ``comparison``'s treatment on ``guardrail`` (see the module docstring)."""
    degradation, lo, hi = _worse(comparison)
    tolerated = guardrail.tolerance * abs(comparison.control_mean)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        status = "inconclusive"
    elif hi <= tolerated:
        status = "ok"
    elif lo > tolerated:
        status = "breached"
    else:
        status = "inconclusive"
    return GuardrailCheck(
        metric=guardrail.metric,
        tolerance=guardrail.tolerance,
        degradation=degradation,
        degradation_ci95=(lo, hi),
        tolerated=tolerated,
        status=status,
    )


def verdicts(
    analysis: AbAnalysis, primary: str = "session_return", guardrails: list[Guardrail] | None = None
) -> list[Verdict]:
    """The verdict on every treatment of ``analysis``: ship only if ``primary`` wins and no guardrail fails.

    A guardrail on a metric the analysis did not measure → ConfigError (a guardrail that cannot be checked
    must not pass silently).
    """
    primary = primary.split("/", 1)[-1]
    metric_definition(primary)
    out = []
    treatments = [arm.name for arm in analysis.arms if arm.name != analysis.control]
    for treatment in treatments:
        try:
            main = analysis.comparison(primary, treatment)
        except KeyError:
            raise ConfigError(f"primary metric {primary!r} was not measured in this experiment") from None
        _, lo, hi = _worse(main)
        status = "wins" if hi < 0 else "loses" if lo > 0 else "inconclusive"
        reasons = (
            [] if status == "wins" else [f"{primary} {'loses' if status == 'loses' else 'does not win'}"]
        )
        checks = []
        for guardrail in guardrails or []:
            try:
                comparison = analysis.comparison(guardrail.metric, treatment)
            except KeyError:
                raise ConfigError(
                    f"guardrail {guardrail.metric!r} was not measured in this experiment"
                ) from None
            check = check_guardrail(comparison, guardrail)
            checks.append(check)
            if check.status != "ok":
                reasons.append(
                    f"guardrail {check.metric} {check.status}: worse by {check.degradation:.4g} "
                    f"[{check.degradation_ci95[0]:.4g}, {check.degradation_ci95[1]:.4g}], "
                    f"tolerated {check.tolerated:.4g}"
                )
        out.append(
            Verdict(
                treatment=treatment,
                control=analysis.control,
                decision="ship"
                if status == "wins" and all(c.status == "ok" for c in checks)
                else "do not ship",
                primary=primary,
                primary_status=status,
                guardrails=checks,
                reasons=reasons,
            )
        )
    return out
