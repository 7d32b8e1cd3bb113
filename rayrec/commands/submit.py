"""``rayrec submit``: run any command on a Ray cluster as a Ray job, with this repository as its code.

The command runs on the cluster's head node with the working directory uploaded through the Ray Jobs
API (``runtime_env.working_dir``), so ``python -m trainers.encoder ...`` or ``rayrec train-policy ...``
find the same code there as here; inside the job ``RAY_ADDRESS`` points at the cluster, so every
rayrec command connects to it without an ``--address`` of its own. Logs stream back until the job
ends and the exit status follows the job's: 0 when it succeeded, the driver's exit code (or 1) when
it failed or was stopped, 2 when the cluster could not be reached or the request was invalid.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import re
import shlex
import sys
import time
from pathlib import Path

from rayrec.cli import add_command
from rayrec.config import RayConfig, add_config_args, config_from_args
from rayrec.errors import ConfigError, RayrecError

DEFAULT_EXCLUDES = (
    "/.git/",
    "/.venv/",
    "/venv/",
    "/data/",
    "/runs/",
    "__pycache__/",
    "*.egg-info/",
    ".pytest_cache/",
    ".ruff_cache/",
    ".ipynb_checkpoints/",
)
"""Never uploaded with the working directory (gitignore patterns, ``/`` anchors at its root).

Data and run outputs belong in shared storage (``s3://``, ``gs://`` or a mounted volume), not in a job
package, which Ray caps at a few hundred MiB. Ray also honours the directory's ``.gitignore`` and
``.rayignore``.
"""

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


@dataclasses.dataclass(kw_only=True)
class SubmitConfig(RayConfig):
    """``rayrec submit``: one command, run on a Ray cluster as a Ray job."""

    address: str | None = None
    """Ray Jobs API (dashboard) address of the cluster, e.g. ``http://HEAD:8265``; else
    ``RAY_API_SERVER_ADDRESS``, else ``RAY_ADDRESS``."""
    command: list[str] = dataclasses.field(default_factory=list)
    """The command to run on the cluster (after ``--``); one argument is taken as a shell command line.
    A leading ``rayrec`` runs as ``python -m rayrec`` so the uploaded code is the code that runs."""
    working_dir: str = "."
    """Directory uploaded as the job's working directory (the rayrec repository), or a remote zip URI."""
    exclude: list[str] = dataclasses.field(default_factory=list)
    """Extra gitignore-style patterns left out of the upload (data, runs, .venv and .git always are)."""
    pip: list[str] = dataclasses.field(default_factory=list)
    """Packages pip installs into the job's environment on the cluster (repeatable)."""
    env: list[str] = dataclasses.field(default_factory=list)
    """``KEY=VALUE`` environment variables for the job (repeatable)."""
    wait: bool = True
    """Stream the job's logs and wait for it to end; ``--no-wait`` prints the job id and returns."""
    connect_timeout: float = 10.0
    """Seconds to wait for the cluster to answer before giving up."""

    def __post_init__(self) -> None:
        if not self.command:
            raise ConfigError(
                "no command to run: put it after `--`, e.g. `rayrec submit -- python -m trainers.policy`"
            )
        if self.connect_timeout <= 0:
            raise ConfigError(f"--connect-timeout must be positive, got {self.connect_timeout}")
        for item in self.env:
            key, sep, _ = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"--env {item!r}: expected KEY=VALUE")


def jobs_api_url(address: str | None) -> str:
    """The HTTP URL of the cluster's Jobs API for ``address`` (or the environment's)."""
    target = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not target:
        raise ConfigError("no cluster given: pass --address http://HEAD:8265 (or set RAY_ADDRESS)")
    if target.startswith("ray://"):
        raise ConfigError(
            f"{target} is a Ray Client address; submit jobs to the dashboard address instead, "
            "e.g. http://HEAD:8265"
        )
    if "://" not in target:
        target = f"http://{target}"
    if not target.startswith(("http://", "https://")):
        raise ConfigError(f"unsupported cluster address {target!r}: expected http://HOST:PORT")
    return target.rstrip("/")


def use_local_auth_token() -> dict[str, str]:
    """HTTP headers carrying this machine's Ray auth token, if it has one.

    Ray 2.60 clusters started where a token exists refuse requests without it (HTTP 401). Like
    ``ray.init`` connecting to a cluster, turn token auth on when a token is found (``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``); the Jobs SDK then sends it as well.
    """
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )
    from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    return get_auth_headers_if_auth_enabled({})


def check_reachable(url: str, timeout: float, headers: dict[str, str]) -> str:
    """The Ray version the cluster runs; a clear error, within ``timeout``, when nothing answers.

    The Jobs SDK's own requests have no timeout: an unroutable address would hang for minutes.
    """
    import requests

    try:
        answer = requests.get(f"{url}/api/version", headers=headers, timeout=timeout)
    except requests.Timeout:
        raise RayrecError(f"cannot reach the Ray cluster at {url}: no answer within {timeout:g} s") from None
    except requests.RequestException:
        raise RayrecError(
            f"cannot reach the Ray cluster at {url}: connection failed "
            "(is the head node up, and is this its dashboard port, 8265 by default?)"
        ) from None
    if answer.status_code == 401:
        raise RayrecError(
            f"the Ray cluster at {url} requires its auth token: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, "
            "or put the token in ~/.ray/auth_token"
        )
    if answer.status_code == 403:
        raise RayrecError(
            f"the Ray cluster at {url} rejected this machine's auth token "
            "(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
        )
    try:
        answer.raise_for_status()
        return str(answer.json()["ray_version"])
    except (requests.RequestException, ValueError, KeyError) as exc:
        raise RayrecError(
            f"{url} does not answer like a Ray dashboard ({exc}); pass the dashboard address, 8265 by default"
        ) from None


