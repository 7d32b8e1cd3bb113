"""The single-user slate simulator: Gymnasium conformance, determinism, exact dynamics, bad config."""

from __future__ import annotations

from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.config import SlateEnvConfig
from envs.item_log import LiftLog
from envs.presets import with_preset
from envs.simulator import SlateSimulator, dedupe_slates
from rayrec.errors import ConfigError
from rayrec.features import (
    FEATURE_NAMES,
    HIDDEN_FEATURE_NAMES,
    ITEM_LOG_FEATURES,
    ITEM_RATING,
    LAST_ENGAGEMENT,
    LIFT_FEATURES,
    NUM_FEATURES,
    RATING_PRIOR_COUNT,
    feature_names,
    is_simulation_feature_set,
    l2_normalize,
    rating_feature,
    shrunk_mean,
)
from rayrec.synth import WorldConfig, write_world

SMALL = {"num_items": 600, "num_topics": 6}


def rollout(env: gym.Env, seed: int, steps: int = 60) -> list[tuple]:
    """(action, reward, terminated, chosen item) per step, with a seeded action stream."""
    env.reset(seed=seed)
    env.action_space.seed(seed)
    out = []
    for _ in range(steps):
        action = env.action_space.sample()
        obs, reward, terminated, truncated, info = env.step(action)
        out.append((tuple(action), reward, terminated, info["chosen_item"], obs["profile"].tobytes()))
        if terminated or truncated:
            env.reset()
    return out


def test_registered_env_passes_the_gymnasium_checker():
    env = gym.make(envs.ENV_ID)
    assert env.spec.max_episode_steps == envs.MAX_EPISODE_STEPS
    check_env(env.unwrapped)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert set(obs) == {"profile", "candidates", "features", "budget"}
    assert obs["candidates"].shape == (20, 32) and obs["features"].shape == (20, 3)
    assert isinstance(env.action_space, gym.spaces.MultiDiscrete)
    assert list(env.action_space.nvec) == [20] * 5


@pytest.mark.filterwarnings("ignore:.*Box observation space m..imum value is .*infinity")  # the true logit
def test_observe_hidden_appends_the_hidden_state_to_the_observable_features():
    """The diagnostic columns are the simulator's own hidden state; the observable ones are unchanged."""
    plain = envs.make_vector_env(SlateEnvConfig(**SMALL), num_envs=6)
    hidden = envs.make_vector_env(SlateEnvConfig(**SMALL, observe_hidden=True), num_envs=6)
    for env in (plain, hidden):
        check_env(envs.make_env(env.config).unwrapped)
    obs_plain, _ = plain.reset(seed=5)
    obs, _ = hidden.reset(seed=5)
    actions = np.tile(np.arange(5), (6, 1))
    for _ in range(3):  # a few steps in: satisfaction and satiation have moved
        obs_plain, *_ = plain.step(actions)
        obs, *_ = hidden.step(actions)
    assert hidden.single_observation_space.contains({key: value[0] for key, value in obs.items()})
    assert obs["features"].shape == (6, 20, len(FEATURE_NAMES) + len(HIDDEN_FEATURE_NAMES))
    np.testing.assert_array_equal(obs["features"][..., : len(FEATURE_NAMES)], obs_plain["features"])
    sim = hidden.sim
    items, users = sim.candidate_items, sim.users  # [B, K]
    column = dict(zip(feature_names(HIDDEN_FEATURE_NAMES), np.moveaxis(obs["features"], -1, 0), strict=True))
    np.testing.assert_allclose(
        column["true_click_logit"],
        sim.choice_model.item_logits(users.interest, items, sim.catalog, satiation=users.satiation),
        rtol=1e-6,
    )
    np.testing.assert_array_equal(column["quality"], sim.catalog.quality[items])
    np.testing.assert_array_equal(column["clickbait"], sim.catalog.clickbait[items])
    np.testing.assert_array_equal(column["satisfaction"], np.repeat(users.satisfaction[:, None], 20, axis=1))
    assert len(np.unique(users.satisfaction)) > 1
    # An ablation: some of the hidden columns, always in HIDDEN_FEATURE_NAMES order.
    some = envs.make_vector_env(
        SlateEnvConfig(**SMALL, observe_hidden=["satisfaction", "quality"]), num_envs=6
    )
    assert some.config.observe_hidden == ("quality", "satisfaction")
    obs_some, _ = some.reset(seed=5)
    for _ in range(3):
        obs_some, *_ = some.step(actions)
    np.testing.assert_array_equal(obs_some["features"], obs["features"][..., [0, 1, 2, 4, 6]])
    assert SlateEnvConfig(observe_hidden="all").observe_hidden == HIDDEN_FEATURE_NAMES
    assert SlateEnvConfig(observe_hidden=False).observe_hidden == ()


