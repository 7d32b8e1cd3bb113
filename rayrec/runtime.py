"""Connecting to Ray: a cluster when asked, else an embedded local instance sized to this machine."""

from __future__ import annotations

import logging
import os

from rayrec.errors import RayrecError


def resolve_address(address: str | None) -> str | None:
    """``--address`` wins, then ``RAY_ADDRESS``; ``None`` means an embedded local Ray."""
    return address or os.environ.get("RAY_ADDRESS") or None


def init_ray(address: str | None = None, *, num_cpus: int | None = None, quiet: bool = True) -> None:
    """Connect to the cluster at ``address`` (or ``RAY_ADDRESS``), else start a local Ray.

    Reuses an instance that is already up (a test session's, or a job's driver on a cluster). The
    local instance gets every core of this machine unless ``num_cpus`` says otherwise, no dashboard
    and warnings-only logging, so a laptop run starts in a few seconds.
    """
    import ray

    if ray.is_initialized():
        return
    target = resolve_address(address)
    kwargs: dict = {"logging_level": logging.WARNING if quiet else logging.INFO, "log_to_driver": True}
    if target is None:
        kwargs.update(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False)
    try:
        ray.init(address=target, **kwargs)
    except ConnectionError as exc:
        raise RayrecError(f"cannot reach the Ray cluster at {target!r}: {exc}") from None
