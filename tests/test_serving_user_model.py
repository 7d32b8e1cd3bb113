"""Serving the sequential retrieval model: the user tower makes the profile, a text query goes through the item
tower's text path, and an index that does not hold the model's item vectors is refused at build time and in a
rollout.

Real parts only: a tiny model trained here by ``train_retrieval_model`` on the pair world of test_seqrec.py, a
text index embedded by a real (tiny, local) BERT, a real Serve application on 127.0.0.1 in the session's Ray,
and the colocated ingress in process for the rollouts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from _ports import free_port
from test_seqrec import ITEMS, small_config, write_pair_world

from rayrec.encoding import TextEncoder, build_tiny_encoder
from rayrec.errors import ArtifactError
from rayrec.features import l2_normalize
from rayrec.index.faiss_index import IndexSpec, build_faiss_index
from rayrec.index.item_index import ItemIndex, write_index
from rayrec.seqrec.artifact import load_model, write_model_index
from serving.api import RecommendRequest
from serving.app import Recommender, resolve_config
from serving.deployments import EventLogger
from serving.local import LocalHandle, stages_user_config
from serving.settings import AppConfig

APP = "rayrec-user-model"
PREFIX = "/user-model"
NUM_CANDIDATES = 10
K = 5
WORDS = (
    "rocket orbit planet galaxy",
    "pasta garlic oven sauce",
    "goal league striker match",
    "guitar album song",
)
HISTORY = ["i3", "i27", "nope", "i8", "i3", "i15"]  # an unknown id and a repeat, in the order sent


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A trained tiny model over a text index whose encoder is a real local BERT of the index's dimension."""
    root = tmp_path_factory.mktemp("user-model")
    data, _ = write_pair_world(root)
    ids = [f"i{j}" for j in range(ITEMS)]
    texts = [f"{WORDS[j % len(WORDS)]} {ids[j]}" for j in range(ITEMS)]
    encoder_dir = build_tiny_encoder(texts, root / "encoder", hidden_size=16, intermediate_size=32)
    vectors = TextEncoder.load(str(encoder_dir)).encode(texts)  # [N, 16] the encoder's own embeddings
    spec = IndexSpec(type="flat")
    text_index = root / "text-index"
    write_index(
        str(text_index),
        ids,
        vectors,
        np.zeros(ITEMS),
        build_faiss_index(vectors, spec),
        spec,
        str(encoder_dir),
    )
    model = root / "model"
    from trainers.seqrec import train_retrieval_model

    train_retrieval_model(small_config(data, text_index, model, epochs=3, hard_negatives=0))
    return {
        "root": root,
        "model": model,
        "index": model / "index",
        "text_index": text_index,
        "encoder": encoder_dir,
    }


def expected_slate(model_dir: Path, history: list[str], query: str | None = None, encoder=None) -> list[str]:
    """The top-k of the model's own user-tower query (plus the text path of ``query``), seen items excluded."""
    loaded = load_model(str(model_dir))
    index = ItemIndex.load(str(model_dir / "index"))
    rows = index.lookup(history) if history else np.empty(0, np.int64)
    known = rows[rows >= 0]
    profile = np.zeros(index.dim, np.float32)
    if len(known):
        profile = loaded.model.queries(index.embeddings, [known])[0]
    if query is not None:
        text = TextEncoder.load(str(encoder)).encode([query])
        profile = l2_normalize(profile + loaded.model.text_queries(text)[0])
    _, top = index.search(profile[None], NUM_CANDIDATES, exclude=[np.unique(known)])
    return [str(i) for i in index.item_ids[top[0][:K]]]


def mean_slate(model_dir: Path, history: list[str]) -> list[str]:
    """What the server would answer without the user model: the mean of the known history's vectors."""
    index = ItemIndex.load(str(model_dir / "index"))
    rows = index.lookup(history)
    known = np.unique(rows[rows >= 0])
    _, top = index.search(l2_normalize(index.embeddings[known].mean(axis=0))[None], K, exclude=[known])
    return [str(i) for i in index.item_ids[top[0]]]


@pytest.fixture(scope="module")
def live(world, ray_session):
    """The application serving the model on 127.0.0.1 under /user-model (colocated stages; the query encoder
    and the event logger are deployments)."""
    from ray import serve
    from ray.serve._private import api as serve_api

    from serving.app import build_app

    client = serve_api.serve_start(http_options={"host": "127.0.0.1", "port": free_port()})
    args = {
        "index": str(world["index"]),
        "user_model": str(world["model"]),
        "arms": "a=retrieval",
        "events": str(world["root"] / "events"),
        "num_candidates": str(NUM_CANDIDATES),
        "colocate": "true",  # three replicas instead of six: the start costs less on 2 busy cores
        "pseudonym_key": str(world["root"] / "secrets" / "pseudonym.key"),
    }
    serve.run(build_app(args), name=APP, route_prefix=PREFIX)
    yield f"http://127.0.0.1:{int(client.http_config.port)}{PREFIX}"
    serve.delete(APP)


