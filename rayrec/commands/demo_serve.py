"""The serving stage of ``rayrec demo``: real requests to the running server, their latency, one feedback.

Pure HTTP and statistics against a server that is already up (the demo starts and stops it): a warm-up
``GET /healthz``, ``requests`` sequential ``POST /recommend`` calls timed one by one, the first few answers
shown, and a click on the first answer's top item through ``POST /feedback``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import pyarrow as pa

DEMO_REQUESTS = 200
"""Requests sent to the server for the latency figure (one at a time, after a warm-up)."""

SHOWN_ANSWERS = 3
"""Answers printed, so the user sees what the server recommends."""


def request_bodies(interactions: pa.Table, count: int = DEMO_REQUESTS) -> list[dict]:
    """``/recommend`` bodies for up to ``count`` distinct logged users, with histories of 1 to 5 logged items."""
    users = interactions.column("user_id").unique().to_pylist()[:count]
    history = interactions.column("item_id").to_pylist()[:5]
    return [{"user_id": user, "history": history[: 1 + i % 5], "k": 5} for i, user in enumerate(users)]


def latency_summary(latencies: Sequence[float]) -> dict:
    """``{"requests", "p50_ms", "p99_ms"}`` from latencies in seconds (p99: the nearest rank below)."""
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[int(0.99 * (len(ordered) - 1))],
    }


def exercise_server(url: str, bodies: Sequence[dict], *, show: int = SHOWN_ANSWERS) -> dict:
    """Send ``bodies`` one at a time to ``url``, print the first ``show`` answers, send one click.

    Returns :func:`latency_summary` of the ``/recommend`` calls; an HTTP error status raises ``httpx``'s.
    """
    import httpx  # a quarter of a second to import: `rayrec --help` loads this module

    latencies: list[float] = []
    shown: list[dict] = []
    with httpx.Client(base_url=url, timeout=30.0) as client:
        client.get("/healthz").raise_for_status()
        for body in bodies:
            start = time.perf_counter()
            answer = client.post("/recommend", json=body)
            latencies.append(time.perf_counter() - start)
            answer.raise_for_status()
            if len(shown) < show:
                shown.append(answer.json())
        for answer in shown:
            print(f"POST /recommend → arm {answer['arm']}: {[it['item_id'] for it in answer['items']]}")
        first = shown[0]
        client.post(
            "/feedback",
            json={
                "request_id": first["request_id"],
                "item_id": first["items"][0]["item_id"],
                "event": "click",
            },
        ).raise_for_status()
    return latency_summary(latencies)
