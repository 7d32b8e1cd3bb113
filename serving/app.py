"""The Serve application: ``serve run serving.app:build_app index=DIR arms=NAME=POLICY[:W],...``.

Deployments, composed with DeploymentHandles::

    HTTP ─► Recommender (request guard: keys, limits, admission, deadline; FastAPI: validation;
              │           pseudonymization, A/B assignment)
              ├─► UserStep ──(query)──► QueryEncoder          history → request context (profile)
              ├─► Retriever                                   FAISS, batched; cold-start fallback
              ├─► Ranker-<arm> (one per arm)                   the arm's SlatePolicy, batched
              └─► EventLogger (one replica)                   requests + impressions + feedback → Parquet

The ingress coalesces the requests that arrive while earlier ones are in flight and sends each batch
through the stages together (one call per stage, not per request: on 2 cores the calls, not the FAISS
search, are the cost); the request contexts flow from UserStep to Retriever as a chained DeploymentResponse.
With ``colocate`` the ingress holds UserStep, Retriever and the rankers itself (:mod:`serving.local`),
which leaves one handle call per batch: the layout for small machines. Rolling out a new index or policy:
change the deployment's ``user_config`` (``index`` / ``policy``) in ``serving/config.yaml`` and ``serve
deploy`` it; the running replicas load the new artifact and swap it in without dropping requests, or
refuse a bad one and keep serving the old (see config.yaml).

What the server promises under abuse, overload and failure (limits, API keys, deadlines, isolated arms,
durable feedback, safe rollouts, metrics) is in docs/operations.md; :mod:`serving.guard` and
:mod:`serving.api` hold the HTTP side of it.

K (candidates per request) is the trained arms' policies' K unless ``num_candidates`` is given
(:meth:`serving.settings.AppConfig.with_num_candidates`); each ranker shows its policy the
:func:`rayrec.features.build_observation` observation, with the request's ``session_step`` on the budget
scale the policy was trained with.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.config import BackpressureConfig
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from rayrec.assignment import assign_arm
from rayrec.errors import ArtifactError, ConfigError
from rayrec.index import ItemIndex
from rayrec.privacy import Pseudonymizer, key_id, load_key, resolve_key_source
from rayrec.rerank import load_policy_for_index
from serving.api import (
    MAX_K,
    REQUEST_STATE,
    DeadlineExceeded,
    Health,
    ItemNotShown,
    NotReady,
    Overloaded,
    RecommendedItem,
    RecommendRequest,
    RecommendResponse,
    UnknownRequest,
    log,
    make_api,
)
from serving.auth import KeyRing
from serving.batching import Coalescer
from serving.deployments import (
    EventLogger,
    QueryEncoder,
    Ranker,
    Retriever,
    UserStep,
    read_index_manifest,
)
from serving.haproxy import install_error_page
from serving.local import LocalStages, stages_user_config
from serving.metrics import IngressMetrics
from serving.pipeline import Candidates, LastClick, Ranked, check_servable, failover
from serving.settings import MAX_MERGED, AppConfig, app_config_from_args
from serving.user_model import UserModel, load_user_model

INTERNAL_MAX_ONGOING = MAX_MERGED
"""Concurrent calls an internal deployment takes: as many as a merged batch holds items, so merges can
fill; the ingress bounds the load."""
HEALTH_TIMEOUT_S = 5.0
INGRESS_HEADROOM = 1024
"""Requests Serve lets into the ingress beyond what its guard admits and queues: the guard refuses them
itself, in microseconds, with a 503 that carries Retry-After and the API's error body (Serve's own
refusal, past this, is a bare text 503); health checks and docs pass meanwhile."""


class Recommender:
    """The ingress: turns an HTTP request into one pass through the pipeline and logs what was shown.

    Failures stay as small as they can: a stage that is unavailable or late fails its batch with a 503 or
    504 (never a hang: every call has the per-request deadline); a ranker that fails or is late affects
    only its own arm, whose requests get the candidates in retrieval order (``fallback`` in the answer,
    counted per arm); an event log that cannot take the rows does not fail ``/recommend`` (the rows are
    counted as unlogged), while ``/feedback`` answers 503 until it can write again.

    Args:
        user_step, retriever, rankers, logger, encoder: handles of the other deployments (``rankers`` by
            arm name; ``encoder`` None when queries are off). With ``config.colocate`` the first three
            are None: the ingress holds those stages itself (:class:`serving.local.LocalStages`), loaded
            by :meth:`reconfigure`.
        config: the application's :class:`serving.settings.AppConfig`.
        dim: the application's embedding dimension (colocated stages refuse artifacts of another).
    """

    def __init__(
        self,
        user_step,
        retriever,
        rankers: dict[str, Any] | None,
        logger,
        encoder,
        config: AppConfig,
        dim: int | None = None,
    ) -> None:
        self.local = LocalStages(encoder, config, dim) if config.colocate else None
        if self.local is not None:
            user_step, retriever, rankers = self.local.handles()
        self.user_step = user_step
        self.retriever = retriever
        self.rankers = rankers
        self.logger = logger
        self.encoder = encoder
        self.config = config
        self.arms = [(arm.name, arm.weight) for arm in config.parsed_arms()]
        self.salt = config.salt
        self.max_history = config.max_history
        self.supports_query = encoder is not None
        self.deadline_s = config.request_timeout_s
        self.metrics = IngressMetrics()
        self.keys = KeyRing(config.api_keys) if config.api_keys else None
        install_error_page()  # HAProxy's own errors become the API's 503 (serving/haproxy.py)
        # Raw user ids exist only inside this method call; everything downstream sees the pseudonym.
        # the key lives apart from the data; it was created (if need be) where the app was built
        key = load_key(config.pseudonym_key or resolve_key_source(None), create=False)
        self.pseudonymizer = Pseudonymizer(key)
        self.key_id = key_id(key)
        # Requests that arrive while batches are in flight go through the pipeline together: one call per
        # stage for the lot, instead of five calls per request (see serving/batching.py).
        self.pipeline = Coalescer(self._recommend_batch, config.max_batch, config.concurrent_batches)

    def asgi_app(self, echo_request_id: bool = True):
        """The HTTP app: :func:`serving.api.make_api` behind the request guard with this config's limits."""
        config = self.config
        return make_api(
            self,
            auth_enabled=self.keys is not None,
            echo_request_id=echo_request_id,
            guard_options={
                "keys": self.keys,
                "local_only": self.keys is None,
                "max_ongoing": config.max_ongoing_requests,
                "max_queued": config.max_queued_requests,
                "request_timeout_s": config.request_timeout_s,
                "max_body_bytes": config.max_body_bytes,
                "on_response": self.metrics.on_response,
            },
        )

    def __serve_build_asgi_app__(self):
        return self.asgi_app(echo_request_id=False)  # Serve's own middleware echoes X-Request-ID

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Colocated stages only: ``{"index": URI, "policies": {arm: SPEC}}`` (see config.yaml)."""
        if self.local is None:
            raise ConfigError(
                "the Recommender takes a user_config only with colocate; otherwise set the index and "
                "policies on the UserStep, Retriever and Ranker-<arm> deployments"
            )
        await self.local.reconfigure(user_config)

    async def recommend(self, request: RecommendRequest) -> RecommendResponse:
        user = self.pseudonymizer.pseudonymize(request.user_id)
        # the arm hashes the raw id with the experiment's salt, not the pseudonym: a new pseudonymization
        # key (a rotation) or a new events directory leaves every user in their arm
        arm = assign_arm(request.user_id, self.arms, self.salt)
        state = REQUEST_STATE.get()
        if state is not None:
            state["arm"] = arm  # for the per-arm metrics of this answer
        pending = _Pending(request, user, arm)
        try:
            return await self.pipeline(pending)
        except asyncio.CancelledError:
            pending.gone = True  # past its deadline, or the client left: its slate is never shown
            raise

    async def _stage(self, response, what: str):
        """A stage's answer within the deadline: 504 when late (the call is cancelled), 503 when the stage
        is unavailable or shedding load."""
        try:
            return await asyncio.wait_for(_awaited(response), self.deadline_s)
        except TimeoutError:
            _cancel(response)
            raise DeadlineExceeded(self.deadline_s) from None
        except UNAVAILABLE as exc:
            raise Overloaded(f"{what} unavailable ({type(exc).__name__}); retry later") from None

    async def _rank_arm(self, arm: str, requests: list[tuple[Candidates, int]]) -> list[Ranked]:
        """The arm's slates; if its ranker fails or is late, the retrieval-order fallback (counted)."""
        call = self.rankers[arm].rank.remote([c for c, _ in requests], [k for _, k in requests])
        try:
            return await asyncio.wait_for(_awaited(call), self.deadline_s)
        except TimeoutError:
            _cancel(call)
            reason = "timeout"
        except Exception as exc:  # a broken artifact, a dead replica, an error: this arm only
            log.warning(
                "ranker of arm %s failed (%s): serving the retrieval-order fallback", arm, type(exc).__name__
            )
            reason = "error"
        self.metrics.fallback(arm, reason, len(requests))
        return failover(requests)

    async def _recommend_batch(self, batch: list[_Pending]) -> list[RecommendResponse]:
        """One pass through the pipeline for the requests that waited together: a call per stage."""
        contexts = self.user_step.remote(
            [p.request.history for p in batch],
            [p.request.query for p in batch],
            [p.request.session_step for p in batch],
            [p.request.explain for p in batch],
            [last_click(p.request) for p in batch],
        )
        try:
            candidates = await self._stage(self.retriever.retrieve.remote(contexts), "retrieval")
        except BaseException:
            _cancel(contexts)  # abandoned with the batch
            raise
        by_arm: dict[str, list[int]] = {}
        for i, pending in enumerate(batch):
            by_arm.setdefault(pending.arm, []).append(i)
        slates = await asyncio.gather(
            *(
                self._rank_arm(arm, [(candidates[i], batch[i].request.k) for i in rows])
                for arm, rows in by_arm.items()
            )
        )
        ranked: list[Ranked] = [None] * len(batch)  # type: ignore[list-item]
        for rows, arm_slates in zip(by_arm.values(), slates, strict=True):
            for i, slate in zip(rows, arm_slates, strict=True):
                ranked[i] = slate
        now = time.time()
        request_ids = [uuid.uuid4().hex for _ in batch]
        answered = [(p, r, rid) for p, r, rid in zip(batch, ranked, request_ids, strict=True) if not p.gone]
        requests = [
            {**r.request_row(rid, now, p.user, p.arm), "key_id": self.key_id} for p, r, rid in answered
        ]
        impressions = [
            {**row, "key_id": self.key_id}
            for p, r, rid in answered
            for row in r.impressions(rid, now, p.user, p.arm)
        ]
        await self._log_requests(requests, impressions)
        return [
            RecommendResponse(
                request_id=rid,
                arm=p.arm,
                items=[
                    RecommendedItem(item_id=i, score=s, propensity=q, explanation=e)
                    for i, s, q, e in zip(
                        r.item_ids,
                        r.scores,
                        r.propensities,
                        r.explanations or [None] * len(r.item_ids),
                        strict=True,
                    )
                ],
                policy=r.policy,
                unknown_history=r.unknown,
                cold_start=r.cold_start,
                fallback=r.fallback,
                index_version=r.index_version,
                policy_version=r.policy_version,
            )
            for p, r, rid in zip(batch, ranked, request_ids, strict=True)
        ]

    async def _log_requests(self, requests: list[dict], impressions: list[dict]) -> None:
        """Hand the answers' rows to the event logger; if it cannot take them (restarting, overloaded, late)
        the answers still go out and the rows are counted as unlogged (their feedback will be a 404)."""
        call = self.logger.log_requests.remote(requests, impressions)
        try:
            await asyncio.wait_for(_awaited(call), self.deadline_s)
            return
        except TimeoutError:
            _cancel(call)
            reason = "timeout"
        except Exception as exc:
            reason = type(exc).__name__
        log.warning("event logger did not take %d answered requests (%s)", len(requests), reason)
        self.metrics.not_logged("requests", len(requests))
        self.metrics.not_logged("impressions", len(impressions))

    async def feedback(self, request) -> str:
        """``accepted`` or ``duplicate`` once the row is durably written; :class:`serving.api.ApiError` else."""
        row = {**request.model_dump(), "ts": time.time()}
        status = await self._stage(self.logger.log_feedback.remote(row), "event log")
        if status == "unknown-request":
            raise UnknownRequest(request.request_id)
        if status == "not-shown":
            raise ItemNotShown(request.request_id, request.item_id)
        if status == "unavailable":
            raise Overloaded("the event log cannot write right now; nothing was recorded, retry later", 5)
        return status

    async def health(self, admin: bool) -> Health:
        """Ready when every part answers; the details only for ``admin`` (:class:`serving.api.NotReady` else)."""
        parts = {"user_step": self.user_step, "retriever": self.retriever, "logger": self.logger}
        parts.update({f"ranker {arm}": handle for arm, handle in self.rankers.items()})
        if self.encoder is not None:
            parts["encoder"] = self.encoder
        names = list(parts)
        results = await asyncio.gather(
            *(asyncio.wait_for(_awaited(parts[n].info.remote()), HEALTH_TIMEOUT_S) for n in names),
            return_exceptions=True,
        )
        infos = {n: r for n, r in zip(names, results, strict=True) if not isinstance(r, BaseException)}
        problems = [
            f"{n}: unavailable ({type(r).__name__})"
            for n, r in zip(names, results, strict=True)
            if n not in infos
        ]
        if problems:
            raise NotReady(problems, admin)
        if not admin:
            return Health(ready=True)
        retriever = infos["retriever"]
        return Health(
            ready=True,
            items=retriever["items"],
            index=retriever["index"],
            index_version=retriever["version"],
            encoder=infos.get("encoder", {}).get("encoder"),
            user_model=infos["user_step"].get("user_model"),
            arms=dict(self.arms),
            policies={arm: infos[f"ranker {arm}"]["policy"] for arm in self.rankers},
            policy_versions={arm: infos[f"ranker {arm}"].get("version", "") for arm in self.rankers},
            events=infos["logger"],
            counters=dict(self.metrics.counts),
            problems=[info["rollout_error"] for info in infos.values() if info.get("rollout_error")]
            + (
                [f"API keys: {self.keys.reload_error}"]
                if self.keys is not None and self.keys.reload_error
                else []
            ),
        )


