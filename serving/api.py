"""The HTTP API (README.md, "HTTP API"): the exact contract, and the FastAPI app around a recommender service.

:func:`make_api` takes any object with the :class:`RecommenderService` methods, so the Serve ingress and
the plain-uvicorn peer in ``benchmarks/serve.py`` answer through the very same routes, limits and
validation. The contract is the OpenAPI document the app serves (``/openapi.json``), generated from the
models below and built for the running configuration: every limit the server enforces (lengths, ranges,
the id formats, the longest history, whether ``query`` is accepted, the per-event feedback values) is
stated there, and so is every status each operation can answer. Every error, whoever raises it (the
request guard of :mod:`serving.guard`, validation, the routes, an unexpected exception), has one body
shape, :class:`ErrorResponse`; an error message quotes at most :data:`QUOTE_CHARS` characters of what the
client sent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from itertools import islice
from typing import Annotated, Any, Literal, Protocol, Union

from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from rayrec.events import FEEDBACK_EVENTS, FEEDBACK_VALUE_RANGES

MAX_ID_CHARS = 256
MAX_QUERY_CHARS = 1000
MAX_K = 100
MAX_SESSION_STEP = 10_000
DEFAULT_MAX_HISTORY = 500
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"
"""User and item ids: 1 to :data:`MAX_ID_CHARS` characters, none of them a control character."""
REQUEST_ID_PATTERN = r"^[0-9a-f]{32}$"
"""The ``request_id`` of an answer (and of the feedback about it): 32 lowercase hex digits."""
QUOTE_CHARS = 40
"""The most characters of client input an error message quotes."""
MAX_ERROR_DETAILS = 20
MAX_MESSAGE_CHARS = 300

ERROR_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    422: "invalid_request",
    500: "internal_error",
    503: "unavailable",
    504: "deadline_exceeded",
}
"""Every status the API answers with an error, and the ``code`` its body carries."""

log = logging.getLogger("ray.serve")
REQUEST_STATE: ContextVar[dict[str, Any] | None] = ContextVar("rayrec_request_state", default=None)
"""The state of the request being answered (its id, scopes; the service adds its arm), set by the guard."""


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """``repr`` of at most ``limit`` characters of ``value`` (an ellipsis marks a cut)."""
    text = str(value)
    return repr(text if len(text) <= limit else text[:limit] + "…")


# ---- errors ---------------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    """One problem with the request (validation errors list one per field)."""

    loc: list[str | int] = Field(description='Where: e.g. ["body", "k"] or ["header", "authorization"].')
    message: str = Field(max_length=MAX_MESSAGE_CHARS)
    type: str = Field(description="A stable machine-readable kind, e.g. greater_than_equal, missing.")


class ErrorInfo(BaseModel):
    status: int = Field(description="The HTTP status, repeated.")
    code: Literal[tuple(ERROR_CODES.values())]  # type: ignore[valid-type]
    message: str = Field(max_length=MAX_MESSAGE_CHARS, description="What went wrong, for people.")
    request_id: str = Field(description="The X-Request-ID of this call (the client's, or one made up).")
    details: list[ErrorDetail] = Field(default_factory=list, max_length=MAX_ERROR_DETAILS)


class ErrorResponse(BaseModel):
    """The body of every error answer (4xx and 5xx), whatever raised it."""

    error: ErrorInfo


class ApiError(Exception):
    """An error answer: status, message (already safe to show) and optional details and headers."""

    def __init__(
        self,
        status: int,
        message: str,
        details: Sequence[Mapping[str, Any]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.details, self.headers = status, message, list(details), headers


class Overloaded(ApiError):
    """The server is saturated (or a part it needs is restarting): a fast 503, retry later."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(503, message, headers={"Retry-After": str(retry_after_s)})


class DeadlineExceeded(ApiError):
    """The request did not finish within the server's per-request deadline: 504."""

    def __init__(self, deadline_s: float) -> None:
        super().__init__(504, f"no answer within the server's deadline of {deadline_s:g} s; retry later")


class UnknownRequest(ApiError):
    """Feedback names a request id this server did not answer (or no longer remembers)."""

    def __init__(self, request_id: str) -> None:
        super().__init__(
            404,
            f"unknown request_id {quote(request_id)}: not answered by this server, or older than the "
            "requests it remembers",
            [{"loc": ["body", "request_id"], "message": "unknown request_id", "type": "unknown_request"}],
        )


