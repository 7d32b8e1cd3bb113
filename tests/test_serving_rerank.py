"""Re-rankers as served arms: ``fair@β:BASE`` over the index's item categories, over HTTP and in rollouts."""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
import numpy as np
import pytest
from _serve_app import TOPICS, build_test_index

from rayrec.assignment import assign_arm
from rayrec.errors import ArtifactError
from rayrec.index.item_index import ItemIndex
from rayrec.metrics.beyond import gini
from serving.api import RecommendRequest
from serving.app import Recommender, resolve_config
from serving.deployments import EventLogger
from serving.local import LocalHandle, stages_user_config
from serving.settings import AppConfig

FAIR_APP = "rayrec-fair"
FAIR_PREFIX = "/fair"
FAIR_WEIGHTS = [("plain", 1.0), ("fair", 1.0)]


def user_in(arm: str, start: int = 0) -> str:
    for i in range(start, start + 10_000):
        if assign_arm(f"user-{i}", FAIR_WEIGHTS) == arm:
            return f"user-{i}"
    raise AssertionError(f"no user in arm {arm}")


def topic(item_id: str) -> int:
    return int(item_id.removeprefix("item-")) % len(TOPICS)  # build_test_index: item-i is topic i % 4


def test_a_fair_arm_evens_out_category_exposure_over_http(live_app, tmp_path):
    """Two arms on one index with categories: ``retrieval`` and ``fair@2:retrieval``. Every request asks
    both arms with the same space-topic history; retrieval shows mostly space items, the fair arm spreads
    its impressions over the four topics (its Gini over category exposure is far lower)."""
    from ray import serve

    from serving.app import build_app

    index = build_test_index(tmp_path, n_items=120, seed=4, categories=True)
    args = {
        "index": str(index),
        "arms": "plain=retrieval,fair=fair@2:retrieval",
        "events": str(tmp_path / "events"),
        "encoder": "none",
        "num_candidates": "20",
        "pseudonym_key": str(tmp_path / "secrets" / "pseudonym.key"),
    }
    serve.run(build_app(args), name=FAIR_APP, route_prefix=FAIR_PREFIX)
    try:
        exposure = {"plain": np.zeros(len(TOPICS)), "fair": np.zeros(len(TOPICS))}
        answers = {}
        space = [f"item-{i:04d}" for i in range(0, 120, 4)]  # topic 0
        with httpx.Client(base_url=f"{live_app.url}{FAIR_PREFIX}", timeout=60) as client:
            for r in range(12):
                history = space[2 * r : 2 * r + 3]
                for arm in ("plain", "fair"):
                    body = {"user_id": user_in(arm, 100 * r), "history": history, "k": 5}
                    answer = client.post("/recommend", json=body)
                    assert answer.status_code == 200, answer.text
                    answer = answer.json()
                    assert answer["arm"] == arm and not answer["fallback"] and len(answer["items"]) == 5
                    answers[arm] = answer
                    for item in answer["items"]:
                        exposure[arm][topic(item["item_id"])] += 1
        assert answers["fair"]["policy"] == "fair@2:retrieval"
        assert answers["fair"]["policy_version"] == "fair@2-baseline-retrieval"
        plain, fair = gini(exposure["plain"]), gini(exposure["fair"])
        # retrieval: nearly all space items (Gini near its maximum of 0.75 over four categories); fair:
        # every topic shown, as far as the few other-topic items among the 20 candidates allow
        assert exposure["plain"][0] > 0.8 * exposure["plain"].sum() and plain > 0.6, exposure
        assert (exposure["fair"] > 0).all() and fair < plain - 0.3, (plain, fair, exposure)
    finally:
        serve.delete(FAIR_APP)


@pytest.fixture
def plain_index(tmp_path, monkeypatch):
    """(config, index dir): a colocated config serving ``retrieval`` on an index without categories."""
    monkeypatch.setenv("RAYREC_PSEUDONYM_KEY", "k" * 32)
    index = build_test_index(tmp_path / "plain", n_items=60)
    config = AppConfig(
        index=str(index), arms=["a=retrieval"], events=str(tmp_path / "events"), encoder=None, colocate=True
    )
    return config, index


def roll_out_fair_greedy(config: AppConfig, index) -> tuple:
    """A colocated app on ``config`` rolls arm ``a`` out to ``fair:greedy``, then answers one request:
    (the answer, the admin health)."""
    logger = EventLogger(config.events, config.remembered_requests, config.flush_rows, config.flush_seconds)
    service = Recommender(
        None, None, None, LocalHandle(logger), None, config, dim=ItemIndex.load(str(index)).dim
    )

    async def scenario():
        await service.reconfigure(stages_user_config(config))
        await service.reconfigure(stages_user_config(dataclasses.replace(config, arms=["a=fair:greedy"])))
        request = RecommendRequest(user_id="u", history=["item-0001", "item-0002"], k=5)
        return await service.recommend(request), await service.health(admin=True)

    try:
        return asyncio.run(scenario())
    finally:
        logger.log.close()


def test_a_fair_arm_on_an_index_without_categories_is_a_clear_error(plain_index):
    """Building the app refuses it (one line naming the fix); a rollout to it is refused while the
    current policy keeps serving, and health says why."""
    config, index = plain_index
    assert ItemIndex.load(str(index)).categories is None  # the layout before categories still loads
    with pytest.raises(ArtifactError, match=r"fair re-ranker needs item categories and index .* has none"):
        resolve_config(dataclasses.replace(config, arms=["a=fair@0.5:retrieval"]))

    answer, health = roll_out_fair_greedy(config, index)
    assert answer.policy == "retrieval" and len(answer.items) == 5
    assert health.policies == {"a": "retrieval"}
    [problem] = health.problems
    assert "refused fair:greedy" in problem and "has none" in problem and "\n" not in problem


def test_fair_arm_rolls_out_on_an_index_with_categories(tmp_path, monkeypatch):
    """``fair:greedy`` through a colocated rollout: it answers, and its version names the base's."""
    monkeypatch.setenv("RAYREC_PSEUDONYM_KEY", "k" * 32)
    index = build_test_index(tmp_path / "cats", n_items=60, categories=True)
    config = AppConfig(
        index=str(index), arms=["a=retrieval"], events=str(tmp_path / "events"), encoder=None, colocate=True
    )
    answer, health = roll_out_fair_greedy(config, index)
    assert answer.policy == "fair@1:greedy" and answer.policy_version == "fair@1-baseline-greedy"
    assert len({item.item_id for item in answer.items}) == 5 and not health.problems


def test_a_reranked_trained_policy_keeps_its_trained_scale_and_k(tmp_path):
    """``mmr:DIR`` is served with DIR's own ``budget`` scale, and refused at another K, like DIR itself."""
    from _serve_app import export_policy

    from rayrec.rerank import load_policy_for_index
    from serving.deployments import Ranker, policy_version
    from serving.pipeline import budget_scale, trained_config

    policy_dir = export_policy(tmp_path, dim=16, num_candidates=30, budget=7.0)
    wrapped = load_policy_for_index(f"mmr@0.5:{policy_dir}", None)
    assert trained_config(wrapped).num_candidates == 30 and budget_scale(wrapped) == 7.0
    assert policy_version(f"mmr@0.5:{policy_dir}") == f"mmr@0.5-{policy_version(str(policy_dir))}"
    with pytest.raises(ArtifactError, match="trained on K=30"):
        Ranker(20, None, 16)._load(f"mmr@0.5:{policy_dir}")
