"""Session metrics: what one simulated (or served) user's session produced, defined once for every report.

Every command that reports sessions — ``rayrec simulate``, the evaluation of ``train-policy``, ``rayrec ab``
in-process and against a live server — computes these metrics from :class:`SessionOutcomes` with the
functions below and uses these names. Results measured in the simulator are namespaced ``sim/NAME``
(:func:`namespaced`); the A/B report names them bare, as its per-user table does.

| name | unit | formula (per user, one session) | aggregate over users |
| --- | --- | --- | --- |
| ``session_return`` | reward | sum of the step rewards | mean |
| ``clicks`` | clicks | number of clicks | mean |
| ``ctr`` | clicks per impression | clicks / items shown | ratio of sums (delta method) |
| ``session_length`` | requests | slates shown before the session ended | mean |
| ``left_rate`` | share | 1 if the user left a session early (not the budget or the step cap) | mean |
| ``sessions`` | sessions | sessions the user had (1 unless the world has returning users) | mean |
| ``ild`` | cosine distance | mean over the user's slates of the intra-list diversity | mean |
| ``novelty`` | bits | mean over the user's slates of the items' popularity self-information | mean |
| ``calibration`` | nats | mean over the user's slates of Steck's KL(history mix ‖ slate mix) | mean |
| ``coverage`` | share of items | items shown at least once / catalog size | corpus |
| ``gini_items`` | Gini | Gini coefficient of impressions per item | corpus |
| ``gini_categories`` | Gini | Gini coefficient of impressions per category | corpus |

The last six are beyond-accuracy metrics (:mod:`rayrec.metrics.beyond` computes them from the slates shown;
``envs.beyond`` observes them in the rollout engine). A session's ``ild``, ``novelty`` and ``calibration`` are
NaN where they were not measured. The corpus-level ones have no per-user value: they are functions of the
exposure summed over all users.

A user's *episode* is all of their sessions: where users return for further sessions, ``session_return``,
``clicks`` and ``session_length`` add up over the episode (the names keep the one-session case's words).

One interval method per kind of quantity:

- **A mean over users** (every metric above but ``ctr``): Student-t interval of the mean of the per-user
  values; users are independent, so this is the textbook interval.
- **A ratio of sums** (``ctr``): the delta method, with users as the independent units. It is computed the
  same way as a mean, on *linearised* per-user values ``R + (c_i - R m_i) / mean(m)`` whose mean is the
  ratio ``R`` and whose standard error is the delta-method one (Deng, Knoblich & Lu, KDD 2018). So paired
  differences and A/B comparisons of a ratio use the very same code as those of a mean.
- **A corpus-level metric** (``coverage``, ``gini_items``, ``gini_categories``): the basic bootstrap over
  users (:class:`rayrec.metrics.beyond.Exposure`); paired differences re-weight both runs by the same draw.
- **A paired difference** of two policies on the same users: the Student-t interval of the per-user
  differences of those values.
- **A/B lifts** between independent arms: Welch or the studentized bootstrap (:mod:`rayrec.ab.stats`) on
  the same per-user values.

References:
    - Deng, A., Knoblich, U. & Lu, J. (2018). "Applying the Delta Method in Metric Analytics: A Practical
      Guide with Novel Ideas." KDD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Literal

import numpy as np

from rayrec.errors import DataError

NAMESPACE = "sim"
"""Namespace of metrics measured in the simulator (``sim/session_return``)."""


@dataclass(frozen=True)
class SessionMetric:
    """One metric's definition: what a number under this name means wherever it appears."""

    name: str
    unit: str
    formula: str
    kind: Literal["mean", "ratio", "corpus"]
    numerator: str
    """The :class:`SessionOutcomes` field averaged (kind ``mean``) or summed on top of the ratio; for kind
    ``corpus`` the key of :meth:`rayrec.metrics.beyond.Exposure.corpus`."""
    denominator: str | None = None
    """For a ratio: the field summed below it."""
    better: Literal["higher", "lower"] = "higher"
    """Which direction is an improvement (A/B guardrails read it): ``lower`` for leaving, miscalibration
    and exposure concentration."""


