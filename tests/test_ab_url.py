"""``rayrec ab --url``: simulated users against the session's live Ray Serve app over real HTTP on 127.0.0.1.

The simulator is built from the server's own index (``--index``), so simulated users can react to every
item it returns. After the app's graceful stop (which writes its event log) the server's log is compared
with the client's, request by request, propensities included.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from _ab_cli import cli_output
from _serve_app import POLICIES

from rayrec.cli import main
from rayrec.events import read_feedback, read_impressions, read_requests

USERS = 60


@pytest.fixture(scope="session")
def url_run(live_app, tmp_path_factory):
    """``rayrec ab --url`` against the live app; what it saw is recorded as acknowledged by the app."""
    out = tmp_path_factory.mktemp("ab-url") / "run"
    code = main(
        [
            "ab", "--url", live_app.url, "--index", str(live_app.index), "--users", str(USERS),
            "--out", str(out), "--concurrency", "4", "--no-progress", "--env", "budget=6",
        ]
    )  # fmt: skip
    events = str(out / "events")
    for request_id, rows in read_impressions(events).to_pandas().groupby("request_id"):
        live_app.impressions[request_id] = rows.sort_values("position")["item_id"].tolist()
    for row in read_feedback(events).to_pylist():
        live_app.feedback.append((row["request_id"], row["item_id"], row["event"]))
    return {"code": code, "out": out}


def test_url_mode_runs_against_the_server(url_run):
    assert url_run["code"] == 0
    report = json.loads((url_run["out"] / "report.json").read_text())
    assert set(report["arms"]) == set(POLICIES)
    assert {arm: report["arms"][arm]["policy"] for arm in POLICIES} == POLICIES
    assert sum(report["arms"][arm]["users"] for arm in POLICIES) == USERS
    assert 0.0 <= report["srm_p_value"] <= 1.0
    assert {c["metric"] for c in report["comparisons"]} == {
        "session_return",
        "clicks",
        "ctr",
        "session_length",
    } | {"ild", "novelty", "calibration", "coverage", "gini_items", "gini_categories"}  # beyond accuracy
    # Propensities come with the answers: the explore arm's are 1/K, the deterministic arms' 1.0.
    client_imp = read_impressions(str(url_run["out"] / "events")).to_pandas()
    assert client_imp["propensity"].between(0, 1, inclusive="right").all()
    assert (client_imp.loc[client_imp["arm"] != "explore", "propensity"] == 1.0).all()


def test_client_log_agrees_with_the_server_log(url_run, stopped_live_app, capsys):
    client_events = str(url_run["out"] / "events")
    client_imp = read_impressions(client_events).to_pandas()
    server_imp = read_impressions(str(stopped_live_app.events)).to_pandas()
    server_imp = server_imp[server_imp["request_id"].isin(set(client_imp["request_id"]))]
    assert len(client_imp) > USERS and len(client_imp) == len(server_imp)
    key = ["request_id", "position"]
    merged = client_imp.merge(server_imp, on=key, suffixes=("_client", "_server"), validate="one_to_one")
    assert len(merged) == len(client_imp)
    for column in ("item_id", "arm", "policy"):
        assert (merged[f"{column}_client"] == merged[f"{column}_server"]).all(), column
    for column in ("score", "propensity"):
        assert np.allclose(merged[f"{column}_client"], merged[f"{column}_server"], rtol=1e-5, atol=1e-6)
    assert (merged["propensity_server"] < 1.0).any(), "the explore arm logs its propensities"
    # Users are pseudonymized by the server, but a user's requests stay in one arm on both sides.
    assert (server_imp.groupby("user_id")["arm"].nunique() == 1).all()
    client_fb = read_feedback(client_events).to_pandas()
    server_fb = read_feedback(str(stopped_live_app.events)).to_pandas()
    server_fb = server_fb[server_fb["request_id"].isin(set(client_imp["request_id"]))]
    as_set = lambda fb: set(zip(fb["request_id"], fb["item_id"], fb["event"], strict=True))  # noqa: E731
    assert len(client_fb) > 0 and as_set(client_fb) == as_set(server_fb)
    assert math.isclose(client_fb["value"].sum(), server_fb["value"].sum(), rel_tol=1e-6)
    # The client sends each user's last click with its completion rate: the server's request rows carry 0
    # until the user's first click and the rate of the last one after it.
    requests = read_requests(str(stopped_live_app.events)).to_pandas()
    requests = requests[requests["request_id"].isin(set(client_imp["request_id"]))].sort_values(
        ["user_id", "ts"]
    )
    clicked = requests["request_id"].isin(set(client_fb["request_id"]))
    after_click = clicked.groupby(requests["user_id"]).transform(lambda c: c.shift(fill_value=False).cummax())
    assert after_click.any() and (~after_click).any()
    assert (requests.loc[~after_click, "last_engagement"] == 0.0).all()
    engaged = requests.loc[after_click, "last_engagement"]
    assert engaged.between(0.0, 1.0).all() and (engaged > 0).mean() > 0.9
    # The client never sees the candidates, so OPE on its log says where to look instead.
    code, output = cli_output(
        capsys, "ope", "--events", client_events, "--target", "greedy", "--index", str(stopped_live_app.index)
    )
    assert code == 2 and "no requests table" in output and "server's events directory" in output
