"""A second real Serve app for what needs another config than the shared one (tests/_serve_app.py,
``FaultApp``): API keys with scopes, an arm whose policy artifact is broken, an event log that flushes
within 0.2 s. Every answer is checked against that app's own ``/openapi.json``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from _serve_app import FAULT_APP, FAULT_PREFIX, Contract, FaultApp, replica_pids, start_fault_app

from rayrec.events import read_feedback, read_impressions, read_requests
from serving.auth import revoke_key
from serving.guard import is_local_address


@pytest.fixture(scope="module")
def fault_app(live_app, tmp_path_factory) -> FaultApp:
    from _serve_app import FAULT_APP
    from ray import serve

    app = start_fault_app(tmp_path_factory.mktemp("fault-app"), live_app.url)
    yield app
    serve.delete(FAULT_APP)


@pytest.fixture(scope="module")
def contract(fault_app) -> Contract:
    return Contract(httpx.get(f"{fault_app.url}/openapi.json", timeout=60).json(), prefix=FAULT_PREFIX)


@pytest.fixture(scope="module")
def http(fault_app, contract):
    with httpx.Client(base_url=fault_app.url, timeout=60, event_hooks={"response": [contract]}) as client:
        yield client


# ---- API keys -------------------------------------------------------------------------------------------


def test_calls_without_a_valid_key_are_401_and_scopes_are_enforced(http, fault_app):
    body = {"user_id": fault_app.user_in("control"), "history": ["item-0001"], "k": 3}
    for headers in ({}, {"Authorization": "Bearer rr_not-a-key"}, {"Authorization": "Basic dXNlcjpwYXNz"},
                    {"Authorization": f"Bearer {fault_app.keys['ops']}x"}):  # fmt: skip
        refused = http.post("/recommend", json=body, headers=headers)
        assert refused.status_code == 401, (headers, refused.text)
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert refused.json()["error"]["code"] == "unauthorized"
    refused = http.post("/feedback", json={"request_id": "0" * 32, "item_id": "i", "event": "click"})
    assert refused.status_code == 401  # before the body is even looked at
    answer = http.post("/recommend", json=body, headers=fault_app.headers("frontend"))
    assert answer.status_code == 200, answer.text
    request_id, item = answer.json()["request_id"], answer.json()["items"][0]["item_id"]
    feedback = {"request_id": request_id, "item_id": item, "event": "click"}
    no_scope = http.post("/feedback", json=feedback, headers=fault_app.headers("reader"))
    assert no_scope.status_code == 403 and "feedback" in no_scope.json()["error"]["message"]
    assert http.post("/recommend", json=body, headers=fault_app.headers("ops")).status_code == 403
    assert http.post("/feedback", json=feedback, headers=fault_app.headers("frontend")).status_code == 202
    assert "frontend" not in answer.text and fault_app.keys["frontend"] not in no_scope.text


def test_healthz_is_public_and_minimal_with_the_details_behind_admin(http, fault_app):
    public = http.get("/healthz")
    assert public.status_code == 200 and public.json() == {"ready": True}
    assert http.get("/healthz", headers=fault_app.headers("frontend")).json() == {"ready": True}
    details = http.get("/healthz", headers=fault_app.headers("ops")).json()
    assert (
        details["ready"] and details["items"] == 80 and details["arms"] == {"control": 1.0, "treatment": 1.0}
    )
    assert details["index_version"] and set(details["policy_versions"]) == {"control", "treatment"}
    assert "pending" in details["events"]
    document = http.get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert document["paths"]["/recommend"]["post"]["security"] == [{"apiKey": []}]
    assert {"401", "403"} <= set(document["paths"]["/feedback"]["post"]["responses"])


def test_a_revoked_key_is_refused_without_a_restart(http, fault_app):
    body = {"user_id": "revoked-user", "k": 2}
    assert http.post("/recommend", json=body, headers=fault_app.headers("reader")).status_code == 200
    revoke_key(str(fault_app.keys_file), "reader")
    for _ in range(120):  # the key file is re-read within seconds
        if http.post("/recommend", json=body, headers=fault_app.headers("reader")).status_code == 401:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the revoked key was still accepted after a minute")
    assert http.post("/recommend", json=body, headers=fault_app.headers("frontend")).status_code == 200


def test_the_api_key_command_prints_the_key_once_and_stores_only_its_hash(tmp_path):
    import stat
    import subprocess
    import sys

    from serving.auth import KeyRing

    keys = tmp_path / "keys.yaml"
    made = subprocess.run(
        [sys.executable, "-m", "rayrec", "api-key", "add", str(keys), "--id", "web", "--scopes", "recommend"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("rr_") and key not in keys.read_text()
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    ring = KeyRing(str(keys))
    assert ring.authenticate(f"Bearer {key}").scopes == {"recommend"}
    assert ring.authenticate(f"bearer {key}") is not None and ring.authenticate(key) is None
    again = subprocess.run(
        [sys.executable, "-m", "rayrec", "api-key", "add", str(keys), "--id", "web", "--scopes", "nap"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 2 and again.stderr.startswith("error:")


def test_an_application_without_keys_is_refused_on_a_serve_that_listens_beyond_loopback(tmp_path):
    from rayrec.errors import ConfigError
    from serving.app import check_exposure
    from serving.settings import AppConfig

    bare = AppConfig(index="i", arms=["a=retrieval"])
    for host in (None, "127.0.0.1", "localhost", "::1"):
        check_exposure(bare, host)
    with pytest.raises(ConfigError, match="api_keys"):
        check_exposure(bare, "0.0.0.0")
    check_exposure(
        AppConfig(index="i", arms=["a=retrieval"], api_keys=str(tmp_path / "keys.yaml")), "0.0.0.0"
    )


def test_only_local_clients_are_answered_without_keys():
    assert is_local_address("127.0.0.1") and is_local_address("::1")
    assert not is_local_address("203.0.113.7") and not is_local_address("not-an-ip")


# ---- arm isolation --------------------------------------------------------------------------------------


def test_a_failing_ranker_degrades_only_its_own_arm(http, fault_app):
    """The treatment arm's policy is a real artifact with NaN weights (it loads; every slate it chooses
    is invalid): its users get the retrieval-order fallback, marked and counted; control is untouched."""
    history = ["item-0001", "item-0005", "item-0009"]
    answers = {"control": [], "treatment": []}
    for arm in answers:
        for i in range(4):
            body = {"user_id": fault_app.user_in(arm, f"iso{i}"), "history": history, "k": 5}
            response = http.post("/recommend", json=body, headers=fault_app.headers("frontend"))
            assert response.status_code == 200, response.text
            answers[arm].append(response.json())
    for answer in answers["control"]:
        assert answer["arm"] == "control" and answer["policy"] == "retrieval" and not answer["fallback"]
        assert answer["policy_version"] == "baseline-retrieval"
    reference = [item["item_id"] for item in answers["control"][0]["items"]]
    for answer in answers["treatment"]:
        assert answer["arm"] == "treatment" and answer["fallback"] is True
        assert answer["policy"] == "retrieval-fallback"
        assert [item["item_id"] for item in answer["items"]] == reference  # retrieval order, same history
        assert all(item["propensity"] == 1.0 for item in answer["items"])
    assert {a["index_version"] for a in answers["control"] + answers["treatment"]} == {
        answers["control"][0]["index_version"]
    }
    counters = http.get("/healthz", headers=fault_app.headers("ops")).json()["counters"]
    assert counters.get("fallback treatment", 0) >= 4 and "fallback control" not in counters
    ids = {a["request_id"] for a in answers["treatment"]}
    rows = wait_for_rows(fault_app, lambda: read_requests(str(fault_app.events)), ids)
    assert all(r["fallback"] and r["policy"] == "retrieval-fallback" and r["key_id"] for r in rows)


def wait_for_rows(fault_app, read, request_ids: set[str], attempts: int = 120) -> list[dict]:
    """The rows of ``request_ids`` once they are all written (the fault app writes every 0.2 s)."""
    for _ in range(attempts):
        rows = [r for r in read().to_pylist() if r["request_id"] in request_ids]
        if {r["request_id"] for r in rows} == request_ids:
            return rows
        time.sleep(0.5)
    raise AssertionError(f"rows of {len(request_ids)} requests not written after {attempts} tries")


# ---- durable events -------------------------------------------------------------------------------------


def test_a_failing_write_makes_feedback_503_while_recommend_keeps_serving(http, fault_app):
    headers = fault_app.headers("frontend")
    first = http.post(
        "/recommend", json={"user_id": "disk-full-0", "history": ["item-0002"], "k": 3}, headers=headers
    )
    kinds = ["requests", "impressions", "feedback"]
    wait_for_rows(fault_app, lambda: read_impressions(str(fault_app.events)), {first.json()["request_id"]})
    for kind in kinds:  # every write now fails, as on a full or failed disk (the parts are kept aside)
        (fault_app.events / kind).rename(fault_app.events / f"{kind}.aside")
        (fault_app.events / kind).write_text("not a directory")
    try:
        answered = []
        for i in range(5):
            response = http.post(
                "/recommend",
                json={"user_id": f"disk-full-{i}", "history": ["item-0002"], "k": 3},
                headers=headers,
            )
            assert response.status_code == 200, response.text  # /recommend keeps serving
            answered.append(response.json())
        click = {
            "request_id": first.json()["request_id"],
            "item_id": first.json()["items"][0]["item_id"],
            "event": "click",
        }
        refused = http.post("/feedback", json=click, headers=headers)
        assert refused.status_code == 503, refused.text
        assert (
            "cannot write" in refused.json()["error"]["message"] and int(refused.headers["retry-after"]) >= 1
        )
        events = http.get("/healthz", headers=fault_app.headers("ops")).json()["events"]
        assert events["failing"] and events["write_failures"] >= 1 and events["pending"] >= 5
    finally:
        for kind in kinds:
            (fault_app.events / kind).unlink()
            (fault_app.events / f"{kind}.aside").rename(fault_app.events / kind)
    accepted = http.post("/feedback", json=click, headers=headers)
    assert accepted.status_code == 202 and accepted.json() == {"status": "accepted"}  # the 503 kept nothing
    assert http.post("/feedback", json=click, headers=headers).json() == {"status": "duplicate"}
    # what was answered while the disk failed was kept and written once it could be
    wait_for_rows(
        fault_app, lambda: read_impressions(str(fault_app.events)), {a["request_id"] for a in answered}
    )
    rows = [
        r for r in read_feedback(str(fault_app.events)).to_pylist() if r["request_id"] == click["request_id"]
    ]
    assert len(rows) == 1 and rows[0]["arm"] == first.json()["arm"] and rows[0]["key_id"]


def test_sigkill_of_the_event_logger_loses_no_acknowledged_feedback(http, fault_app):
    """Feedback flows from 6 clients; the event logger's process is SIGKILLed mid-way. Every feedback that
    was answered 202 is on disk afterwards, and, resent to the restarted logger, is a known duplicate."""
    headers = fault_app.headers("frontend")
    slates = []
    for i in range(30):
        response = http.post(
            "/recommend", json={"user_id": f"kill-{i}", "history": ["item-0003"], "k": 4}, headers=headers
        )
        assert response.status_code == 200, response.text
        slates.append(response.json())
    bodies = [
        {"request_id": s["request_id"], "item_id": item["item_id"], "event": event}
        for s in slates
        for item, event in zip(s["items"], ["click", "view", "skip", "dismiss"], strict=True)
    ]
    [pid] = replica_pids(FAULT_APP, "EventLogger")
    acknowledged, statuses, lock = [], Counter(), threading.Lock()

    def send(body: dict) -> None:
        for _ in range(40):  # a client that retries 503s and 504s
            with httpx.Client(base_url=fault_app.url, timeout=60) as client:
                response = client.post("/feedback", json=body, headers=headers)
            with lock:
                statuses[response.status_code] += 1
            if response.status_code == 202:
                with lock:
                    acknowledged.append((body["request_id"], body["item_id"], body["event"]))
                return
            assert response.status_code in (503, 504), response.text
            time.sleep(0.5)

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(send, body) for body in bodies]
        while sum(f.done() for f in futures) < len(bodies) // 4:
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)  # mid-load, as the OOM killer would
        with lock:
            before_kill = len(acknowledged)
        for future in futures:
            future.result()
    assert replica_pids(FAULT_APP, "EventLogger") != [pid], "Serve restarted the event logger"
    assert 0 < before_kill < len(bodies), "the kill came in the middle of the load"
    on_disk = Counter(
        zip(
            *(
                read_feedback(str(fault_app.events)).column(c).to_pylist()
                for c in ("request_id", "item_id", "event")
            ),
            strict=True,
        )
    )
    missing = [ack for ack in acknowledged if on_disk[ack] == 0]
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged feedback rows lost: {statuses}"
    assert len(acknowledged) == len(bodies) and all(on_disk[ack] == 1 for ack in acknowledged)
    for body in bodies[:8]:  # the restarted logger rebuilt what it had answered and written
        again = http.post("/feedback", json=body, headers=headers)
        assert again.status_code == 202 and again.json() == {"status": "duplicate"}, again.text


# ---- observability --------------------------------------------------------------------------------------


def test_per_arm_metrics_reach_prometheus_and_logs_are_json_with_the_request_id(http, fault_app):
    import json
    import re
    from pathlib import Path

    import ray

    headers = fault_app.headers("frontend")
    treatment = {"user_id": fault_app.user_in("treatment", "observed"), "history": ["item-0004"], "k": 2}
    answer = http.post("/recommend", json=treatment, headers={**headers, "X-Request-ID": "trace-fallback-7"})
    assert (
        answer.status_code == 200
        and answer.json()["fallback"]
        and answer.headers["x-request-id"] == "trace-fallback-7"
    )
    control = {"user_id": fault_app.user_in("control", "observed"), "history": ["item-0004"], "k": 2}
    assert http.post("/recommend", json=control, headers=headers).status_code == 200
    assert http.post("/recommend", json={"user_id": "u", "k": 0}, headers=headers).status_code == 422
    shown = answer.json()["items"][0]["item_id"]
    click = {"request_id": answer.json()["request_id"], "item_id": shown, "event": "click"}
    assert http.post("/feedback", json=click, headers=headers).status_code == 202

    node = ray._private.worker.global_worker.node
    wanted = {
        "requests 2xx control": r'rayrec_requests_total\{[^}]*application="rayrec-faults"[^}]*arm="control"[^}]*code="2xx"',
        "requests 4xx": r'rayrec_requests_total\{[^}]*application="rayrec-faults"[^}]*code="4xx"',
        "fallbacks treatment": r'rayrec_fallbacks_total\{[^}]*arm="treatment"',
        "latency": r'rayrec_request_latency_ms_bucket\{[^}]*arm="control"',
        "impressions": r'rayrec_impressions_total\{[^}]*arm="control"',
        "feedback": r'rayrec_feedback_total\{[^}]*event="click"',
        "backlog": r"rayrec_event_backlog_rows\{",
    }
    missing = set(wanted)
    for _ in range(60):  # Ray exports replica metrics every few seconds
        text = httpx.get(f"http://127.0.0.1:{node.metrics_export_port}/metrics", timeout=30).text
        missing = {name for name, pattern in wanted.items() if not re.search(pattern, text)}
        if not missing:
            break
        time.sleep(1)
    exported = sorted({m.group(0) for m in re.finditer(r"\w*rayrec_\w+", text)})
    assert not missing, f"metrics not exported: {sorted(missing)}; exported: {exported}"

    logs = Path(node.get_logs_dir_path()) / "serve"
    lines = []
    for _ in range(30):
        lines = [
            json.loads(line)
            for path in logs.glob(f"replica_{FAULT_APP}_Recommender_*.log")
            for line in path.read_text().splitlines()
            if line.startswith("{") and "trace-fallback-7" in line
        ]
        if lines:
            break
        time.sleep(1)
    assert any(
        line.get("request_id") == "trace-fallback-7" and "ranker of arm treatment failed" in line["message"]
        for line in lines
    ), lines
