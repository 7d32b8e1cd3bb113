"""The HTTP contract, checked against the live Serve app's own ``/openapi.json``.

Every answer these tests receive goes through :class:`Contract`: its status must be documented for that
operation and its body must validate against the schema documented for that status (for every error:
``ErrorResponse``). The out-of-range and in-range requests are generated from the schema's constraints
(lengths, ranges, patterns, the longest history, each feedback event's value bounds), so the schema
and what the server enforces cannot drift apart.
"""

from __future__ import annotations

import json
import math

import httpx
import pytest
from _serve_app import Contract


@pytest.fixture(scope="module")
def contract(live_app) -> Contract:
    return Contract(httpx.get(f"{live_app.url}/openapi.json", timeout=60).json())


@pytest.fixture(scope="module")
def http(live_app, contract):
    with httpx.Client(base_url=live_app.url, timeout=60, event_hooks={"response": [contract]}) as client:
        yield client


def violations_and_bounds(name: str, schema: dict, valid_item: str):
    """(value, ok) pairs for one property, from its JSON schema: each bound and one step past it."""
    if "anyOf" in schema:  # `str | None`: the string branch carries the constraints
        schema = next(s for s in schema["anyOf"] if s.get("type") != "null")
    kind = schema.get("type")
    if kind == "integer":
        if "minimum" in schema:
            yield int(schema["minimum"]) - 1, False
            yield int(schema["minimum"]), True
        if "maximum" in schema:
            yield int(schema["maximum"]), True
            yield int(schema["maximum"]) + 1, False
    elif kind == "string":
        if schema.get("minLength", 0) > 0:
            yield "x" * (schema["minLength"] - 1), False
        if "maxLength" in schema:
            yield "x" * schema["maxLength"], True
            yield "x" * (schema["maxLength"] + 1), False
        if "pattern" in schema:
            yield "bad\x01id", False
    elif kind == "array":
        if "maxItems" in schema:
            yield [valid_item] * schema["maxItems"], True
            yield [valid_item] * (schema["maxItems"] + 1), False
        if schema.get("items", {}).get("minLength", 0) > 0:
            yield [valid_item, ""], False
        if "pattern" in schema.get("items", {}):
            yield [valid_item, "item\n1"], False


def test_recommend_enforces_exactly_the_documented_constraints(http, contract, live_app):
    schema = contract.schema("#/components/schemas/RecommendRequest")
    assert schema["additionalProperties"] is False
    assert schema["properties"]["history"]["maxItems"] == 50  # the app's max_history, not a default
    cases = 0
    for name, prop in schema["properties"].items():
        for value, ok in violations_and_bounds(name, prop, "item-0001"):
            body = {"user_id": "contract-user", "history": ["item-0002"], name: value}
            response = http.post("/recommend", json=body)
            cases += 1
            if ok:
                assert response.status_code == 200, (name, str(value)[:50], response.text[:300])
                live_app.record(response.json())
            else:
                assert response.status_code == 422, (name, str(value)[:50], response.text[:300])
                locs = [d["loc"][:2] for d in response.json()["error"]["details"]]
                assert ["body", name] in locs, (name, locs)
    assert cases >= 15
    missing = http.post("/recommend", json={"history": []})
    assert missing.status_code == 422 and ["body", "user_id"] in [
        d["loc"] for d in missing.json()["error"]["details"]
    ]
    assert "user_id" in schema["required"]


def test_feedback_values_are_bounded_per_event_as_documented(http, contract, live_app):
    body_schema = contract.document["paths"]["/feedback"]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]
    events = {}
    for ref in body_schema["oneOf"]:
        model = contract.schema(ref["$ref"])
        events[model["properties"]["event"]["const"]] = model
    assert set(events) == {"click", "skip", "view", "purchase", "rating", "dismiss"}
    answer = live_app.record(
        http.post("/recommend", json={"user_id": "feedback-bounds", "history": ["item-0005"], "k": 20}).json()
    )
    items = iter(item["item_id"] for item in answer["items"])
    for event, model in events.items():
        value = model["properties"]["value"]
        low, high = value["minimum"], value["maximum"]
        for bad in (low - 1, high + 1, high * 2 + 1):
            refused = http.post(
                "/feedback",
                json={
                    "request_id": answer["request_id"],
                    "item_id": answer["items"][0]["item_id"],
                    "event": event,
                    "value": bad,
                },
            )
            assert refused.status_code == 422, (event, bad, refused.text)
        for good in (low, high):
            item = next(items)
            accepted = http.post(
                "/feedback",
                json={"request_id": answer["request_id"], "item_id": item, "event": event, "value": good},
            )
            assert accepted.status_code == 202 and accepted.json() == {"status": "accepted"}, accepted.text
            live_app.feedback.append((answer["request_id"], item, event))
        if "value" in model["required"]:
            no_value = http.post(
                "/feedback",
                json={
                    "request_id": answer["request_id"],
                    "item_id": answer["items"][0]["item_id"],
                    "event": event,
                },
            )
            assert no_value.status_code == 422


