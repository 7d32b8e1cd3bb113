"""``rayrec ab --url``: simulated users against a live Ray Serve app over real HTTP on 127.0.0.1.

The server is built from an index over the simulator's own synthetic catalog, so simulated users can
react to every item it returns. After the run the server is stopped gracefully (which writes its event
log) and its log is compared with the client's, request by request.
"""

from __future__ import annotations

import json
import math
import socket

import numpy as np
import pytest
from _ab_cli import cli_output

from rayrec.events import read_feedback, read_impressions

APP = "rayrec-ab-url-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_catalog_index(out) -> str:
    """A flat index over the built-in synthetic world's catalog (no query encoder)."""
    from envs.config import SlateEnvConfig
    from envs.factory import load_world
    from rayrec.index.faiss_index import IndexSpec, build_faiss_index
    from rayrec.index.item_index import write_index

    catalog = load_world(SlateEnvConfig(num_items=600)).catalog
    spec = IndexSpec(type="flat")
    write_index(
        str(out),
        catalog.item_ids.tolist(),
        catalog.embeddings,
        catalog.popularity_counts,
        build_faiss_index(catalog.embeddings, spec),
        spec,
        "none",
    )
    return str(out)


@pytest.fixture(scope="module")
def live_server(ray_session, tmp_path_factory):
    from ray import serve

    from serving.app import build_app

    root = tmp_path_factory.mktemp("ab-url")
    index = write_catalog_index(root / "index")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {
        "index": index,
        "arms": "ctl=retrieval:1,trt=greedy:1",
        "events": str(root / "server-events"),
        "encoder": "none",
        "num_candidates": "20",
        "flush_seconds": "3600",  # only the graceful stop writes the server's log
    }
    serve.run(build_app(args), name=APP, route_prefix="/")
    yield {"url": f"http://127.0.0.1:{port}", "index": index, "events": root / "server-events", "root": root}
    serve.shutdown()


@pytest.mark.slow  # Serve start-up on 2 cores dominates: about 1.5 minutes
def test_url_mode_runs_against_the_server_and_its_log_agrees(live_server, capsys):
    from ray import serve

    out = live_server["root"] / "run"
    code, output = cli_output(
        capsys,
        "ab", "--url", live_server["url"], "--index", live_server["index"], "--users", "60",
        "--out", str(out), "--concurrency", "4", "--no-progress", "--env", "budget=6",
    )  # fmt: skip
    assert code == 0, output
    report = json.loads((out / "report.json").read_text())
    assert set(report["arms"]) == {"ctl", "trt"}
    assert report["arms"]["ctl"]["policy"] == "retrieval" and report["arms"]["trt"]["policy"] == "greedy"
    assert report["arms"]["ctl"]["users"] + report["arms"]["trt"]["users"] == 60
    assert 0.0 <= report["srm_p_value"] <= 1.0
    assert {c["metric"] for c in report["comparisons"]} == {
        "session_return",
        "clicks",
        "ctr",
        "session_length",
    }

    serve.delete(APP)  # graceful: the server writes every event it acknowledged
    client_imp = read_impressions(str(out / "events")).to_pandas()
    server_imp = read_impressions(str(live_server["events"])).to_pandas()
    assert len(client_imp) > 60 and len(client_imp) == len(server_imp)
    key = ["request_id", "position"]
    merged = client_imp.merge(server_imp, on=key, suffixes=("_client", "_server"), validate="one_to_one")
    assert len(merged) == len(client_imp)
    for column in ("item_id", "arm", "policy"):
        assert (merged[f"{column}_client"] == merged[f"{column}_server"]).all(), column
    assert np.allclose(merged["score_client"], merged["score_server"], rtol=1e-5, atol=1e-6)
    # The client cannot know propensities; the server logs them.
    assert merged["propensity_client"].isna().all()
    assert merged["propensity_server"].between(0, 1, inclusive="right").all()
    # Users are pseudonymized by the server, but a user's requests stay in one arm on both sides.
    assert (server_imp.groupby("user_id")["arm"].nunique() == 1).all()
    client_fb = read_feedback(str(out / "events")).to_pandas()
    server_fb = read_feedback(str(live_server["events"])).to_pandas()
    as_set = lambda fb: set(zip(fb["request_id"], fb["item_id"], fb["event"], strict=True))  # noqa: E731
    assert len(client_fb) > 0 and as_set(client_fb) == as_set(server_fb)
    assert math.isclose(client_fb["value"].sum(), server_fb["value"].sum(), rel_tol=1e-6)
