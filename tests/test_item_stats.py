"""Per-item log statistics (:mod:`rayrec.item_stats`): the pairing and shrinkage, a server's event log read
into them, the simulator's own log and an event log of the same rollout agreeing, and ``build-index
--item-log`` storing them in the index."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from _retrieval_world import write_tiny_world

from envs.factory import build_simulator
from envs.item_log import item_log_features
from envs.presets import with_preset
from envs.rollout import evaluate_policy
from rayrec.ab.simulate import EventLogObserver
from rayrec.baselines import RandomPolicy
from rayrec.encoding import build_tiny_encoder, item_texts
from rayrec.errors import ArtifactError, ConfigError, DataError
from rayrec.events import EventLog
from rayrec.features import ITEM_STATISTICS
from rayrec.index import ItemIndex
from rayrec.index.build import BuildIndexConfig, build_index
from rayrec.item_stats import event_log_item_counts, lift_totals, shrunk_to_prediction


def test_shrunk_to_prediction_moves_rarely_measured_items_toward_their_covariates_prediction():
    covariates = np.array([[0.0], [1.0], [0.0], [1.0], [0.5]])
    count = np.array([100.0, 100.0, 100.0, 100.0, 0.0])
    total = np.array([0.0, 100.0, 0.0, 100.0, 0.0])  # mean = covariate, exactly
    got = shrunk_to_prediction(total, count, covariates, prior_count=5.0)
    np.testing.assert_allclose(got, [0.0, 1.0, 0.0, 1.0, 0.5], atol=1e-6)  # unmeasured: the prediction


def test_lift_totals_pair_each_click_with_the_same_users_click_before_it():
    """Clicks in time order, users interleaved: user 0 clicks items 2 (completion 0.4), 5 (0.7), 2 (0.6);
    user 1 clicks 3 (0.9) and 2 (0.5). Item 2 moved user 0 by +0.3, item 5 by -0.1, item 3 user 1 by -0.4."""
    users = np.array([0, 1, 0, 0, 1])
    items = np.array([2, 3, 5, 2, 2])
    completions = np.array([0.4, 0.9, 0.7, 0.6, 0.5])
    total, count = lift_totals(6, users, items, completions)
    np.testing.assert_allclose(total, [0, 0, 0.3, -0.4, 0, -0.1])
    np.testing.assert_array_equal(count, [0, 0, 1, 1, 0, 1])


def test_an_event_log_of_a_rollout_gives_the_simulators_own_item_statistics(tmp_path):
    """The simulator's exploration log and the event log the A/B runner writes of the same rollout (random
    slates, watch time as each click's value, the completion rate in each request's row) give the same
    three statistics: the server's path (``build-index --item-log``) computes what the policy was trained on."""
    config = with_preset(
        "long-term",
        num_items=300,
        num_topics=6,
        reward="watch",
        diversity_weight=0.0,
        observe_feedback=True,
        user_split="train",
    )
    users = 400
    expected = item_log_features(build_simulator(config, batch=users), users, seed=5)
    sim = build_simulator(config, batch=users)
    events = str(tmp_path / "events")
    writer = EventLogObserver(
        events, [f"u{i}" for i in range(users)], sim.catalog.item_ids, "explore", config.feature_names
    )
    evaluate_policy(RandomPolicy(), sim, users, 5, observers=[writer])
    writer.close()
    counts = event_log_item_counts(events, sim.catalog.item_ids, watch_scale=1.0 + config.clickbait_watch)
    assert counts.summary()["lift_pairs"] > 1000
    np.testing.assert_allclose(counts.statistics(), expected, atol=1e-6)
    with pytest.raises(DataError, match="no impressions of policies \\['greedy'\\]"):
        event_log_item_counts(events, sim.catalog.item_ids, policies=("greedy",))


def log_rows(log: EventLog, user: str, request: str, ts: float, shown: list[str], engagement: float | None):
    """One request of ``user`` at ``ts`` showing ``shown`` (policy ``explore``), its client having sent
    ``engagement`` as the last click's completion rate."""
    log.log_impressions(
        [
            {"request_id": request, "ts": ts, "user_id": user, "arm": "a", "policy": "explore", "item_id": item,
             "position": p, "score": 0.0, "propensity": 0.5}
            for p, item in enumerate(shown)
        ],
        requests=[
            {"request_id": request, "ts": ts, "user_id": user, "arm": "a", "policy": "explore",
             "candidate_ids": shown, "features": [0.0] * 3 * len(shown), "profile": [0.0, 1.0],
             "last_engagement": engagement}
        ],
    )  # fmt: skip