def _session_feedback_world(
    appended: tuple[str, ...], **fields
) -> tuple[SlateSimulator, np.random.Generator]:
    """32 users started in a small ``long-term`` world with ``item_rating`` and ``fields``, whose appended
    feature names must be ``appended``; gymnasium's checker passes on its env."""
    config = with_preset("long-term", num_items=400, observe_rating=True, **fields)
    assert config.feature_names[3:] == appended
    check_env(envs.make_env(config).unwrapped)
    sim = envs.build_simulator(config, batch=32)
    rng = np.random.default_rng(3)
    sim.start_users(np.arange(32), rng)
    sim.refresh_candidates(rng)
    return sim, rng


def test_observe_feedback_shows_the_satisfaction_the_users_last_click_met():
    """``last_engagement`` is feedback, not state: after a click it is the satisfaction the user had when they
    clicked (so one click late), a step without a click leaves it, a new user starts at 0, and it sits after
    ``item_rating`` and before the hidden columns."""
    sim, rng = _session_feedback_world(
        ("item_rating", "last_engagement", "satisfaction"),
        observe_feedback=True,
        observe_hidden=["satisfaction"],
    )
    feedback = sim.observation()["features"][..., 4]  # [B, K]
    assert (feedback == 0).all()
    clicks = 0
    for _ in range(8):
        before = sim.users.satisfaction.copy()
        previous = feedback[:, 0].copy()
        outcome = sim.step(np.tile(np.arange(5), (32, 1)), rng)
        sim.refresh_candidates(rng)
        feedback = sim.observation()["features"][..., 4]
        assert (feedback == feedback[:, :1]).all()  # one value per user, in every candidate's row
        clicked = outcome.info["clicked"]
        np.testing.assert_array_equal(feedback[clicked, 0], before[clicked])
        np.testing.assert_array_equal(feedback[~clicked, 0], previous[~clicked])
        clicks += int(clicked.sum())
    assert clicks > 10 and (sim.users.satisfaction != feedback[:, 0]).any()  # it lags the state
    sim.start_users(np.arange(4), rng)
    assert (sim.users.last_engagement[:4] == 0).all()
    with pytest.raises(ConfigError, match="observe_feedback must be true or false"):
        SlateEnvConfig(observe_feedback="yes")


def test_observe_last_click_shows_the_rating_of_the_item_the_user_clicked_last():
    """``last_click_rating`` is the ``item_rating`` the clicked candidate showed: a click sets it, a step
    without a click leaves it, it is 0 before the first click and for a new user, it sits after
    ``last_engagement``, and it needs ``observe_rating``, whose ratings it reads."""
    sim, rng = _session_feedback_world(
        ("item_rating", "last_engagement", "last_click_rating"),
        observe_feedback=True,
        observe_last_click=True,
    )
    features = sim.observation()["features"]  # [B, K, F]
    assert (features[..., 5] == 0).all()
    clicks = 0
    for _ in range(8):
        shown = features
        outcome = sim.step(np.tile(np.arange(5), (32, 1)), rng)  # slate position i is candidate i
        sim.refresh_candidates(rng)
        features = sim.observation()["features"]
        assert (features[..., 5] == features[:, :1, 5]).all()  # one value per user, in every candidate's row
        clicked, position = outcome.info["clicked"], outcome.info["click_position"]
        rows = np.flatnonzero(clicked)
        np.testing.assert_array_equal(features[rows, 0, 5], shown[rows, position[rows], 3])
        np.testing.assert_array_equal(features[~clicked, 0, 5], shown[~clicked, 0, 5])
        clicks += len(rows)
    assert clicks > 10
    sim.start_users(np.arange(4), rng)
    sim.refresh_candidates(rng)
    assert (sim.observation()["features"][:4, :, 5] == 0).all()
    with pytest.raises(ConfigError, match="set observe_rating=true"):
        with_preset("long-term", observe_last_click=True)


