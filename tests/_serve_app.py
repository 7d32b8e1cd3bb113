"""The real Serve app that the serving, ``ab --url`` and server-log OPE tests share (one start per session).

Starting the app costs most of a minute on 2 busy cores, so one instance serves every module that only
needs the standard config (see the ``live_app`` fixture in conftest.py). Each test that gets an answer
or acknowledges feedback records it in :class:`LiveApp`; tests that read the event log take the
``stopped_live_app`` fixture, which stops the app gracefully once (the log is written only then, as
``flush_seconds`` is an hour) and which conftest.py orders after every test that still needs it live.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from _ports import free_port
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

TOPICS = {
    "space": "rocket orbit planet galaxy astronaut launch moon star",
    "cooking": "recipe pasta garlic oven bake sauce kitchen spice",
    "football": "goal league striker match stadium coach penalty team",
    "music": "guitar album concert melody drummer song band tour",
}
N_ITEMS = 240
ARMS = ["control=retrieval:2", "treatment=greedy:1", "explore=random:1"]
WEIGHTS = [("control", 2.0), ("treatment", 1.0), ("explore", 1.0)]
POLICIES = {"control": "retrieval", "treatment": "greedy", "explore": "random"}
NUM_CANDIDATES = 20
APP = "rayrec-test"


def build_test_index(
    out: Path,
    n_items: int = N_ITEMS,
    seed: int = 0,
    categories: bool = False,
    rating: bool = False,
    item_log: bool = False,
) -> Path:
    """A real index directory over a synthetic catalog: four topic clusters, zipf popularity, a flat FAISS
    index with checksums, and a tiny local BERT (built from the item texts) as its query encoder.

    Item ``item-i`` belongs to topic ``i % 4`` (its ``category`` column, with ``categories``); with
    ``rating`` every item has an ``item_rating`` in [0, 1] (drawn, as a rated log would give), with
    ``item_log`` an ``item_ctr``, ``item_watch`` and ``item_lift`` (drawn, as ``--item-log`` would store). The
    embeddings are drawn around topic centroids rather than taken from the untrained tiny BERT, whose
    outputs are all alike.
    """
    from rayrec.encoding import TextEncoder, build_tiny_encoder
    from rayrec.features import l2_normalize
    from rayrec.index.faiss_index import IndexSpec, build_faiss_index
    from rayrec.index.item_index import write_index

    rng = np.random.default_rng(seed)
    names = list(TOPICS)
    topics = np.arange(n_items) % len(names)
    texts = [f"{names[t]} " + " ".join(rng.choice(TOPICS[names[t]].split(), size=5)) for t in topics]
    encoder_dir = build_tiny_encoder(texts, out / "encoder")
    dim = TextEncoder.load(str(encoder_dir)).dim
    centroids = l2_normalize(rng.normal(size=(len(names), dim)))  # [T, d]
    embeddings = l2_normalize(centroids[topics] + 0.3 * rng.normal(size=(n_items, dim)))  # [N, d]
    popularity = rng.zipf(1.5, size=n_items).clip(max=10_000)
    spec = IndexSpec(type="flat")
    index_dir = out / "index"
    write_index(
        str(index_dir),
        [f"item-{i:04d}" for i in range(n_items)],
        embeddings,
        popularity,
        build_faiss_index(embeddings, spec),
        spec,
        str(encoder_dir),
        categories=[names[t] for t in topics] if categories else None,
        rating=rng.uniform(size=n_items).astype(np.float32) if rating else None,
        item_log=rng.uniform([0.0, 0.0, -0.2], [0.3, 1.0, 0.2], size=(n_items, 3)) if item_log else None,
        item_log_summary={"impressions": 0, "clicks": 0, "lift_pairs": 0} if item_log else None,
    )
    return index_dir


@dataclass
class LiveApp:
    """The shared app and everything it acknowledged.

    Attributes:
        url: ``http://127.0.0.1:<port>``.
        events: the server's events directory.
        index: the index directory it serves.
        key: the pseudonymization key (to predict a user's arm).
        impressions: request_id → [item ids] of every answer with status 200.
        feedback: (request_id, item_id, event) of every 202.
        budgets: request_id → the ``budget`` feature its ranker saw, for answers that sent a ``session_step``.
        engagements: request_id → the ``last_engagement`` its ranker saw (0.0 for answers without ``last_click``).
        stopped: True once the app was deleted (gracefully).
    """

    url: str
    events: Path
    index: Path
    key: bytes
    impressions: dict[str, list[str]] = field(default_factory=dict)
    feedback: list[tuple[str, str, str]] = field(default_factory=list)
    budgets: dict[str, float] = field(default_factory=dict)
    engagements: dict[str, float] = field(default_factory=dict)
    stopped: bool = False

    def record(self, answer: dict) -> dict:
        """Remember a ``/recommend`` answer as acknowledged; returns it."""
        self.impressions[answer["request_id"]] = [item["item_id"] for item in answer["items"]]
        return answer

    def user_in(self, arm: str, prefix: str = "user") -> str:
        """A raw user id that the server assigns to ``arm``."""
        from rayrec.assignment import assign_arm

        for i in range(10_000):
            if assign_arm(f"{prefix}-{i}", WEIGHTS) == arm:
                return f"{prefix}-{i}"
        raise AssertionError(f"no user in arm {arm}")

    def stop(self) -> None:
        """Delete the app (a graceful stop: the event logger writes everything it acknowledged). Idempotent."""
        from ray import serve

        if not self.stopped:
            serve.delete(APP)
            self.stopped = True


def start_live_app(root: Path) -> LiveApp:
    """Build the test index under ``root`` and run the app on a free loopback port (Ray must be up)."""
    from ray import serve
    from ray.serve._private import api as serve_api

    from rayrec.privacy import load_key
    from serving.app import build_app

    index_dir = build_test_index(root)
    events = root / "events"
    key_file = root / "secrets" / "pseudonym.key"  # apart from the events, as in production
    # Serve keeps the HTTP options of whoever started it first in this Ray (e.g. `rayrec loop` in an
    # earlier test): the port the proxy really listens on comes from the controller, not from our request.
    client = serve_api.serve_start(http_options={"host": "127.0.0.1", "port": free_port()})
    port = int(client.http_config.port)
    args = {
        "index": str(index_dir),
        "arms": ",".join(ARMS),
        "events": str(events),
        "num_candidates": str(NUM_CANDIDATES),
        "max_history": "50",
        "max_ongoing_requests": "4",
        "max_queued_requests": "2",
        "flush_rows": "100000",
        "flush_seconds": "3600",  # only the graceful stop (and feedback) writes: what the stop test checks
        "pseudonym_key": str(key_file),
    }
    serve.run(build_app(args), name=APP, route_prefix="/")
    return LiveApp(
        url=f"http://127.0.0.1:{port}", events=events, index=index_dir, key=load_key(str(key_file))
    )


def replica_pids(app: str, deployment: str) -> list[int]:
    """Process ids of the live replicas of ``deployment`` in Serve application ``app``, from the GCS actor
    table (the test session's Ray runs without a dashboard, which ``ray.util.state`` would need)."""
    from ray._private import state

    name = f"ServeReplica:{app}:{deployment}"
    return [
        actor["Pid"]
        for actor in state.actors().values()
        if actor["ActorClassName"] == name and actor["State"] == "ALIVE"
    ]


def export_policy(
    out: Path,
    dim: int,
    num_candidates: int = NUM_CANDIDATES,
    budget: float = 20.0,
    name: str = "tiny",
    broken: bool = False,
) -> Path:
    """A real exported policy (an untrained tiny scorer) for ``dim``-d embeddings, in ``out/name-<dim>d``.

    ``broken``: every weight NaN, as a diverged training run would export: the checksums are right and it
    loads, but every slate it chooses is invalid.
    """
    import torch

    from rayrec.slate_scorer import ExportConfig, ScorerConfig, SlateScorer, save_exported_policy

    scorer = ScorerConfig(dim=dim, hidden=8, attention_layers=0)
    config = ExportConfig(
        scorer=scorer, slate_size=3, num_candidates=num_candidates, budget=budget, name=name
    )
    module = SlateScorer(scorer)
    if broken:
        with torch.no_grad():
            for parameter in module.parameters():
                parameter.fill_(float("nan"))
    return Path(save_exported_policy(module, config, str(out / f"{name}-{dim}d")))


FAULT_APP = "rayrec-faults"
FAULT_PREFIX = "/faults"
FAULT_WEIGHTS = [("control", 1.0), ("treatment", 1.0)]


@dataclass
class FaultApp:
    """A second app for the tests that need another config: API keys, a broken arm, a fast-flushing event
    log (colocated stages; the event logger is its own deployment, so it can be killed)."""

    url: str
    events: Path
    keys_file: Path
    keys: dict[str, str]  # key id → key
    salt: str = "rayrec-ab-v1"

    def headers(self, key_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[key_id]}"}

    def user_in(self, arm: str, prefix: str = "user") -> str:
        from rayrec.assignment import assign_arm

        for i in range(10_000):
            if assign_arm(f"{prefix}-{i}", FAULT_WEIGHTS, self.salt) == arm:
                return f"{prefix}-{i}"
        raise AssertionError(f"no user in arm {arm}")


def start_fault_app(root: Path, base_url: str) -> FaultApp:
    """Run :class:`FaultApp` under ``/faults`` of the Serve instance at ``base_url`` (Serve must be up)."""
    from ray import serve

    from rayrec.index.item_index import ItemIndex
    from serving.app import build_app
    from serving.auth import add_key, parse_scopes

    index_dir = build_test_index(root, n_items=80, seed=3)
    broken = export_policy(root, ItemIndex.load(str(index_dir)).dim, broken=True, name="diverged")
    keys_file = root / "api-keys.yaml"
    keys = {
        key_id: add_key(str(keys_file), key_id, parse_scopes(scopes))
        for key_id, scopes in [("frontend", "recommend,feedback"), ("reader", "recommend"), ("ops", "admin")]
    }
    events = root / "events"
    args = {
        "index": str(index_dir),
        "arms": f"control=retrieval,treatment={broken}",
        "events": str(events),
        "encoder": "none",
        "colocate": "true",
        "api_keys": str(keys_file),
        "flush_seconds": "0.2",
        "request_timeout_s": "20",
        "pseudonym_key": str(root / "secrets" / "pseudonym.key"),
    }
    serve.run(build_app(args), name=FAULT_APP, route_prefix=FAULT_PREFIX)
    return FaultApp(url=f"{base_url}{FAULT_PREFIX}", events=events, keys_file=keys_file, keys=keys)


OPENAPI_URN = "urn:rayrec:openapi"


class Contract:
    """Checks answers against an OpenAPI document; counts what it checked."""

    def __init__(self, document: dict, prefix: str = "") -> None:
        self.document = document
        self.prefix = prefix
        resource = Resource.from_contents(document, default_specification=DRAFT202012)
        self.registry = Registry().with_resource(OPENAPI_URN, resource)
        self.checked: dict[int, int] = {}

    def schema(self, ref: str) -> dict:
        node = self.document
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        return node

    def validate(self, instance, schema: dict) -> None:
        ref = schema.get("$ref")
        root = {"$ref": f"{OPENAPI_URN}{ref}"} if ref else schema
        Draft202012Validator(root, registry=self.registry).validate(instance)

    def __call__(self, response: httpx.Response) -> None:
        response.read()
        method = response.request.method.lower()
        path = response.request.url.path.removeprefix(self.prefix)
        status = response.status_code
        operation = self.document["paths"].get(path, {}).get(method)
        if path in ("/openapi.json", "/docs") and status == 200:
            return  # the document itself, and its HTML viewer
        if operation is None:  # an undocumented path or method: only the error shape is promised
            assert status in (404, 405), (path, method, status)
            documented = {
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
            }
        else:
            assert str(status) in operation["responses"], f"{method} {path}: {status} is not documented"
            documented = operation["responses"][str(status)]
        schema = documented["content"]["application/json"]["schema"]
        body = response.json()
        self.validate(body, schema)
        if status >= 400:
            assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, "one error shape for every error"
            assert body["error"]["status"] == status
            assert body["error"]["request_id"] == response.headers["x-request-id"]
            assert len(response.content) < 4096, "error bodies stay short"
        if status == 503:
            assert int(response.headers["retry-after"]) >= 1
        self.checked[status] = self.checked.get(status, 0) + 1
