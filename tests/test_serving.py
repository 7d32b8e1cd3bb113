"""The served recommender over real HTTP: a real Ray Serve app on 127.0.0.1 built from a tiny real index.

The app is the session's shared ``live_app`` (tests/_serve_app.py): every acknowledged impression and
feedback is recorded there and compared with the Parquet event log after its graceful stop.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from _ports import free_port
from _serve_app import N_ITEMS, NUM_CANDIDATES, POLICIES, WEIGHTS, build_test_index

from rayrec.assignment import assign_arm
from rayrec.errors import ArtifactError, ConfigError
from rayrec.events import read_feedback, read_impressions, read_requests
from rayrec.features import NUM_FEATURES, budget_feature, profile_vector
from rayrec.index.item_index import ItemIndex
from rayrec.privacy import key_id
from serving.api import RecommendRequest
from serving.pipeline import BASELINE_BUDGET, index_version
from serving.settings import AppConfig, Arm, app_config_from_args, parse_arm

REPO = Path(__file__).resolve().parent.parent
RAYREC = [sys.executable, "-m", "rayrec"]


@pytest.mark.parametrize(
    ("spec", "arm"),
    [
        ("a=retrieval", Arm("a", "retrieval", 1.0)),
        ("b=greedy:0.25", Arm("b", "greedy", 0.25)),
        ("c=s3://bucket/policy", Arm("c", "s3://bucket/policy", 1.0)),
        ("d=s3://bucket/policy:2", Arm("d", "s3://bucket/policy", 2.0)),
    ],
)
def test_parse_arm(spec, arm):
    assert parse_arm(spec) == arm


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"arms": "a=retrieval"}, "'index' is required"),
        ({"index": "i", "arms": "a=retrieval,a=greedy"}, "distinct"),
        ({"index": "i", "arms": "a=retrieval:0"}, "positive"),
        ({"index": "i", "arms": "bad name=retrieval"}, "name must match"),
        ({"index": "i", "arms": "noequals"}, "NAME=POLICY"),
        ({"index": "i", "arms": "a=retrieval", "num_candidates": "many"}, "expected int"),
        ({"index": "i", "arms": "a=retrieval", "max_history": "0"}, ">= 1"),
        ({"index": "i", "arms": "a=retrieval", "colour": "blue"}, "unknown serving args"),
    ],
)
def test_bad_app_args_are_config_errors(args, message):
    with pytest.raises(ConfigError, match=message):
        app_config_from_args(args)


def test_config_yaml_is_a_valid_serve_config_for_this_app():
    from ray.serve.schema import ServeDeploySchema

    from serving.app import build_app_from_config

    schema = ServeDeploySchema.model_validate(yaml.safe_load((REPO / "serving" / "config.yaml").read_text()))
    (app,) = schema.applications
    config = app_config_from_args(app.args)
    assert config.encoder == "index" and [a.name for a in config.parsed_arms()] == ["control", "treatment"]
    expected = {"UserStep", "Retriever", *(f"Ranker-{a.name}" for a in config.parsed_arms())}
    assert {d.name for d in app.deployments} == expected
    assert config.to_args()["arms"] == config.arms
    with pytest.raises(ArtifactError, match="not an index directory"):
        build_app_from_config(config)  # /srv/rayrec does not exist here: a clear error, not a traceback


@pytest.fixture(scope="module")
def client(live_app):
    with httpx.Client(base_url=live_app.url, timeout=60) as http:
        yield http


def recommend(client, app, **body) -> httpx.Response:
    response = client.post("/recommend", json=body)
    if response.status_code == 200:
        app.record(response.json())
    return response


@pytest.mark.parametrize("arm", list(POLICIES))
def test_recommend_contract(client, live_app, arm):
    history = ["item-0000", "item-0004", "item-0008", "not-an-item", "also-unknown"]
    response = recommend(client, live_app, user_id=live_app.user_in(arm, "alice"), history=history, k=7)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) >= {"request_id", "arm", "items", "policy", "unknown_history", "cold_start"}
    assert answer["arm"] == arm and answer["policy"] == POLICIES[arm]
    assert answer["unknown_history"] == 2
    assert answer["cold_start"] is False
    ids = [item["item_id"] for item in answer["items"]]
    assert len(ids) == 7 and len(set(ids)) == 7
    assert not set(ids) & set(history), "seen items must not be recommended again"
    assert all(isinstance(item["score"], float) for item in answer["items"])
    propensities = [item["propensity"] for item in answer["items"]]
    if arm == "explore":  # a uniformly random slate puts any candidate at any position with 1 / K
        assert propensities == pytest.approx([1 / NUM_CANDIDATES] * 7)
    else:
        assert propensities == [1.0] * 7
    # the same pipeline by hand: profile = normalised mean of the known history, exact inner-product search
    index = ItemIndex.load(str(live_app.index))
    known = index.lookup(history[:3])
    scores = index.embeddings @ profile_vector(index.embeddings[known])  # [N]
    scores[known] = -np.inf
    top = [str(i) for i in index.item_ids[np.argsort(-scores, kind="stable")]]
    if answer["policy"] == "retrieval":
        assert ids == top[:7]
    else:
        assert set(ids) <= set(top[:NUM_CANDIDATES]), "a ranker picks among the K retrieved candidates"
    if arm != "explore":
        assert sum(int(i.split("-")[1]) % 4 == 0 for i in ids) >= 5, "a topic-0 history retrieves topic 0"


def test_query_is_embedded_by_the_encoder(client, live_app):
    response = recommend(client, live_app, user_id="bob", history=[], query="pasta garlic sauce recipe", k=5)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["cold_start"] is False
    assert len(answer["items"]) == 5


def test_cold_start_gets_popular_diverse_fallback(client, live_app):
    answer = recommend(client, live_app, user_id="carol", history=["nope-1", "nope-2"], k=10).json()
    assert answer["cold_start"] is True and answer["unknown_history"] == 2
    assert answer["policy"] == "popular-diverse"
    assert [item["propensity"] for item in answer["items"]] == [1.0] * 10
    ids = [item["item_id"] for item in answer["items"]]
    assert len(set(ids)) == 10
    topics = Counter(int(i.split("-")[1]) % 4 for i in ids)
    assert len(topics) >= 3, f"fallback should span topics, got {topics}"
    again = recommend(client, live_app, user_id="dave", k=10).json()
    assert [item["item_id"] for item in again["items"]] == ids


def test_health_docs_and_openapi(client):
    health = client.get("/healthz")
    assert health.status_code == 200, health.text
    body = health.json()
    assert body["ready"] is True and body["items"] == N_ITEMS
    assert body["arms"] == dict(WEIGHTS)
    assert body["policies"] == POLICIES
    assert body["encoder"]
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/recommend", "/feedback", "/healthz"} <= set(paths)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"user_id": "u", "k": 0}, "greater than or equal to 1"),
        ({"user_id": "u", "k": 101}, "less than or equal to 100"),
        ({"user_id": "u", "k": "ten"}, "valid integer"),
        ({"history": []}, "user_id"),
        ({"user_id": ""}, "at least 1 character"),
        ({"user_id": "u" * 300}, "at most 256 characters"),
        ({"user_id": "u", "history": [f"item-{i:04d}" for i in range(51)]}, "at most 50 items"),
        ({"user_id": "u", "history": ["item-0001", ""]}, "at least 1 character"),
        ({"user_id": "u", "history": ["item\n0001"]}, "should match pattern"),
        ({"user_id": "u", "history": "item-0001"}, "valid list"),
        ({"user_id": "u", "query": "x" * 1001}, "at most 1000 characters"),
        ({"user_id": "u", "colour": "blue"}, "Extra inputs are not permitted"),
        ({"user_id": "u", "session_step": -1}, "greater than or equal to 0"),
        ({"user_id": "u", "session_step": 10_001}, "less than or equal to 10000"),
        (
            {"user_id": "u", "last_click": {"item_id": "item-0001", "engagement": 1.5}},
            "less than or equal to 1",
        ),
        (
            {"user_id": "u", "last_click": {"item_id": "item-0001", "engagement": -0.1}},
            "greater than or equal",
        ),
        ({"user_id": "u", "last_click": {"item_id": "item-0001"}}, "engagement"),
        ({"user_id": "u", "last_click": {"item_id": "", "engagement": 0.5}}, "at least 1 character"),
        ({"user_id": "u", "last_click": {"item_id": "i", "engagement": 0.5, "x": 1}}, "Extra inputs"),
        ({"user_id": "u", "last_click": "item-0001"}, "valid dictionary"),
    ],
)
def test_bad_recommend_requests_are_4xx_with_a_message(client, body, needle):
    response = client.post("/recommend", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and isinstance(error["details"], list)
    assert needle in error["message"] or any(needle in d["message"] for d in error["details"])


def test_non_json_body_is_400(client):
    response = client.post("/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "not JSON" in response.json()["error"]["message"]


def test_feedback_ack_404_and_422(client, live_app):
    answer = recommend(client, live_app, user_id="erin", history=["item-0001"], k=3).json()
    shown = answer["items"][0]["item_id"]
    ok = client.post(
        "/feedback", json={"request_id": answer["request_id"], "item_id": shown, "event": "click"}
    )
    assert ok.status_code == 202, ok.text
    live_app.feedback.append((answer["request_id"], shown, "click"))
    skip = {
        "request_id": answer["request_id"],
        "item_id": answer["items"][1]["item_id"],
        "event": "skip",
        "value": 0,
    }
    assert client.post("/feedback", json=skip).status_code == 202
    live_app.feedback.append((skip["request_id"], skip["item_id"], "skip"))

    unknown = client.post("/feedback", json={"request_id": "f" * 32, "item_id": shown, "event": "click"})
    assert unknown.status_code == 404 and "unknown request_id" in unknown.text
    not_shown = client.post(
        "/feedback", json={"request_id": answer["request_id"], "item_id": "item-0001", "event": "click"}
    )
    assert not_shown.status_code == 422 and "was not shown" in not_shown.text
    bad_event = client.post(
        "/feedback", json={"request_id": answer["request_id"], "item_id": shown, "event": "hug"}
    )
    assert bad_event.status_code == 422 and "click" in bad_event.text
    missing = client.post("/feedback", json={"item_id": shown, "event": "click"})
    assert missing.status_code == 422 and "request_id" in missing.text


@pytest.mark.parametrize("arm", ["control", "treatment"])
def test_session_step_reaches_the_ranker_and_its_requests_row(client, live_app, arm):
    """``session_step`` and the session feedback (``last_click``) go through every stage to the arm's ranker;
    the requests table records the budget feature and the ``last_engagement`` it saw (checked after the
    graceful stop). The baselines here score without them: same slate."""
    user, history = live_app.user_in(arm, "steps"), ["item-0001", "item-0005"]
    answers = {}
    for step in (0, 3):
        feedback = {"last_click": {"item_id": "item-0005", "engagement": 0.625}} if step else {}
        response = recommend(
            client, live_app, user_id=user, history=history, k=4, session_step=step, **feedback
        )
        assert response.status_code == 200, response.text
        answers[step] = response.json()
        live_app.budgets[answers[step]["request_id"]] = float(budget_feature([step], BASELINE_BUDGET)[0, 0])
        live_app.engagements[answers[step]["request_id"]] = 0.625 if step else 0.0
    assert answers[0]["arm"] == answers[3]["arm"] == arm
    assert [i["item_id"] for i in answers[0]["items"]] == [i["item_id"] for i in answers[3]["items"]]
    cold = recommend(client, live_app, user_id=user, history=[], k=2, session_step=1)
    assert cold.status_code == 200 and cold.json()["cold_start"] is True
    live_app.budgets[cold.json()["request_id"]] = float(budget_feature([1], BASELINE_BUDGET)[0, 0])


def test_ab_assignment_is_stable_and_near_its_weights(client, live_app):
    users = [f"user-{i}" for i in range(60)]
    arms = {}
    for user in users:
        response = recommend(client, live_app, user_id=user, history=["item-0002"], k=2)
        assert response.status_code == 200, response.text
        arms[user] = response.json()["arm"]
        # the arm is the shared assignment function of the raw id and the salt: not of the pseudonym,
        # so that rotating the pseudonymization key or moving the events leaves users in their arms
        assert arms[user] == assign_arm(user, WEIGHTS)
    assert set(arms.values()) == {arm for arm, _ in WEIGHTS}
    for user in users[:20]:
        assert recommend(client, live_app, user_id=user, history=[], k=1).json()["arm"] == arms[user]
    # the server answers with the function's arm (above), so the function's shares are the server's: checked
    # on many ids without a request each (the first version sent 340 requests, 27 s on 2 cores)
    shares = Counter(assign_arm(f"user-{i}", WEIGHTS) for i in range(20_000))
    for arm, weight in WEIGHTS:
        expected = weight / sum(w for _, w in WEIGHTS)
        share = shares[arm] / 20_000
        assert abs(share - expected) < 0.015, f"{arm} share {share:.3f}, expected {expected:.3f}"


def test_overload_is_a_fast_503_not_a_hang(live_app):
    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=live_app.url, timeout=60) as http:
            body = {"user_id": "crowd", "history": ["item-0003"], "k": 5}
            responses = await asyncio.gather(*(http.post("/recommend", json=body) for _ in range(80)))
        for response in responses:
            if response.status_code == 200:
                live_app.record(response.json())
        return responses

    responses = asyncio.run(burst())
    codes = Counter(r.status_code for r in responses)
    assert set(codes) <= {200, 503}, codes
    assert codes[503] > 0, f"max_ongoing_requests=4, max_queued_requests=2 and 80 at once: {codes}"
    assert codes[200] > 0, codes
    for shed in (r for r in responses if r.status_code == 503):
        assert int(shed.headers["retry-after"]) >= 1
        error = shed.json()["error"]
        assert error["code"] == "unavailable" and "overloaded" in error["message"]


def test_graceful_stop_writes_every_acknowledged_event(stopped_live_app):
    """Runs after every live test: deleting the app stops the logger replica gracefully, which must write
    every request, impression and feedback it acknowledged (only the stop writes: flush_seconds=3600)."""
    app = stopped_live_app
    assert app.impressions, "earlier tests should have produced impressions"
    impressions = read_impressions(str(app.events))
    logged: dict[str, list[tuple[int, str]]] = {}
    for row in impressions.to_pylist():
        logged.setdefault(row["request_id"], []).append((row["position"], row["item_id"]))
    assert {rid: [item for _, item in sorted(rows)] for rid, rows in logged.items()} == app.impressions
    raw = [u for u in impressions.column("user_id").to_pylist() if u.startswith(("alice-", "user-", "bob"))]
    assert not raw, "raw user ids must never be logged"
    # the pseudonymization key lives apart from the events, and every row names it by its public id
    assert not list(app.events.rglob("*.key"))
    assert set(impressions.column("key_id").to_pylist()) == {key_id(app.key)}
    assert set(read_requests(str(app.events)).column("key_id").to_pylist()) == {key_id(app.key)}
    assert set(impressions.column("index_version").to_pylist()) == {
        index_version(ItemIndex.load(str(app.index)))
    }
    assert set(impressions.column("arm").to_pylist()) <= set(POLICIES)
    feedback = read_feedback(str(app.events))
    assert sorted(
        zip(*(feedback.column(c).to_pylist() for c in ("request_id", "item_id", "event")), strict=True)
    ) == sorted(app.feedback)
    # One requests row per answer, with what the ranker chose from: the shown items are among its
    # candidates, the features are [K, F], and cold starts are marked as the fallback's.
    requests = read_requests(str(app.events)).to_pandas().set_index("request_id")
    assert sorted(requests.index) == sorted(app.impressions)
    for request_id, items in app.impressions.items():
        row = requests.loc[request_id]
        assert set(items) <= set(row["candidate_ids"])
        assert len(row["features"]) == len(row["candidate_ids"]) * NUM_FEATURES
        assert row["fallback"] == (row["policy"] == "popular-diverse")
        if not row["fallback"]:
            assert len(row["candidate_ids"]) == NUM_CANDIDATES and row["arm"] in POLICIES
            assert row["policy"] == POLICIES[row["arm"]]
    assert requests["fallback"].any() and not requests["fallback"].all()
    # the budget feature each ranker saw, from the request's session_step
    assert app.budgets, "test_session_step_reaches_the_ranker_and_its_requests_row should have run"
    for request_id, budget in app.budgets.items():
        assert requests.loc[request_id, "budget"] == pytest.approx(budget), request_id
    # the session feedback each ranker was given; this index stores no ratings, so no last_click_rating
    assert app.engagements and set(app.engagements.values()) == {0.0, 0.625}
    for request_id, engagement in app.engagements.items():
        assert requests.loc[request_id, "last_engagement"] == engagement, request_id
    assert requests["last_click_rating"].isna().all()


def test_colocated_layout_serves_the_same_contract_and_writes_its_events(live_app, tmp_path):
    """``colocate``: request contexts, retrieval and rankers in the ingress process; same answers and event log."""
    from ray import serve

    from serving.app import build_app

    index_dir = build_test_index(tmp_path, n_items=80)
    events = tmp_path / "events"
    args = {"index": str(index_dir), "arms": "near=retrieval,far=random", "events": str(events)}
    serve.run(
        build_app({**args, "colocate": "true", "encoder": "none"}), name="colocated", route_prefix="/co"
    )
    try:
        deployments = serve.status().applications["colocated"].deployments
        assert set(deployments) == {"Recommender", "EventLogger"}  # no stage deployments to call
        url = f"{live_app.url}/co"
        with httpx.Client(timeout=30) as http:
            health = http.get(f"{url}/healthz").json()
            assert health["ready"] and health["items"] == 80
            assert health["policies"] == {"near": "retrieval", "far": "random"}
            answers = [
                http.post(
                    f"{url}/recommend", json={"user_id": f"co-{i}", "history": ["item-0001"], "k": 3}
                ).json()
                for i in range(12)
            ]
            assert {a["arm"] for a in answers} == {"near", "far"}
            assert all(len(a["items"]) == 3 and not a["cold_start"] for a in answers)
            assert all(a["policy"] == {"near": "retrieval", "far": "random"}[a["arm"]] for a in answers)
            shown = answers[0]["items"][1]["item_id"]
            feedback = {"request_id": answers[0]["request_id"], "item_id": shown, "event": "click"}
            assert http.post(f"{url}/feedback", json=feedback).status_code == 202
    finally:
        serve.delete("colocated")
    logged = read_impressions(str(events)).to_pylist()
    assert sorted((r["request_id"], r["item_id"]) for r in logged) == sorted(
        (a["request_id"], item["item_id"]) for a in answers for item in a["items"]
    )
    assert read_feedback(str(events)).to_pylist()[0]["item_id"] == shown


@pytest.mark.slow  # a second Ray instance in a subprocess: about a minute
def test_cli_serve_stops_on_sigterm_and_flushes(tmp_path):
    """``rayrec serve`` in its own process (its own Ray): answer, SIGTERM, exit 0, events on disk."""
    index_dir = build_test_index(tmp_path, n_items=60)
    events = tmp_path / "events"
    port = free_port()
    env = {**os.environ, "RAY_ADDRESS": "", "RAYREC_PSEUDONYM_KEY": "k" * 32}
    command = [*RAYREC, "serve", "--index", str(index_dir), "--arm", "only=retrieval"]
    command += ["--events", str(events), "--port", str(port), "--encoder", "none"]  # default ingress: HAProxy
    command += ["--flush-seconds", "3600"]
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        else:
            raise AssertionError(f"server did not come up: {proc.communicate(timeout=60)[0][-3000:]}")
        answer = httpx.post(  # a first request on a loaded 2-core machine can take more than httpx's 5 s
            f"{url}/recommend", json={"user_id": "zoe", "history": ["item-0001"], "k": 4}, timeout=60
        ).json()
        # through the real HAProxy: an oversized body is refused unread, and HAProxy's own errors (no
        # ingress replica to take a request) use the API's 503 page, not Ray's bare 500
        huge = httpx.post(f"{url}/recommend", json={"user_id": "x" * 10_000_000}, timeout=120)
        assert huge.status_code == 413 and len(huge.content) < 400
        from ray.serve._private.constants import RAY_SERVE_HAPROXY_CONFIG_FILE_LOC

        configs = [
            cfg
            for cfg in Path(RAY_SERVE_HAPROXY_CONFIG_FILE_LOC).parent.glob("*/haproxy.cfg")
            if f":{port}\n" in cfg.read_text()
        ]
        assert configs, "no HAProxy configuration for this server's port"
        pages = re.findall(r"errorfile 503 (\S+)", configs[0].read_text())
        assert pages and Path(pages[0]).read_bytes().startswith(b"HTTP/1.1 503")
        assert b"Retry-After:" in Path(pages[0]).read_bytes()
        query = httpx.post(f"{url}/recommend", json={"user_id": "zoe", "query": "rocket"}, timeout=60)
        assert query.status_code == 422 and "no query encoder" in query.text
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-3000:]
    rows = read_impressions(str(events)).to_pylist()
    assert [r["item_id"] for r in sorted(rows, key=lambda r: r["position"])] == [
        i["item_id"] for i in answer["items"]
    ]
    assert (events / "config.yaml").exists()


def export_tiny_policy(
    out: Path, dim: int, num_candidates: int = NUM_CANDIDATES, budget: float = 20.0, name: str = "tiny"
) -> Path:
    """A real exported policy (untrained tiny scorer) for ``dim``-d embeddings, written to ``out/name-<dim>d``."""
    from rayrec.slate_scorer import ExportConfig, ScorerConfig, SlateScorer, save_exported_policy

    scorer = ScorerConfig(dim=dim, hidden=8, attention_layers=0)
    config = ExportConfig(
        scorer=scorer, slate_size=3, num_candidates=num_candidates, budget=budget, name=name
    )
    return Path(save_exported_policy(SlateScorer(scorer), config, str(out / f"{name}-{dim}d")))


def test_cli_bad_input_is_one_line_error(tmp_path):
    def rayrec_serve(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*RAYREC, "serve", *args], cwd=REPO, capture_output=True, text=True, timeout=120
        )

    missing = rayrec_serve("--index", str(tmp_path / "missing"), "--arm", "a=retrieval")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.startswith("error:") and "not an index directory" in missing.stderr
    exposed = rayrec_serve("--index", str(tmp_path), "--arm", "a=retrieval", "--host", "0.0.0.0")
    assert exposed.returncode == 2 and exposed.stderr.startswith("error:") and "--api-keys" in exposed.stderr
    bad_arm = rayrec_serve("--index", str(tmp_path), "--arm", "a=retrieval:-1")
    assert bad_arm.returncode == 2 and "weights must be positive" in bad_arm.stderr
    index_dir = build_test_index(tmp_path, n_items=20)
    bad_policy = rayrec_serve("--index", str(index_dir), "--arm", "a=no-such-policy")
    assert bad_policy.returncode == 2 and "unknown policy 'no-such-policy'" in bad_policy.stderr
    other_index = rayrec_serve("--index", str(index_dir), "--arm", f"a={export_tiny_policy(tmp_path, dim=8)}")
    assert other_index.returncode == 2 and "trained on 8-d embeddings" in other_index.stderr
    policy = export_tiny_policy(tmp_path, dim=ItemIndex.load(str(index_dir)).dim, num_candidates=10)
    other_k = rayrec_serve("--index", str(index_dir), "--arm", f"a={policy}", "--num-candidates", "15")
    assert other_k.returncode == 2 and "Traceback" not in other_k.stderr
    assert other_k.stderr.startswith("error:") and len(other_k.stderr.strip().splitlines()) == 1
    assert f"arm a: policy {policy} was trained on K=10" in other_k.stderr
    assert "--num-candidates 15" in other_k.stderr and "drop the flag" in other_k.stderr


@pytest.fixture(scope="module")
def small_index(tmp_path_factory) -> tuple[Path, int]:
    """(index dir, dim): a 60-item test index for the tests that build the app without serving it."""
    index_dir = build_test_index(tmp_path_factory.mktemp("small-index"), n_items=60)
    return index_dir, ItemIndex.load(str(index_dir)).dim


def test_k_is_the_trained_policies_and_another_k_is_a_one_line_error(small_index, tmp_path):
    from serving.app import check_policies, resolve_config

    index_dir, dim = small_index
    k20 = export_tiny_policy(tmp_path, dim, num_candidates=20, name="k20")
    k30 = export_tiny_policy(tmp_path, dim, num_candidates=30, name="k30")

    def served_k(*arms: str, **options) -> int:
        config = AppConfig(index=str(index_dir), arms=list(arms), encoder=None, **options)
        return resolve_config(config)[0].num_candidates

    assert served_k(f"a={k20}", "b=greedy") == 20  # no --num-candidates: the K it was trained with
    assert served_k(f"a={k20}", "b=greedy", num_candidates=20) == 20
    assert served_k("a=retrieval", "b=random") == 50  # baselines only: the default K
    assert served_k("a=retrieval", num_candidates=7) == 7
    assert check_policies(AppConfig(index="unused", arms=[f"a={k20}", "b=greedy"]), dim, {}) == {"a": 20}
    with pytest.raises(ConfigError) as explicit:
        served_k(f"a={k20}", "b=greedy", num_candidates=50)
    message = str(explicit.value)
    assert "\n" not in message and f"arm a: policy {k20} was trained on K=20 candidates" in message
    assert "--num-candidates 50" in message and "drop the flag" in message and "arm b" not in message
    with pytest.raises(ConfigError) as disagree:
        served_k(f"a={k20}", f"b={k30}")
    message = str(disagree.value)
    assert "\n" not in message and f"arm a ({k20}) K=20" in message and f"arm b ({k30}) K=30" in message
    assert app_config_from_args({"index": "i", "arms": "a=retrieval"}).num_candidates is None
    assert (
        app_config_from_args({"index": "i", "arms": "a=retrieval", "num_candidates": "none"}).num_candidates
        is None
    )
    with pytest.raises(ConfigError, match="num_candidates must be >= 1"):
        AppConfig(index="i", arms=["a=retrieval"], num_candidates=0)


def test_a_policy_trained_on_other_features_is_a_one_line_error(small_index, tmp_path):
    import json

    from serving.app import resolve_config

    index_dir, dim = small_index
    policy = export_tiny_policy(tmp_path, dim)
    meta = json.loads((policy / "policy.json").read_text())
    meta["feature_names"] = ["retrieval_score", "popularity", "freshness"]  # same count, another feature
    (policy / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError) as refused:
        resolve_config(AppConfig(index=str(index_dir), arms=[f"a={policy}"], encoder=None))
    message = str(refused.value)
    assert "\n" not in message and "freshness" in message and "retrieval_rank" in message


def serve_colocated(
    config: AppConfig, arm: str, requests: list[RecommendRequest], monkeypatch
) -> tuple[list, list[dict[str, np.ndarray]]]:
    """Answer ``requests`` in order with a colocated ingress (the very stages of the deployments, in process,
    logging to ``config.events``): (the answers, every observation the policy of ``arm`` was shown)."""
    from serving.app import Recommender
    from serving.deployments import EventLogger
    from serving.local import LocalHandle, stages_user_config

    logger = EventLogger(config.events, config.remembered_requests, config.flush_rows, config.flush_seconds)
    service = Recommender(None, None, None, LocalHandle(logger), None, config)
    seen: list[dict[str, np.ndarray]] = []

    async def scenario() -> list:
        await service.reconfigure(stages_user_config(config))
        policy = service.local.rankers[arm].policy
        select = policy.select

        def watched(obs, slate_size, rng=None):
            seen.append(obs)
            return select(obs, slate_size, rng)

        monkeypatch.setattr(policy, "select", watched)
        return [await service.recommend(request) for request in requests]

    try:
        answers = asyncio.run(scenario())
    finally:
        logger.log.close()
    return answers, seen


def test_a_trained_arm_sees_the_budget_feature_of_its_session_step(small_index, tmp_path, monkeypatch):
    """A colocated ingress serving a trained policy whose simulator had a session budget of 20: step 5 is a
    budget feature of 0.75, as in training."""
    from serving.app import resolve_config

    monkeypatch.setenv("RAYREC_PSEUDONYM_KEY", "k" * 32)
    index_dir, dim = small_index
    policy = export_tiny_policy(tmp_path, dim, num_candidates=12, budget=20.0)
    events = str(tmp_path / "events")
    config = AppConfig(index=str(index_dir), arms=[f"t={policy}"], events=events, encoder=None, colocate=True)
    config = resolve_config(config)[0]
    assert config.num_candidates == 12
    steps = [(5, ["item-0001"]), (0, ["item-0002"]), (40, ["item-0003"]), (10, [])]
    asks = [RecommendRequest(user_id=f"u{s}", history=h, k=3, session_step=s) for s, h in steps]
    replies, seen = serve_colocated(config, "t", asks, monkeypatch)
    answers = [(step, answer) for (step, _), answer in zip(steps, replies, strict=True)]
    assert [a.policy for _, a in answers] == ["tiny", "tiny", "tiny", "popular-diverse"]
    assert [float(obs["budget"][0, 0]) for obs in seen] == [0.75, 1.0, 0.0]  # what the policy was shown
    requests = read_requests(events).to_pandas().set_index("request_id")
    logged = {step: float(requests.loc[a.request_id, "budget"]) for step, a in answers}
    assert logged == {5: 0.75, 0: 1.0, 40: 0.0, 10: 0.5}  # the cold start: what the policy would have seen
    assert all(len(requests.loc[a.request_id, "candidate_ids"]) == 12 for _, a in answers[:3])


def export_policy_reading(out: Path, dim: int, names: tuple[str, ...], name: str) -> str:
    """A real exported policy (untrained tiny scorer) over the per-candidate features ``names``."""
    from rayrec.slate_scorer import ExportConfig, ScorerConfig, SlateScorer, save_exported_policy

    scorer = ScorerConfig(dim=dim, num_features=len(names), hidden=8, attention_layers=0)
    config = ExportConfig(
        scorer=scorer, slate_size=3, num_candidates=NUM_CANDIDATES, feature_names=names, name=name
    )
    return save_exported_policy(SlateScorer(scorer), config, str(out / name))


def test_a_policy_reading_features_the_server_does_not_build_is_refused(small_index, tmp_path):
    """``observe_hidden`` policies are diagnostics: the server has no hidden state to give them. An
    ``observe_rating`` or ``observe_last_click`` policy (or linear ranker) needs an index that stores item
    ratings, an ``observe_item_log`` or ``observe_lift`` one an index built with an event log. Each is refused while the application is built, with the reason on one line; over a rated
    index the rating readers are served, and an ``observe_feedback`` policy, whose column comes with each
    request, is served over any index."""
    from rayrec.baselines import LinearRankerPolicy, SwitchRankerPolicy, load_policy
    from rayrec.features import HIDDEN_FEATURE_NAMES, feature_names
    from serving.app import resolve_config
    from serving.pipeline import BASELINE_BUDGET, budget_scale

    index_dir, dim = small_index  # built without ratings
    rated_dir = build_test_index(tmp_path / "rated", n_items=60, rating=True)

    def refusal(policy_dir: str) -> str:
        with pytest.raises(ArtifactError) as refused:
            resolve_config(AppConfig(index=str(index_dir), arms=[f"a={policy_dir}"], encoder=None))
        assert "\n" not in str(refused.value) and "not a servable policy" in str(refused.value)
        return str(refused.value)

    message = refusal(export_policy_reading(tmp_path, dim, feature_names(HIDDEN_FEATURE_NAMES), "privileged"))
    assert "hidden state" in message and "satisfaction" in message
    assert "rayrec simulate --env observe_hidden=" in message
    rated_policy = export_policy_reading(tmp_path, dim, feature_names(rating=True), "rated")
    message = refusal(rated_policy)
    assert "'item_rating', which this index does not store" in message and "rayrec build-index" in message
    ranker = LinearRankerPolicy(np.zeros(4), np.zeros(dim), feature_names=feature_names(rating=True))
    assert "'item_rating'" in refusal(ranker.save(str(tmp_path / "linear")))
    hidden = LinearRankerPolicy(np.zeros(4), np.zeros(dim), feature_names=feature_names(("quality",)))
    message = refusal(hidden.save(str(tmp_path / "linear-hidden")))
    assert "is a tuned ranker on the simulator's hidden state ['quality']" in message
    # The session feedback comes with each request; the last click's rating needs a rated index.
    names = feature_names(rating=True, feedback=True, last_click=True)
    last_click = export_policy_reading(tmp_path, dim, names, "last-click")
    message = refusal(last_click)
    assert "reads 'item_rating', 'last_click_rating', which this index does not store" in message
    # Per-item statistics of a log: only an index built with one (--item-log) stores them.
    item_log = export_policy_reading(tmp_path, dim, feature_names(item_log=True), "item-log")
    message = refusal(item_log)
    assert "reads 'item_ctr', 'item_watch' (trained with `--env observe_item_log=true`)" in message
    assert "build the index with `rayrec build-index --item-log EVENTS`" in message
    with pytest.raises(ArtifactError, match="observe_item_log=true"):
        resolve_config(AppConfig(index=str(rated_dir), arms=[f"a={item_log}"], encoder=None))
    lift = export_policy_reading(tmp_path, dim, feature_names(feedback=True, lift=True), "lift")
    message = refusal(lift)
    assert "reads 'item_lift', 'satisfaction_estimate' (trained with `--env observe_lift=true`)" in message
    logged_dir = build_test_index(tmp_path / "logged", n_items=60, item_log=True)
    config = AppConfig(index=str(logged_dir), arms=[f"a={item_log}", f"b={lift}"], encoder=None)
    assert resolve_config(config)[0].num_candidates == NUM_CANDIDATES
    feedback = export_policy_reading(tmp_path, dim, feature_names(feedback=True), "feedback")
    resolve_config(AppConfig(index=str(index_dir), arms=[f"a={feedback}"], encoder=None))
    # Over an index that stores ratings every reader is served.
    arms = [f"a={rated_policy}", f"b={tmp_path / 'linear'}", f"c={last_click}"]
    config = AppConfig(index=str(rated_dir), arms=arms, encoder=None)
    assert resolve_config(config)[0].num_candidates == NUM_CANDIDATES  # the trained arms' K
    # A switch ranker reads the session's clock: served, with the budget of the world it was fitted in.
    switch = SwitchRankerPolicy.from_flat(np.zeros(2 * 3 + 2), feature_names(), budget=12.0)
    switch_dir = switch.save(str(tmp_path / "switch"))
    resolve_config(AppConfig(index=str(index_dir), arms=[f"a={switch_dir}"], encoder=None))
    assert budget_scale(load_policy(switch_dir)) == budget_scale(load_policy(f"mmr:{switch_dir}")) == 12.0
    assert budget_scale(load_policy(str(tmp_path / "linear"))) == BASELINE_BUDGET


def save_gated_switch(out: Path, names: tuple[str, ...], build_on: str, gate: list[float]) -> str:
    """A switch ranker over ``names`` saved under ``out``: popularity while its ``gate`` (bias, clock, the
    user columns) is open, ``build_on`` while it is shut."""
    from rayrec.baselines import SwitchRankerPolicy

    weights = np.zeros(SwitchRankerPolicy.num_weights(names), np.float32)
    spend, build, gates = SwitchRankerPolicy.split(weights, names)
    spend[names.index("popularity")] = 1.0
    build[names.index(build_on)] = 1.0
    gates[:] = gate
    policy = SwitchRankerPolicy.from_flat(weights, names, budget=20.0, name="switch")
    return policy.save(str(out / "switch"))


def test_over_a_rated_index_the_server_builds_and_logs_item_rating(tmp_path, monkeypatch):
    """A policy trained with ``observe_rating`` served over an index that stores item ratings, beside a
    ``random`` arm: it is shown each candidate's ``item_rating`` from the index, every request's log row
    keeps that column, and the log reads back with it named, so off-policy evaluation replays the rating
    reader and the plain policies on the same rows."""
    from rayrec.ab.off_policy import evaluate_logged
    from rayrec.baselines import RandomPolicy, RetrievalPolicy, load_policy
    from rayrec.features import feature_names
    from rayrec.logs.reader import ItemLookup, logged_requests, read_event_log
    from serving.app import resolve_config

    monkeypatch.setenv("RAYREC_PSEUDONYM_KEY", "k" * 32)
    index_dir = build_test_index(tmp_path / "rated", n_items=60, rating=True)
    index = ItemIndex.load(str(index_dir))
    policy = export_policy_reading(tmp_path, index.dim, feature_names(rating=True), "rated")
    events = str(tmp_path / "events")
    arms = [f"r={policy}", "u=random"]
    config = AppConfig(index=str(index_dir), arms=arms, events=events, encoder=None, colocate=True)
    config = resolve_config(config)[0]
    asks = [RecommendRequest(user_id=f"u{i}", history=[f"item-{i:04d}"], k=3) for i in range(16)]
    answers, shown = serve_colocated(config, "r", asks, monkeypatch)
    seen = [obs["features"] for obs in shown]  # [B, K, F] each
    rated = [a for a in answers if a.policy == "rated"]
    assert len(rated) == len(seen) and 0 < len(rated) < len(answers)  # both arms answered
    requests = read_requests(events).to_pandas().set_index("request_id")
    for answer, features in zip(rated, seen, strict=True):
        assert features.shape == (1, NUM_CANDIDATES, NUM_FEATURES + 1)
        rows = index.lookup(requests.loc[answer.request_id, "candidate_ids"])
        np.testing.assert_array_equal(features[0, :, -1], index.rating[rows])  # the index's ratings
        logged = np.asarray(requests.loc[answer.request_id, "features"]).reshape(NUM_CANDIDATES, -1)
        np.testing.assert_array_equal(logged, features[0])  # the log keeps what the ranker saw
    widths = {len(f) for f in requests["features"]}
    assert widths == {NUM_CANDIDATES * (NUM_FEATURES + 1)}  # the random arm's rows too
    replay = logged_requests(read_event_log(events), ItemLookup(index.item_ids, index.embeddings))
    # the server's rows also carry the session feedback (no last click here: zeros), as columns after it
    assert replay.feature_names == feature_names(rating=True, feedback=True, last_click=True)
    np.testing.assert_array_equal(replay.features[..., NUM_FEATURES], index.rating[replay.candidates])
    assert not replay.features[..., NUM_FEATURES + 1 :].any()
    result = evaluate_logged(
        replay, RetrievalPolicy(), {"rated": load_policy(str(policy)), "random": RandomPolicy()}, resamples=50
    )
    assert result.requests == len(answers) and result.logging_policies == {
        "random": 16 - len(rated),
        "rated": len(rated),
    }


def test_session_feedback_reaches_a_feedback_ranker_its_log_and_the_replay(tmp_path, monkeypatch):
    """A switch ranker gated on ``last_engagement`` (trained with ``observe_feedback`` and
    ``observe_last_click``), served over a rated index: each request's ``last_click`` is shown to it as the
    two columns the simulator appends (the completion rate, and the index's rating of the clicked item:
    an unrated item's 0.5 for an id the index does not hold, 0 without a click), it ranks by popularity
    where the user's last completion rate was high and by rating where it was low, every request's log row
    keeps the feedback (a cold start's too), and the log replays with both columns named, so off-policy
    evaluation (beside a ``random`` arm) scores the ranker on what it saw."""
    from rayrec.ab.off_policy import evaluate_logged
    from rayrec.assignment import assign_arm
    from rayrec.baselines import RandomPolicy, RetrievalPolicy, load_policy
    from rayrec.features import feature_names
    from rayrec.logs.reader import ItemLookup, logged_requests, read_event_log
    from serving.app import resolve_config
    from serving.pipeline import UNRATED

    monkeypatch.setenv("RAYREC_PSEUDONYM_KEY", "k" * 32)
    index_dir = build_test_index(tmp_path / "rated", n_items=60, rating=True)
    index = ItemIndex.load(str(index_dir))
    names = feature_names(rating=True, feedback=True, last_click=True)
    # open where last_engagement > 0.5
    policy_dir = save_gated_switch(tmp_path, names, "item_rating", [-0.5, 0.0, 1.0, 0.0])
    events = str(tmp_path / "events")
    arms = [f"s={policy_dir}", "u=random"]
    config = AppConfig(index=str(index_dir), arms=arms, events=events, encoder=None, colocate=True)
    config = resolve_config(config)[0]
    weights_of_arms = [("s", 1.0), ("u", 1.0)]
    users = {
        arm: [f"user-{i}" for i in range(200) if assign_arm(f"user-{i}", weights_of_arms) == arm]
        for arm in "su"
    }
    a, b, c, d = users["s"][:4]
    asks = [
        RecommendRequest(user_id=a, history=["item-0001"], k=3),
        RecommendRequest(
            user_id=b, history=["item-0002"], k=3, last_click={"item_id": "item-0007", "engagement": 0.9}
        ),
        RecommendRequest(
            user_id=c, history=["item-0003"], k=3, last_click={"item_id": "gone", "engagement": 0.25}
        ),
        RecommendRequest(user_id=d, history=[], k=3, last_click={"item_id": "item-0004", "engagement": 0.75}),
        *(RecommendRequest(user_id=u, history=[f"item-{i:04d}"], k=3) for i, u in enumerate(users["u"][:8])),
    ]
    answers, shown = serve_colocated(config, "s", asks, monkeypatch)
    assert [answer.policy for answer in answers] == ["switch"] * 3 + ["popular-diverse"] + ["random"] * 8
    requests = read_requests(events).to_pandas().set_index("request_id")
    expected = {a: (0.0, 0.0), b: (0.9, float(index.rating[7])), c: (0.25, UNRATED)}
    for (user, feedback), obs, answer in zip(expected.items(), shown, answers[:3], strict=True):
        features = obs["features"][0]  # [K, F] the ranker's columns
        np.testing.assert_allclose(features[:, -2:], np.broadcast_to(feedback, (len(features), 2)), rtol=1e-6)
        # the gate: popularity after an engaged click, rating otherwise (values compared: ties may reorder)
        by = features[:, names.index("popularity" if feedback[0] > 0.5 else "item_rating")]  # [K]
        candidates = list(requests.loc[answer.request_id, "candidate_ids"])
        picked = by[[candidates.index(item.item_id) for item in answer.items]]
        np.testing.assert_array_equal(np.sort(picked), np.sort(by)[-3:], err_msg=user)
    logged = {
        ask.user_id: tuple(requests.loc[answer.request_id, ["last_engagement", "last_click_rating"]])
        for ask, answer in zip(asks, answers, strict=True)
    }
    assert logged[a] == (0.0, 0.0) and logged[d] == pytest.approx((0.75, index.rating[4]))
    assert logged[b] == pytest.approx(expected[b]) and logged[c] == pytest.approx(expected[c])
    replay = logged_requests(read_event_log(events), ItemLookup(index.item_ids, index.embeddings))
    assert replay.feature_names == names  # the ranked rows (the cold start is left out)
    loggers = {"switch": load_policy(policy_dir), "random": RandomPolicy()}
    result = evaluate_logged(replay, RetrievalPolicy(), loggers, resamples=50)
    assert result.requests == 11 and result.logging_policies == {"switch": 3, "random": 8}


def test_over_an_index_with_an_item_log_the_server_builds_the_lift_columns(tmp_path, monkeypatch):
    """A switch ranker fitted on ``observe_feedback``, ``observe_item_log`` and ``observe_lift``, served over
    an index built with an event log: each candidate's ``item_ctr``, ``item_watch`` and ``item_lift`` come
    from the index, and ``satisfaction_estimate`` is the client's completion rate of the last click plus that
    item's lift, clipped (0 without a last click, lift 0 for an item the index lacks): the simulator's
    formula. Its gate reads the estimate: popularity for a satisfied user, lift otherwise. The request rows
    log the estimate, and a replay over the index rebuilds every column the ranker saw (``rayrec ope``)."""
    from rayrec.ab.off_policy import evaluate_logged
    from rayrec.baselines import RandomPolicy, RetrievalPolicy, load_policy
    from rayrec.features import (
        ITEM_LIFT,
        ITEM_STATISTICS,
        SATISFACTION_ESTIMATE,
        feature_names,
        select_features,
    )
    from rayrec.logs.reader import ItemLookup, logged_requests, read_event_log
    from serving.app import resolve_config

    monkeypatch.setenv("RAYREC_PSEUDONYM_KEY", "k" * 32)
    index_dir = build_test_index(tmp_path / "logged", n_items=60, item_log=True)
    index = ItemIndex.load(str(index_dir))
    names = feature_names(feedback=True, item_log=True, lift=True)
    # open where satisfaction_estimate > 0.5
    policy_dir = save_gated_switch(tmp_path, names, ITEM_LIFT, [-0.5, 0.0, 0.0, 1.0])
    events = str(tmp_path / "events")
    arms = [f"s={policy_dir}", "u=random"]  # the random arm explores: what off-policy estimates weight
    config = AppConfig(index=str(index_dir), arms=arms, events=events, encoder=None, colocate=True)
    config = resolve_config(config)[0]
    weights = [("s", 1.0), ("u", 1.0)]
    users = [f"user-{i}" for i in range(80) if assign_arm(f"user-{i}", weights) == "s"][:4]
    explored = [f"user-{i}" for i in range(80) if assign_arm(f"user-{i}", weights) == "u"][:6]
    clicks = [None, ("item-0007", 0.9), ("item-0009", 0.1), ("gone", 0.25)]
    asks = [
        RecommendRequest(
            user_id=user,
            history=[f"item-{i + 1:04d}"],
            k=3,
            last_click=None if click is None else {"item_id": click[0], "engagement": click[1]},
        )
        for i, (user, click) in enumerate(zip(users, clicks, strict=True))
    ]
    asks += [RecommendRequest(user_id=u, history=[f"item-{i:04d}"], k=3) for i, u in enumerate(explored)]
    answers, shown = serve_colocated(config, "s", asks, monkeypatch)
    assert [answer.policy for answer in answers] == ["switch"] * 4 + ["random"] * 6
    lift = index.item_log[:, 2]
    expected = [0.0, min(1.0, max(0.0, 0.9 + lift[7])), min(1.0, max(0.0, 0.1 + lift[9])), 0.25]
    requests = read_requests(events).to_pandas().set_index("request_id")
    for estimate, obs, answer in zip(expected, shown, answers[:4], strict=True):
        features = obs["features"][0]  # [K, F] in the policy's order
        np.testing.assert_allclose(features[:, names.index(SATISFACTION_ESTIMATE)], estimate, rtol=1e-6)
        rows = index.lookup(list(requests.loc[answer.request_id, "candidate_ids"]))
        columns = [names.index(name) for name in ITEM_STATISTICS]
        np.testing.assert_array_equal(features[:, columns], index.item_log[rows])
        by = features[:, names.index("popularity" if estimate > 0.5 else ITEM_LIFT)]  # [K]
        candidates = list(requests.loc[answer.request_id, "candidate_ids"])
        picked = by[[candidates.index(item.item_id) for item in answer.items]]
        np.testing.assert_array_equal(np.sort(picked), np.sort(by)[-3:])
    # The log keeps the estimate; a replay over the index rebuilds every column the ranker saw.
    logged = [requests.loc[a.request_id, "satisfaction_estimate"] for a in answers]
    np.testing.assert_allclose(logged, [*expected, *[0.0] * 6], rtol=1e-6)  # no last click: 0
    lookup = ItemLookup(index.item_ids, index.embeddings, item_log=index.item_log)
    replay = logged_requests(read_event_log(events), lookup)
    assert len(replay.user) == len(answers) and set(names) <= set(replay.feature_names)
    replayed = select_features(replay.features, replay.feature_names, names)  # [n, K, F] in users' order
    for obs in shown:
        assert any(np.array_equal(row, obs["features"][0]) for row in replayed)
    loggers = {"switch": load_policy(policy_dir), "random": RandomPolicy()}
    result = evaluate_logged(replay, RetrievalPolicy(), loggers, resamples=20)
    assert result.requests == 10 and result.logging_policies == {"switch": 4, "random": 6}
