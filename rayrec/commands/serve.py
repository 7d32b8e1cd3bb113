"""``rayrec serve``: run the HTTP recommender (Ray Serve) until SIGINT/SIGTERM, then flush the event log.

Ingress default: Ray 2.60's bundled HAProxy (``RAY_SERVE_ENABLE_HA_PROXY=1``) with throughput-optimized
Serve (``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: gRPC between deployments, no extra event-loop threads). On
2 cores the default Python proxy saturates near 180 requests/s (measured with benchmarks/serve.py), below the 200 requests/s this
server is sized for; ``benchmarks/serve.py`` measures both with the full pipeline. ``--ingress proxy`` keeps the Python proxy
(e.g. on a cluster whose nodes lack the haproxy binary). The choice applies to a Ray started here; on an
existing cluster it is the cluster's ``RAY_SERVE_ENABLE_HA_PROXY`` that counts.

A host other than a loopback address needs ``--api-keys FILE``; ``rayrec api-key add|list|revoke`` (also
registered here) manages that file (docs/operations.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import signal
import socket
import sys
import time
from typing import Literal

from rayrec import storage
from rayrec.cli import add_command
from rayrec.config import RayConfig, add_config_args, config_from_args, save_config
from rayrec.errors import ArtifactError, ConfigError
from rayrec.runtime import init_ray
from serving.settings import AppConfig

APP_NAME = "rayrec"


@dataclasses.dataclass(kw_only=True)
class ServeConfig(AppConfig, RayConfig):
    """``rayrec serve``: the serving application's settings plus where to listen."""

    host: str = "127.0.0.1"
    """Address to listen on; another than a loopback address (e.g. 0.0.0.0) exposes the server to the
    network and needs --api-keys."""
    port: int = 8000
    """HTTP port."""
    ingress: Literal["haproxy", "proxy"] = "haproxy"
    """HTTP ingress of a Ray started here: haproxy (bundled with ray[serve], ~6x the default proxy's
    throughput on 2 cores) or proxy (Serve's Python proxy)."""


def app_config(config: ServeConfig) -> AppConfig:
    return AppConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(AppConfig)})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(config: ServeConfig) -> None:
    """A server reachable from the network needs API keys."""
    if not is_loopback(config.host) and not config.api_keys:
        raise ConfigError(
            f"--host {config.host} exposes the server to the network: give it --api-keys FILE "
            "(make keys with `rayrec api-key add FILE --id NAME --scopes recommend,feedback`)"
        )


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port"
            ) from None


class StopRequested(Exception):
    """SIGINT or SIGTERM asked the server to stop."""


