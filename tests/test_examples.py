"""Every script in examples/ runs, small, against the session's Ray (so the examples never rot)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _example(name: str) -> dict:
    return runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name=f"examples.{name}")


def test_every_example_has_a_test():
    tested = {"simulate_baselines", "train_and_evaluate", "serve_recommendations"}
    assert {p.stem for p in EXAMPLES.glob("*.py")} == tested


def test_simulate_baselines():
    results = _example("simulate_baselines")["main"](users=300, num_items=800)
    assert set(results) == {"random", "retrieval", "greedy", "oracle"}
    assert results["retrieval"]["vs_retrieval"]["mean"] == 0.0
    # The privileged oracle beats the retriever's order on the same users.
    assert results["oracle"]["vs_retrieval"]["ci95_low"] > 0


def test_train_and_evaluate(ray_session, tmp_path):
    tiny = dict(
        num_candidates=10, slate_size=3, train_batch_size=256, minibatch_size=128, num_epochs=1,
        envs_per_runner=8, hidden=16, attention_heads=2, validate_users=16, baselines=["random"],
    )  # fmt: skip
    out = _example("train_and_evaluate")["main"](str(tmp_path / "policy"), iterations=1, users=32, **tiny)
    assert (tmp_path / "policy" / "policy" / "policy.json").exists()
    assert set(out["summary"]["policies"]) == {"ppo", "random"}
    assert out["vs_retrieval"]["ci95_low"] <= out["vs_retrieval"]["mean"] <= out["vs_retrieval"]["ci95_high"]


@pytest.mark.usefixtures("ray_session")
def test_serve_recommendations(live_app, tmp_path):
    port = int(live_app.url.rsplit(":", 1)[1])
    out = _example("serve_recommendations")["main"](str(tmp_path), port=port, items=120)
    assert out["answer"]["arm"] in {"control", "treatment"}
    assert len(out["answer"]["items"]) == 5
    assert out["feedback_status"] == 202
