"""``rayrec loop`` end to end on loopback: a live server with an exploration arm, its own event log, offline
training, OPE, a simulated A/B test and the rollout of the winner through the ``serve deploy`` document.

Small on purpose (a 240-item index, 60 users calling the server): it checks that every step runs on the
previous one's real output and that the server ends up answering with the winner. The incumbent is
``random``. The challenger is the candidate whose OPE interval on 60 users' log has the highest lower bound:
usually ``retrieval``, which wins the A/B clearly, and the rollout swaps the policy; sometimes the policy
trained on that log, which can lose the A/B, and then the incumbent stays. Either way the server must end up answering with the A/B's winner. (The swap itself,
under load and with bad artifacts, is tested in ``test_serving_rollout.py``.)
"""

from __future__ import annotations

import json

import httpx
import pytest
import yaml
from _ab_cli import cli_output
from _ports import free_port
from _serve_app import build_test_index

from rayrec.commands.loop import pick_challenger
from rayrec.errors import ConfigError


def test_the_closed_loop_rolls_out_the_winner_on_the_live_server(ray_session, tmp_path, capsys):
    index = build_test_index(tmp_path)
    out = tmp_path / "loop"
    code, output = cli_output(
        capsys, "loop", "--index", str(index), "--out", str(out), "--incumbent", "random",
        "--candidate", "retrieval", "--users", "60", "--iterations", "20", "--ab-users", "400",
        "--num-candidates", "40", "--port", str(free_port()), "--route-prefix", "/loop", "--keep-serving",
    )  # fmt: skip
    assert code == 0, output
    summary = json.loads((out / "loop.json").read_text())
    try:
        # the server logged the exploration arm's requests and the offline run learned from them
        meta = json.loads((out / "train" / "policy" / "policy.json").read_text())
        assert "epsilon-greedy" in meta["metadata"]["logging_policies"]
        assert meta["metadata"]["logged_requests"] > 60
        # every candidate was estimated, the A/B decided, and the winner is what the server now serves
        assert set(summary["ope"]) == {"random", "retrieval", str(out / "train" / "policy")}
        assert summary["challenger"] in summary["ope"] and summary["challenger"] != "random"
        wins = summary["ab"]["ci95"][0] > 0
        assert summary["ab"]["challenger_wins"] == wins
        assert summary["winner"] == (summary["challenger"] if wins else "random")
        rollout = yaml.safe_load((out / "serve-rollout.yaml").read_text())
        policies = rollout["applications"][0]["deployments"][0]["user_config"]["policies"]
        assert policies == {"main": summary["winner"], "explore": "epsilon-greedy"}
        from rayrec.assignment import assign_arm
        from rayrec.rerank import load_policy_for_index

        user = next(
            u
            for u in (f"u{i}" for i in range(100))
            if assign_arm(u, [("main", 0.7), ("explore", 0.3)]) == "main"
        )
        answer = httpx.post(
            f"{summary['url']}/recommend",
            json={"user_id": user, "history": ["item-0001"], "k": 3},
            timeout=30,
        ).json()
        winner = load_policy_for_index(summary["winner"], str(index)).name
        assert answer["arm"] == "main" and answer["policy"] == winner, answer
    finally:
        from ray import serve

        serve.delete("rayrec-loop")


def test_the_challenger_is_the_candidate_with_the_highest_lower_bound():
    """Not the highest point estimate: a noisy estimate that came out high loses to a sure one, ties of the
    bound go to the higher estimate, a bound that is not finite counts as the lowest, and the incumbent is
    never its own challenger."""
    estimates = {
        "incumbent": {"value": 9.0, "ci95": [8.5, 9.5]},
        "trained": {"value": 6.0, "ci95": [2.0, 10.0]},  # highest estimate, wide interval
        "retrieval": {"value": 5.0, "ci95": [4.5, 5.5]},
        "greedy": {"value": 4.8, "ci95": [4.5, 5.1]},
        "broken": {"value": 7.0, "ci95": [float("nan"), float("nan")]},
    }
    assert pick_challenger(estimates, "incumbent") == "retrieval"
    assert (
        pick_challenger(
            {"a": {"value": 1.0, "ci95": [0.0, 2.0]}, "b": {"value": 0.5, "ci95": [0.0, 1.0]}}, "x"
        )
        == "a"
    )
    with pytest.raises(ConfigError, match="no candidate to challenge the incumbent 'a'"):
        pick_challenger({"a": estimates["incumbent"]}, "a")
