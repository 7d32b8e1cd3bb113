"""The real Serve app that the serving, ``ab --url`` and server-log OPE tests share (one start per session).

Starting the app costs most of a minute on 2 busy cores, so one instance serves every module that only
needs the standard config (see the ``live_app`` fixture in conftest.py). Each test that gets an answer
or acknowledges feedback records it in :class:`LiveApp`; tests that read the event log take the
``stopped_live_app`` fixture, which stops the app gracefully once (the log is written only then, as
``flush_seconds`` is an hour) and which conftest.py orders after every test that still needs it live.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_test_index(out: Path, n_items: int = N_ITEMS, seed: int = 0) -> Path:
    """A real index directory over a synthetic catalog: four topic clusters, zipf popularity, a flat FAISS
    index with checksums, and a tiny local BERT (built from the item texts) as its query encoder.

    Item ``item-i`` belongs to topic ``i % 4``. The embeddings are drawn around topic centroids rather
    than taken from the untrained tiny BERT, whose outputs are all alike.
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
        stopped: True once the app was deleted (gracefully).
    """

    url: str
    events: Path
    index: Path
    key: bytes
    impressions: dict[str, list[str]] = field(default_factory=dict)
    feedback: list[tuple[str, str, str]] = field(default_factory=list)
    budgets: dict[str, float] = field(default_factory=dict)
    stopped: bool = False

    def record(self, answer: dict) -> dict:
        """Remember a ``/recommend`` answer as acknowledged; returns it."""
        self.impressions[answer["request_id"]] = [item["item_id"] for item in answer["items"]]
        return answer

    def user_in(self, arm: str, prefix: str = "user") -> str:
        """A raw user id that the server assigns to ``arm``."""
        from rayrec.assignment import assign_arm
        from rayrec.privacy import Pseudonymizer

        pseudonymizer = Pseudonymizer(self.key)
        for i in range(10_000):
            if assign_arm(pseudonymizer.pseudonymize(f"{prefix}-{i}"), WEIGHTS) == arm:
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

    from rayrec.privacy import load_or_create_key
    from serving.app import build_app

    index_dir = build_test_index(root)
    events = root / "events"
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {
        "index": str(index_dir),
        "arms": ",".join(ARMS),
        "events": str(events),
        "num_candidates": str(NUM_CANDIDATES),
        "max_history": "50",
        "max_ongoing_requests": "4",
        "max_queued_requests": "2",
        "flush_rows": "100000",
        "flush_seconds": "3600",  # only the graceful stop writes: what the stopped-app tests check
    }
    serve.run(build_app(args), name=APP, route_prefix="/")
    return LiveApp(
        url=f"http://127.0.0.1:{port}", events=events, index=index_dir, key=load_or_create_key(str(events))
    )
