"""Connecting to Ray: a cluster when asked, else an embedded local instance sized to this machine.

Quiet by default. A command prints its own progress and nothing of Ray's: :func:`init_ray` sends Ray's
driver-side Python logs (``ray``, ``ray.data``, ``ray.train``, ``ray.tune``, ``ray.rllib``, ``ray.serve``) and
the Python warnings of the libraries (Ray, torch, Gymnasium, ...) to one ``ray.log`` file, turns Ray Data's
progress bars off, and does not forward the workers' stdout/stderr to the driver (they stay in Ray's session
logs, whose directory ``ray.log`` names). The command prints one ``Ray logs: PATH`` line instead.
``verbose=True`` (``--verbose`` on every command) leaves Ray's logging as Ray sets it up.

rayrec's own messages are printed, never raised through :mod:`warnings`, so routing every warning to the log
hides only the libraries'.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rayrec import storage
from rayrec.errors import RayrecError

RAY_LOG_FILE = "ray.log"
"""The file, in a command's run directory, that holds Ray's logs when the command is quiet."""

RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.rllib", "ray.serve")
"""Ray's driver-side loggers. ``ray.data``, ``ray.rllib`` and ``ray.serve`` do not propagate to ``ray``."""

WARNINGS_LOGGER = "py.warnings"
"""Where :func:`logging.captureWarnings` sends Python warnings."""

LOG_FORMAT = "%(asctime)s\t%(levelname)s %(name)s %(filename)s:%(lineno)s -- %(message)s"


def resolve_address(address: str | None) -> str | None:
    """``--address`` wins, then ``RAY_ADDRESS``; ``None`` means an embedded local Ray."""
    return address or os.environ.get("RAY_ADDRESS") or None


def init_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    quiet: bool = True,
    log_dir: str | Path | None = None,
    verbose: bool = False,
) -> Path | None:
    """Connect to the cluster at ``address`` (or ``RAY_ADDRESS``), else start a local Ray.

    Reuses an instance that is already up (a test session's, a job's driver on a cluster, or the ``rayrec
    demo`` that runs every stage in one process), leaving its logging as it is. The local instance gets every
    core of this machine unless ``num_cpus`` says otherwise and no dashboard, so a laptop run starts in a few
    seconds.

    Unless ``verbose``, Ray's logs go to ``LOG_DIR/ray.log`` (a fresh temporary directory when ``log_dir`` is
    None or a remote URI), announced by one ``Ray logs: PATH`` line on stdout; see the module docstring. With
    ``verbose``, Ray logs to the terminal as it does by default: warnings and up from the driver's ``ray``
    logger (every level when ``quiet`` is False) and every worker's output forwarded. Returns the log file, or
    None when Ray logs to the terminal or was already up.
    """
    import ray

    if ray.is_initialized():
        return None
    target = resolve_address(address)
    log_file = None if verbose else quiet_ray_logging(log_dir)
    if log_file is None:  # Ray's default: its records and every worker's output on the terminal
        kwargs: dict = {"logging_level": logging.WARNING if quiet else logging.INFO, "log_to_driver": True}
    else:  # ray.init re-formats the ray logger's handlers: keep ray.log's format
        kwargs = {"logging_level": logging.INFO, "logging_format": LOG_FORMAT, "log_to_driver": False}
    if target is None:
        kwargs.update(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False)
    try:
        ray.init(address=target, **kwargs)
    except ConnectionError as exc:
        raise RayrecError(f"cannot reach the Ray cluster at {target!r}: {exc}") from None
    if log_file is not None:
        _log_session_dir()
    return log_file


# --- quiet logging ----------------------------------------------------------------------------------------


@dataclass
class _QuietState:
    handler: logging.FileHandler | None = None
    """The handler writing ``ray.log``; None until :func:`quiet_ray_logging` runs."""
    announced: set[Path] = field(default_factory=set)
    """Log files already named on stdout (each once per process)."""


_STATE = _QuietState()


