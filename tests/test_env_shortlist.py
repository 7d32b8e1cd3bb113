"""The certified retrieval shortlist (``retrieval_shortlist``, envs.shortlist): the K items a search finds,
from fewer searches."""

from __future__ import annotations

import numpy as np
import pytest

import envs
from envs.candidates import FlatRetriever
from envs.config import SlateEnvConfig
from envs.planner import PlannerPolicy
from envs.presets import with_preset
from envs.rollout import evaluate_policy
from envs.shortlist import row_member
from envs.users import NO_ITEM
from rayrec.errors import ConfigError

K = 20
TIE = 1e-5
"""Scores this close at the K-th place make either item a correct K-th (two sums of the same products)."""


class CountingRetriever:
    """The simulator's retriever, counting the rows it searches in full."""

    def __init__(self, inner: FlatRetriever) -> None:
        self.inner = inner
        self.searched = 0

    def search_excluding(self, queries, k, excluded):
        self.searched += len(queries)
        return self.inner.search_excluding(queries, k, excluded)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def assert_a_search_finds_the_same(sim, retriever: FlatRetriever) -> int:
    """Every row's K candidates are a full search's; returns how many rows had a near-tie at the K-th place."""
    users = sim.users
    excluded = users.consumed[:, : int(users.consumed_len.max())]
    scores, items = retriever.search_excluding(users.profile(), K + 1, excluded)  # [B, K + 1]
    tie = scores[:, K - 1] - scores[:, K] < TIE
    same = (np.sort(sim.candidate_items, axis=1) == np.sort(items[:, :K], axis=1)).all(axis=1)
    assert (same | tie).all(), np.flatnonzero(~(same | tie))
    np.testing.assert_allclose(
        np.sort(sim.candidate_scores, axis=1), np.sort(scores[:, :K], axis=1), rtol=0, atol=TIE
    )
    return int(tie.sum())


@pytest.mark.parametrize("preset", ["classic", "long-term"])
def test_the_shortlist_gives_the_items_a_search_gives_from_fewer_searches(preset):
    config = with_preset(preset, num_items=3000, num_candidates=K, retrieval_shortlist=True)
    env = envs.make_vector_env(config, 64)
    sim = env.unwrapped.sim
    exact = sim.candidate_generator.retriever
    counting = sim.candidate_generator.retriever = CountingRetriever(exact)
    env.reset(seed=3)
    rng = np.random.default_rng(0)
    changed = 0  # user-steps whose profile changed (a click or a new user): a search without the shortlist
    ties = 0
    for _ in range(40):
        before = sim.users.profile_count.copy()
        actions = rng.permuted(np.tile(np.arange(K), (64, 1)), axis=1)[:, :5]
        env.step(actions)
        changed += int((sim.users.profile_count != before).sum())
        ties += assert_a_search_finds_the_same(sim, exact)
    assert ties < 0.05 * 40 * 64  # the comparison is not vacuous: few rows are near-ties
    assert sim.users.session.max() > 1 or (sim.users.total_steps < 40).any()  # users ended and were replaced
    assert 0 < counting.searched - 64 < 0.6 * changed  # most changed users were certified, not searched


def test_new_users_and_copies_do_not_inherit_a_shortlist():
    config = SlateEnvConfig(num_items=2000, num_topics=6, num_candidates=K, retrieval_shortlist=True)
    sim = envs.build_simulator(config, batch=4)
    sim.start_users(np.arange(4), np.random.default_rng(0))
    sim.refresh_candidates(np.random.default_rng(0))
    assert (sim.users.shortlist_count == sim.users.profile_count).all()
    assert sim.users.shortlist.shape == (4, 2 * K) and (sim.users.shortlist >= 0).all()
    copy = sim.users.take(np.array([1, 1, 3]))
    np.testing.assert_array_equal(copy.shortlist, sim.users.shortlist[[1, 1, 3]])
    sim.start_users(np.array([2]), np.random.default_rng(1))  # a new user in row 2
    assert sim.users.shortlist_count[2] == -1 and sim.users.shortlist_count[0] >= 0


def test_the_planner_rollouts_leave_the_users_shortlists_correct():
    config = SlateEnvConfig(
        num_items=2000, num_topics=6, num_candidates=K, budget=6.0, retrieval_shortlist=True
    )
    sim = envs.build_simulator(config, batch=6)
    planner = PlannerPolicy(sim, rollouts=2, horizon=4)
    checked = []

    class Checked:  # the planner, checking the candidates it is shown after its own rollouts
        name = "checked-planner"

        def select(self, obs, slate_size, rng=None):
            checked.append(True)
            assert_a_search_finds_the_same(sim, sim.candidate_generator.retriever)
            return planner.select(obs, slate_size, rng)

    outcomes = evaluate_policy(Checked(), sim, 6, seed=0)
    assert np.isfinite(outcomes.session_return).all() and len(checked) > 3


def test_neighbours_are_the_most_similar_other_items_and_bound_the_rest():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(300, 8)).astype(np.float32)
    embeddings[7] = embeddings[3]  # a duplicate: each is the other's nearest
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    retriever = FlatRetriever(embeddings)
    rows = np.array([3, 7, 10, 10, 299])
    near, beyond = retriever.neighbours(rows, 5)
    similarity = embeddings @ embeddings.T
    for row, listed, bound in zip(rows, near, beyond, strict=True):
        assert row not in listed and len(set(listed)) == 5
        others = np.setdiff1d(np.arange(300), [row, *listed])
        assert similarity[row, listed].min() >= similarity[row, others].max() - 1e-6
        assert bound == pytest.approx(similarity[row, others].max(), abs=1e-6)
    assert 7 in near[0] and 3 in near[1]
    with pytest.raises(ValueError, match="5 wide"):
        retriever.neighbours(rows, 6)
    tiny = FlatRetriever(embeddings[:3])
    near, beyond = tiny.neighbours(np.arange(3), 4)
    assert (near[:, 2:] == NO_ITEM).all() and np.isneginf(beyond).all()  # fewer items than neighbours


def test_row_membership_matches_a_broadcast_comparison():
    rng = np.random.default_rng(1)
    for _ in range(100):
        rows, width, size = rng.integers(1, 12), rng.integers(1, 30), rng.integers(0, 40)
        values = rng.integers(NO_ITEM, 25, (rows, width))
        sets = rng.integers(NO_ITEM, 25, (rows, size))
        expected = (values[:, :, None] == sets[:, None, :]).any(axis=2)  # [rows, width]
        np.testing.assert_array_equal(row_member(values, sets), expected)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"candidates": "faiss-diverse", "retrieval_shortlist": True}, "candidates=faiss only"),
        ({"retrieval_shortlist": "yes"}, "retrieval_shortlist must be true or false"),
    ],
)
def test_bad_shortlist_settings_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        SlateEnvConfig(num_items=600, num_topics=6, **overrides)
