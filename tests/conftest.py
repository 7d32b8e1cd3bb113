"""Shared fixtures: one real local Ray per test session, the shared MovieLens data when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
MOVIELENS_SMALL = REPO_ROOT.parent / "shared" / "data" / "movielens-small"


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray for the whole test session (Ray start-up costs seconds)."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not ray.is_initialized():
        # More logical CPUs than cores: the shared Serve app holds a share while Ray Train and Ray Data
        # tests need whole CPUs for their workers; oversubscribing 2 cores is fine, a deadlock is not.
        ray.init(num_cpus=6, include_dashboard=False, logging_level="WARNING")
    yield ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def movielens_small() -> Path:
    """``../shared/data/movielens-small``; the test skips cleanly where it is absent."""
    if not (MOVIELENS_SMALL / "ratings.csv").exists():
        pytest.skip(f"MovieLens data not found at {MOVIELENS_SMALL}")
    return MOVIELENS_SMALL


@pytest.fixture(scope="session")
def live_app(ray_session, tmp_path_factory):
    """The real Serve app on 127.0.0.1, started once for every module that uses it (see tests/_serve_app.py)."""
    from _serve_app import start_live_app

    app = start_live_app(tmp_path_factory.mktemp("live-app"))
    yield app
    app.stop()


@pytest.fixture
def stopped_live_app(live_app):
    """``live_app`` after its graceful stop: its event log is on disk. Tests using it run last."""
    live_app.stop()
    return live_app


def pytest_collection_modifyitems(config, items):
    """Tests that stop the shared app run after every test that needs it live (stable otherwise)."""
    items.sort(key=lambda item: "stopped_live_app" in getattr(item, "fixturenames", ()))