def test_observe_rating_appends_each_candidates_mean_logged_rating(tmp_path):
    """``item_rating`` is the catalog's observed mean rating: the column sits between the observable
    features and the hidden ones, it tracks the hidden quality it is evidence of, and the built-in world's
    in-memory log gives exactly the ratings of the same world written to Parquet."""
    plain = envs.make_vector_env(SlateEnvConfig(**SMALL), num_envs=6)
    rated = envs.make_vector_env(SlateEnvConfig(**SMALL, observe_rating=True), num_envs=6)
    both = envs.make_vector_env(
        SlateEnvConfig(**SMALL, observe_rating=True, observe_hidden=["quality"]), num_envs=6
    )
    check_env(envs.make_env(rated.config).unwrapped)
    actions = np.tile(np.arange(5), (6, 1))
    obs_plain, obs, obs_both = (env.reset(seed=5)[0] for env in (plain, rated, both))
    for _ in range(3):
        obs_plain, obs, obs_both = (env.step(actions)[0] for env in (plain, rated, both))
    assert rated.config.feature_names == (*FEATURE_NAMES, ITEM_RATING)
    assert both.config.feature_names == (*FEATURE_NAMES, ITEM_RATING, "quality")
    assert rated.single_observation_space.contains({key: value[0] for key, value in obs.items()})
    np.testing.assert_array_equal(obs["features"][..., :NUM_FEATURES], obs_plain["features"])
    sim = rated.sim
    np.testing.assert_array_equal(obs["features"][..., NUM_FEATURES], sim.catalog.rating[sim.candidate_items])
    np.testing.assert_array_equal(obs_both["features"][..., :-1], obs["features"])
    rating, quality = sim.catalog.rating, sim.catalog.quality
    rated_items = rating != 0.5
    assert rated_items.mean() > 0.5  # most items are rated in the log of 10,000 users
    assert np.corrcoef(rating[rated_items], quality[rated_items])[0, 1] > 0.5
    assert plain.sim.catalog.rating is None  # computed only when asked for

    world = WorldConfig(items=400, users=300, topics=4, dim=8, seed=3, clickbait_rate=0.2)
    write_world(world, str(tmp_path / "world"))
    on_disk = envs.make_vector_env(
        SlateEnvConfig(data_dir=str(tmp_path / "world"), observe_rating=True, history_length=5), num_envs=2
    )
    in_memory = envs.make_vector_env(
        SlateEnvConfig(
            num_items=400, num_topics=4, dim=8, world_seed=3, rating_log_users=300, observe_rating=True
        ),
        num_envs=2,
    )
    np.testing.assert_array_equal(on_disk.sim.catalog.rating, in_memory.sim.catalog.rating)


def test_rating_feature_is_the_shrunk_scaled_mean_rating():
    count = np.array([0.0, 1.0, 1000.0, 4.0])
    total = np.array([0.0, 5.0, 5000.0, 4.0])  # no rating; one 5; a thousand 5s; four 1s
    got = rating_feature(count, total, low=1.0, high=5.0)
    prior = RATING_PRIOR_COUNT
    np.testing.assert_allclose(
        got,
        [0.5, (1 + 0.5 * prior) / (1 + prior), (1000 + 0.5 * prior) / 1005, 0.5 * prior / (4 + prior)],
        rtol=1e-6,
    )
    assert got.dtype == np.float32


