"""``rayrec submit`` against a real two-node Ray cluster started on this machine.

The head (``ray start --head``) and a worker (``ray start --address``) each get one CPU, their own custom
resource, their own temp dir and their own ports: two raylets on one host would otherwise fight over
the dashboard agent's and the Ray client server's fixed default ports, and another Ray on this machine
(the test session's own, other test runs) must stay untouched. Each node runs ``ray start --block`` in
its own process group and is shut down by its process id (SIGTERM makes ``ray start`` stop the node's
processes); ``ray stop`` would kill every Ray on the machine.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from _ports import free_port
from _ray_start import DASHBOARD_STARTUP_TIMEOUT_S, NODE_ENV

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc for process groups")

REPO_ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))
# Ray 2.60 turns token auth on for `ray start` wherever a token exists (~/.ray/auth_token, written by
# any local `ray.init`); this cluster always uses a token of its own, the machine's file stays untouched.
TOKEN = secrets.token_hex(32)
AUTH_ENV = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}
START_TIMEOUT_S = DASHBOARD_STARTUP_TIMEOUT_S + 60  # registration waits longer than the dashboard's start-up
STOP_TIMEOUT_S = 30
START_ATTEMPTS = 3
# What `ray start` prints when a start is worth another try with fresh ports: Ray's own startup timeout
# on a loaded machine, or a port taken between the pick and the bind.
RETRYABLE = (
    "timed out during startup",
    "Address already in use",
    "Failed to start the grpc server",
    "Failed to start the dashboard",
)


def group_members(pgid: int) -> dict[int, str]:
    """Live processes of process group ``pgid``: pid → command line."""
    members = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "Z":  # exited, waiting to be reaped
                continue
            members[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue
    return members


@dataclass
class RayNode:
    """One ``ray start --block`` process; its process group holds the node's GCS, raylet, agents, workers."""

    name: str
    proc: subprocess.Popen
    log: Path
    core_pids: dict[str, int] = field(default_factory=dict)

    def find_core_pids(self) -> dict[str, int]:
        """The node's raylet (and, on the head, GCS server) process ids."""
        found = {}
        for pid, cmdline in group_members(self.proc.pid).items():
            executable = Path(cmdline.split(" ", 1)[0]).name
            if executable in ("raylet", "gcs_server"):
                found[executable] = pid
        self.core_pids = found
        return found

    def stop(self) -> list[int]:
        """SIGTERM the node's ``ray start``; returns the pids of its group still alive after the timeout."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT_S)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while (left := group_members(self.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.5)
        if left:  # leave nothing behind even when the test is about to fail
            os.killpg(self.proc.pid, signal.SIGKILL)
        return sorted(left)


def die_with_this_process() -> None:
    """In the child before exec: the kernel SIGTERMs it if the test process dies (PR_SET_PDEATHSIG), so
    a killed test run leaves no cluster behind on a shared machine."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def start_node(name: str, root: Path, *args: str) -> RayNode:
    """``ray start --block`` with one CPU, a small object store and ports of its own."""
    ports = {
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--runtime-env-agent-port": free_port(),
        "--metrics-export-port": free_port(),
    }
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | AUTH_ENV
    env |= NODE_ENV
    # Job entrypoints say `python`: it must be this environment's, as on a cluster image.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    log = root / f"{name}.log"
    command = [
        RAY,
        "start",
        "--block",
        "--num-cpus=1",
        "--num-gpus=0",
        f"--object-store-memory={100 * 1024**2}",
        "--disable-usage-stats",
        f"--temp-dir={root / name}",
        *[f"{flag}={port}" for flag, port in ports.items()],
        *args,
    ]
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            command,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_this_process,
        )
    return RayNode(name, proc, log)


