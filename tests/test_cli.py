"""The installed ``rayrec`` console script, run as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from data_samples import ML100K_USERS, leaks, write_ml100k

RAYREC = Path(sys.executable).parent / "rayrec"


def rayrec(*args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "RAYREC_PSEUDONYM_KEY"}
    assert RAYREC.exists(), f"console script not installed at {RAYREC} (pip install -e .)"
    return subprocess.run([str(RAYREC), *args], capture_output=True, text=True, timeout=300, env=env)


def test_help():
    result = rayrec("--help")
    assert result.returncode == 0, result.stderr
    assert "data" in result.stdout
    result = rayrec("data", "--help")
    assert result.returncode == 0, result.stderr
    for command in ("synth", "import-movielens", "import", "stats"):
        assert command in result.stdout


def test_import_movielens_then_stats(tmp_path):
    source = write_ml100k(tmp_path / "ml-100k")
    out = tmp_path / "data"
    result = rayrec("data", "import-movielens", str(source), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "imported ml-100k: 4 items, 5 interactions, 3 users" in result.stdout
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["command"] == "ImportMovieLensConfig" and config["src"] == str(source)
    result = rayrec("data", "stats", str(out), "--json", str(out / "stats.json"))
    assert result.returncode == 0, result.stderr
    assert "popularity gini" in result.stdout and "interactions per user" in result.stdout
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["items"], stats["users"], stats["interactions"]) == (4, 3, 5)
    assert (out / "stats.config.yaml").exists()
    assert leaks(out, [str(user) for user in ML100K_USERS]) == []


def test_import_movielens_small(movielens_small, tmp_path):
    result = rayrec("data", "import-movielens", str(movielens_small), "--out", str(tmp_path / "ml"))
    assert result.returncode == 0, result.stderr
    assert "9,125 items, 100,004 interactions, 671 users" in result.stdout


def test_bad_input_exits_2_with_one_line_and_no_traceback(tmp_path):
    source = write_ml100k(tmp_path / "src", extra_data_lines=("987654301\t1\tfive\t881250960",))
    result = rayrec("data", "import-movielens", str(source), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {source / 'u.data'}, row 6 (line 6), column 'rating': 'five' is not a number"]
    result = rayrec(
        "data", "import-movielens", str(source), "--out", str(tmp_path / "out"), "--skip-bad-rows"
    )
    assert result.returncode == 0, result.stderr
    assert "skipped 1 bad rows (u.data: 1)" in result.stdout
    result = rayrec("data", "stats", str(tmp_path / "nothing-here"))
    assert result.returncode == 2 and result.stderr.startswith("error:") and "Traceback" not in result.stderr
    result = rayrec(
        "data", "import", str(source / "u.data"), "--out", str(tmp_path / "x"), "--map", "who=uid"
    )
    assert (
        result.returncode == 2 and "unknown field 'who'" in result.stderr and "Traceback" not in result.stderr
    )


def test_demo_serving_stage_times_requests_against_a_server():
    """The demo's serving stage (rayrec.commands.demo_serve) over real HTTP, here against a stdlib server."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import pyarrow as pa

    from rayrec.commands.demo_serve import exercise_server, latency_summary, request_bodies

    seen: list[tuple[str, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # no access log on stderr
            pass

        def answer(self, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(202 if self.path == "/feedback" else 200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.answer({"ok": True})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            seen.append((self.path, body))
            items = [{"item_id": item, "score": 1.0, "propensity": 1.0} for item in body.get("history", [])]
            self.answer({"request_id": f"r{len(seen)}", "arm": "control", "items": items})

    interactions = pa.table({"user_id": ["u1", "u2", "u1", "u3", "u4"], "item_id": ["a", "b", "c", "d", "e"]})
    bodies = request_bodies(interactions, count=3)
    assert [b["user_id"] for b in bodies] == ["u1", "u2", "u3"]
    assert [b["history"] for b in bodies] == [["a"], ["a", "b"], ["a", "b", "c"]]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        latency = exercise_server(f"http://127.0.0.1:{server.server_port}", bodies, show=2)
    finally:
        server.shutdown()
    assert latency["requests"] == 3 and 0 < latency["p50_ms"] <= latency["p99_ms"]
    assert [path for path, _ in seen] == ["/recommend"] * 3 + ["/feedback"]
    assert seen[-1][1] == {"request_id": "r1", "item_id": "a", "event": "click"}
    summary = latency_summary([0.001 * n for n in range(100, 0, -1)])
    assert summary == {"requests": 100, "p50_ms": pytest.approx(50.5), "p99_ms": pytest.approx(99.0)}


def test_a_rerun_demo_replaces_its_stage_outputs_and_keeps_its_data(tmp_path):
    """A second ``rayrec demo`` into the same OUT trains afresh: the earlier run's stage outputs go (train-policy
    refuses a directory holding a run, train-encoder would resume a finished one); data and other folders stay."""
    from rayrec.commands.demo import STAGE_OUTPUTS, clear_previous_demo

    demo, other = tmp_path / "demo", tmp_path / "other"
    for root in (demo, other):
        for name in ("data", "policy", "encoder/train_runs"):
            (root / name).mkdir(parents=True)
            (root / name / "file").write_text("x")
        (root / "summary.md").write_text("table")
    (demo / "config.yaml").write_text("command: DemoConfig\nout: demo\n")
    (other / "config.yaml").write_text("command: TrainPolicyConfig\n")
    clear_previous_demo(str(demo))
    clear_previous_demo(str(other))
    assert sorted(p.name for p in demo.iterdir()) == ["config.yaml", "data"]
    assert (demo / "data" / "file").read_text() == "x"
    assert sorted(p.name for p in other.iterdir()) == [
        "config.yaml",
        "data",
        "encoder",
        "policy",
        "summary.md",
    ]
    assert {"policy", "encoder", "summary.md"} <= set(STAGE_OUTPUTS)
