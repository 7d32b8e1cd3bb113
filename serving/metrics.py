"""Prometheus metrics of the serving application, through Ray Serve's metrics API (``ray.serve.metrics``).

Ray exports them from every replica on each node's metrics port (``ray start --metrics-export-port``),
with Serve's ``application``, ``deployment`` and ``replica`` tags added; Prometheus scrapes them there
as it scrapes Ray's own. Names (all prefixed ``rayrec_``):

===============================================  =============================================================
``rayrec_requests_total{route,arm,code}``        answers by route, arm (empty before the arm is known: a
                                                 refused request) and status class (2xx, 4xx, 5xx)
``rayrec_overloaded_total{route,arm}``           503 answers (load shed, a part unavailable)
``rayrec_deadline_exceeded_total{route,arm}``    504 answers
``rayrec_request_latency_ms{route,arm}``         histogram of answer latency at the ingress
``rayrec_fallbacks_total{arm,reason}``           answers whose arm's ranker failed (reason: error, timeout)
``rayrec_impressions_total{arm}``                items shown, as logged
``rayrec_feedback_total{arm,event,status}``      feedback by event and outcome (accepted, duplicate,
                                                 unknown-request, not-shown, unavailable)
``rayrec_events_unlogged_total{kind}``           rows the server could not log (requests, impressions,
                                                 feedback), e.g. while the event log cannot write
``rayrec_event_backlog_rows``                    rows acknowledged or queued but not yet written
``rayrec_event_write_failures_total``            failed part-file writes
``rayrec_rollout_refused_total{stage}``          artifacts a rollout refused (the old ones kept serving)
===============================================  =============================================================

Clicks per impression, per arm: ``rate(rayrec_feedback_total{event="click",status="accepted"}[5m]) /
rate(rayrec_impressions_total[5m])``. Outside a Ray worker (the plain-uvicorn benchmark peer) the
metrics are no-ops.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ray.serve import metrics

LATENCY_BUCKETS_MS = [1, 2, 5, 10, 20, 30, 50, 75, 100, 200, 500, 1000, 2000, 5000, 10000]
ROUTES = {"/recommend", "/feedback", "/healthz"}


class IngressMetrics:
    """The ingress's metrics: answers per route and arm, latency, shed load, fallbacks, unlogged rows."""

    def __init__(self) -> None:
        self.requests = metrics.Counter(
            "rayrec_requests_total",
            "Answers by route, arm and status class.",
            tag_keys=("route", "arm", "code"),
        )
        self.overloaded = metrics.Counter(
            "rayrec_overloaded_total",
            "503 answers (load shed or a part unavailable).",
            tag_keys=("route", "arm"),
        )
        self.deadline = metrics.Counter(
            "rayrec_deadline_exceeded_total", "504 answers (per-request deadline).", tag_keys=("route", "arm")
        )
        self.latency = metrics.Histogram(
            "rayrec_request_latency_ms",
            "Answer latency at the ingress, milliseconds.",
            boundaries=LATENCY_BUCKETS_MS,
            tag_keys=("route", "arm"),
        )
        self.fallbacks = metrics.Counter(
            "rayrec_fallbacks_total", "Answers whose arm's ranker failed.", tag_keys=("arm", "reason")
        )
        self.unlogged = metrics.Counter(
            "rayrec_events_unlogged_total", "Event rows the server could not log.", tag_keys=("kind",)
        )
        self.counts: dict[str, int] = {}  # the same numbers, for /healthz details and tests

    def on_response(self, route: str, status: int, seconds: float, state: Mapping[str, Any]) -> None:
        """The request guard's hook (:data:`serving.guard.ResponseHook`)."""
        route = route if route in ROUTES else "other"
        arm = str(state.get("arm", ""))
        tags = {"route": route, "arm": arm}
        self.requests.inc(1, tags={**tags, "code": f"{status // 100}xx"})
        self.latency.observe(seconds * 1000.0, tags=tags)
        if status == 503:
            self.overloaded.inc(1, tags=tags)
            self._count(f"503 {route}")
        elif status == 504:
            self.deadline.inc(1, tags=tags)
            self._count(f"504 {route}")

    def fallback(self, arm: str, reason: str, n: int) -> None:
        self.fallbacks.inc(n, tags={"arm": arm, "reason": reason})
        self._count(f"fallback {arm}", n)

    def not_logged(self, kind: str, rows: int) -> None:
        if rows:
            self.unlogged.inc(rows, tags={"kind": kind})
            self._count(f"unlogged {kind}", rows)

    def _count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n


class EventMetrics:
    """The event logger's metrics: impressions, feedback per arm and event, backlog, write failures."""

    def __init__(self) -> None:
        self.impressions = metrics.Counter(
            "rayrec_impressions_total", "Items shown, as logged.", tag_keys=("arm",)
        )
        self.feedback = metrics.Counter(
            "rayrec_feedback_total",
            "Feedback by arm, event and outcome.",
            tag_keys=("arm", "event", "status"),
        )
        self.unlogged = metrics.Counter(
            "rayrec_events_unlogged_total", "Event rows the server could not log.", tag_keys=("kind",)
        )
        self.backlog = metrics.Gauge("rayrec_event_backlog_rows", "Event rows queued but not yet written.")
        self.write_failures = metrics.Counter("rayrec_event_write_failures_total", "Failed part-file writes.")


def rollout_refused_counter():
    return metrics.Counter(
        "rayrec_rollout_refused_total", "Artifacts a rollout refused.", tag_keys=("stage",)
    )
