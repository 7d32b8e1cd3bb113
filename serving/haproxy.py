"""HAProxy's own error answers, made part of the API contract.

With the HAProxy ingress (``RAY_SERVE_ENABLE_HA_PROXY=1``) HAProxy answers by itself when no ingress
replica can take a request (none up yet, one restarting, a connection refused, a reply too slow), and
Ray 2.60 points every such answer (502, 503, 504) at one error page that says ``500 Internal Server
Error``: a client would retry a 500 as a bug, not back off. :func:`install_error_page` replaces that page
on the node it runs on with a 503 that carries ``Retry-After`` and the API's
:class:`serving.api.ErrorResponse` body. The ingress replica calls it when it starts; HAProxy reads the
page when it next loads its configuration, which Serve does as soon as the new replica joins.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from serving.api import error_body

RETRY_AFTER_S = 2
MESSAGE = "the server is starting, restarting or overloaded; retry after Retry-After seconds"


def error_page() -> bytes:
    """The raw HTTP response HAProxy sends for its own errors."""
    body = json.dumps(error_body(503, MESSAGE, request_id=""), separators=(",", ":")).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Retry-After: {RETRY_AFTER_S}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def error_page_path(node_id: str) -> Path:
    """Where Ray's HAProxy manager on ``node_id`` keeps its error page (next to its configuration)."""
    from ray.serve._private.constants import RAY_SERVE_HAPROXY_CONFIG_FILE_LOC

    return Path(os.path.dirname(RAY_SERVE_HAPROXY_CONFIG_FILE_LOC)) / node_id / "500.http"


def install_error_page(node_id: str | None = None) -> Path | None:
    """Replace HAProxy's error page on this node (atomically); None when HAProxy is not in use here."""
    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY", "0") != "1":
        return None
    if node_id is None:
        import ray

        node_id = ray.get_runtime_context().get_node_id()
    path = error_page_path(node_id)
    if not path.parent.is_dir():
        return None  # no HAProxy manager on this node
    page = error_page()
    if path.exists() and path.read_bytes() == page:
        return path
    fd, tmp = tempfile.mkstemp(prefix=".rayrec-error-page.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(page)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