def test_observe_item_log_appends_each_items_logged_click_through_rate_and_watch_time():
    """``item_ctr`` and ``item_watch`` are the catalog's per-item statistics of an exploration log of
    training users: they sit after the session feedback and before the hidden columns, every simulator of
    the world (training or held-out users, any reward) reads the same log, and the click-through rate is
    evidence of the clickbait trait it was made to reveal."""
    fields = {**SMALL, "item_log_users": 3000, "observe_feedback": True}
    env = envs.make_vector_env(
        with_preset("long-term", **fields, observe_item_log=True, observe_hidden=["clickbait"]), num_envs=4
    )
    check_env(envs.make_env(with_preset("long-term", **fields, observe_item_log=True)).unwrapped)
    assert env.config.feature_names == (*FEATURE_NAMES, LAST_ENGAGEMENT, *ITEM_LOG_FEATURES, "clickbait")
    assert is_simulation_feature_set(env.config.feature_names)
    obs, _ = env.reset(seed=2)
    sim = env.sim
    logged = sim.catalog.item_log[:, :2]  # [N, 2] (the third column is observe_lift's)
    np.testing.assert_array_equal(obs["features"][..., NUM_FEATURES + 1 : -1], logged[sim.candidate_items])
    assert ((logged >= 0) & (logged <= 1)).all() and not sim.catalog.item_log.flags.writeable
    clickbait = sim.catalog.clickbait > 0.5
    ctr = logged[:, 0]
    assert ctr[clickbait].mean() > 1.2 * ctr[~clickbait].mean()
    # The held-out users' simulator and another reward read the same log (made from training users).
    held_out = envs.make_vector_env(
        with_preset("long-term", **fields, observe_item_log=True, user_split="test", reward="clicks"),
        num_envs=2,
    )
    np.testing.assert_array_equal(held_out.sim.catalog.item_log[:, :2], logged)
    assert envs.make_vector_env(with_preset("long-term", **SMALL), num_envs=2).sim.catalog.item_log is None
    with pytest.raises(ConfigError, match="observe_item_log must be true or false"):
        SlateEnvConfig(observe_item_log="yes")
    with pytest.raises(ConfigError, match="item_log_users must be >= 1"):
        SlateEnvConfig(item_log_users=0)


def test_lift_log_pairs_each_click_with_the_same_users_next_click():
    """:class:`envs.item_log.LiftLog` reads a click's completion rate one step late (in the next
    observation) and credits the change to the next click's rate to the item clicked before: user 0 clicks
    item 2 (completion 0.4), skips a step, clicks item 5 (0.7), then item 2 (0.6); user 1 clicks once."""

    def step(users, completion, chosen):
        features = np.zeros((len(users), 1, 1))
        features[:, 0, 0] = completion
        return SimpleNamespace(users=np.array(users), obs={"features": features}, chosen=np.array(chosen))

    log = LiftLog(num_users=2, column=0)
    assert not log.totals(num_items=6)[1].any()  # no click yet: nothing measured
    log(step([0, 1], [0.0, 0.0], [2, 3]))
    log(step([0, 1], [0.4, 0.9], [-1, -1]))  # item 2's rate 0.4 and item 3's 0.9 arrive
    log(step([0], [0.4], [5]))
    log(step([0], [0.7], [2]))  # item 5's rate: item 2 moved it by +0.3
    log(step([0], [0.6], [-1]))  # item 2's rate: item 5 moved it by -0.1
    total, count = log.totals(num_items=6)
    np.testing.assert_allclose(total, [0, 0, 0.3, 0, 0, -0.1])
    np.testing.assert_array_equal(count, [0, 0, 1, 0, 0, 1])