class ItemNotShown(ApiError):
    """Feedback names an item that was not in the request's slate."""

    def __init__(self, request_id: str, item_id: str) -> None:
        super().__init__(
            422,
            f"item {quote(item_id)} was not shown in request {quote(request_id)}",
            [
                {
                    "loc": ["body", "item_id"],
                    "message": "item was not shown in this request",
                    "type": "not_shown",
                }
            ],
        )


def error_body(
    status: int, message: str, request_id: str, details: Iterable[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """The :class:`ErrorResponse` of an error, as a dict (messages and locations clipped to size)."""
    clipped = [
        {
            "loc": [part if isinstance(part, int) else str(part)[:64] for part in detail.get("loc", ())],
            "message": str(detail.get("message", ""))[:MAX_MESSAGE_CHARS],
            "type": str(detail.get("type", "error"))[:64],
        }
        for detail in islice(details, MAX_ERROR_DETAILS)
    ]
    return {
        "error": {
            "status": status,
            "code": ERROR_CODES.get(status, "internal_error"),
            "message": message[:MAX_MESSAGE_CHARS],
            "request_id": request_id,
            "details": clipped,
        }
    }


def error_bytes(
    status: int, message: str, request_id: str, details: Iterable[Mapping[str, Any]] = ()
) -> bytes:
    return json.dumps(error_body(status, message, request_id, details), separators=(",", ":")).encode()


def request_id_of(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "")


def error_response(request: Request, error: ApiError) -> JSONResponse:
    return JSONResponse(
        error_body(error.status, error.message, request_id_of(request), error.details),
        status_code=error.status,
        headers=dict(error.headers or {}),
    )


def validation_details(errors: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic's errors as :class:`ErrorDetail` dicts; a long input a message repeats is cut to a prefix."""
    details = []
    for error in errors:
        message = str(error.get("msg", ""))
        echoed = [error.get("input"), dict(error.get("ctx") or {}).get("tag")]  # what the client sent
        for value in echoed:
            if isinstance(value, str) and len(value) > QUOTE_CHARS and value in message:
                message = message.replace(value, quote(value)[1:-1])
        details.append({"loc": list(error.get("loc", ())), "message": message, "type": error.get("type", "")})
    return details


def summary(details: Sequence[Mapping[str, Any]]) -> str:
    if not details:
        return "invalid request"
    first = details[0]
    where = ".".join(str(p) for p in first["loc"][1:] if p not in ("body",)) or "body"
    more = f" (and {len(details) - 1} more problems)" if len(details) > 1 else ""
    return f"{where[:64]}: {first['message']}"[: MAX_MESSAGE_CHARS - len(more)] + more


# ---- requests and answers -------------------------------------------------------------------------------

ItemId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN)]


class LastClick(BaseModel):
    """The session feedback of a ``/recommend`` request: what the user last clicked, and how much of it."""

    model_config = ConfigDict(extra="forbid")

    item_id: ItemId = Field(description="The item the user last clicked (in this session or an earlier one).")
    engagement: float = Field(
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="The fraction of that item the user consumed (a completion rate: watched / length).",
    )


class RecommendRequest(BaseModel):
    """``POST /recommend`` body (:func:`recommend_request_model` narrows it to a server's limits)."""

    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(
        min_length=1,
        max_length=MAX_ID_CHARS,
        pattern=ID_PATTERN,
        description="The caller's user id (raw; the server keeps only a keyed pseudonym of it).",
    )
    history: list[ItemId] = Field(
        default_factory=list,
        max_length=DEFAULT_MAX_HISTORY,
        description="Item ids the user engaged with, oldest first; unknown ids are ignored and counted.",
    )
    query: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_QUERY_CHARS,
        description="Free text, embedded by the encoder.",
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
    explain: bool = Field(
        default=False,
        strict=True,
        description="Also say why each item was recommended (each item's `explanation`); off by default, "
        "and free when off.",
    )
    last_click: LastClick | None = Field(
        default=None,
        description=(
            "The user's last click and its completion rate; a client that tracks them sends them so a policy "
            "trained on session feedback (observe_feedback, observe_last_click, observe_lift) sees it, and the "
            "event log keeps the completion rate, from which `rayrec build-index --item-log` measures each "
            "item's lift. Absent: the user has not clicked yet."
        ),
    )


def recommend_request_model(max_history: int, supports_query: bool) -> type[RecommendRequest]:
    """The ``/recommend`` body model of a server: its longest history, and ``query`` only with an encoder."""
    history_field = Field(
        default_factory=list,
        max_length=max_history,
        description="Item ids the user engaged with, oldest first (send the most recent ones); unknown "
        "ids are ignored and counted.",
    )
    if supports_query:
        return create_model(
            "RecommendRequest", __base__=RecommendRequest, history=(list[ItemId], history_field)
        )

    def no_query(cls, value):
        if value is not None:
            raise ValueError("this server has no query encoder: leave out 'query'")
        return value

    return create_model(
        "RecommendRequest",
        __base__=RecommendRequest,
        __validators__={"no_query": field_validator("query", mode="before")(no_query)},
        history=(list[ItemId], history_field),
        query=(None, Field(default=None, description="Not accepted: this server has no query encoder.")),
    )


class HistoryCredit(BaseModel):
    """A history item that drove a recommendation (attribution in the encoder space, rayrec.explain)."""

    item_id: str
    drop: float = Field(
        description="Exactly how much the item's retrieval score falls when this item is taken out of the "
        "history (the profile rebuilt without it)."
    )
    share: float = Field(
        description="This item's additive term of the retrieval score (profile · item): the terms of every "
        "history item and the query sum to the score."
    )


class RankerCredit(BaseModel):
    """The ranker's score of the item split over its input features: score = base + sum(features)."""

    method: Literal["linear", "shapley", "none", "fallback"] = Field(
        description="linear: the exact terms of a linear scorer; shapley: exact Shapley values over all "
        "coalitions of features (a feature left out takes its mean over the request's candidates); none: "
        "a random ranker; fallback: a fallback slate, whose score is one feature."
    )
    base: float = Field(description="The score with no feature credited (intercept, or all at the mean).")
    features: dict[str, float]


class Explanation(BaseModel):
    """Why an item was recommended (only when the request asked with ``explain``)."""

    retrieval_score: float | None = Field(
        default=None, description="profile · item; absent for a cold-start answer (no profile)."
    )
    history: list[HistoryCredit] = Field(
        description="The history items whose removal lowers this item's retrieval score most, most first "
        "(at most 3)."
    )
    query: float | None = Field(default=None, description="The query's additive term, when one was sent.")
    ranker: RankerCredit


class RecommendedItem(BaseModel):
    """One slate item; ``propensity`` is what clients that keep their own log (``rayrec ab --url``) record."""

    item_id: str
    score: float
    propensity: float = Field(
        description="Probability that the arm's policy shows this item at this position (1.0 if deterministic)."
    )
    explanation: Explanation | None = Field(
        default=None, description="Present only when the request asked for it (`explain: true`)."
    )


class RecommendResponse(BaseModel):
    """``POST /recommend`` answer."""

    request_id: str = Field(pattern=REQUEST_ID_PATTERN, description="Name it in /feedback.")
    arm: str
    items: list[RecommendedItem]
    policy: str = Field(
        description="The policy that chose the slate: the arm's, the cold-start fallback "
        "(popular-diverse) or, when the arm's ranker failed, the retrieval-order fallback."
    )
    unknown_history: int = Field(description="History item ids that are not in the catalog (ignored).")
    cold_start: bool = Field(description="True when nothing known about the user: popular, diverse items.")
    fallback: bool = Field(
        default=False,
        description="True when the arm's ranker failed or timed out and the candidates were shown in "
        "retrieval order instead (counted per arm in the server's metrics).",
    )
    index_version: str = Field(default="", description="Content hash of the item index that answered.")
    policy_version: str = Field(default="", description="Content hash of the arm's policy artifact.")


def _feedback_model(event: str, low: float, high: float, required: bool) -> type[BaseModel]:
    value = Field(
        ... if required else 1.0,
        ge=low,
        le=high,
        allow_inf_nan=False,
        description=f"{'Required' if required else 'Default 1.0'}; {low:g} to {high:g}.",
    )
    return create_model(
        f"{event.capitalize()}Feedback",
        __config__=ConfigDict(extra="forbid"),
        request_id=(str, Field(pattern=REQUEST_ID_PATTERN, description="The answer's request_id.")),
        item_id=(ItemId, Field(description="An item of that answer's slate.")),
        event=(Literal[event], ...),
        value=(float, value),
    )


FEEDBACK_MODELS = {
    event: _feedback_model(event, low, high, required)
    for event, (low, high, required) in FEEDBACK_VALUE_RANGES.items()
}
FeedbackRequest = Annotated[Union[tuple(FEEDBACK_MODELS.values())], Field(discriminator="event")]  # type: ignore[valid-type]  # noqa: UP007
"""``POST /feedback`` body: one model per event, each with its own bounds on ``value``."""
assert set(FEEDBACK_MODELS) == set(FEEDBACK_EVENTS)


class FeedbackAccepted(BaseModel):
    status: Literal["accepted", "duplicate"] = Field(
        description="accepted: written; duplicate: this (request_id, item_id, event) was written before "
        "(a retry), nothing new was written."
    )


class Health(BaseModel):
    """``GET /healthz`` answer when ready. Without the admin scope only ``ready``; with it the details."""

    ready: bool
    items: int | None = None
    index: str | None = Field(default=None, description="Where the index was loaded from.")
    index_version: str | None = None
    encoder: str | None = None
    user_model: dict[str, Any] | None = Field(
        default=None,
        description="The served retrieval model (user_model): path, user_tower, history, dim, text_dim, "
        "text_encoder. Absent: profiles are the mean of the history's vectors.",
    )
    arms: dict[str, float] | None = None
    policies: dict[str, str] | None = None
    policy_versions: dict[str, str] | None = None
    events: dict[str, Any] | None = Field(
        default=None, description="Event log: pending rows, rows it could not write, the last write error."
    )
    problems: list[str] | None = None
    counters: dict[str, int] | None = Field(
        default=None,
        description="This ingress replica's counts: fallbacks per arm, unlogged rows, 503s, 504s.",
    )


class NotReady(ApiError):
    """``/healthz`` when a part is not answering: 503 (the admin scope sees which, in ``details``)."""

    def __init__(self, problems: Sequence[str], admin: bool) -> None:
        details = [
            {"loc": ["service", p.split(":")[0]], "message": p, "type": "unavailable"} for p in problems
        ]
        super().__init__(503, "not ready", details if admin else [], headers={"Retry-After": "5"})


class RecommenderService(Protocol):
    """What the routes call; raises :class:`ApiError` subclasses (:class:`Overloaded`, ...)."""

    max_history: int
    supports_query: bool

    async def recommend(self, request: RecommendRequest) -> RecommendResponse: ...

    async def feedback(self, request: BaseModel) -> str: ...

    async def health(self, admin: bool) -> Health: ...


# ---- the app --------------------------------------------------------------------------------------------


def _documented(statuses: Iterable[int]) -> dict[int | str, dict[str, Any]]:
    texts = {
        400: "The body is not UTF-8 JSON sent as application/json, or nests deeper than the server accepts.",
        401: "No valid API key (`Authorization: Bearer KEY`); only when the server has API keys.",
        403: "The API key lacks the scope this call needs.",
        404: "Unknown request_id (feedback), or no such path.",
        413: "The body is larger than the server accepts.",
        422: "The body does not satisfy this schema, or names an item the request did not show.",
        500: "An unexpected server error (its details are in the server's log, under the request id).",
        503: "Overloaded, or a part the call needs is unavailable: retry after the Retry-After seconds.",
        504: "No answer within the server's per-request deadline.",
    }
    return {s: {"model": ErrorResponse, "description": texts[s]} for s in statuses}


def make_api(
    service: RecommenderService,
    *,
    auth_enabled: bool = False,
    echo_request_id: bool = True,
    guard_options: Mapping[str, Any] | None = None,
) -> FastAPI:
    """The FastAPI app serving ``service`` (also ``/docs`` and ``/openapi.json``), behind the request guard
    (:class:`serving.guard.RequestGuard`: request ids, API keys, admission, body limits, deadline).

    Args:
        auth_enabled: the guard checks API keys (documented in the OpenAPI security scheme).
        echo_request_id: add ``X-Request-ID`` to every answer (Ray Serve's own middleware already does).
        guard_options: keyword arguments of :class:`serving.guard.RequestGuard` (limits, key ring, ...).
    """
    from serving.guard import (
        DEFAULT_MAX_BODY_BYTES,
        DEFAULT_MAX_JSON_DEPTH,
        RequestGuard,
    )  # imports this module

    request_model = recommend_request_model(service.max_history, service.supports_query)
    app = FastAPI(
        title="rayrec",
        version="2",
        description=(
            "Slate recommendations from a reinforcement-learning ranker, with A/B arms and an event log. "
            "Every error answers an ErrorResponse body; 503 answers carry Retry-After."
        ),
    )
    common = [400, 413, 422, 500, 503, 504] + ([401, 403] if auth_enabled else [])

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = validation_details(exc.errors())
        return error_response(request, ApiError(422, summary(details), details))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: "no such path", 405: "method not allowed"}.get(exc.status_code, "request refused")
        return error_response(request, ApiError(exc.status_code, message, headers=exc.headers))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error(
            "unexpected error answering %s (request id %s): %s",
            request.url.path,
            request_id_of(request),
            type(exc).__name__,
            exc_info=exc,
        )
        return error_response(
            request, ApiError(500, "internal error; see the server log for this request id")
        )

    async def recommend(request) -> RecommendResponse:
        return await service.recommend(request)

    # the body model is this server's (its limits), so the annotation is set here, not in the signature
    recommend.__annotations__["request"] = Annotated[request_model, Body()]
    app.post(
        "/recommend",
        response_model=RecommendResponse,
        response_model_exclude_none=True,  # an item's explanation only when asked for
        responses=_documented(common),
    )(recommend)

    @app.post(
        "/feedback",
        status_code=202,
        response_model=FeedbackAccepted,
        responses=_documented(sorted([*common, 404])),
    )
    async def feedback(request: Annotated[FeedbackRequest, Body()]) -> FeedbackAccepted:
        return FeedbackAccepted(status=await service.feedback(request))

    @app.get(
        "/healthz",
        response_model=Health,
        response_model_exclude_none=True,
        responses=_documented([500, 503]),
        description="200 when every part answers. Public: only `ready`. With the admin scope (or a "
        "server without API keys): items, versions, arms, policies and the event log's state.",
    )
    async def healthz(request: Request) -> Response:
        admin = "admin" in request.scope.get("state", {}).get("scopes", ())
        health = await service.health(admin)
        return JSONResponse(health.model_dump(exclude_none=True))

    options = dict(guard_options or {})
    limits = {
        "max_body_bytes": options.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES),
        "max_json_depth": options.get("max_json_depth", DEFAULT_MAX_JSON_DEPTH),
        "request_timeout_s": options.get("request_timeout_s"),
        "max_ongoing_requests": options.get("max_ongoing"),
        "max_queued_requests": options.get("max_queued") if options.get("max_ongoing") else None,
    }
    _finish_openapi(app, limits, auth_enabled, public={"/healthz", "/docs", "/openapi.json"})
    app.add_middleware(RequestGuard, echo_request_id=echo_request_id, **options)
    return app


