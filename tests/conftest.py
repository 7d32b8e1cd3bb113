"""Shared fixtures: one real local Ray per test session, the shared MovieLens data when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
MOVIELENS_SMALL = REPO_ROOT.parent / "shared" / "data" / "movielens-small"


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray for the whole test session (start-up costs seconds; see FACTS.md)."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
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
