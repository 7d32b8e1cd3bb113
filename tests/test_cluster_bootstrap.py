"""Sessions started from the same logged history are not independent: intervals resample histories."""

from __future__ import annotations

import numpy as np
import pytest

from envs.config import SlateEnvConfig
from envs.factory import build_simulator
from envs.rollout import StepRecord, arrival_histories, evaluate_policy
from rayrec.baselines import RetrievalPolicy
from rayrec.errors import DataError
from trainers.compare_stats import bootstrap_intervals
from trainers.policy_eval import session_clusters


def _width(stats: dict, name: str) -> float:
    low, high = stats["methods"][name]["mean_ci"]
    return high - low


def test_repeating_each_history_does_not_narrow_the_cluster_interval():
    rng = np.random.default_rng(0)
    per_history = rng.normal(size=(1, 60))  # [runs, histories]
    repeated = np.repeat(per_history, 8, axis=1)  # each history played 8 times, identically
    clusters = np.repeat(np.arange(60), 8)
    unique = bootstrap_intervals({"m": per_history}, [], reps=1500, seed=1)
    cluster = bootstrap_intervals({"m": repeated}, [], reps=1500, seed=1, clusters=clusters)
    naive = bootstrap_intervals({"m": repeated}, [], reps=1500, seed=1)
    # The cluster bootstrap of the repeated data is the bootstrap of the 60 histories; resampling the 480
    # sessions one by one pretends to 8 times the information: an interval about sqrt(8) times too narrow.
    assert _width(cluster, "m") == pytest.approx(_width(unique, "m"), rel=0.12)
    assert _width(naive, "m") == pytest.approx(_width(unique, "m") / np.sqrt(8), rel=0.15)


def test_the_cluster_bootstrap_covers_the_true_mean_where_resampling_sessions_does_not():
    """Coverage of a known truth over replications, with a history effect that the sessions share."""
    rng = np.random.default_rng(7)
    replications, histories, sessions, truth = 120, 30, 8, 1.0
    covered = {"cluster": 0, "session": 0}
    clusters = np.repeat(np.arange(histories), sessions)
    for _ in range(replications):
        effect = np.repeat(rng.normal(0.0, 1.0, histories), sessions)  # shared by a history's sessions
        returns = (truth + effect + rng.normal(0.0, 0.5, histories * sessions))[None, :]  # [1 run, users]
        for name, labels in (("cluster", clusters), ("session", None)):
            low, high = bootstrap_intervals({"m": returns}, [], reps=300, seed=3, clusters=labels)["methods"][
                "m"
            ]["mean_ci"]
            covered[name] += low <= truth <= high
    assert covered["cluster"] / replications >= 0.87  # nominal 95%, percentile intervals of 30 clusters
    assert covered["session"] / replications <= 0.7  # about 50%: sessions are counted as independent


def test_paired_differences_keep_the_pairing_under_clusters():
    rng = np.random.default_rng(2)
    clusters = np.repeat(np.arange(40), 5)
    base = rng.normal(size=(1, 200)) * 3 + np.repeat(rng.normal(size=40), 5) * 3
    better = base + 0.5 + rng.normal(scale=0.05, size=(5, 200))  # 5 runs, each about 0.5 above the base
    stats = bootstrap_intervals({"m": better, "b": base}, [("m", "b")], reps=800, clusters=clusters)
    low, high = stats["differences"]["m - b"]["ci"]
    assert 0.4 < low < 0.5 < high < 0.6  # the shared noise cancels in the paired difference
    with pytest.raises(DataError, match="clusters must label each of the 200 users"):
        bootstrap_intervals({"m": better}, [], clusters=clusters[:10])


def test_session_clusters_are_the_logged_histories_the_sessions_start_from(tmp_path):
    from rayrec.synth import WorldConfig, write_world

    data = tmp_path / "data"
    write_world(WorldConfig(items=300, users=40, topics=4, seed=3), str(data))
    config = SlateEnvConfig(data_dir=str(data), num_candidates=10, user_split="all")
    clusters = session_clusters(config, 120, seed=5)
    assert clusters.shape == (120,) and 1 < len(np.unique(clusters)) <= 40  # more sessions than histories
    sim = build_simulator(config, batch=120)
    arrivals = arrival_histories(sim, 120, seed=5)
    for cluster in np.unique(clusters):
        assert (arrivals[clusters == cluster] == arrivals[clusters == cluster][0]).all()
    # The histories run_sessions places are those: every user's first slate is chosen on its arrival history.
    first: dict[int, np.ndarray] = {}

    def record(step: StepRecord) -> None:
        for user, steps, history in zip(step.users, step.session_step, step.history, strict=True):
            if steps == 0 and user not in first:
                first[int(user)] = history

    evaluate_policy(RetrievalPolicy(), sim, 120, seed=5, observers=[record])
    for user, history in first.items():
        valid = arrivals[user][arrivals[user] >= 0]
        np.testing.assert_array_equal(history[: len(valid)], valid)
    assert session_clusters(SlateEnvConfig(num_items=300, num_topics=4), 50, seed=5) is None  # fresh users