def _is_console(handler: logging.Handler) -> bool:
    """A handler that writes to stderr or stdout (Ray's ``PlainRayHandler``, a bare ``StreamHandler()``)."""
    if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
        return False
    return handler.stream in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)


class _FileOnlyLogger(logging.Logger):
    """A Ray logger while quiet: a console handler added to it later is replaced by the ``ray.log`` handler.

    Ray configures some of its loggers when a library is first imported (``import ray.data`` resets the
    ``ray.data`` logger, ``import ray.rllib`` gives ``ray.rllib`` a stderr handler, ``serve.run`` resets
    ``ray.serve``), which in a command happens after :func:`init_ray`. File handlers Ray adds (Ray Data's
    per-dataset logs) are kept.
    """

    def addHandler(self, hdlr: logging.Handler) -> None:
        if _STATE.handler is not None and _is_console(hdlr):
            hdlr = _STATE.handler
        super().addHandler(hdlr)


def ray_log_path(log_dir: str | Path | None) -> Path:
    """``LOG_DIR/ray.log``; a new temporary directory stands in for None or a remote URI (s3://, gs://)."""
    if log_dir is None or storage.is_remote(log_dir):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return Path(tempfile.mkdtemp(prefix=f"rayrec-{stamp}-")) / RAY_LOG_FILE
    return Path(storage.local_path(log_dir)).absolute() / RAY_LOG_FILE


def quiet_ray_logging(log_dir: str | Path | None = None) -> Path:
    """Send Ray's driver-side logs and Python's warnings to ``ray.log``; print ``Ray logs: PATH`` once.

    Called by :func:`init_ray` before ``ray.init`` (so that its own start-up lines land in the file too). Ray's
    loggers keep their levels (the ``ray`` logger is set to INFO by ``ray.init``); their console handlers are
    replaced by one file handler, now and whenever Ray adds one later. It lasts for the rest of the process.
    """
    path = ray_log_path(log_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = _STATE.handler
    if previous is None or Path(previous.baseFilename) != path:
        handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler.setLevel(logging.INFO)  # Ray Data logs DEBUG to its own files; INFO is enough here
        _STATE.handler = handler
    handler = _STATE.handler
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            if _is_console(old) or old is previous:
                logger.removeHandler(old)
        if type(logger) is logging.Logger:  # leave a library's own Logger subclass alone
            logger.__class__ = _FileOnlyLogger
        logger.addHandler(handler)
        logger.propagate = False  # each logger writes ray.log once; none reaches the root logger's handlers
    # Python warnings (Ray's, torch's, Gymnasium's deprecations and user warnings) go to the file as well.
    logging.captureWarnings(True)
    warnings_logger = logging.getLogger(WARNINGS_LOGGER)
    warnings_logger.handlers = [handler]
    warnings_logger.propagate = False
    if previous is not None and previous is not handler:
        previous.close()
    _quiet_ray_data()
    logging.getLogger("ray").info("rayrec: %s", " ".join(sys.argv))
    if path not in _STATE.announced:
        _STATE.announced.add(path)
        print(f"Ray logs: {path}", flush=True)
    return path


def _quiet_ray_data() -> None:
    """Ray Data's progress bars off (in a pipe they would be progress lines logged every few seconds)."""
    # Read when ray.data is first imported, which in most commands happens after init_ray.
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    if "ray.data" in sys.modules:
        from ray.data import DataContext

        context = DataContext.get_current()
        context.enable_progress_bars = False
        context.enable_operator_progress_bars = False


def _log_session_dir() -> None:
    """Name, in ``ray.log``, the directory of Ray's own process logs (workers' stdout/stderr among them)."""
    try:
        from ray._private.worker import _global_node

        logs = _global_node.get_logs_dir_path() if _global_node is not None else None
    except (ImportError, AttributeError):  # private API; a remote (ray://) driver has no local node
        logs = None
    if logs:
        logging.getLogger("ray").info("rayrec: Ray's process logs (workers, raylet, GCS) are in %s", logs)
