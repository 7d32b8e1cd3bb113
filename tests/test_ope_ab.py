"""Off-policy evaluation: known answers on an exact item-position world, and against the simulator.

The simulator test logs a uniformly random policy, replays a target policy on the logged requests, and
checks that the estimate's interval holds the target's on-policy value measured in the simulator. Two
settings make that a fair known-answer test: one-step sessions (the state distribution cannot depend
on the policy, so logged and on-policy requests come from the same population) and a no-click utility
high enough that clicks are rare (the regime where the simulator's competing-choice logit is close to
the item-position model the estimators assume).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _ab_cli import cli_output
from _serve_app import NUM_CANDIDATES, POLICIES

from rayrec.ab.ope import LoggedSlates, estimate_all
from rayrec.errors import DataError
from rayrec.events import read_requests

ROBUST = ("ips", "snips", "dr")


def exact_ipm_world(n=20000, big_k=10, k=3, seed=0):
    """Contexts with per-candidate attractiveness; clicks independent per position (the IPM holds exactly).

    Returns the logged slates of a uniformly random logging policy, the true click probabilities
    [n, k, K] and a deterministic target's marginals [n, k, K].
    """
    rng = np.random.default_rng(seed)
    attract = rng.beta(1.0, 6.0, size=(n, big_k))  # [n, K]
    decay = np.array([1.0, 0.7, 0.5])[:k]
    truth = attract[:, None, :] * decay[None, :, None]  # [n, k, K] P(click | j at p)
    shown = np.argsort(rng.random((n, big_k)), axis=1)[:, :k]  # uniform random slates
    p_shown = np.take_along_axis(truth, shown[..., None], axis=2)[..., 0]  # [n, k]
    clicks = (rng.random((n, k)) < p_shown).astype(float)
    noisy = attract + rng.normal(0, 0.05, size=attract.shape)
    top = np.argsort(-noisy, axis=1)[:, :k]  # target: top-k by a noisy score
    target = np.zeros((n, k, big_k))
    np.put_along_axis(target, top[..., None], 1.0, axis=2)
    value = (target * truth).sum(axis=(1, 2)).mean()
    users = np.arange(n) // 2  # two requests per user: the bootstrap resamples users
    return users, shown, clicks, truth, target, value


def logged(users, shown, clicks, target, predicted):
    n, k = shown.shape
    return LoggedSlates(
        user_index=users,
        shown=shown,
        mask=np.ones((n, k), bool),
        logging_propensity=np.full((n, k), 1.0 / target.shape[-1]),
        clicks=clicks,
        target_marginals=target,
        predicted_clicks=predicted,
    )


def test_estimators_cover_the_true_value_when_the_item_position_model_holds():
    users, shown, clicks, truth, target, value = exact_ipm_world()
    logging_value = clicks.sum(1).mean()
    assert value > 1.5 * logging_value  # the target really differs from the logging policy
    exact = estimate_all(logged(users, shown, clicks, target, truth), resamples=500)
    for name in (*ROBUST, "dm"):
        assert exact[name].ci_low <= value <= exact[name].ci_high, (name, exact[name], value)
    # A wrong reward model: DM is off, DR's importance-weighted correction is not.
    wrong = estimate_all(logged(users, shown, clicks, target, np.full_like(truth, 0.05)), resamples=500)
    assert not wrong["dm"].ci_low <= value <= wrong["dm"].ci_high
    assert wrong["dr"].ci_low <= value <= wrong["dr"].ci_high
    # A good reward model makes DR tighter than IPS.
    assert exact["dr"].ci_high - exact["dr"].ci_low < exact["ips"].ci_high - exact["ips"].ci_low


def test_logged_slates_validate_propensities():
    users, shown, clicks, truth, target, _ = exact_ipm_world(n=100)
    bad = logged(users, shown, clicks, target, truth)
    with pytest.raises(DataError, match="outside"):
        LoggedSlates(**{**bad.__dict__, "logging_propensity": np.zeros_like(bad.logging_propensity)})


def test_ope_from_random_logs_lands_on_the_simulators_on_policy_value(tmp_path):
    from envs import make_vector_env
    from envs.config import SlateEnvConfig
    from envs.policies import make_policy
    from rayrec.ab.replay import ItemLookup, load_logged_slates, read_event_log
    from rayrec.ab.simulate import simulate_arm_users, simulated_user_ids
    from serving.settings import Arm

    config = SlateEnvConfig(max_episode_steps=1, no_click_utility=1.4, num_items=2000)
    events = str(tmp_path / "events")
    logs = simulate_arm_users(
        config, Arm("log", "random"), simulated_user_ids(30000, 0), 0, events, slots=4096
    )
    env = make_vector_env(config, num_envs=1)
    catalog = env.unwrapped.sim.catalog
    on_policy = simulate_arm_users(
        config, Arm("t", "greedy"), simulated_user_ids(60000, 1), 1, None, slots=4096
    )
    truth = on_policy.session_return.mean()
    assert truth > 1.3 * logs.session_return.mean()  # greedy is far from the logging policy
    data = load_logged_slates(
        read_event_log(events),
        make_policy("greedy", env.unwrapped.sim),
        ItemLookup(catalog.item_ids, catalog.embeddings),
    )
    assert data.requests == 30000 and data.logging_policies == {"random": 30000}
    estimates = estimate_all(data.slates, resamples=300)
    for name in ROBUST:
        assert estimates[name].ci_low <= truth <= estimates[name].ci_high, (name, estimates[name], truth)


def _impressions(path, with_propensity=True, propensity=0.05):
    columns = {
        "request_id": ["r1", "r1"],
        "ts": [1.0, 1.0],
        "user_id": ["u", "u"],
        "arm": ["a", "a"],
        "policy": ["random", "random"],
        "item_id": ["i1", "i2"],
        "position": pa.array([0, 1], pa.int32()),
        "score": pa.array([0.0, 0.0], pa.float32()),
    }
    if with_propensity:
        columns["propensity"] = pa.array([propensity, propensity], pa.float32())
    (path / "impressions").mkdir(parents=True)
    pq.write_table(pa.table(columns), path / "impressions" / "part-0001.parquet")


@pytest.mark.parametrize(
    ("setup", "needle"),
    [
        ("missing", "no such event-log directory"),
        ("no_propensity_column", "propensity"),
        ("nan_propensity", "no usable propensity"),
        ("deterministic", "deterministic"),
        ("no_requests", "no requests table"),
    ],
)
def test_ope_bad_event_logs_are_one_line_errors(tmp_path, capsys, setup, needle):
    events = tmp_path / "events"
    if setup == "no_propensity_column":
        _impressions(events, with_propensity=False)
    elif setup == "nan_propensity":
        _impressions(events, propensity=float("nan"))
    elif setup == "deterministic":
        _impressions(events, propensity=1.0)
    elif setup == "no_requests":
        _impressions(events)
    code, output = cli_output(
        capsys, "ope", "--events", str(events), "--target", "retrieval", "--index", str(tmp_path / "idx")
    )
    assert code == 2
    assert output.startswith("error:") or "\nerror:" in output, output
    assert needle in output
    assert "Traceback" not in output


@pytest.fixture(scope="session")
def server_traffic(live_app):
    """Users with a topic send two requests each to the live app over HTTP and click, with probability
    0.6, the first item of their topic (item ``item-i`` has topic ``i % 4``); all recorded as acknowledged."""
    import httpx

    rng = np.random.default_rng(7)
    answers = []
    with httpx.Client(base_url=live_app.url, timeout=60) as http:
        for user in range(48):
            topic = user % 4
            history = [f"item-{4 * int(j) + topic:04d}" for j in rng.choice(60, size=3, replace=False)]
            for _ in range(2):
                response = http.post(
                    "/recommend", json={"user_id": f"ope-{user}", "history": history, "k": 5}
                )
                assert response.status_code == 200, response.text
                answer = live_app.record(response.json())
                answers.append(answer)
                ids = [item["item_id"] for item in answer["items"]]
                liked = [i for i in ids if int(i.split("-")[1]) % 4 == topic]
                if liked and rng.random() < 0.6:
                    body = {"request_id": answer["request_id"], "item_id": liked[0], "event": "click"}
                    assert http.post("/feedback", json=body).status_code == 202
                    live_app.feedback.append((answer["request_id"], liked[0], "click"))
                    history = [*history, liked[0]]
    return answers


def test_served_items_carry_their_arms_propensities(server_traffic):
    by_arm = {arm: [a for a in server_traffic if a["arm"] == arm] for arm in POLICIES}
    assert all(by_arm.values()), {arm: len(answers) for arm, answers in by_arm.items()}
    for arm, answers in by_arm.items():
        expected = 1.0 / NUM_CANDIDATES if arm == "explore" else 1.0
        assert all(item["propensity"] == pytest.approx(expected) for a in answers for item in a["items"]), arm


def test_ope_on_the_servers_own_event_log(server_traffic, stopped_live_app, tmp_path, capsys):
    """``rayrec ope`` straight on what the server logged: the explore arm's propensities make the
    estimates defined; the server's requests table supplies each request's candidates."""
    out = tmp_path / "ope.json"
    code, output = cli_output(
        capsys,
        "ope", "--events", str(stopped_live_app.events), "--target", "greedy",
        "--index", str(stopped_live_app.index), "--json", str(out),
    )  # fmt: skip
    assert code == 0, output
    result = json.loads(out.read_text())
    requests = read_requests(str(stopped_live_app.events)).to_pandas()
    fallback = int(requests["fallback"].sum())
    assert result["target"] == "greedy" and result["fallback_requests"] == fallback
    assert result["n"] == len(requests) - fallback >= len(server_traffic)
    ranked = requests[~requests["fallback"]]
    assert result["logging_policies"] == ranked["policy"].value_counts().to_dict()
    assert set(result["logging_policies"]) == set(POLICIES.values())
    for name in ("ips", "snips", "dm", "dr"):
        value, (low, high) = result["estimators"][name]["value"], result["estimators"][name]["ci95"]
        assert all(math.isfinite(x) for x in (value, low, high)), name
        assert 0.0 <= low <= high and value >= 0.0, (name, value, low, high)
