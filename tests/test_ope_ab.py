"""Off-policy evaluation: known answers on an exact item-position world, and against the simulator.

The exact world logs requests under a mixture of a uniformly random and a deterministic logging policy,
with slates of two sizes, where clicks at different positions are independent (the item-position model
holds), so IPS, SNIPS and DR must cover the truth, while the weighting ``rayrec ope`` used before the
multi-logger mixture (each request's own logged propensity) and a per-position SNIPS that ignores the
slate sizes must not. The simulator test logs random and greedy arms, replays a target policy on the
logged requests and checks that the estimates' intervals hold the target's on-policy value measured in
the simulator, in one-step sessions with rare clicks (where the simulator's competing-choice logit is
close to the item-position model) for every estimator, per request and per user.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from _ab_cli import cli_output
from _serve_app import NUM_CANDIDATES, POLICIES

from rayrec.ab.ope import LoggedSlates, estimate_all
from rayrec.errors import DataError
from rayrec.events import read_requests

ROBUST = ("ips", "snips", "dr")


def exact_ipm_world(n=20000, big_k=10, seed=0, clip=None):
    """One request per user, slates of 2 or 3 positions, logged half by a uniformly random and half by a
    deterministic policy; clicks independent per position (the IPM holds exactly).

    Returns (LoggedSlates with the true click model, the truth, the logged own-arm propensities [n, 3]).
    """
    rng = np.random.default_rng(seed)
    k = 3
    attract = rng.beta(1.0, 6.0, size=(n, big_k))  # [n, K]
    truth = attract[:, None, :] * np.array([1.0, 0.7, 0.5])[None, :, None]  # [n, k, K] P(click | j at p)
    mask = np.arange(k) < rng.choice([2, 3], size=n)[:, None]  # [n, k] variable slate sizes

    def top(noise):  # [n, k, K] one-hot marginals of a deterministic top-k by a noisy score
        order = np.argsort(-(attract + rng.normal(0, noise, size=attract.shape)), axis=1)[:, :k]
        out = np.zeros((n, k, big_k))
        np.put_along_axis(out, order[..., None], 1.0, axis=2)
        return out

    logger, target = top(0.08), top(0.05)  # two different deterministic rankings
    random_arm = rng.random(n) < 0.5
    uniform = np.argsort(rng.random((n, big_k)), axis=1)[:, :k]
    shown = np.where(random_arm[:, None], uniform, logger.argmax(axis=2))  # [n, k]
    behaviour = 0.5 / big_k + 0.5 * logger  # the mixture of the two arms
    at = lambda table: np.take_along_axis(table, shown[..., None], axis=2)[..., 0]  # noqa: E731
    clicks = (rng.random((n, k)) < at(truth)).astype(float) * mask
    value = (target * truth).sum(-1)[mask].sum() / n
    excess = None
    if clip is not None:
        excess = (np.maximum(target - clip * behaviour, 0.0).sum(-1) * mask).sum(-1)
    slates = LoggedSlates(
        user_index=np.arange(n),
        mask=mask,
        reward=clicks,
        target_propensity=np.where(mask, at(target), 1.0),
        logging_propensity=np.where(mask, at(behaviour), 1.0),
        direct=((target * truth).sum(-1) * mask).sum(-1),
        predicted=at(truth) * mask,
        unsupported=np.zeros(n),
        clip=clip,
        clip_excess=excess,
    )
    own_arm = np.where(random_arm[:, None], np.full((n, k), 1.0 / big_k), 1.0)
    return slates, value, own_arm


def covers(estimate, value):
    return estimate.ci_low <= value <= estimate.ci_high


def test_mixed_logger_estimators_cover_the_truth_when_the_item_position_model_holds():
    slates, value, own_arm = exact_ipm_world()
    logging_value = slates.reward.sum(1).mean()
    assert value > 1.3 * logging_value  # the target really differs from the logging policies
    exact = estimate_all(slates, resamples=500)
    for name in (*ROBUST, "dm"):
        assert covers(exact[name], value), (name, exact[name], value)
    # Each request's own logged propensity: the deterministic arm's requests count only where the target
    # agrees with it, so the estimate is biased low.
    old = estimate_all(LoggedSlates(**{**slates.__dict__, "logging_propensity": own_arm}), resamples=500)
    assert old["ips"].ci_high < value
    # SNIPS normalised per position without the share of requests that have that position over-counts
    # the third position, which only half the requests show.
    w = slates.weights()
    per_position = (w * slates.reward).sum(0) / w.sum(0)
    assert per_position.sum() > exact["snips"].ci_high
    # A wrong reward model: DM is off, DR's importance-weighted correction is not.
    wrong = estimate_all(
        LoggedSlates(
            **{**slates.__dict__, "direct": 0.05 * slates.mask.sum(1), "predicted": np.full(w.shape, 0.05)}
        ),
        resamples=500,
    )
    assert not covers(wrong["dm"], value) and covers(wrong["dr"], value)
    assert exact["dr"].ci_high - exact["dr"].ci_low < exact["ips"].ci_high - exact["ips"].ci_low


def test_clipped_estimators_carry_their_bias_bound():
    slates, value, _ = exact_ipm_world(n=8000, seed=1, clip=4.0)
    estimates = estimate_all(slates, resamples=300)
    bound = slates.clip_bias_bound()
    assert bound > 0 and estimates["ips_clip"].bias_bound == bound
    assert estimates["ips_clip"].value < estimates["ips"].value  # clipping lowers IPS ...
    assert estimates["ips"].value - estimates["ips_clip"].value <= bound  # ... by no more than the bound
    for name in ("ips_clip", "dr_clip"):
        assert covers(estimates[name], value), (name, estimates[name], value)
    assert slates.diagnostics().max_weight == pytest.approx(1.0 / (0.5 / 10))


def test_logged_slates_validate_propensities():
    slates, _, _ = exact_ipm_world(n=100)
    with pytest.raises(DataError, match="outside"):
        LoggedSlates(**{**slates.__dict__, "logging_propensity": np.zeros_like(slates.logging_propensity)})
    with pytest.raises(ValueError, match="clip"):
        LoggedSlates(**{**slates.__dict__, "clip": 2.0})


def test_ope_from_mixed_logs_lands_on_the_simulators_on_policy_value():
    from envs.config import SlateEnvConfig
    from envs.factory import build_simulator
    from envs.policies import make_policy
    from envs.rollout import evaluate_policy
    from rayrec.ab.logged import RequestRecorder
    from rayrec.ab.off_policy import evaluate_logged
    from rayrec.logs.requests import LoggedRequests

    config = SlateEnvConfig(max_episode_steps=1, no_click_utility=1.4, num_items=2000)
    sim = build_simulator(config, batch=4096)
    loggers = {name: make_policy(name, sim) for name in ("random", "greedy")}
    parts = []
    for seed, policy in enumerate(loggers.values()):
        recorder = RequestRecorder()
        evaluate_policy(policy, sim, 8000, seed, observers=[recorder])
        parts.append(recorder.requests(sim.catalog.embeddings))
    target = make_policy("retrieval", sim)
    truth = evaluate_policy(target, sim, 40000, 7).session_return.mean()
    result = evaluate_logged(LoggedRequests.concat(parts), target, loggers, resamples=300)
    assert result.requests == 16000 and result.logger_shares == {"greedy": 0.5, "random": 0.5}
    assert result.diagnostics.unsupported_mass == 0.0  # the random arm supports everything at step 0
    for name in ROBUST:
        assert covers(result.estimators[name], truth), (name, result.estimators[name], truth)
    # Per user, weights are whole-slate weights: no logged slate is the target's (deterministic, one of
    # 20!/15! orderings), and the diagnostics say so.
    assert result.session_diagnostics.ess == 0.0 and result.session_diagnostics.mean_weight == 0.0


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
    """``rayrec ope`` straight on what the server logged: every request re-scored by every arm's policy
    (rebuilt by name), the server's requests table supplying each request's candidates."""
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
    assert result["dropped_users"] == 0  # every logged slate reproduced by its arm's policy
    assert result["n"] == len(requests) - fallback >= len(server_traffic)
    ranked = requests[~requests["fallback"]]
    assert result["logging_policies"] == ranked["policy"].value_counts().to_dict()
    assert set(result["logging_policies"]) == set(POLICIES.values()) == set(result["logger_shares"])
    # The explore arm supports every first request; a deterministic arm's second requests (the posterior
    # then names the arm) support only that arm's slates.
    assert 0.0 <= result["diagnostics"]["unsupported_mass"] < 1.0
    for block in ("estimators", "session_estimators"):
        for name, est in result[block].items():
            value, (low, high) = est["value"], est["ci95"]
            assert all(math.isfinite(x) for x in (value, low, high)), name
            # The explore arm's slates are random, so the interval moves run to run; a normal interval of
            # DR or PDIS may dip below 0 at this sample size, the estimate of a click rate itself may not.
            assert low <= value <= high and value >= 0.0, (name, value, low, high)
    assert set(result["estimators"]) == {"ips", "snips", "dm", "dr"}
    assert set(result["session_estimators"]) == {"fqe", "pdis", "sdr"}
    assert 0 < result["session_diagnostics"]["ess"] <= result["users"]