METRICS: dict[str, SessionMetric] = {
    m.name: m
    for m in (
        SessionMetric(
            "session_return", "reward", "sum of the step rewards of the session", "mean", "session_return"
        ),
        SessionMetric("clicks", "clicks", "clicks in the session", "mean", "clicks"),
        SessionMetric(
            "ctr", "clicks per impression", "clicks / items shown", "ratio", "clicks", "impressions"
        ),
        SessionMetric("session_length", "requests", "slates shown in the session", "mean", "session_length"),
        SessionMetric(
            "left_rate",
            "share of users",
            "1 if the user left a session early",
            "mean",
            "left",
            better="lower",
        ),
        SessionMetric("sessions", "sessions", "sessions in the user's episode", "mean", "sessions"),
        SessionMetric(
            "ild",
            "cosine distance",
            "mean pairwise 1 - cos of a slate's items, mean over slates",
            "mean",
            "ild",
        ),
        SessionMetric(
            "novelty", "bits", "mean -log2 p(item) of a slate, mean over slates", "mean", "novelty"
        ),
        SessionMetric(
            "calibration",
            "nats",
            "Steck's KL(history category mix || slate mix), mean over slates",
            "mean",
            "calibration",
            better="lower",
        ),
        SessionMetric(
            "coverage", "share of items", "items shown at least once / catalog", "corpus", "coverage"
        ),
        SessionMetric(
            "gini_items", "Gini", "Gini of impressions per item", "corpus", "gini_items", better="lower"
        ),
        SessionMetric(
            "gini_categories",
            "Gini",
            "Gini of impressions per category",
            "corpus",
            "gini_categories",
            better="lower",
        ),
    )
}
"""Every session metric, in report order."""

PER_USER = tuple(name for name, m in METRICS.items() if m.kind != "corpus")
"""Metrics with a value per user (:meth:`SessionOutcomes.values`)."""
BEYOND_PER_USER = ("ild", "novelty", "calibration")
"""Beyond-accuracy metrics measured per user (per slate, averaged over the user's slates)."""
CORPUS = tuple(name for name, m in METRICS.items() if m.kind == "corpus")
"""Corpus-level metrics: one value per run, bootstrap intervals (:mod:`rayrec.metrics.beyond`)."""
BEYOND = (*BEYOND_PER_USER, *CORPUS)
"""Every beyond-accuracy metric, in report order."""

REPORTED = ("session_return", "clicks", "ctr", "session_length")
"""The metrics tables and A/B reports show (``left_rate`` is in the JSON of simulations)."""


