"""Rolling out a new index and policy while requests flow: the stages' ``reconfigure`` swaps in place.

Serve calls ``reconfigure(user_config)`` when ``serve deploy`` changes only a deployment's user_config;
these tests drive the same method on a colocated ingress (real index files, real policies, the real
event logger) with requests in flight, and check that none fails and that the new artifacts answer after.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from _serve_app import build_test_index, export_policy

from rayrec.errors import ArtifactError
from rayrec.index.item_index import ItemIndex
from serving.api import RecommendRequest
from serving.app import Recommender
from serving.deployments import EventLogger, Retriever
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
    service = Recommender(
        None, None, None, LocalHandle(logger), None, config, dim=ItemIndex.load(str(old)).dim
    )
    yield service, config, new
    logger.log.close()


def ask(service: Recommender, user: str):
    return service.recommend(RecommendRequest(user_id=user, history=["item-0001", "item-0002"], k=5))


def test_index_and_policy_swap_while_requests_flow(colocated):
    service, config, new_index = colocated
    rollout = stages_user_config(dataclasses.replace(config, index=str(new_index), arms=["a=random"]))

    async def scenario():
        await service.reconfigure(stages_user_config(config))
        before = await service.health(admin=True)
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
        return before, answers, await service.health(admin=True)

    before, answers, health = asyncio.run(scenario())
    assert before.items == 60 and before.policies == {"a": "retrieval"}
    assert all(len(a.items) == 5 for a in answers)  # none failed or came short
    policies = [a.policy for a in answers]
    assert policies[0] == "retrieval" and policies[-1] == "random"  # served through the swap
    assert policies == sorted(policies, key=lambda p: p == "random")  # never back to the old policy
    assert health.ready and health.items == 120 and health.policies == {"a": "random"}


def test_a_bad_rollout_is_refused_and_the_old_artifacts_keep_serving(colocated, tmp_path):
    """A tampered index, an index of another dimension, a tampered policy, a policy trained for another
    dimension: each is refused without raising (under Serve a raising reconfigure stops the replica), the
    old artifacts keep answering, and health says what was refused."""
    service, config, _ = colocated
    broken = build_test_index(tmp_path / "broken", n_items=30, seed=2)
    with open(broken / "item_embeddings.parquet", "ab") as parquet:
        parquet.write(b"tampered")  # its sha256 no longer matches index.json
    narrow = build_narrow_index(tmp_path / "narrow")
    dim = ItemIndex.load(config.index).dim
    tampered_policy = export_policy(tmp_path, dim, num_candidates=50, name="tampered")
    (tampered_policy / "policy.safetensors").write_bytes(
        (tampered_policy / "policy.safetensors").read_bytes()[:-8]
    )
    other_dim_policy = export_policy(tmp_path, dim + 8, num_candidates=50, name="wide")

    async def scenario():
        await service.reconfigure(stages_user_config(config))
        before = await ask(service, "before")
        outcomes = []
        for index, policy in [
            (broken, "retrieval"),
            (narrow, "retrieval"),
            (config.index, tampered_policy),
            (config.index, other_dim_policy),
        ]:
            rollout = dataclasses.replace(config, index=str(index), arms=[f"a={policy}"])
            await service.reconfigure(stages_user_config(rollout))  # no exception
            outcomes.append((await ask(service, "during"), await service.health(admin=True)))
        return before, outcomes

    before, outcomes = asyncio.run(scenario())
    for answer, health in outcomes:
        assert len(answer.items) == 5 and answer.policy == "retrieval"
        assert answer.index_version == before.index_version and answer.policy_version == before.policy_version
        assert health.items == 60 and health.policies == {"a": "retrieval"}
        assert any("refused" in problem for problem in health.problems)
    problems = " ".join(p for _, health in outcomes for p in health.problems)
    assert "sha256" in problems and "-d embeddings" in problems


def test_a_fresh_stage_given_a_bad_artifact_serves_the_applications_own(tmp_path):
    good = build_test_index(tmp_path / "good", n_items=40)
    broken = build_test_index(tmp_path / "broken", n_items=30, seed=2)
    (broken / "index.json").write_text("{not json")
    retriever = Retriever(20, 10, None, ItemIndex.load(str(good)).dim, initial=str(good))
    asyncio.run(retriever.reconfigure({"index": str(broken)}))
    assert retriever.info()["items"] == 40 and "refused" in retriever.info()["rollout_error"]
    lonely = Retriever(20, 10, None, None, initial=str(broken))
    with pytest.raises(ArtifactError):  # nothing to fall back to: the replica cannot start
        asyncio.run(lonely.reconfigure({"index": str(broken)}))


def build_narrow_index(out):
    """A valid index of 8-d embeddings (the test indexes are wider)."""
    import numpy as np

    from rayrec.features import l2_normalize
    from rayrec.index.faiss_index import IndexSpec, build_faiss_index
    from rayrec.index.item_index import write_index

    rng = np.random.default_rng(0)
    embeddings = l2_normalize(rng.normal(size=(30, 8)))
    spec = IndexSpec(type="flat")
    ids = [f"item-{i:04d}" for i in range(30)]
    write_index(str(out), ids, embeddings, np.ones(30), build_faiss_index(embeddings, spec), spec, "none")
    return out


@pytest.mark.slow  # its own Ray (head with a dashboard, for `serve deploy`): two to three minutes
def test_serve_deploy_of_tampered_artifacts_under_load_fails_no_request(tmp_path):
    """`serve deploy` of a config whose index and treatment policy were tampered with, while clients keep
    asking: no request fails, and the old index and policy versions keep answering."""
    import json
    import os
    import secrets
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile
    import threading
    import time

    import httpx
    import yaml
    from _ports import free_port
    from _ray_start import NODE_ENV

    index = build_test_index(tmp_path / "index", n_items=60)
    dim = ItemIndex.load(str(index)).dim
    policy = export_policy(tmp_path / "good", dim, num_candidates=20, name="good")
    bad_index = tmp_path / "bad-index"
    shutil.copytree(index, bad_index)
    with open(bad_index / "item_embeddings.parquet", "ab") as parquet:
        parquet.write(b"tampered")
    bad_policy = tmp_path / "bad-policy"
    shutil.copytree(policy, bad_policy)
    meta = json.loads((bad_policy / "policy.json").read_text())
    meta["weights_sha256"] = "0" * 64
    (bad_policy / "policy.json").write_text(json.dumps(meta))

    bin_dir = os.path.dirname(sys.executable)
    ray_temp = tempfile.mkdtemp(prefix="rr", dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs, dashboard, http_port = free_port(), free_port(), free_port()
    env = {**os.environ, "RAY_ADDRESS": "", "RAYREC_PSEUDONYM_KEY": "k" * 32, "RAY_USAGE_STATS_ENABLED": "0"}
    env |= {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }  # its own token, as in production
    env |= NODE_ENV
    head = subprocess.Popen(
        [f"{bin_dir}/ray", "start", "--head", "--block", f"--port={gcs}", f"--dashboard-port={dashboard}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--temp-dir={ray_temp}", "--num-cpus=6"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dashboard}"
    url = f"http://127.0.0.1:{http_port}"

    def deploy(index_dir, treatment_policy) -> None:
        config = {
            "proxy_location": "HeadOnly",
            "http_options": {"host": "127.0.0.1", "port": http_port},
            "applications": [
                {
                    "name": "rayrec",
                    "route_prefix": "/",
                    "import_path": "serving.app:build_app",
                    "args": {
                        "index": str(index),
                        "arms": ["control=retrieval", f"treatment={policy}"],
                        "events": str(tmp_path / "events"),
                        "encoder": "none",
                    },
                    "deployments": [
                        {"name": "UserStep", "user_config": {"index": str(index_dir)}},
                        {"name": "Retriever", "user_config": {"index": str(index_dir)}},
                        {"name": "Ranker-control", "user_config": {"policy": "retrieval"}},
                        {"name": "Ranker-treatment", "user_config": {"policy": str(treatment_policy)}},
                    ],
                }
            ],
        }
        path = tmp_path / "serve.yaml"
        path.write_text(yaml.safe_dump(config))
        for _ in range(60):  # the dashboard takes a while to come up
            done = subprocess.run(
                [f"{bin_dir}/serve", "deploy", str(path), "--address", address],
                env=env, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            if done.returncode == 0:
                return
            time.sleep(2)
        raise AssertionError(f"serve deploy failed: {done.stderr[-2000:]}")

    try:
        deploy(index, policy)
        for _ in range(300):
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        else:
            raise AssertionError("the application did not come up")
        answers, stop = [], threading.Event()

        def client(name: str) -> None:
            with httpx.Client(base_url=url, timeout=60) as http:
                i = 0
                while not stop.is_set():
                    body = {"user_id": f"{name}-{i}", "history": ["item-0001", "item-0002"], "k": 3}
                    response = http.post("/recommend", json=body)
                    answers.append((response.status_code, response.json()))
                    i += 1

        threads = [threading.Thread(target=client, args=(f"c{c}",)) for c in range(3)]
        for thread in threads:
            thread.start()
        while len(answers) < 20:
            time.sleep(0.2)
        deploy(bad_index, bad_policy)  # the rollout, under load
        refused = []
        for _ in range(300):
            health = httpx.get(f"{url}/healthz", timeout=30).json()  # loopback without keys: the details
            refused = [p for p in health.get("problems", []) if "refused" in p]
            if len(refused) >= 3:
                break
            time.sleep(1)
        seen = len(answers)
        while len(answers) < seen + 20:
            time.sleep(0.2)
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        try:
            head.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(ray_temp, ignore_errors=True)
    assert {"UserStep", "Retriever", "Ranker"} <= {p.split(":")[0] for p in refused}, refused
    assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:3]
    assert len({a["index_version"] for _, a in answers}) == 1
    assert len({a["policy_version"] for _, a in answers if a["arm"] == "treatment"}) == 1
    assert {a["policy"] for _, a in answers if a["arm"] == "treatment"} == {"good"}