UNAVAILABLE = (BackPressureError, DeploymentUnavailableError, RayActorError, ActorUnavailableError)
"""What a handle call raises while its deployment is restarting or shedding load: a 503, retry later."""


@dataclass
class _Pending:
    """A validated request waiting for its batch: the pseudonymized user and its arm; ``gone`` once its
    caller stopped waiting (a deadline, a disconnect), so that a slate nobody saw is not logged."""

    request: RecommendRequest
    user: str
    arm: str
    gone: bool = False


async def _awaited(response):
    return await response


def last_click(request: RecommendRequest) -> LastClick | None:
    """A request's session feedback as the pipeline takes it."""
    given = request.last_click
    return None if given is None else LastClick(given.item_id, given.engagement)


def _cancel(response) -> None:
    """Cancel a handle call (a DeploymentResponse, or an in-process future) that is no longer wanted."""
    cancel = getattr(response, "cancel", None)
    if cancel is not None:
        with contextlib.suppress(Exception):
            cancel()


def resolve_encoder(
    config: AppConfig, manifest: dict[str, Any], user_model: UserModel | None = None
) -> tuple[str | None, int]:
    """(encoder name or path, index dim) from the config and the index's ``index.json`` content
    ``manifest``; with a ``user_model``, ``encoder: index`` means the model's text encoder
    (:func:`model_text_encoder`)."""
    if config.encoder != "index":
        encoder = config.encoder
    elif user_model is not None:
        encoder = model_text_encoder(user_model)
    else:
        encoder = manifest.get("encoder")
    return encoder, int(manifest["dim"])


