"""Rolling out a new index and policy while requests flow: the stages' ``reconfigure`` swaps in place.

Serve calls ``reconfigure(user_config)`` when ``serve deploy`` changes only a deployment's user_config;
these tests drive the same method on a colocated ingress (real index files, real policies, the real
event logger) with requests in flight, and check that none fails and that the new artifacts answer after.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from _serve_app import build_test_index

from rayrec.errors import ArtifactError
from serving.api import RecommendRequest
from serving.app import Recommender
from serving.deployments import EventLogger
from serving.local import LocalHandle, stages_user_config
from serving.settings import AppConfig


@pytest.fixture
def colocated(tmp_path, monkeypatch):
    """(service, config, new index dir): a colocated ingress serving a 60-item index with ``retrieval``."""
    monkeypatch.setenv("RAYREC_PSEUDONYM_KEY", "k" * 32)
    old = build_test_index(tmp_path / "old", n_items=60)
    new = build_test_index(tmp_path / "new", n_items=120, seed=1)
    config = AppConfig(
        index=str(old), arms=["a=retrieval"], events=str(tmp_path / "events"), encoder=None, colocate=True
    )
    logger = EventLogger(config.events, config.remembered_requests, config.flush_rows, config.flush_seconds)
    service = Recommender(None, None, None, LocalHandle(logger), None, config)
    yield service, config, new
    logger.log.close()


def ask(service: Recommender, user: str):
    return service.recommend(RecommendRequest(user_id=user, history=["item-0001", "item-0002"], k=5))


def test_index_and_policy_swap_while_requests_flow(colocated):
    service, config, new_index = colocated
    rollout = stages_user_config(dataclasses.replace(config, index=str(new_index), arms=["a=random"]))

    async def scenario():
        await service.reconfigure(stages_user_config(config))
        before = await service.health()
        answers, swapped = [], asyncio.Event()

        async def client(name: str) -> None:
            i, after_swap = 0, 0
            while after_swap < 5:  # keep asking through the rollout, then five more
                answers.append(await ask(service, f"{name}-{i}"))
                i, after_swap = i + 1, after_swap + swapped.is_set()
                await asyncio.sleep(0.001)

        clients = [asyncio.create_task(client(f"user{c}")) for c in range(4)]
        await asyncio.sleep(0.01)
        await service.reconfigure(rollout)  # loads in a thread while the clients keep asking
        swapped.set()
        await asyncio.gather(*clients)
        return before, answers, await service.health()

    before, answers, health = asyncio.run(scenario())
    assert before.items == 60 and before.policies == {"a": "retrieval"}
    assert all(len(a.items) == 5 for a in answers)  # none failed or came short
    policies = [a.policy for a in answers]
    assert policies[0] == "retrieval" and policies[-1] == "random"  # served through the swap
    assert policies == sorted(policies, key=lambda p: p == "random")  # never back to the old policy
    assert health.ready and health.items == 120 and health.policies == {"a": "random"}


def test_a_bad_rollout_is_refused_and_the_old_artifacts_keep_serving(colocated, tmp_path):
    service, config, _ = colocated
    broken = build_test_index(tmp_path / "broken", n_items=30, seed=2)
    with open(broken / "item_embeddings.parquet", "ab") as parquet:
        parquet.write(b"tampered")  # its sha256 no longer matches index.json

    async def scenario():
        await service.reconfigure(stages_user_config(config))
        with pytest.raises(ArtifactError):
            await service.reconfigure(stages_user_config(dataclasses.replace(config, index=str(broken))))
        return await ask(service, "still-served"), await service.health()

    answer, health = asyncio.run(scenario())
    assert len(answer.items) == 5 and answer.policy == "retrieval"
    assert health.items == 60
