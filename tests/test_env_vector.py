"""The native vector env: shapes, autoreset semantics, determinism, agreement with the single env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

import envs
from envs.config import SlateEnvConfig

SMALL = SlateEnvConfig(num_items=600, num_topics=6, num_candidates=10, slate_size=3, budget=6.0)


def test_make_vec_uses_the_native_vector_env():
    vec = gym.make_vec(
        envs.ENV_ID, num_envs=5, vectorization_mode="vector_entry_point", num_candidates=10, slate_size=3
    )
    assert type(vec.unwrapped).__name__ == "SlateRecVectorEnv"
    assert vec.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    obs, _ = vec.reset(seed=0)
    assert vec.observation_space.contains(obs)
    assert obs["profile"].shape == (5, 32) and obs["candidates"].shape == (5, 10, 32)
    assert obs["features"].shape == (5, 10, 3) and obs["budget"].shape == (5, 1)
    assert all(v.dtype == np.float32 for v in obs.values())
    assert vec.action_space.shape == (5, 3)
    single = gym.make(envs.ENV_ID, num_candidates=10, slate_size=3)
    assert vec.unwrapped.single_observation_space == single.observation_space
    assert vec.unwrapped.single_action_space == single.action_space


def test_next_step_autoreset_and_truncation():
    vec = envs.make_vector_env(SMALL.replace(max_episode_steps=4, budget=50.0, leave_scale=0.0), num_envs=6)
    obs, _ = vec.reset(seed=1)
    actions = np.tile(np.arange(3), (6, 1))
    for _ in range(3):
        obs, reward, terminated, truncated, info = vec.step(actions)
        assert not truncated.any() and not terminated.any()
    obs, reward, terminated, truncated, info = vec.step(actions)
    assert truncated.all() and not terminated.any()
    # The next step starts new users: reward 0, no flags, budget full, info masked out.
    obs, reward, terminated, truncated, info = vec.step(actions)
    assert np.all(reward == 0) and not terminated.any() and not truncated.any()
    np.testing.assert_allclose(obs["budget"], 1.0)
    assert not info["_clicked"].any()
    obs, reward, terminated, truncated, info = vec.step(actions)
    assert info["_clicked"].all()
    np.testing.assert_allclose(obs["budget"], 1 - 1 / 50)


def test_vector_env_is_deterministic_by_seed():
    def trajectory(seed):
        vec = envs.make_vector_env(SMALL, num_envs=8)
        obs, _ = vec.reset(seed=seed)
        rng = np.random.default_rng(0)
        out = []
        for _ in range(20):
            actions = rng.integers(0, 10, size=(8, 3))
            obs, reward, terminated, _truncated, info = vec.step(actions)
            out.append(
                (
                    reward.tobytes(),
                    terminated.tobytes(),
                    info["chosen_item"].tobytes(),
                    obs["profile"].tobytes(),
                )
            )
        return out

    assert trajectory(7) == trajectory(7)
    assert trajectory(7) != trajectory(8)


def test_vector_env_of_one_matches_the_single_env():
    vec = envs.make_vector_env(SMALL, num_envs=1)
    single = envs.make_env(SMALL)
    obs_v, _ = vec.reset(seed=21)
    obs_s, _ = single.reset(seed=21)
    for _ in range(5):
        for key in obs_s:
            np.testing.assert_array_equal(obs_v[key][0], obs_s[key])
        obs_v, r_v, term_v, _, info_v = vec.step(np.array([[2, 0, 1]]))
        obs_s, r_s, term_s, _, info_s = single.step(np.array([2, 0, 1]))
        assert r_v[0] == r_s and term_v[0] == term_s and info_v["chosen_item"][0] == info_s["chosen_item"]
        if term_s:
            break


def test_random_candidates_are_distinct_and_ranked_by_profile_score():
    vec = envs.make_vector_env(
        SMALL.replace(candidates="random", num_items=40, num_candidates=30), num_envs=16
    )
    obs, _ = vec.reset(seed=3)
    items = vec.unwrapped.sim.candidate_items
    assert all(len(set(row.tolist())) == 30 for row in items)
    assert np.all(np.diff(obs["features"][..., 0], axis=1) <= 1e-6)


def test_unchanged_users_keep_their_candidates_exactly():
    """Re-retrieving only the users whose profile changed gives the candidates a full search gives (the
    items exactly, their scores to float precision)."""
    for mode in ("faiss", "faiss-diverse"):
        config = SlateEnvConfig(num_items=800, num_topics=4, candidates=mode, num_candidates=12)
        reused = envs.make_vector_env(config, 24)
        full = envs.make_vector_env(config, 24)
        reused.reset(seed=5)
        full.reset(seed=5)
        rng = np.random.default_rng(0)
        searched = []
        for _ in range(12):
            actions = rng.permuted(np.tile(np.arange(12), (24, 1)), axis=1)[:, :5]
            full.unwrapped.sim.users.retrieval_stale[:] = True  # the peer searches every user every step
            _, _, _, _, info = reused.step(actions)
            full.step(actions)
            searched.append(np.mean(info["clicked"]))
            np.testing.assert_array_equal(
                reused.unwrapped.sim.candidate_items, full.unwrapped.sim.candidate_items
            )
            # The same inner products, summed in another order: FAISS takes its BLAS path for a batch of
            # 20 queries or more and its per-query path below, so a score can differ in the last bit.
            np.testing.assert_allclose(
                reused.unwrapped.sim.candidate_scores, full.unwrapped.sim.candidate_scores, rtol=0, atol=1e-6
            )
        assert 0 < np.mean(searched) < 1  # some users clicked (searched again), some kept their candidates