def model_text_encoder(user_model: UserModel) -> str | None:
    """The served model's text encoder, or None (requests with a query are then refused, as without an
    encoder) when its record names none or names a local directory that is not a model."""
    from rayrec.encoding import resolve_model

    name = user_model.text_encoder
    if name is None:
        log.warning("user model %s names no text encoder: requests with a query are refused", user_model.uri)
        return None
    try:
        resolve_model(name)  # checks a local directory (and the packaged default); a hub name passes
    except ArtifactError as exc:
        log.warning("user model %s: %s; requests with a query are refused", user_model.uri, exc)
        return None
    return name


def check_user_model(config: AppConfig) -> UserModel | None:
    """The config's user model, loaded, after checking that it can serve the config's index (its own, or a grown
    catalog indexed with it: :meth:`rayrec.seqrec.artifact.LoadedModel.check_served_index`); None without one.

    Raises:
        ArtifactError: not a model directory, or an index not built from it.
    """
    if not config.user_model:
        return None
    user_model = load_user_model(config.user_model)
    user_model.check_index(ItemIndex.load(config.index), config.index)
    return user_model


def check_policies(config: AppConfig, index_dim: int, index_meta: dict) -> dict[str, int]:
    """Load every arm's policy once, so that a typo or a policy trained for another index or feature set
    fails while the application is built, before anything is deployed. ``index_meta``: the index's
    ``index.json``, which says whether it stores ratings and item log statistics.

    Returns:
        arm name → K its trained policy was trained with (baselines, which take any K, are left out).

    Raises:
        ArtifactError: a policy trained on another embedding dimension, or (from
            :func:`rayrec.slate_scorer.load_exported_policy`) on features other than
            :data:`rayrec.features.FEATURE_NAMES`, or on columns the server does not build (the simulator's
            hidden state; ``item_rating`` from an index without ratings, an item log's columns from an index
            without one: :func:`serving.pipeline.check_servable`);
            a ``fair`` re-ranker over an index without item categories (:func:`rayrec.rerank.index_category_lookup`).
    """
    trained: dict[str, int] = {}
    for arm in config.parsed_arms():
        export = check_servable(load_policy_for_index(arm.policy, config.index), arm.policy, index_meta)
        if export is None:
            continue  # a baseline: any index, any K
        if export.scorer.dim != index_dim:
            raise ArtifactError(
                f"arm {arm.name}: policy {arm.policy} was trained on {export.scorer.dim}-d embeddings, "
                f"the index holds {index_dim}-d: serve it with the index it was trained with"
            )
        trained[arm.name] = export.num_candidates
    return trained