def test_observe_lift_estimates_what_a_click_does_and_the_satisfaction_now():
    """``item_lift`` is each item's logged change in its clickers' completion rate, which tracks the change
    the world's dynamics make (``gain * (q - 0.5) - penalty * c``); ``satisfaction_estimate`` is the last
    completion rate plus the lift of the item that click was on, 0 before the first click. Both sit after
    the item-log columns, and ``observe_item_log`` reads the same log."""
    fields = {**SMALL, "item_log_users": 3000}
    config = with_preset("long-term", **fields, observe_feedback=True, observe_lift=True)
    assert config.feature_names == (*FEATURE_NAMES, LAST_ENGAGEMENT, *LIFT_FEATURES)
    assert is_simulation_feature_set(config.feature_names)
    check_env(envs.make_env(config).unwrapped)
    env = envs.make_vector_env(config, num_envs=8)
    sim = env.sim
    lift = sim.catalog.item_log[:, 2]
    catalog = sim.catalog
    true_lift = sim.response.click_change(catalog.quality, catalog.clickbait, catalog.clickbait)
    assert np.corrcoef(lift, true_lift)[0, 1] > 0.6
    # The rates are those observe_item_log shows: one log, whichever columns read it.
    item_log = envs.make_vector_env(with_preset("long-term", **fields, observe_item_log=True), num_envs=2)
    np.testing.assert_array_equal(item_log.sim.catalog.item_log, sim.catalog.item_log)
    obs, _ = env.reset(seed=3)
    rng = np.random.default_rng(0)
    seen_click = False
    for _ in range(12):
        features = obs["features"]  # [B, K, F]
        last = sim.users.last_click
        expected = np.where(
            last >= 0, np.clip(sim.users.last_engagement + lift[np.maximum(last, 0)], 0, 1), 0.0
        )
        np.testing.assert_allclose(features[:, 0, -1], expected, rtol=1e-6)
        np.testing.assert_array_equal(features[..., -2], lift[sim.candidate_items])
        assert (features[..., -1] == features[:, :1, -1]).all()  # a user column: the same in every row
        seen_click = seen_click or bool((last >= 0).any())
        obs, *_ = env.step(rng.integers(0, config.num_candidates, (8, config.slate_size)))
    assert seen_click
    with pytest.raises(ConfigError, match="observe_lift must be true or false"):
        SlateEnvConfig(observe_lift="yes")


def test_item_log_features_need_a_simulator_that_measures_watch_time():
    from envs.factory import build_simulator
    from envs.item_log import item_log_features

    sim = build_simulator(SlateEnvConfig(**SMALL), batch=4)
    with pytest.raises(ConfigError, match=r"reads watch time as the reward.*reward='clicks'"):
        item_log_features(sim, num_users=8, seed=0)


def test_shrunk_mean_pulls_rarely_measured_items_to_the_logs_mean():
    total = np.array([0.0, 1.0, 500.0, 0.0])
    count = np.array([0.0, 2.0, 1000.0, 8.0])  # never seen; 1 of 2; 500 of 1000; 0 of 8
    mean = 501.0 / 1010.0
    got = shrunk_mean(total, count, prior_count=4.0)
    np.testing.assert_allclose(
        got, [mean, (1 + 4 * mean) / 6, (500 + 4 * mean) / 1004, 4 * mean / 12], rtol=1e-6
    )
    assert got.dtype == np.float32


def test_observe_rating_without_ratings_in_the_log_is_a_config_error(tmp_path):
    world = WorldConfig(items=300, users=50, topics=4, dim=8, seed=1)
    write_world(world, str(tmp_path / "world"))
    clicks_only = tmp_path / "world" / "interactions.parquet"
    table = pq.read_table(clicks_only)
    pq.write_table(table.filter(pc.not_equal(table.column("event"), "rating")), clicks_only)
    with pytest.raises(ConfigError, match=r"observe_rating: the interactions at .* have no rating event"):
        envs.make_vector_env(
            SlateEnvConfig(data_dir=str(tmp_path / "world"), observe_rating=True), num_envs=2
        )
    with pytest.raises(ConfigError, match="observe_rating must be true or false"):
        SlateEnvConfig(observe_rating="yes")


def test_keyword_arguments_reach_the_config():
    env = gym.make(envs.ENV_ID, num_candidates=8, slate_size=3, candidates="random", **SMALL)
    obs, _ = env.reset(seed=1)
    assert obs["candidates"].shape == (8, 32)
    assert list(env.action_space.nvec) == [8, 8, 8]
    assert env.unwrapped.config.candidates == "random"


def test_same_seed_same_trajectory():
    first = rollout(envs.make_env(SlateEnvConfig(**SMALL)), seed=3)
    second = rollout(envs.make_env(SlateEnvConfig(**SMALL)), seed=3)
    other = rollout(envs.make_env(SlateEnvConfig(**SMALL)), seed=4)
    assert first == second
    assert first != other