def stop_on_signals() -> None:
    """SIGINT/SIGTERM raise :class:`StopRequested` in the main thread (replacing Ray's own handlers,
    which exit at once); later signals are ignored so that the shutdown can write the event log."""

    def handler(signum: int, _frame) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        raise StopRequested(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def start_server(config: ServeConfig, stop_on_signal: bool = False) -> str:
    """Check the artifacts and the port, deploy the app on Ray Serve and return its URL.

    The artifacts (index manifest, every arm's policy) and the port are checked before anything is
    deployed, so a typo fails in a second with a clear message instead of a half-started server.
    ``stop_on_signal``: from the moment Ray is up, SIGINT/SIGTERM raise :class:`StopRequested` (also
    while the app is still deploying), so that the caller stops gracefully.
    """
    # Heavy (Ray Serve, and serving.app imports it): here, so that `rayrec --help` stays fast.
    from ray import serve

    from serving.app import bind_app, resolve_config

    check_exposure(config)
    # checks the index manifest and every arm's policy, and settles K (the trained policies' by default)
    served, encoder, dim = resolve_config(app_config(config))
    app = bind_app(served, encoder, dim)
    check_port_free(config.host, config.port)
    storage.makedirs(served.events)
    recorded = dataclasses.replace(config, num_candidates=served.num_candidates)  # the K actually served
    print(f"config: {save_config(recorded, served.events)}", flush=True)
    if config.ingress == "haproxy":
        # Read by the processes of a Ray started here. Throughput-optimized Serve runs user code and the
        # handle router on the replica's own event loop and calls deployments over gRPC: on 2 cores it
        # halves the CPU each handle call costs (benchmarks/serve.py).
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    init_ray(
        config.address,
        log_dir=None if storage.is_remote(served.events) else served.events,
        verbose=config.verbose,
    )
    if stop_on_signal:
        stop_on_signals()  # after ray.init, which installs handlers of its own
    serve.start(http_options={"host": config.host, "port": config.port})
    try:
        serve.run(app, name=APP_NAME, route_prefix="/")
    except RuntimeError as exc:
        serve.shutdown()
        raise ArtifactError(f"the application failed to start: {str(exc).strip().splitlines()[-1]}") from None
    return f"http://{config.host}:{config.port}"


def stop_server() -> None:
    """Graceful stop: the event logger's replica writes every acknowledged event on its way out.

    The application is deleted first, which returns once its replicas have stopped (the event logger's
    flush included); ``serve.shutdown`` alone can return while replicas are still stopping, and the
    exiting driver then takes the local Ray, and unwritten events, with it.
    """
    # Heavy: here, so that `rayrec --help` stays fast.
    import ray
    from ray import serve

    if not ray.is_initialized():  # stopped before Ray started (a bad argument, an early signal)
        return
    try:
        serve.delete(APP_NAME)
    finally:
        serve.shutdown()


def wait_until_stopped() -> str:
    """Block until SIGINT or SIGTERM; returns the signal's name."""
    stop_on_signals()
    try:
        while True:
            time.sleep(3600)
    except StopRequested as stop:
        return str(stop)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(ServeConfig, args)
    try:
        url = start_server(config, stop_on_signal=True)
        print(f"serving {url} (docs at /docs); Ctrl-C or SIGTERM stops", flush=True)
        print(f"{wait_until_stopped()}: stopping, writing every acknowledged event ...", flush=True)
    except StopRequested as stop:
        print(f"{stop} while starting: stopping ...", flush=True)
    finally:
        stop_server()
    print(f"stopped; events under {app_config(config).with_absolute_paths().events}", flush=True)
    return 0


def run_api_key(args: argparse.Namespace) -> int:
    """``rayrec api-key add|list|revoke FILE``."""
    from serving.auth import add_key, list_keys, parse_scopes, revoke_key

    if args.action == "add":
        if not args.id or not args.scopes:
            raise ConfigError("api-key add needs --id NAME and --scopes SCOPE[,SCOPE]")
        key = add_key(args.file, args.id, parse_scopes(args.scopes))
        print(f"added API key {args.id!r} to {args.file}; the key (shown only now):", file=sys.stderr)
        print(key, flush=True)
    elif args.action == "revoke":
        if not args.id:
            raise ConfigError("api-key revoke needs --id NAME")
        revoke_key(args.file, args.id)
        print(f"revoked {args.id!r}; servers using {args.file} refuse it within seconds", flush=True)
    else:
        for entry in list_keys(args.file):
            print(f"{entry['id']}\t{','.join(entry['scopes'])}\t{entry.get('created', '')}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "serve",
        run,
        help="serve slate recommendations over HTTP with A/B arms and an event log (Ray Serve)",
    )
    add_config_args(parser, ServeConfig, flags={"arms": "--arm"})
    keys = add_command(
        subparsers,
        "api-key",
        run_api_key,
        help="add, list or revoke API keys in a key file for `rayrec serve --api-keys FILE`",
        description="Keys are stored as SHA-256 hashes with scopes (recommend, feedback, admin); a new "
        "key is printed once, on stdout. Servers re-read the file within seconds of a change.",
    )
    keys.add_argument("action", choices=["add", "list", "revoke"], help="what to do")
    keys.add_argument("file", help="the key file (created 0600 by add)")
    keys.add_argument("--id", help="the key's name (add, revoke)")
    keys.add_argument("--scopes", help="comma-separated scopes for add: recommend, feedback, admin")