def resolve_config(config: AppConfig) -> tuple[AppConfig, str | None, int]:
    """(config with absolute paths and K settled, query encoder, index dim), checking the index manifest
    and every arm's policy; nothing is deployed.

    Raises:
        ArtifactError: no index there, a policy that does not fit it, or a user model it was not built from.
        ConfigError: a K that is not the trained policies' (see :meth:`AppConfig.with_num_candidates`).
    """
    config = config.with_absolute_paths()
    manifest = read_index_manifest(config.index)
    encoder_name, dim = resolve_encoder(config, manifest, check_user_model(config))
    # The pseudonymization key is settled here, once: created if missing (atomically), so that every
    # replica reads the same one (a replica that cannot find it fails rather than make its own).
    key_source = resolve_key_source(config.pseudonym_key)
    load_key(key_source, create=True)
    config = dataclasses.replace(config, pseudonym_key=key_source)
    return config.with_num_candidates(check_policies(config, dim, manifest)), encoder_name, dim


def build_app_from_config(config: AppConfig) -> serve.Application:
    """The bound application for ``config`` (``serve.run`` it, or let ``serve run``/``serve deploy`` do it).

    Raises:
        ConfigError: the running Serve listens on a non-loopback address and ``config`` has no API keys.
    """
    check_exposure(config, serve_http_host())
    return bind_app(*resolve_config(config))