def test_a_servers_event_log_gives_rates_watch_and_lifts(tmp_path):
    """Impressions count per item; a click's value is its watch time; a request's ``last_engagement`` is the
    completion rate of the click on the user's request before it, which pairs with the user's click before
    that. Items the index lacks are left out; a log without completion rates is one clear error."""
    events = str(tmp_path / "events")
    with EventLog(events) as log:
        log_rows(log, "u", "r1", 1.0, ["a", "b"], None)
        log_rows(log, "u", "r2", 2.0, ["b", "c"], 0.4)  # the completion rate of r1's click on a
        log_rows(log, "u", "r3", 3.0, ["a", "zzz"], 0.7)  # of r2's click on c
        log_rows(log, "v", "r4", 1.5, ["c", "a"], None)
        log_rows(log, "v", "r5", 2.5, ["a"], 0.9)  # of r4's click on c
        log.log_feedback(
            [
                {"request_id": "r1", "item_id": "a", "event": "click", "value": 0.5, "ts": 1.1},
                {"request_id": "r2", "item_id": "c", "event": "click", "value": 1.0, "ts": 2.1},
                {"request_id": "r3", "item_id": "zzz", "event": "click", "value": 1.0, "ts": 3.1},
                {"request_id": "r4", "item_id": "c", "event": "click", "value": 0.25, "ts": 1.6},
                {"request_id": "r4", "item_id": "a", "event": "skip", "value": 1.0, "ts": 1.6},
            ]
        )
    counts = event_log_item_counts(events, np.array(["a", "b", "c"]), watch_scale=0.5)
    np.testing.assert_array_equal(counts.impressions, [4, 2, 2])  # "zzz" is not in the index
    np.testing.assert_array_equal(counts.clicks, [1, 0, 2])
    np.testing.assert_allclose(counts.watch, [1.0, 0.0, 2.5])  # values / 0.5
    np.testing.assert_allclose(counts.lift_total, [0.3, 0.0, 0.0])  # a: 0.4 → 0.7; c's next click is unknown
    np.testing.assert_array_equal(counts.lift_count, [1, 0, 0])
    assert counts.summary() == {"impressions": 8, "clicks": 3, "lift_pairs": 1}
    stats = counts.statistics()
    assert stats.shape == (3, 3) and stats.dtype == np.float32 and not stats.flags.writeable
    assert stats[2, 0] > stats[1, 0]  # c was clicked on both its impressions, b on neither

    silent = str(tmp_path / "silent")
    with EventLog(silent) as log:
        log_rows(log, "u", "s1", 1.0, ["a"], None)
        log_rows(log, "u", "s2", 2.0, ["a"], None)  # this client never sends last_click
        log.log_feedback([{"request_id": "s1", "item_id": "a", "event": "click"}])
    with pytest.raises(DataError, match=r"no request reports the completion rate .* `last_click`"):
        event_log_item_counts(silent, np.array(["a"]))
    client = str(tmp_path / "client")  # an `ab --url` client's log: impressions and feedback, no requests
    with EventLog(client) as log:
        log.log_impressions([{"request_id": "c1", "ts": 1.0, "user_id": "u", "arm": "a", "policy": "explore",
                              "item_id": "a", "position": 0, "score": 0.0, "propensity": 1.0}])  # fmt: skip
        log.log_feedback([{"request_id": "c1", "item_id": "a", "event": "click"}])
    with pytest.raises(DataError, match="no requests table, which holds the completion rates"):
        event_log_item_counts(client, np.array(["a"]))
    with pytest.raises(DataError, match="no impressions of the index's items"):
        event_log_item_counts(events, np.array(["x"]))
    with pytest.raises(DataError, match="watch_scale must be positive"):
        event_log_item_counts(events, np.array(["a"]), watch_scale=0.0)
    with pytest.raises(DataError, match="no impressions"):
        event_log_item_counts(str(tmp_path / "nothing"), np.array(["a"]))


def test_build_index_with_an_item_log_stores_the_statistics_and_what_the_log_held(tmp_path):
    data = write_tiny_world(tmp_path / "data")
    items = pq.read_table(data / "items.parquet")
    ids = items.column("item_id").to_pylist()
    model = build_tiny_encoder(item_texts(items), tmp_path / "tiny")
    events = str(tmp_path / "events")
    with EventLog(events) as log:
        for user in range(6):
            for step in range(4):
                request = f"{user}-{step}"
                shown = [ids[(user + step + j) % len(ids)] for j in range(3)]
                log_rows(log, f"u{user}", request, float(step), shown, None if step == 0 else 0.1 * step)
                log.log_feedback([{"request_id": request, "item_id": shown[step % 3], "event": "click"}])
    out = tmp_path / "index"
    config = BuildIndexConfig(
        data=str(data), out=str(out), encoder=str(model), embed="local", item_log=events
    )
    report = build_index(config)
    assert report["item_log"] == {"impressions": 72, "clicks": 24, "lift_pairs": 12}
    index = ItemIndex.load(str(out))
    expected = event_log_item_counts(events, index.item_ids).statistics()
    np.testing.assert_array_equal(index.item_log, expected)
    assert json.loads((out / "index.json").read_text())["item_log"]["lift_pairs"] == 12
    assert pq.read_table(out / "item_embeddings.parquet").column_names[-3:] == list(ITEM_STATISTICS)
    plain = tmp_path / "plain"
    build_index(BuildIndexConfig(data=str(data), out=str(plain), encoder=str(model), embed="local"))
    assert ItemIndex.load(str(plain)).item_log is None
    with pytest.raises(ConfigError, match="--item-log-watch-scale must be > 0"):
        BuildIndexConfig(data="d", out="o", item_log_watch_scale=0.0)
    meta = json.loads((out / "index.json").read_text())
    (out / "index.json").write_text(json.dumps({**meta, "item_log": None}))
    with pytest.raises(ArtifactError, match=r"item_log=None but .* columns \['item_ctr'"):
        ItemIndex.load(str(out), verify=False)
