"""A learner that learns: PPO trained on ``classic`` (the world it was measured on) beats ``random`` and
``retrieval`` on held-out users with a paired 95% interval above 0 over 2 seeds (catches a broken loss,
export or evaluation). Slow: minutes."""

from __future__ import annotations

import pytest

from trainers.compare import compare
from trainers.compare_config import CompareConfig


@pytest.mark.slow
def test_ppo_beats_random_and_retrieval_on_held_out_users(ray_session, tmp_path):
    cfg = CompareConfig(
        out=str(tmp_path),
        preset="classic",
        methods=["ppo"],
        seeds=2,
        iterations=10,
        baselines=["random", "retrieval"],
        test_users=1000,
        train=["minibatch_size=256", "validate_every=5", "validate_users=300", "checkpoint_every=10"],
        bootstrap_reps=1000,
    )
    summary = compare(cfg, command="tests/test_slate_learning.py")
    print(summary["markdown"])  # the README's table: `pytest -m slow -s tests/test_slate_learning.py`
    for baseline in ("random", "retrieval"):
        diff = summary["differences"][f"ppo - {baseline}"]
        assert diff["ci"][0] > 0, (baseline, diff)