@dataclass(frozen=True, kw_only=True)
class SessionOutcomes:
    """What each of n users' one session produced, in user order.

    Attributes:
        session_return: [n] float64 summed reward.
        clicks: [n] float64 clicks.
        impressions: [n] float64 items shown.
        session_length: [n] float64 requests (slates).
        left: [n] bool a session ended because the user left (not the budget or the step cap).
        sessions: [n] float64 sessions in the user's episode (all ones without returning users).
        ild: [n] float64 mean intra-list diversity of the user's slates (NaN: not measured).
        novelty: [n] float64 mean novelty (bits) of the user's slates (NaN: not measured).
        calibration: [n] float64 mean Steck miscalibration (nats) of the user's slates (NaN: not measured).
    """

    session_return: np.ndarray
    clicks: np.ndarray
    impressions: np.ndarray
    session_length: np.ndarray
    left: np.ndarray = field(default=None)  # type: ignore[assignment]
    sessions: np.ndarray = field(default=None)  # type: ignore[assignment]
    ild: np.ndarray = field(default=None)  # type: ignore[assignment]
    novelty: np.ndarray = field(default=None)  # type: ignore[assignment]
    calibration: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        n = len(self.session_return)
        if self.left is None:
            object.__setattr__(self, "left", np.zeros(n, dtype=bool))
        if self.sessions is None:
            object.__setattr__(self, "sessions", np.ones(n))
        for name in BEYOND_PER_USER:
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.full(n, np.nan))
        for f in fields(SessionOutcomes):
            if np.shape(getattr(self, f.name)) != (n,):
                raise ValueError(
                    f"{type(self).__name__}.{f.name}: shape {np.shape(getattr(self, f.name))}, expected ({n},)"
                )

    def __len__(self) -> int:
        return len(self.session_return)

    def values(self, name: str) -> np.ndarray:
        """[n] per-user values of metric ``name`` whose mean is the metric (linearised for a ratio)."""
        metric = metric_definition(name)
        if metric.kind == "corpus":
            raise DataError(
                f"{name} is corpus-level: it has no per-user values (rayrec.metrics.beyond.Exposure)"
            )
        numerator = np.asarray(getattr(self, metric.numerator), dtype=np.float64)
        if metric.kind == "mean":
            return numerator
        denominator = np.asarray(getattr(self, metric.denominator), dtype=np.float64)
        scale = denominator.mean() if len(denominator) else 0.0
        if scale <= 0:
            return np.zeros(len(numerator))
        ratio = numerator.sum() / denominator.sum()
        return ratio + (numerator - ratio * denominator) / scale

    def summary(self, names: tuple[str, ...] | None = None, namespace: str | None = NAMESPACE) -> dict:
        """``{key: {"mean", "ci95_low", "ci95_high"}}`` for ``names`` (keys namespaced unless None).

        ``names`` None: every per-user metric, less the beyond-accuracy ones this run did not measure.
        """
        if names is None:
            names = tuple(
                n for n in PER_USER if n not in BEYOND_PER_USER or not np.isnan(self.values(n)).all()
            )
        return {namespaced(name, namespace): mean_interval(self.values(name)) for name in names}


def metric_definition(name: str) -> SessionMetric:
    """The definition of ``name`` (bare or namespaced); unknown names → DataError listing the known ones."""
    bare = name.split("/", 1)[-1]
    if bare not in METRICS:
        raise DataError(f"unknown session metric {name!r}; known: {', '.join(METRICS)}")
    return METRICS[bare]


def namespaced(name: str, namespace: str | None = NAMESPACE) -> str:
    """``sim/NAME`` (or ``NAME`` when ``namespace`` is None)."""
    return name if namespace is None else f"{namespace}/{name}"


def mean_interval(values: np.ndarray, alpha: float = 0.05) -> dict[str, float]:
    """Mean of ``values`` [n] with its Student-t ``1 - alpha`` interval (NaN bounds for n < 2).

    Keys are ``mean``, ``ci95_low``, ``ci95_high`` whatever ``alpha`` (the JSON contract's names).
    """
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    mean = float(values.mean()) if n else float("nan")
    if n < 2:
        return {"mean": mean, "ci95_low": float("nan"), "ci95_high": float("nan")}
    from scipy.special import stdtrit  # the t quantile; here, not at import: it would slow `rayrec --help`

    half = float(stdtrit(n - 1, 1 - alpha / 2)) * float(values.std(ddof=1)) / math.sqrt(n)
    return {"mean": mean, "ci95_low": mean - half, "ci95_high": mean + half}


def paired_difference(
    a: SessionOutcomes, b: SessionOutcomes, name: str, alpha: float = 0.05
) -> dict[str, float]:
    """``a - b`` in metric ``name`` over the same users (row i of both is one user): mean and t interval."""
    if len(a) != len(b):
        raise DataError(f"a paired difference needs the same users: got {len(a)} and {len(b)}")
    return mean_interval(a.values(name) - b.values(name), alpha)


def concat_outcomes(parts: list[SessionOutcomes]) -> SessionOutcomes:
    """The users of ``parts`` one after another."""
    return SessionOutcomes(
        **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(SessionOutcomes)}
    )
