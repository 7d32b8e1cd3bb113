"""Deadlines against the live Serve app: a hung stage answers 504 within the request's deadline and the
pipeline recovers once the stage does (the load-shedding 503 is test_serving.py's overload test). A slate
whose request was answered 504 is never logged as shown (the graceful-stop test of test_serving.py
compares the log with every 200 the tests recorded)."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor

import httpx
from _serve_app import APP, replica_pids


def test_a_hung_stage_is_a_504_within_the_deadline_and_the_pipeline_recovers(live_app):
    [pid] = replica_pids(APP, "UserStep")
    body = {"user_id": "patient", "history": ["item-0003"], "k": 3}
    with httpx.Client(base_url=live_app.url, timeout=60) as http:
        healthy = http.post("/recommend", json=body)
        assert healthy.status_code == 200  # healthy first
        live_app.record(healthy.json())
        os.kill(pid, signal.SIGSTOP)  # the stage hangs, as a wedged process would
        try:
            with ThreadPoolExecutor(3) as pool:
                late = list(
                    pool.map(
                        lambda i: http.post(
                            "/recommend",
                            json={**body, "user_id": f"patient-{i}"},
                            headers={"X-Deadline-Seconds": "1.5", "X-Request-ID": f"late-{i}"},
                        ),
                        range(3),
                    )
                )
        finally:
            os.kill(pid, signal.SIGCONT)
        for i, response in enumerate(late):
            assert response.status_code == 504, response.text
            error = response.json()["error"]
            assert error["code"] == "deadline_exceeded" and error["request_id"] == f"late-{i}"
            assert "1.5 s" in error["message"]
        recovered = http.post("/recommend", json=body)
        assert recovered.status_code == 200, recovered.text
        live_app.record(recovered.json())
        # a client cannot lengthen the server's deadline, and nonsense is ignored
        for asked in ("100000", "soon", "-1"):
            answer = http.post("/recommend", json=body, headers={"X-Deadline-Seconds": asked})
            assert answer.status_code == 200, answer.text
            live_app.record(answer.json())


def test_haproxys_own_errors_answer_the_apis_503(tmp_path, monkeypatch):
    """With the HAProxy ingress, HAProxy's own answers (no ingress replica up, one unreachable or too slow)
    use the page the ingress installs: a 503 with Retry-After and the API's error body, not Ray's bare 500.
    (tests/test_serving.py's slow CLI test checks the page a real HAProxy is configured with.)"""
    import ray.serve._private.constants as serve_constants

    from serving import haproxy
    from serving.api import ErrorResponse

    monkeypatch.setattr(serve_constants, "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", str(tmp_path / "haproxy.cfg"))
    (tmp_path / "node-1").mkdir()
    ray_page = tmp_path / "node-1" / "500.http"
    ray_page.write_bytes(
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 21\r\n\r\nInternal Server Error"
    )
    monkeypatch.delenv("RAY_SERVE_ENABLE_HA_PROXY", raising=False)
    assert haproxy.install_error_page("node-1") is None  # the Python proxy: nothing to do
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "1")
    assert haproxy.install_error_page("node-1") == ray_page
    assert haproxy.install_error_page("node-2") is None  # no HAProxy manager on that node
    head, body = ray_page.read_bytes().split(b"\r\n\r\n", 1)
    status, *fields = head.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (f.split(":", 1) for f in fields)}
    assert status == "HTTP/1.1 503 Service Unavailable" and int(headers["retry-after"]) >= 1
    assert int(headers["content-length"]) == len(body) and headers["content-type"] == "application/json"
    error = ErrorResponse.model_validate_json(body).error
    assert (error.status, error.code) == (503, "unavailable")
    assert [p.name for p in (tmp_path / "node-1").iterdir()] == [
        "500.http"
    ]  # replaced atomically, no leftovers