def test_faiss_candidates_follow_the_observed_profile_and_skip_consumed_items():
    env = envs.make_env(SlateEnvConfig(**SMALL))
    obs, _ = env.reset(seed=5)
    sim = env.unwrapped.sim
    scores = obs["features"][:, 0]
    assert np.all(np.diff(scores) <= 1e-6), "candidates come in retrieval order"
    expected = sim.catalog.embeddings[sim.candidate_items[0]] @ obs["profile"]
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    for _ in range(30):
        obs, _, terminated, _, _info = env.step(np.arange(5))
        consumed = set(sim.users.consumed[0, : sim.users.consumed_len[0]].tolist())
        assert not consumed & set(sim.candidate_items[0].tolist())
        if terminated:
            break


def test_diverse_candidates_are_the_nearest_unseen_items_within_the_category_quota():
    quota = 2
    env = envs.make_env(
        SlateEnvConfig(**SMALL, num_candidates=8, candidates="faiss-diverse", category_quota=quota)
    )
    obs, _ = env.reset(seed=5)
    sim = env.unwrapped.sim
    categories = sim.catalog.categories
    for _ in range(20):
        # Brute-force reference: walk the whole catalog by score, skip consumed items and full categories.
        consumed = set(sim.users.consumed[0, : sim.users.consumed_len[0]].tolist())
        scores = sim.catalog.embeddings @ obs["profile"]
        expected, per_category = [], {}
        for item in np.argsort(-scores, kind="stable"):
            if item in consumed or per_category.get(categories[item], 0) == quota:
                continue
            expected.append(int(item))
            per_category[categories[item]] = per_category.get(categories[item], 0) + 1
            if len(expected) == 8:
                break
        got = sim.candidate_items[0].tolist()
        assert got == expected or np.allclose(scores[got], scores[expected], atol=1e-5)  # ties may swap
        assert max(np.unique(categories[got], return_counts=True)[1]) <= quota
        np.testing.assert_allclose(obs["features"][:, 0], scores[got], atol=1e-5)
        obs, _, terminated, _, _ = env.step(np.arange(5))
        if terminated:
            break


def test_plain_faiss_candidates_crowd_into_few_categories_and_diverse_ones_do_not():
    def mean_categories(mode: str) -> float:
        env = envs.make_env(SlateEnvConfig(**SMALL, candidates=mode, category_quota=4))
        counts = []
        for seed in range(10):
            env.reset(seed=seed)
            sim = env.unwrapped.sim
            counts.append(len(set(sim.catalog.categories[sim.candidate_items[0]])))
        return float(np.mean(counts))

    plain, diverse = mean_categories("faiss"), mean_categories("faiss-diverse")
    assert diverse >= 5 > plain  # K=20 at <= 4 per category needs 5 of the 6 topics


def test_repeated_slate_positions_are_replaced_by_the_best_unused_candidate():
    slates = np.array([[3, 3, 0, 3, 1], [0, 1, 2, 3, 4], [2, 2, 2, 2, 2]])
    np.testing.assert_array_equal(
        dedupe_slates(slates, 6), [[3, 0, 1, 2, 4], [0, 1, 2, 3, 4], [2, 0, 1, 3, 4]]
    )


class ScriptedChoice:
    """A fake choice model: always clicks the given slate position (or nothing with -1)."""

    def __init__(self, position: int) -> None:
        self.position = position

    def item_logits(self, interest, items, catalog, satiation=None):
        return np.zeros(items.shape)

    def choose(self, interest, slate, catalog, rng, satiation=None):
        return np.full(len(slate), self.position, dtype=np.int64)