def recommend(url: str, history: list[str], query: str | None = None) -> dict:
    body = {"user_id": "u-1", "history": history, "k": K, **({"query": query} if query else {})}
    response = httpx.post(f"{url}/recommend", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_served_slate_is_the_user_towers_top_k(world, live):
    answer = recommend(live, HISTORY)
    served = [item["item_id"] for item in answer["items"]]
    assert served == expected_slate(world["model"], HISTORY)
    assert answer["unknown_history"] == 1 and not answer["cold_start"]
    assert served != mean_slate(world["model"], HISTORY)  # the mean-of-history profile answers otherwise
    reordered = HISTORY[::-1]  # the sequential tower reads the order the client sent
    assert [i["item_id"] for i in recommend(live, reordered)["items"]] == expected_slate(
        world["model"], reordered
    )
    assert recommend(live, ["nope"])["cold_start"]  # no known history: a cold start, as without a model
    health = httpx.get(f"{live}/healthz", timeout=30).json()
    assert health["user_model"] == {
        "path": str(world["model"]),
        "user_tower": "sequential",
        "history": 8,
        "dim": 16,
        "text_dim": 16,
        "text_encoder": str(world["encoder"]),
    }
    assert health["encoder"] == str(world["encoder"]) and health["items"] == ITEMS


def test_a_text_query_goes_through_the_item_towers_text_path(world, live):
    query = "guitar song rocket"
    alone = recommend(live, [], query)
    assert not alone["cold_start"]
    assert [i["item_id"] for i in alone["items"]] == expected_slate(
        world["model"], [], query, world["encoder"]
    )
    both = recommend(live, HISTORY, query)
    expected = expected_slate(world["model"], HISTORY, query, world["encoder"])
    assert [i["item_id"] for i in both["items"]] == expected


def test_an_index_not_built_from_the_model_is_refused_at_build_time(world, tmp_path):
    config = AppConfig(
        index=str(world["text_index"]),  # same items, same dimension, other vectors
        arms=["a=retrieval"],
        user_model=str(world["model"]),
        pseudonym_key=str(tmp_path / "key"),
    )
    with pytest.raises(ArtifactError, match="was not built from user model") as error:
        resolve_config(config)
    assert "\n" not in str(error.value)
    # `rayrec serve --user-model` (in a subprocess: a failed serve stops the Ray it finds, the session's here).
    # The fault handler prints the Python stacks if the process aborts (CI saw one abort, once, at exit).
    served = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-m", "rayrec", "serve", "--index", str(world["text_index"]),
         "--arm", "a=retrieval", "--user-model", str(world["model"]), "--pseudonym-key", str(tmp_path / "key")],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    err = served.stderr.strip()
    assert (
        served.returncode == 2 and err.startswith("error: index") and "was not built from user model" in err
    )
    assert len(err.splitlines()) == 1


def test_without_its_text_encoder_the_model_is_served_without_queries(world, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(world["model"], model)
    record = (model / "model.json").read_text()
    (model / "model.json").write_text(record.replace(str(world["encoder"]), str(tmp_path / "gone")))
    config = AppConfig(
        index=str(world["index"]),
        arms=["a=retrieval"],
        user_model=str(model),
        pseudonym_key=str(tmp_path / "k"),
    )
    _, encoder, dim = resolve_config(config)
    assert encoder is None and dim == 16  # the Recommender then refuses `query` with a 422 (test_serving.py)


@pytest.fixture
def colocated(world, tmp_path, monkeypatch):
    """A colocated ingress in process serving the model (the stages' own reconfigure does the rollouts)."""
    monkeypatch.setenv("RAYREC_PSEUDONYM_KEY", "k" * 32)
    config = AppConfig(
        index=str(world["index"]),
        arms=["a=retrieval"],
        events=str(tmp_path / "events"),
        encoder=None,
        colocate=True,
        num_candidates=NUM_CANDIDATES,
        user_model=str(world["model"]),
    )
    logger = EventLogger(config.events, config.remembered_requests, config.flush_rows, config.flush_seconds)
    yield Recommender(None, None, None, LocalHandle(logger), None, config, dim=16), config
    logger.log.close()


def test_a_rollout_to_an_index_of_other_vectors_is_refused_and_the_models_index_keeps_serving(
    world, colocated, tmp_path
):
    service, config = colocated
    rebuilt = tmp_path / "rebuilt"  # the same vectors, another popularity: a legitimate rollout
    write_model_index(load_model(str(world["model"])), str(world["model"]), str(rebuilt), np.arange(ITEMS))

    async def ask() -> list[str]:
        answer = await service.recommend(RecommendRequest(user_id="u-2", history=HISTORY, k=K))
        return [item.item_id for item in answer.items]

    async def scenario():
        await service.reconfigure(stages_user_config(config))
        first = await ask()
        await service.reconfigure(
            stages_user_config(dataclasses.replace(config, index=str(world["text_index"])))
        )
        refused = await service.health(admin=True), await ask()
        await service.reconfigure(stages_user_config(dataclasses.replace(config, index=str(rebuilt))))
        return first, refused, await service.health(admin=True), await ask()

    first, (health, after), rolled, last = asyncio.run(scenario())
    expected = expected_slate(world["model"], HISTORY)
    assert first == after == last == expected
    assert health.index == str(world["index"]) and health.user_model["path"] == str(world["model"])
    assert len(health.problems) == 2  # UserStep and Retriever each refused it, one line each
    assert all("was not built from user model" in p and "\n" not in p for p in health.problems)
    assert rolled.index == str(rebuilt) and not rolled.problems
