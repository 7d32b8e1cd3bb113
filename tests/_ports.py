"""Free TCP ports for the servers and Ray nodes that tests start.

``bind(0)`` hands out a port from the kernel's ephemeral range, the range it also draws the local port of
every outgoing connection from. Such a port, released and given to a server that binds it seconds later
(a Ray GCS starting on a loaded 2-core machine), can meanwhile become the local end of one of the many
connections of the test session's own Ray, and the server fails with "Address already in use". Ports
below the ephemeral range are never given to outgoing connections, so the picks come from there, above
Ray's default ports (GCS 6379, dashboard 8265, client 10001, workers 10002–19999).
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 20_000
_picked: set[int] = set()
_draw = random.Random()  # seeded from the OS: concurrent test runs draw different ports


def ephemeral_start() -> int:
    """The first port of the kernel's ephemeral range (32768 unless configured)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port() -> int:
    """A port below the ephemeral range that nothing listens on and this process has not handed out."""
    highest = ephemeral_start()
    for _ in range(1000):
        port = _draw.randrange(LOWEST, highest)
        if port in _picked:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))  # servers bind every interface or loopback: this checks both
            except OSError:
                continue
        _picked.add(port)
        return port
    raise RuntimeError(f"no free port in [{LOWEST}, {highest})")