def entrypoint_of(command: list[str]) -> str:
    """The shell command line the job runs."""
    if command[0] == "rayrec":
        command = ["python", "-m", "rayrec", *command[1:]]
    return command[0] if len(command) == 1 else shlex.join(command)


def runtime_env_of(config: SubmitConfig) -> dict:
    """The job's ``runtime_env``: the uploaded repository, extra pip packages and variables."""
    working_dir = config.working_dir
    if "://" not in working_dir:
        path = Path(working_dir).expanduser()
        if not path.is_dir():
            raise ConfigError(f"--working-dir {working_dir}: no such directory")
        working_dir = str(path.resolve())
    runtime_env: dict = {"working_dir": working_dir, "excludes": [*DEFAULT_EXCLUDES, *config.exclude]}
    if config.pip:
        runtime_env["pip"] = list(config.pip)
    if config.env:
        runtime_env["env_vars"] = dict(item.split("=", 1) for item in config.env)
    return runtime_env


async def _stream_logs(client, job_id: str) -> None:
    async for chunk in client.tail_job_logs(job_id):
        sys.stdout.write(chunk)
        sys.stdout.flush()


def wait_for_end(client, job_id: str, poll_s: float = 1.0):
    """Stream the job's logs, then its final details (the stream can close before the status settles)."""
    import aiohttp

    try:
        asyncio.run(_stream_logs(client, job_id))
    except (RuntimeError, OSError, aiohttp.ClientError) as exc:  # the stream broke: wait on the status
        print(f"log stream lost ({exc}); waiting for job {job_id} to end", file=sys.stderr)
    while True:
        info = client.get_job_info(job_id)
        if str(info.status) in TERMINAL:
            return info
        time.sleep(poll_s)


def summary_of(message: str | None) -> str:
    """The first line of a job's failure message, without the log tail Ray appends (already streamed)."""
    first = (message or "").strip().split("\n", 1)[0]
    return re.sub(r",? last available logs.*$", "", first) or "no message from the cluster"


def run_submit(args: argparse.Namespace) -> int:
    command = list(args.command or [])
    if command[:1] == ["--"]:
        command = command[1:]
    config = config_from_args(SubmitConfig, args, command=command)
    url = jobs_api_url(config.address)
    entrypoint = entrypoint_of(config.command)
    runtime_env = runtime_env_of(config)

    import ray
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    # The SDK logs every packaging step at INFO; this command reports what matters itself.
    logging.getLogger("ray").setLevel(logging.ERROR)
    cluster_version = check_reachable(url, config.connect_timeout, use_local_auth_token())

    if cluster_version != ray.__version__:
        print(
            f"warning: the cluster runs Ray {cluster_version}, this machine Ray {ray.__version__}",
            file=sys.stderr,
        )
    try:
        client = JobSubmissionClient(url)
        job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
    except OSError as exc:  # ConnectionError, and requests' errors
        raise RayrecError(f"cannot reach the Ray cluster at {url}: {exc}") from None
    except AuthenticationError as exc:
        raise RayrecError(f"the Ray cluster at {url} refused this machine's auth token: {exc}") from None
    except (RuntimeError, ValueError) as exc:  # rejected request, package too large
        raise RayrecError(f"the cluster at {url} refused the job: {exc}") from None
    if not config.wait:
        print(job_id)
        print(f"submitted; follow it with `ray job logs --follow {job_id} --address {url}`", file=sys.stderr)
        return 0

    print(f"submitted job {job_id} to {url}: {entrypoint}", file=sys.stderr, flush=True)
    try:
        info = wait_for_end(client, job_id)
    except KeyboardInterrupt:
        print(
            f"\nstopped waiting; job {job_id} keeps running (stop it with `ray job stop {job_id} --address {url}`)",
            file=sys.stderr,
        )
        return 130
    except OSError as exc:
        raise RayrecError(
            f"lost the Ray cluster at {url} while job {job_id} ran ({exc}); the job may still be running"
        ) from None
    status = str(info.status)
    if status == "SUCCEEDED":
        print(f"job {job_id} succeeded", file=sys.stderr)
        return 0
    reason = summary_of(info.message)
    print(f"error: job {job_id} {status}: {reason}", file=sys.stderr)
    return info.driver_exit_code or 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "submit",
        run_submit,
        help="run a command on a Ray cluster as a Ray job (this repository is uploaded as its code)",
        description=(
            "Run COMMAND on the Ray cluster at --address through the Ray Jobs API, streaming its logs and "
            "exiting with its status. Example: rayrec submit --address http://HEAD:8265 -- "
            "rayrec train-encoder --data s3://bucket/data --out s3://bucket/runs/encoder --gpu --workers 4"
        ),
    )
    add_config_args(parser, SubmitConfig, skip=("command",))
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="what to run on the cluster"
    )
