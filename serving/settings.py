"""What the serving application is built from: one typed config, readable from CLI options or Serve args.

``serve run serving.app:build_app index=DIR arms=a=retrieval,b=greedy:0.5`` passes strings;
``serving/config.yaml`` (``serve deploy``) passes YAML values; ``rayrec serve`` builds it from its own
options. All three end in :func:`app_config_from_args`, so they validate the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rayrec import storage
from rayrec.assignment import DEFAULT_SALT, Arm, parse_arm, validate_arms
from rayrec.errors import ConfigError

MAX_MERGED = 256
"""Items a stage takes in one merged call (:func:`serving.batching.batched`): the bound on ``max_batch``,
above every ingress batch (``serve.batch`` refuses a single call larger than its maximum). Here rather than
in :mod:`serving.batching`, which imports Ray Serve: ``rayrec --help`` reads this module."""

DEFAULT_NUM_CANDIDATES = 50
"""K when no arm serves a trained policy and none is given."""


@dataclass
class AppConfig:
    """Everything the Serve application needs; validated on construction."""

    index: str
    """Index directory (local path or URI) written by ``rayrec build-index``."""
    arms: list[str]
    """A/B arms as NAME=POLICY[:WEIGHT] (POLICY: random, retrieval, greedy, a trained policy directory, or a
    re-ranker around one: ``mmr:retrieval``, ``fair@0.5:greedy``, the latter on an index with categories);
    a user's arm is fixed by a salted hash of the pseudonymized user id."""
    events: str = "runs/serve/events"
    """Events directory: impressions and feedback are appended there as Parquet part files."""
    encoder: str | None = "index"
    """Encoder for the optional text ``query``: ``index`` (the index's own encoder; with ``user_model``, the
    text encoder the model was trained on), a model name or directory, or None (requests with a query are
    refused)."""
    user_model: str | None = None
    """Directory of a ``rayrec train-retrieval-model`` output: its user tower makes each request's profile
    (over the last ``history`` known items, in the order sent) and a text ``query`` goes through its item
    tower's text path. ``index`` must then be the model's (its ``out/index``, or a grown catalog indexed by
    ``build-index --encoder MODEL_DIR``: every item the model knows holds the model's vector); another is
    refused at build time and in a rollout. None: the profile is the mean of the history's vectors."""
    api_keys: str | None = None
    """API key file (hashes and scopes; ``rayrec api-key add``). Without one the server answers only
    clients on its own host; with one every call but ``/healthz`` and the docs needs
    ``Authorization: Bearer KEY``. Required to listen on a non-loopback address."""
    pseudonym_key: str | None = None
    """Key file of the user-id pseudonyms (keep it apart from the data: a mounted Secret, say); default
    ``RAYREC_PSEUDONYM_KEY`` (the key itself), else ``RAYREC_PSEUDONYM_KEY_FILE``, else
    ``~/.config/rayrec/pseudonym.key``. A missing local file is created (0600, atomically) where the
    application is built; replicas only read it. Never the events directory."""
    salt: str = DEFAULT_SALT
    """Salt of the arm-assignment hash; change it to re-randomise users for a new experiment."""
    num_candidates: int | None = None
    """K candidates per request; default: the K the trained arms' policies were trained with, else 50."""
    max_history: int = 500
    """Longest accepted ``history``; longer requests are refused with a message."""
    max_ongoing_requests: int = 64
    """Requests the ingress works on at once; past this they queue."""
    max_queued_requests: int = 128
    """Requests allowed to wait for the ingress; past this the answer is an immediate 503."""
    request_timeout_s: float = 10.0
    """The per-request deadline: a request (its wait for a turn included) with no answer by then is
    answered 504 and its work cancelled; every call between deployments has the same bound, so a hung
    stage cannot fill the queues. A client may ask for less with ``X-Deadline-Seconds``."""
    max_body_bytes: int = 64 * 1024
    """Largest request body; a larger one is answered 413 without being read. 64 KiB holds a full
    ``max_history`` of ids up to ~100 characters."""
    remembered_requests: int = 200_000
    """Recent request ids kept for ``/feedback``; feedback on older ones is a 404."""
    flush_rows: int = 2048
    """Event rows per Parquet part file (a part is also written every ``flush_seconds``)."""
    flush_seconds: float = 1.0
    """Longest time an acknowledged event waits in memory before it is written."""
    log_encoding: Literal["JSON", "TEXT"] = "JSON"
    """Replica log lines: JSON (one object per line, with the request id, which is the client's
    ``X-Request-ID`` when it sent one; what log collectors parse) or TEXT."""
    access_log: bool = False
    """Log a line per call in every deployment (Serve's access log); off by default, as on a small machine
    it costs a noticeable share of the CPU."""
    colocate: bool = False
    """Run the request-context step, retriever and rankers inside the ingress process (the encoder and the
    event logger stay deployments): one handle call per batch instead of four. For small machines, where
    the calls cost more than the work; a rollout then changes the ``Recommender``'s ``user_config``."""
    max_batch: int = 32
    """Most requests the ingress sends through the pipeline together. Batches are never waited for:
    a batch holds the requests that arrived while earlier batches were in flight."""
    concurrent_batches: int = 1
    """Batches the ingress keeps in flight at once. More lets the stages overlap on a machine with cores
    to spare; on 2 cores one batch at a time measured best (fewer, larger batches: fewer calls)."""
    batch_wait_s: float = 0.0
    """How long the query encoder, retriever and rankers wait for more calls to merge into one batch
    (0: merge only the calls already waiting)."""
    query_int8: bool = False
    """Run the query encoder with int8 dynamically quantised Linear layers (CPU; faster queries at a small
    recall change, see benchmarks/int8_query.py). The item index keeps its float vectors."""

    def __post_init__(self) -> None:
        if self.encoder in ("none", "None", ""):
            self.encoder = None
        if self.user_model in ("none", "None", ""):
            self.user_model = None
        if isinstance(self.arms, str):
            self.arms = [spec.strip() for spec in self.arms.split(",") if spec.strip()]
        validate_arms([(arm.name, arm.weight) for arm in self.parsed_arms()])
        if self.num_candidates is not None and self.num_candidates < 1:
            raise ConfigError(f"num_candidates must be >= 1, got {self.num_candidates}")
        for name in (
            "max_history",
            "max_ongoing_requests",
            "remembered_requests",
            "flush_rows",
            "max_batch",
            "concurrent_batches",
            "max_body_bytes",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_batch > MAX_MERGED:
            raise ConfigError(f"max_batch must be <= {MAX_MERGED}, got {self.max_batch}")
        if self.max_queued_requests < 0 or self.flush_seconds <= 0 or self.batch_wait_s < 0:
            raise ConfigError("max_queued_requests, flush_seconds and batch_wait_s must be non-negative")
        if self.log_encoding not in ("JSON", "TEXT"):
            raise ConfigError(f"log_encoding must be JSON or TEXT, got {self.log_encoding!r}")
        if not self.request_timeout_s > 0:
            raise ConfigError(f"request_timeout_s must be positive, got {self.request_timeout_s}")

    def parsed_arms(self) -> list[Arm]:
        return [parse_arm(spec) for spec in self.arms]

    def with_absolute_paths(self) -> AppConfig:
        """A copy whose relative local paths are absolute, so replicas in other directories find them."""

        def absolute(path: str | None, must_exist: bool = False) -> str | None:
            if path is None or storage.is_remote(path) or (must_exist and not Path(path).exists()):
                return path
            return str(Path(storage.local_path(path)).expanduser().absolute())

        arms = []
        for arm in self.parsed_arms():
            policy = absolute(arm.policy, must_exist=True)  # baselines are names, not paths
            arms.append(f"{arm.name}={policy}:{arm.weight:g}")
        return dataclasses.replace(
            self,
            index=absolute(self.index),
            arms=arms,
            events=absolute(self.events),
            api_keys=absolute(self.api_keys),
            encoder=absolute(self.encoder, must_exist=True),
            user_model=absolute(self.user_model),
        )

    def with_num_candidates(self, trained: dict[str, int]) -> AppConfig:
        """A copy with K settled, given the K each trained arm's policy was trained with (``trained``:
        arm name → K; baselines take any K).

        Unset K becomes the trained arms' K (they must agree), or :data:`DEFAULT_NUM_CANDIDATES` when
        every arm is a baseline. A K that is set must be every trained arm's.

        Raises:
            ConfigError: trained arms with different K, or a set K that is not a trained arm's.
        """
        policies = {arm.name: arm.policy for arm in self.parsed_arms()}
        if self.num_candidates is None:
            if len(set(trained.values())) > 1:
                arms = ", ".join(f"arm {name} ({policies[name]}) K={k}" for name, k in trained.items())
                raise ConfigError(
                    f"the trained arms' policies were trained on different candidate counts K ({arms}): "
                    "serve them in separate applications"
                )
            k = next(iter(trained.values()), DEFAULT_NUM_CANDIDATES)
            return dataclasses.replace(self, num_candidates=k)
        for name, k in trained.items():
            if k != self.num_candidates:
                raise ConfigError(
                    f"arm {name}: policy {policies[name]} was trained on K={k} candidates per request, "
                    f"served with --num-candidates {self.num_candidates}; drop the flag (num_candidates "
                    "in Serve args) to serve it as trained"
                )
        return self

    def to_args(self) -> dict[str, Any]:
        """The Serve ``args`` that rebuild this config (what ``serving/config.yaml`` holds)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(AppConfig)}


def app_config_from_args(args: dict[str, Any]) -> AppConfig:
    """Serve application args (strings from ``serve run`` or YAML values) → :class:`AppConfig`."""
    values = dict(args)
    known = {f.name for f in dataclasses.fields(AppConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown serving args {unknown}; known: {sorted(known)}")
    for name in ("index", "arms"):
        if not values.get(name):
            raise ConfigError(f"serving arg {name!r} is required")
    hints = {f.name: f.type for f in dataclasses.fields(AppConfig)}
    for name, value in list(values.items()):
        if (
            not isinstance(value, str)
            or hints[name] in ("str", "str | None", "list[str]")
            or hints[name].startswith("Literal")
        ):
            continue
        try:
            if hints[name].endswith(" | None") and value in ("", "none", "None", "null"):
                values[name] = None
            elif hints[name] == "bool":
                values[name] = value.lower() in ("1", "true", "yes")
            else:
                values[name] = float(value) if hints[name] == "float" else int(value)
        except ValueError:
            raise ConfigError(f"serving arg {name}={value!r}: expected {hints[name]}") from None
    return AppConfig(**values)