def _finish_openapi(app: FastAPI, limits: Mapping[str, Any], auth_enabled: bool, public: set[str]) -> None:
    """State the guard's limits in the OpenAPI document (``info.x-limits`` and the request bodies), and with
    API keys the bearer scheme: every operation but ``public`` requires a key."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        schema["info"]["x-limits"] = {k: v for k, v in limits.items() if v is not None}
        body_rule = (
            f"UTF-8 JSON sent as application/json, at most {limits['max_body_bytes']} bytes, nested at "
            f"most {limits['max_json_depth']} levels (else 413 or 400)."
        )
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                if "requestBody" in operation:
                    operation["requestBody"]["description"] = body_rule
                    operation["requestBody"]["x-max-bytes"] = limits["max_body_bytes"]
                    operation["requestBody"]["x-max-depth"] = limits["max_json_depth"]
        if limits.get("request_timeout_s"):
            schema["info"]["description"] += (
                f" Each call is answered within {limits['request_timeout_s']:g} s (else 504)."
            )
        if not auth_enabled:
            app.openapi_schema = schema
            return schema
        schema.setdefault("components", {}).setdefault("securitySchemes", {})["apiKey"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key of the server's key file (`rayrec serve --api-keys FILE`); scopes: "
            "recommend (POST /recommend), feedback (POST /feedback), admin (health details).",
        }
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                operation["security"] = [{}, {"apiKey": []}] if path in public else [{"apiKey": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