def serve_http_host() -> str | None:
    """The host the running Serve instance's HTTP ingress binds, or None when no Serve is running here
    (``serve run`` builds the application before it starts Serve)."""
    import ray

    if not ray.is_initialized():
        return None
    try:
        from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        return ray.get(controller.get_http_config.remote(), timeout=30).host
    except Exception:  # no controller yet, or an API that moved: the CLI's own check still applies
        return None


def check_exposure(config: AppConfig, host: str | None) -> None:
    """An application reachable from the network needs API keys."""
    if host is None or config.api_keys:
        return
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"Serve listens on {host}: set the application's api_keys to a key file "
            "(`rayrec api-key add FILE --id NAME --scopes recommend,feedback`)"
        )


def bind_app(config: AppConfig, encoder_name: str | None, dim: int) -> serve.Application:
    """The bound application for a config settled by :func:`resolve_config` (and its encoder and dim)."""
    logging_config = {"enable_access_log": config.access_log, "encoding": config.log_encoding}
    internal = {
        "ray_actor_options": {"num_cpus": 0.1},
        "logging_config": logging_config,
        "max_ongoing_requests": INTERNAL_MAX_ONGOING,
        "max_queued_requests": config.max_queued_requests,
    }
    encoder = None
    if encoder_name:
        # with a user model the encoder gives text embeddings, which UserStep maps into the model's space
        query_dim = load_user_model(config.user_model).text_dim if config.user_model else dim
        encoder = (
            serve.deployment(QueryEncoder)
            .options(name="QueryEncoder", **internal)
            .bind(encoder_name, query_dim, config.batch_wait_s, config.query_int8)
        )
    user_step = retriever = rankers = None
    if not config.colocate:
        index_config = {"index": config.index}
        user_step = (
            serve.deployment(UserStep)
            .options(name="UserStep", user_config=index_config, **internal)
            .bind(encoder, dim, config.index, config.user_model)
        )
        retriever = (
            serve.deployment(Retriever)
            .options(name="Retriever", user_config=index_config, **internal)
            .bind(config.num_candidates, MAX_K, config.batch_wait_s, dim, config.index, config.user_model)
        )
        rankers = {
            arm.name: serve.deployment(Ranker)
            .options(name=f"Ranker-{arm.name}", user_config={"policy": arm.policy}, **internal)
            .bind(config.num_candidates, config.batch_wait_s, dim, arm.policy, config.index)
            for arm in config.parsed_arms()
        }
    logger = (
        serve.deployment(EventLogger)
        .options(name="EventLogger", num_replicas=1, graceful_shutdown_timeout_s=60, **internal)
        .bind(config.events, config.remembered_requests, config.flush_rows, config.flush_seconds)
    )
    stages = {"user_config": stages_user_config(config)} if config.colocate else {}
    # The ingress's request guard admits max_ongoing_requests and queues max_queued_requests (answering
    # the rest 503 with Retry-After and the API's error body); Serve's own limits sit above it, as a
    # backstop that also answers 503 with Retry-After.
    ingress = serve.deployment(serve.ingress()(Recommender)).options(
        name="Recommender",
        **stages,
        ray_actor_options={"num_cpus": 0.1},
        logging_config=logging_config,
        max_ongoing_requests=config.max_ongoing_requests + config.max_queued_requests + INGRESS_HEADROOM,
        max_queued_requests=INGRESS_HEADROOM,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=1),
    )
    return ingress.bind(user_step, retriever, rankers, logger, encoder, config, dim)


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder for ``serve run serving.app:build_app key=value ...`` and ``serve deploy``.

    Args are :class:`serving.settings.AppConfig` fields; ``arms`` is ``NAME=POLICY[:WEIGHT]`` items
    (a list in YAML, comma-separated on the command line).
    """
    return build_app_from_config(app_config_from_args(args))
