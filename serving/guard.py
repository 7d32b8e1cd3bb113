"""The request guard: what every HTTP request passes before the routes of :mod:`serving.api` see it.

A pure ASGI middleware, in this order, each step cheap and each refusal an
:class:`serving.api.ErrorResponse`:

1. request id: the client's ``X-Request-ID`` when it is a sane token (else one made up), in every
   error body and log line, and echoed in the answer;
2. API keys (:mod:`serving.auth`): ``Authorization: Bearer KEY`` with the route's scope, else 401
   (403 for a key without the scope); ``/healthz``, ``/docs`` and ``/openapi.json`` stay public.
   Without a key file every caller has every scope, but only callers on this host are answered;
3. admission: at most ``max_ongoing`` requests inside the app and ``max_queued`` waiting for a turn;
   past that an immediate 503 with ``Retry-After`` (so a saturated server sheds load in microseconds
   instead of queueing it into timeouts);
4. the per-request deadline: a request (its wait for a turn included) that has no answer after
   ``request_timeout_s`` (or the client's shorter ``X-Deadline-Seconds``) is answered 504 and its work
   is cancelled;
5. the body of ``POST`` routes: ``application/json`` (else 400), at most ``max_body_bytes`` (else 413,
   decided from Content-Length before a byte is read, or while reading a chunked body), UTF-8 and JSON
   (else 400), nested at most ``max_json_depth`` levels (else 400). Only then is it handed to FastAPI,
   which validates it against the OpenAPI schema (422).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import json
import math
import re
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from serving.api import REQUEST_STATE, ApiError, error_bytes, log
from serving.auth import SCOPES, KeyRing

DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_MAX_JSON_DEPTH = 8
REQUEST_ID_HEADER = b"x-request-id"
DEADLINE_HEADER = b"x-deadline-seconds"
"""A client may shorten (never lengthen) the server's per-request deadline with this header."""
SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
POST_ROUTES = {"/recommend": "recommend", "/feedback": "feedback"}
"""Body-carrying routes and the scope each needs."""
PUBLIC_PATHS = frozenset({"/healthz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})

ResponseHook = Callable[[str, int, float, Mapping[str, Any]], None]
"""``hook(route, status, seconds, state)`` after each answer (metrics); ``state`` is the request's."""


class Admission:
    """At most ``max_ongoing`` holders at once and ``max_queued`` waiting; more waiting is refused."""

    def __init__(self, max_ongoing: int, max_queued: int) -> None:
        if max_ongoing < 1 or max_queued < 0:
            raise ValueError(f"max_ongoing >= 1 and max_queued >= 0 needed, got {max_ongoing}, {max_queued}")
        self.max_ongoing, self.max_queued = max_ongoing, max_queued
        self.slots = asyncio.Semaphore(max_ongoing)
        self.waiting = 0
        self.ongoing = 0

    async def acquire(self) -> None:
        """Take a slot, waiting behind at most ``max_queued`` others; :class:`ApiError` 503 otherwise."""
        if self.slots.locked() and self.waiting >= self.max_queued:
            raise ApiError(
                503,
                f"overloaded: {self.max_ongoing} requests in progress and {self.waiting} waiting; retry later",
                headers={"Retry-After": "1"},
            )
        self.waiting += 1
        try:
            await self.slots.acquire()
        finally:
            self.waiting -= 1
        self.ongoing += 1

    def release(self) -> None:
        self.ongoing -= 1
        self.slots.release()


def json_depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), counted up to ``limit + 1`` at most."""
    stack = [(value, 0)]
    deepest = 0
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = node.values()
        elif not isinstance(node, list):
            continue
        depth += 1
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth) for child in node if isinstance(child, (dict, list)))
    return deepest


class RequestGuard:
    """ASGI middleware; see the module docstring. Arguments are keyword-only (``app.add_middleware``).

    Args:
        keys: the API key ring, or None: no keys, every caller has every scope.
        max_ongoing, max_queued: admission limits for the ``POST`` routes (None: no limit).
        request_timeout_s: the per-request deadline of the ``POST`` routes (None: none).
        max_body_bytes, max_json_depth: body limits.
        echo_request_id: add ``X-Request-ID`` to answers (Ray Serve's own middleware already does).
        on_response: :data:`ResponseHook` called after every answer.
        local_only: without keys, answer only clients on this host (a replica's own HTTP port listens on
            every interface under the HAProxy ingress, whatever address the server was told to bind).
    """

    def __init__(
        self,
        app,
        *,
        request_model=None,
        keys: KeyRing | None = None,
        max_ongoing: int | None = None,
        max_queued: int = 0,
        request_timeout_s: float | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
        echo_request_id: bool = True,
        on_response: ResponseHook | None = None,
        local_only: bool = False,
    ) -> None:
        self.app = app
        self.keys = keys
        self.local_only = local_only
        self.admission = Admission(max_ongoing, max_queued) if max_ongoing else None
        self.request_timeout_s = request_timeout_s
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth
        self.echo_request_id = echo_request_id
        self.on_response = on_response

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = self._request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        REQUEST_STATE.set(state)
        path = _route_path(scope)
        outcome = {"status": 500, "sent": False}

        async def send_tracked(message) -> None:
            if message["type"] == "http.response.start":
                outcome["status"], outcome["sent"] = message["status"], True
                if self.echo_request_id:
                    message = {
                        **message,
                        "headers": [*message.get("headers", ()), (b"x-request-id", request_id.encode())],
                    }
            await send(message)

        try:
            await self._guarded(scope, receive, send_tracked, path, state)
        except ApiError as error:
            if outcome["sent"]:
                raise
            await self._refuse(send_tracked, error, request_id)
        finally:
            if self.on_response is not None:
                try:
                    self.on_response(path, outcome["status"], time.perf_counter() - started, state)
                except Exception:  # metrics must never break an answer
                    log.exception("metrics hook failed")

    async def _guarded(self, scope, receive, send, path: str, state: dict) -> None:
        needed = POST_ROUTES.get(path)
        state["scopes"] = self._authorize(scope, path, needed)
        if needed is None or scope["method"] != "POST":
            await self.app(scope, receive, send)  # FastAPI answers 404/405/health/docs
            return
        timeout = self._deadline(scope)
        try:
            async with asyncio.timeout(timeout):
                if self.admission is not None:
                    await self.admission.acquire()
                try:
                    body = await self._body(scope, receive)
                    await self.app(scope, _replay(body, receive), send)
                finally:
                    if self.admission is not None:
                        self.admission.release()
        except TimeoutError:
            raise ApiError(
                504, f"no answer within the server's deadline of {timeout:g} s; retry later"
            ) from None

    def _deadline(self, scope) -> float | None:
        """The server's deadline, or the client's ``X-Deadline-Seconds`` when that is shorter."""
        asked = _header(scope, DEADLINE_HEADER)
        try:
            client = float(asked) if asked else math.inf
        except ValueError:
            client = math.inf
        server = self.request_timeout_s if self.request_timeout_s is not None else math.inf
        deadline = min(server, client) if client > 0 else server
        return None if math.isinf(deadline) else deadline

    def _authorize(self, scope, path: str, needed: str | None) -> frozenset[str]:
        if self.keys is None:
            client = (scope.get("client") or ("", 0))[0]
            if self.local_only and not is_local_address(client):
                raise ApiError(
                    401,
                    "this server has no API keys, so it answers only clients on its own host",
                    [{"loc": ["client"], "message": "remote client without a key", "type": "unauthorized"}],
                    headers={"WWW-Authenticate": 'Bearer realm="rayrec"'},
                )
            return SCOPES
        key = self.keys.authenticate(_header(scope, b"authorization"))
        if path in PUBLIC_PATHS:
            return key.scopes if key is not None else frozenset()
        if key is None:
            raise ApiError(
                401,
                "missing or unknown API key: send `Authorization: Bearer KEY`",
                [{"loc": ["header", "authorization"], "message": "no valid API key", "type": "unauthorized"}],
                headers={"WWW-Authenticate": 'Bearer realm="rayrec"'},
            )
        if needed is not None and needed not in key.scopes:
            raise ApiError(
                403,
                f"API key {key.key_id!r} lacks the {needed!r} scope this call needs",
                [
                    {
                        "loc": ["header", "authorization"],
                        "message": f"needs scope {needed}",
                        "type": "forbidden",
                    }
                ],
                headers={
                    "WWW-Authenticate": f'Bearer realm="rayrec", error="insufficient_scope", scope="{needed}"'
                },
            )
        return key.scopes

    async def _body(self, scope, receive) -> bytes:
        media = _header(scope, b"content-type").split(";")
        charset = [p.strip().lower() for p in media[1:] if p.strip().lower().startswith("charset=")]
        if media[0].strip().lower() != "application/json" or charset not in ([], ["charset=utf-8"]):
            # 400, not a browser-friendly text/plain: a page elsewhere cannot post here without a preflight
            raise ApiError(400, "send the body as UTF-8 JSON with `Content-Type: application/json`")
        declared = _header(scope, b"content-length")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self._too_large()
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ApiError(400, "the client went away before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large()
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ApiError(400, f"the body is not UTF-8 (invalid byte at offset {exc.start})") from None
        if not text.strip():
            raise ApiError(400, "the body is empty: send a JSON object")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ApiError(
                400, f"the body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
        except RecursionError:
            value = None
            depth = self.max_json_depth + 1
        else:
            depth = json_depth(value, self.max_json_depth)
        if depth > self.max_json_depth:
            raise ApiError(400, f"the body nests deeper than {self.max_json_depth} levels")
        return body

    def _too_large(self) -> ApiError:
        return ApiError(413, f"the body is larger than {self.max_body_bytes} bytes")

    async def _refuse(self, send, error: ApiError, request_id: str) -> None:
        body = error_bytes(error.status, error.message, request_id, error.details)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in (error.headers or {}).items()]
        if error.status == 413:
            headers.append((b"connection", b"close"))  # the rest of the body is not read
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _request_id(scope) -> str:
        given = _header(scope, REQUEST_ID_HEADER)
        return given if SANE_REQUEST_ID.match(given) else uuid.uuid4().hex


@functools.cache
def local_addresses() -> frozenset[str]:
    """This host's own IP addresses (HAProxy on this node reaches the replica from one of them)."""
    addresses = {"127.0.0.1", "::1"}
    for host in {socket.gethostname(), socket.getfqdn()}:
        with contextlib.suppress(OSError):
            addresses.update(info[4][0] for info in socket.getaddrinfo(host, None))
    with contextlib.suppress(Exception):
        import ray

        if ray.is_initialized():
            addresses.add(ray.util.get_node_ip_address())
    return frozenset(addresses)


def is_local_address(host: str) -> bool:
    try:
        if ipaddress.ip_address(host).is_loopback:
            return True
    except ValueError:
        return False
    return host in local_addresses()


def _route_path(scope) -> str:
    """The path within the app (an app served under a route prefix sees it as its ``root_path``)."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


def _header(scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def _replay(body: bytes, receive):
    """A ``receive`` that hands the already-read body to the app once, then defers to the client's."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
