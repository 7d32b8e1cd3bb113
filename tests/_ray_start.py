"""The environment of the ``ray start`` nodes that tests launch.

On a loaded 2-core machine the head's dashboard can take more than Ray's default 60 s to start its
subprocess modules, and ``ray start`` then exits; every node a test starts gets 180 s.
"""

from __future__ import annotations

DASHBOARD_STARTUP_TIMEOUT_S = 180
NODE_ENV = {"RAY_DASHBOARD_STARTUP_TIMEOUT_S": str(DASHBOARD_STARTUP_TIMEOUT_S)}
"""Added to the environment of each ``ray start`` a test runs."""