def get_json(url: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        return json.load(answer)


def wait_until(what: str, check, nodes: list[RayNode]):
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        for node in nodes:
            if node.proc.poll() is not None:
                raise RuntimeError(f"ray start for the {node.name} exited:\n{node.log.read_text()[-3000:]}")
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        time.sleep(0.5)
    logs = "\n".join(node.log.read_text()[-2000:] for node in nodes)
    raise RuntimeError(f"timed out waiting for {what}:\n{logs}")


@dataclass
class TwoNodeCluster:
    dashboard: str
    nodes: list[RayNode]
    node_ids: dict[str, str]
    """custom resource name → node id"""
    root: Path


def start_until_registered(nodes: list[RayNode], start, registered, what: str) -> None:
    """``start(attempt)`` a node and wait until ``registered()``; a start that fails in a way worth another
    try (:data:`RETRYABLE`) is stopped and made again, with fresh ports."""
    for attempt in range(START_ATTEMPTS):
        node = start(attempt)
        nodes.append(node)
        try:
            wait_until(f"{what} to register", registered, [node])
            return
        except RuntimeError as error:
            # The whole log: the error shows only its end, and Ray prints its reason before the details.
            said = f"{error}\n{node.log.read_text()}"
            if not any(sign in said for sign in RETRYABLE) or attempt + 1 == START_ATTEMPTS:
                raise
            nodes.remove(node)
            node.stop()


@pytest.fixture(scope="module")
def two_node_cluster() -> Iterator[TwoNodeCluster]:
    root = Path(tempfile.mkdtemp(prefix="rr-cluster-"))  # short: Ray's unix socket paths must fit 107 bytes
    ports: dict[str, int] = {}
    nodes: list[RayNode] = []

    def dashboard() -> str:
        return f"http://127.0.0.1:{ports['dashboard']}"

    def start_head(attempt: int) -> RayNode:
        ports.update(gcs=free_port(), dashboard=free_port())
        return start_node(
            f"head{attempt}",
            root,
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={ports['gcs']}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={ports['dashboard']}",
            f"--ray-client-server-port={free_port()}",
            '--resources={"node_head": 1}',
        )

    def start_worker(attempt: int) -> RayNode:
        return start_node(
            f"worker{attempt}",
            root,
            f"--address=127.0.0.1:{ports['gcs']}",
            "--node-ip-address=127.0.0.1",
            '--resources={"node_worker": 1}',
        )

    def alive_nodes(*wanted: str) -> dict[str, str] | None:
        listing = get_json(f"{dashboard()}/api/v0/nodes?limit=100")["data"]["result"]["result"]
        ids = {
            resource: node["node_id"]
            for node in listing
            if node["state"] == "ALIVE"
            for resource in wanted
            if resource in node["resources_total"]
        }
        return ids if len(ids) == len(wanted) else None

    try:
        # The worker starts once the head answers: started together on a loaded 2-core machine, the
        # worker's raylet can miss `ray start`'s fixed 30 s registration wait while the head's GCS boots.
        start_until_registered(nodes, start_head, lambda: alive_nodes("node_head"), "the head")
        start_until_registered(nodes, start_worker, lambda: alive_nodes("node_worker"), "the worker")
        node_ids = wait_until(
            "both nodes to register", lambda: alive_nodes("node_head", "node_worker"), nodes
        )
        yield TwoNodeCluster(dashboard(), nodes, node_ids, root)
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(root, ignore_errors=True)


def rayrec(*args: str, token: str | None = TOKEN, timeout: float = 180) -> subprocess.CompletedProcess:
    """The installed CLI, as a user runs it, from the repository root, with ``token`` as its Ray auth token."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER", "RAY_AUTH"))
    }
    if token is not None:
        env["RAY_AUTH_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "rayrec", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_submit_runs_a_pipeline_step_on_both_nodes(two_node_cluster: TwoNodeCluster):
    out = two_node_cluster.root / "shared" / "shards"
    done = rayrec(
        "submit",
        "--address",
        two_node_cluster.dashboard,
        "--",
        "python",
        "-m",
        "tests.cluster_probe",
        "--out",
        out.as_uri(),
        "--resource",
        "node_head",
        "--resource",
        "node_worker",
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert "succeeded" in done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    # Each task ran on the node that owns its resource, and the two nodes are distinct.
    assert result["writers"] == two_node_cluster.node_ids
    assert len(set(result["writers"].values())) == 2
    assert result["rows"] == 10
    assert result["row_nodes"] == sorted(two_node_cluster.node_ids.values())
    assert sorted(p.name for p in out.iterdir()) == ["part-node_head.parquet", "part-node_worker.parquet"]
    # The job ran the uploaded copy of the repository, not this checkout.
    assert "_ray_pkg_" in result["rayrec_path"]
    assert not result["rayrec_path"].startswith(str(REPO_ROOT))


def test_failing_job_exits_non_zero_with_the_jobs_status(two_node_cluster: TwoNodeCluster):
    done = rayrec(
        "submit",
        "--address",
        two_node_cluster.dashboard,
        "--",
        "python",
        "-c",
        "import sys; print('about to fail'); sys.exit(3)",
    )
    assert done.returncode == 3
    assert "about to fail" in done.stdout
    assert re.search(r"error: job \S+ FAILED: .*exit code 3", done.stderr), done.stderr
    assert "Traceback" not in done.stderr


def test_no_wait_prints_the_job_id_and_the_job_runs(two_node_cluster: TwoNodeCluster):
    marker = two_node_cluster.root / "no-wait-marker"
    done = rayrec(
        "submit",
        "--no-wait",
        "--env",
        f"MARKER={marker}",
        "--address",
        two_node_cluster.dashboard,
        "--",
        'python -c \'import os, pathlib; pathlib.Path(os.environ["MARKER"]).write_text("ran")\'',
    )
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    assert re.fullmatch(r"raysubmit_\w+", job_id)

    def finished():
        status = get_json(f"{two_node_cluster.dashboard}/api/jobs/{job_id}")["status"]
        return status if status in ("SUCCEEDED", "FAILED", "STOPPED") else None

    assert wait_until(f"job {job_id}", finished, two_node_cluster.nodes) == "SUCCEEDED"
    assert marker.read_text() == "ran"


def test_a_wrong_auth_token_is_one_clear_line(two_node_cluster: TwoNodeCluster):
    done = rayrec("submit", "--address", two_node_cluster.dashboard, "--", "python", "-V", token="0" * 64)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: the Ray cluster at {two_node_cluster.dashboard} rejected")
    assert len(done.stderr.strip().splitlines()) == 1


def test_nodes_shut_down_by_their_own_process_ids(two_node_cluster: TwoNodeCluster):
    head, worker = two_node_cluster.nodes
    assert set(head.find_core_pids()) == {"gcs_server", "raylet"}
    assert set(worker.find_core_pids()) == {"raylet"}
    core = [(pid, node.proc.pid) for node in (head, worker) for pid in node.core_pids.values()]
    assert worker.stop() == []
    assert head.stop() == []
    assert [pid for pid, pgid in core if pid in group_members(pgid)] == []


def test_unreachable_address_is_one_clear_line():
    port = free_port()  # nothing listens on it
    done = rayrec("submit", "--address", f"127.0.0.1:{port}", "--connect-timeout", "5", "--", "python", "-V")
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: cannot reach the Ray cluster at http://127.0.0.1:{port}")
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_unroutable_address_gives_up_with_one_line():
    # Depending on the network this times out after --connect-timeout, is refused, or meets a proxy that
    # is no Ray dashboard: each must end in one line naming the address, never a hang or a traceback.
    done = rayrec("submit", "--address", "http://10.255.255.1:8265", "--connect-timeout", "1", "--", "python")
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "http://10.255.255.1:8265" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--address", "ray://head:10001", "--", "python", "-V"], "Ray Client address"),
        (["--address", "http://127.0.0.1:1", "--"], "no command to run"),
        (["--address", "http://127.0.0.1:1", "--env", "NOVALUE", "--", "python"], "expected KEY=VALUE"),
        (
            ["--address", "http://127.0.0.1:1", "--working-dir", "/nonexistent/dir", "--", "x"],
            "no such directory",
        ),
        (["--address", "http://127.0.0.1:1", "--connect-timeout", "0", "--", "x"], "must be positive"),
    ],
)
def test_bad_submit_arguments_are_clear_errors(args: list[str], message: str, capsys):
    # Checked before anything reaches a cluster, so the CLI runs in-process here.
    from rayrec.cli import main

    assert main(["submit", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