def test_duplicate_feedback_is_acknowledged_once_and_logged_once(http, live_app):
    answer = live_app.record(
        http.post("/recommend", json={"user_id": "retrier", "history": ["item-0007"], "k": 3}).json()
    )
    body = {"request_id": answer["request_id"], "item_id": answer["items"][0]["item_id"], "event": "click"}
    first, second = http.post("/feedback", json=body), http.post("/feedback", json={**body, "value": 0.5})
    assert (first.status_code, first.json()) == (202, {"status": "accepted"})
    assert (second.status_code, second.json()) == (202, {"status": "duplicate"})
    live_app.feedback.append(
        (body["request_id"], body["item_id"], "click")
    )  # once: the stop test counts rows
    other_event = http.post("/feedback", json={**body, "event": "view"})
    assert other_event.json() == {"status": "accepted"}
    live_app.feedback.append((body["request_id"], body["item_id"], "view"))


def test_an_oversized_body_is_refused_unread_with_a_short_answer(http):
    huge = json.dumps({"user_id": "x" * 10_000_000}).encode()
    response = http.post("/recommend", content=huge, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large" and len(response.content) < 400

    def chunks():  # no Content-Length: refused while reading
        yield b'{"user_id": "'
        for _ in range(200):
            yield b"y" * 1024
        yield b'"}'

    chunked = http.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413 and len(chunked.content) < 400


@pytest.mark.parametrize(
    ("content", "content_type", "needle"),
    [
        (b'{"user_id": "\xff\xfe"}', "application/json", "not UTF-8"),
        (b"\xff\xfe\x00garbage", "text/plain", "Content-Type: application/json"),
        (b'{"user_id": "u"', "application/json", "not JSON"),
        (b"", "application/json", "empty"),
        (b"[" * 5000 + b"]" * 5000, "application/json", "nests deeper"),
        (
            json.dumps({"user_id": "u", "history": [[[[[[[[["i"]]]]]]]]]}).encode(),
            "application/json",
            "nests deeper",
        ),
        (b'{"user_id": "u"}', "application/x-www-form-urlencoded", "Content-Type"),
    ],
)
def test_undecodable_bodies_are_400(http, content, content_type, needle):
    response = http.post("/recommend", content=content, headers={"content-type": content_type})
    assert response.status_code == 400, response.text
    assert needle in response.json()["error"]["message"]


def test_errors_quote_at_most_a_short_prefix_of_the_input(http):
    long_id = "secret-" + "z" * 30_000
    response = http.post("/recommend", json={"user_id": long_id})
    assert response.status_code == 422 and "z" * 50 not in response.text
    tag = "hug" * 5_000
    bad_event = http.post("/feedback", json={"request_id": "0" * 32, "item_id": "i", "event": tag})
    assert bad_event.status_code == 422 and "hug" * 20 not in bad_event.text
    assert "click" in bad_event.text  # still says what is accepted
    extra_key = http.post("/recommend", json={"user_id": "u", "k" * 5000: 1})
    assert extra_key.status_code == 422 and "k" * 100 not in extra_key.text


def test_request_ids_are_honoured_and_unknown_paths_answer_the_error_shape(http):
    answer = http.post(
        "/recommend", json={"user_id": "tracer", "k": 0}, headers={"X-Request-ID": "trace-0042"}
    )
    assert (
        answer.headers["x-request-id"] == "trace-0042"
        and answer.json()["error"]["request_id"] == "trace-0042"
    )
    assert http.get("/no-such-route").status_code == 404
    assert http.get("/recommend").status_code == 405
    unknown = http.post("/feedback", json={"request_id": "f" * 32, "item_id": "item-0001", "event": "click"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


def test_the_document_states_limits_and_every_status(contract):
    limits = contract.document["info"]["x-limits"]
    assert limits["max_body_bytes"] > 0 and limits["max_json_depth"] >= 2
    for path, method, statuses in [
        ("/recommend", "post", {"200", "400", "413", "422", "500", "503", "504"}),
        ("/feedback", "post", {"202", "400", "404", "413", "422", "500", "503", "504"}),
        ("/healthz", "get", {"200", "503"}),
    ]:
        assert statuses <= set(contract.document["paths"][path][method]["responses"]), (path, method)
    item = contract.schema("#/components/schemas/RecommendResponse")["properties"]
    assert {"index_version", "policy_version", "fallback"} <= set(item)
    assert math.isfinite(limits["max_body_bytes"])
    assert contract.checked, "the other tests of this module fed the checker"