def test_dynamics_with_a_fake_choice_model_are_exact():
    config = SlateEnvConfig(**SMALL, leave_base=0.0, leave_scale=0.0, initial_satisfaction=(0.7, 0.7))
    env = envs.make_env(config, choice_model=ScriptedChoice(1))
    env.reset(seed=11)
    sim = env.unwrapped.sim
    interest = sim.users.interest[0].copy()
    item = sim.candidate_items[0, 4]
    _, reward, terminated, _, info = env.step(np.array([2, 4, 0, 1, 3]))
    catalog = sim.catalog
    assert info["clicked"] and info["click_position"] == 1 and info["chosen_item"] == item
    assert reward == 1.0 and not terminated and not info["left"]
    drifted = l2_normalize(
        (1 - config.interest_drift) * interest + config.interest_drift * catalog.embeddings[item]
    )
    np.testing.assert_allclose(sim.users.interest[0], drifted, atol=1e-6)
    change = (
        config.satisfaction_gain * (catalog.quality[item] - 0.5)
        - config.clickbait_penalty * catalog.clickbait[item]
    )
    assert info["satisfaction"] == pytest.approx(np.clip(0.7 + change, 0, 1), abs=1e-6)
    assert sim.users.budget[0] == config.budget - 1
    assert item in sim.users.consumed[0, : sim.users.consumed_len[0]]


def test_no_click_bores_and_the_budget_ends_the_session():
    config = SlateEnvConfig(
        **SMALL, budget=4.0, leave_base=0.0, leave_scale=0.0, initial_satisfaction=(0.5, 0.5)
    )
    env = envs.make_env(config, choice_model=ScriptedChoice(-1))
    env.reset(seed=0)
    for step in range(1, 5):
        obs, reward, terminated, _, info = env.step(np.arange(5))
        assert reward == 0.0 and not info["clicked"] and info["chosen_item"] == -1
        assert info["satisfaction"] == pytest.approx(0.5 - step * config.boredom, abs=1e-6)
        assert obs["budget"][0] == pytest.approx(1 - step / 4)
        assert terminated == (step == 4)


def test_dissatisfied_users_leave():
    # Satisfaction 0 and leave_scale 1: leave probability 1 after the first step.
    config = SlateEnvConfig(**SMALL, leave_base=0.0, leave_scale=1.0, initial_satisfaction=(0.0, 0.0))
    env = envs.make_env(config, choice_model=ScriptedChoice(-1))
    env.reset(seed=0)
    _, _, terminated, _, info = env.step(np.arange(5))
    assert terminated and info["left"]
    # Fully satisfied users with leave_base 0 never leave before the budget ends.
    config = config.replace(initial_satisfaction=(1.0, 1.0), boredom=0.0, budget=6.0)
    env = envs.make_env(config, choice_model=ScriptedChoice(-1))
    env.reset(seed=0)
    lengths = 0
    while True:
        _, _, terminated, _, info = env.step(np.arange(5))
        lengths += 1
        if terminated:
            break
    assert lengths == 6 and not info["left"]


def test_engagement_reward_is_the_clicked_items_quality():
    env = envs.make_env(SlateEnvConfig(**SMALL, reward="engagement"), choice_model=ScriptedChoice(0))
    env.reset(seed=2)
    _, reward, _, _, info = env.step(np.arange(5))
    assert reward == pytest.approx(float(env.unwrapped.sim.catalog.quality[info["chosen_item"]]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_candidates": 4, "slate_size": 5}, "slate_size"),
        ({"num_candidates": 700}, "catalog"),
        ({"num_candidates": 500, "candidates": "random", "num_items": 300}, "catalog"),
        ({"temperature": 0.0}, "temperature"),
        ({"candidates": "bm25"}, "candidates"),
        ({"candidates": "faiss-diverse", "category_quota": 0}, "category_quota"),
        ({"candidates": "faiss-diverse", "category_quota": 3}, "category_quota=3 over the catalog's 6"),
        ({"bogus": 1}, "unknown"),
        ({"observe_hidden": ["quality", "mood"]}, r"observe_hidden: unknown \['mood'\]"),
        ({"observe_hidden": 3}, "observe_hidden must be true, false, 'all' or names"),
    ],
)
def test_bad_config_is_a_config_error_at_construction(overrides, message):
    kwargs = {**SMALL, **overrides}
    with pytest.raises(ConfigError, match=message):
        gym.make(envs.ENV_ID, **kwargs)
