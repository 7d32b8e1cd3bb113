"""The HTTP API (README.md, "HTTP API"): request/answer models and the FastAPI app around a recommender service.

:func:`make_api` takes any object with the :class:`RecommenderService` methods, so the Serve ingress and
the plain-uvicorn peer in ``benchmarks/serve.py`` answer through the very same routes and validation.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rayrec.events import FEEDBACK_EVENTS

MAX_ID_CHARS = 256
MAX_QUERY_CHARS = 1000
MAX_K = 100
MAX_SESSION_STEP = 10_000


class Overloaded(Exception):
    """The pipeline is saturated: the answer is a fast 503, the client should retry later."""


class UnknownRequest(LookupError):
    """Feedback names a request id this server did not answer (or no longer remembers)."""


class ItemNotShown(ValueError):
    """Feedback names an item that was not in the request's slate."""


class RecommendRequest(BaseModel):
    """``POST /recommend`` body."""

    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=MAX_ID_CHARS, description="The caller's user id (raw).")
    history: list[str] = Field(
        default_factory=list,
        description="Item ids the user engaged with, oldest first; unknown ids are ignored.",
    )
    query: str | None = Field(
        default=None, min_length=1, max_length=MAX_QUERY_CHARS, description="Free text."
    )
    k: int = Field(default=10, ge=1, le=MAX_K, description="Slate size.")
    session_step: int = Field(
        default=0,
        ge=0,
        le=MAX_SESSION_STEP,
        description=(
            "Requests already answered in this user's session; a client that tracks sessions sends it so "
            "a trained policy sees the budget feature it was trained on."
        ),
    )

    @field_validator("history")
    @classmethod
    def _bounded_ids(cls, history: list[str]) -> list[str]:
        too_long = [i for i, item in enumerate(history) if not 0 < len(item) <= MAX_ID_CHARS]
        if too_long:
            raise ValueError(
                f"history item ids must have 1..{MAX_ID_CHARS} characters (bad at {too_long[:5]})"
            )
        return history


class RecommendedItem(BaseModel):
    """One slate item. ``propensity`` is an addition to the original ``{"item_id", "score"}``: clients that
    keep their own log (``rayrec ab --url``) record the same propensities the server logs."""

    item_id: str
    score: float
    propensity: float = Field(
        description="Probability that the arm's policy shows this item at this position (1.0 if deterministic)."
    )


class RecommendResponse(BaseModel):
    """``POST /recommend`` answer."""

    request_id: str
    arm: str
    items: list[RecommendedItem]
    policy: str = Field(
        description="The policy that chose the slate (the arm's, or the cold-start fallback)."
    )
    unknown_history: int = Field(description="History item ids that are not in the catalog (ignored).")
    cold_start: bool = Field(description="True when nothing known about the user: popular, diverse items.")


class FeedbackRequest(BaseModel):
    """``POST /feedback`` body."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=64)
    item_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    event: Literal[FEEDBACK_EVENTS]  # type: ignore[valid-type]
    value: float = 1.0

    @field_validator("value")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("value must be a finite number")
        return value


class FeedbackAccepted(BaseModel):
    status: Literal["accepted"] = "accepted"


class Health(BaseModel):
    """``GET /healthz`` answer."""

    ready: bool
    items: int
    index: str
    encoder: str | None
    arms: dict[str, float]
    policies: dict[str, str]
    problems: list[str] = Field(default_factory=list)


class RecommenderService(Protocol):
    """What the routes call; raises :class:`Overloaded`, :class:`UnknownRequest`, :class:`ItemNotShown`."""

    max_history: int
    supports_query: bool

    async def recommend(self, request: RecommendRequest) -> RecommendResponse: ...

    async def feedback(self, request: FeedbackRequest) -> None: ...

    async def health(self) -> Health: ...


def make_api(service: RecommenderService) -> FastAPI:
    """The FastAPI app serving ``service`` (also gives ``/docs`` and ``/openapi.json``)."""
    app = FastAPI(
        title="rayrec",
        description="Slate recommendations from a reinforcement-learning ranker, with A/B arms and an event log.",
    )

    @app.exception_handler(Overloaded)
    async def _overloaded(_request, exc: Overloaded) -> JSONResponse:
        return JSONResponse({"detail": f"overloaded, retry later: {exc}"}, status_code=503)

    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend(request: RecommendRequest) -> RecommendResponse:
        if len(request.history) > service.max_history:
            raise HTTPException(
                422,
                f"history has {len(request.history)} items; at most {service.max_history} are accepted "
                "(send the most recent ones)",
            )
        if request.query is not None and not service.supports_query:
            raise HTTPException(422, "this server has no query encoder: leave out 'query'")
        return await service.recommend(request)

    @app.post("/feedback", status_code=202, response_model=FeedbackAccepted)
    async def feedback(request: FeedbackRequest) -> FeedbackAccepted:
        try:
            await service.feedback(request)
        except UnknownRequest as exc:
            raise HTTPException(404, str(exc)) from None
        except ItemNotShown as exc:
            raise HTTPException(422, str(exc)) from None
        return FeedbackAccepted()

    @app.get("/healthz", response_model=Health)
    async def healthz() -> JSONResponse:
        health = await service.health()
        return JSONResponse(health.model_dump(), status_code=200 if health.ready else 503)

    return app
