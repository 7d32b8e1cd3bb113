"""Quiet by default: Ray's own logs go to ``ray.log`` in the run directory, ``--verbose`` shows them.

Each test starts its own Ray in a subprocess (``ray.init`` happens once per process, and the session's shared
Ray from ``conftest.py`` must keep its own logging), with one CPU and ``RAY_ADDRESS`` cleared.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# Runs in the subprocess: start Ray through rayrec, have a worker print, relay a task's progress lines (quiet
# runs), log through Ray's loggers (including ray.data, which resets its logger when first imported, after
# init_ray), raise a library-style warning.
CHILD = textwrap.dedent(
    """
    import logging, sys, time, warnings

    import ray

    from rayrec.runtime import init_ray

    log_file = init_ray(None, num_cpus=1, log_dir=sys.argv[1], verbose=sys.argv[2] == "verbose")

    @ray.remote
    def shout():
        print("WORKER-STDOUT-LINE", flush=True)
        print("WORKER-STDERR-LINE", file=sys.stderr, flush=True)
        return 7

    assert ray.get(shout.remote()) == 7
    if sys.argv[2] == "quiet":
        # a task's progress lines go through train-encoder's relay, which the driver prints
        from trainers.encoder import ProgressRelay

        @ray.remote(num_cpus=0)
        def work(progress):
            for i in range(3):
                progress.put(f"RELAYED-LINE {i}")

        with ProgressRelay(poll_s=0.1) as progress:
            ray.get(work.remote(progress))
    import ray.data  # configures the ray.data logger now, after init_ray

    logging.getLogger("ray.data").warning("RAY-DATA-WARNING-LINE")
    logging.getLogger("ray.train").warning("RAY-TRAIN-WARNING-LINE")
    warnings.warn("LIBRARY-WARNING-LINE", FutureWarning)
    print("PROGRESS-LINE", flush=True)
    time.sleep(3)  # the verbose run shows that worker output reaches the driver within this time
    ray.shutdown()
    print(f"RESULT {log_file}", flush=True)
    """
)

RAY_LINES = ("RAY-DATA-WARNING-LINE", "RAY-TRAIN-WARNING-LINE", "LIBRARY-WARNING-LINE")
WORKER_LINES = ("WORKER-STDOUT-LINE", "WORKER-STDERR-LINE")


def run_child(log_dir: Path, mode: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env["RAY_DEDUP_LOGS"] = "0"
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(log_dir), mode],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_quiet_ray_logs_go_to_the_run_directory(tmp_path):
    result = run_child(tmp_path, "quiet")
    log_file = tmp_path / "ray.log"
    # The one line the user sees about Ray's logs, then the command's own output only.
    assert f"Ray logs: {log_file}" in result.stdout.splitlines()
    assert f"RESULT {log_file}" in result.stdout
    assert "PROGRESS-LINE" in result.stdout
    # the workers' own output stays quiet, their progress reaches the terminal through the driver, in order
    lines = result.stdout.splitlines()
    relayed = [line for line in lines if line.startswith("RELAYED-LINE")]
    assert relayed == [f"RELAYED-LINE {i}" for i in range(3)], result.stdout
    assert lines.index("RELAYED-LINE 2") < lines.index("PROGRESS-LINE")
    terminal = result.stdout + result.stderr
    for line in (*RAY_LINES, *WORKER_LINES, "Started a local Ray instance"):
        assert line not in terminal, f"{line!r} reached the terminal:\n{terminal}"
    assert " INFO " not in result.stderr and " WARNING " not in result.stderr, result.stderr
    # The file holds what the terminal did not: ray.init's INFO lines, Ray's loggers, library warnings.
    logged = log_file.read_text()
    for line in (*RAY_LINES, "Started a local Ray instance"):
        assert line in logged, f"{line!r} missing from ray.log:\n{logged}"
    assert "Ray's process logs" in logged  # where the workers' own output stays


def test_verbose_shows_ray_logs_and_worker_output(tmp_path):
    result = run_child(tmp_path, "verbose")
    assert "Ray logs:" not in result.stdout
    assert "RESULT None" in result.stdout
    assert not (tmp_path / "ray.log").exists()
    terminal = result.stdout + result.stderr
    for line in (*WORKER_LINES, "RAY-DATA-WARNING-LINE", "LIBRARY-WARNING-LINE"):
        assert line in terminal, f"{line!r} missing from the terminal:\n{terminal}"
