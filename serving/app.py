"""The Serve application: ``serve run serving.app:build_app index=DIR arms=NAME=POLICY[:W],...``.

Deployments, composed with DeploymentHandles::

    HTTP ─► Recommender (FastAPI ingress: validation, pseudonymization, A/B assignment)
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
deploy`` it; the running replicas load the new artifact and swap it in without dropping requests (see
config.yaml).

K (candidates per request) is the trained arms' policies' K unless ``num_candidates`` is given
(:meth:`serving.settings.AppConfig.with_num_candidates`); each ranker shows its policy the
:func:`rayrec.features.build_observation` observation, with the request's ``session_step`` on the budget
scale the policy was trained with.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from rayrec.assignment import assign_arm
from rayrec.baselines import load_policy
from rayrec.errors import ArtifactError, ConfigError
from rayrec.privacy import Pseudonymizer, load_or_create_key
from serving.api import (
    MAX_K,
    FeedbackRequest,
    Health,
    ItemNotShown,
    Overloaded,
    RecommendedItem,
    RecommendRequest,
    RecommendResponse,
    UnknownRequest,
    make_api,
)
from serving.batching import Coalescer
from serving.deployments import EventLogger, QueryEncoder, Ranker, Retriever, UserStep, read_index_manifest
from serving.local import LocalStages, stages_user_config
from serving.pipeline import Ranked, trained_config
from serving.settings import MAX_MERGED, AppConfig, app_config_from_args

INTERNAL_MAX_ONGOING = MAX_MERGED
"""Concurrent calls an internal deployment takes: as many as a merged batch holds items, so merges can
fill; the ingress bounds the load."""
HEALTH_TIMEOUT_S = 5.0


class Recommender:
    """The ingress: turns an HTTP request into one pass through the pipeline and logs what was shown.

    Args:
        user_step, retriever, rankers, logger, encoder: handles of the other deployments (``rankers`` by
            arm name; ``encoder`` None when queries are off). With ``config.colocate`` the first three
            are None: the ingress holds those stages itself (:class:`serving.local.LocalStages`), loaded
            by :meth:`reconfigure`.
        config: the application's :class:`serving.settings.AppConfig`.
    """

    def __init__(
        self, user_step, retriever, rankers: dict[str, Any] | None, logger, encoder, config: AppConfig
    ) -> None:
        self.local = LocalStages(encoder, config) if config.colocate else None
        if self.local is not None:
            user_step, retriever, rankers = self.local.handles()
        self.user_step = user_step
        self.retriever = retriever
        self.rankers = rankers
        self.logger = logger
        self.encoder = encoder
        self.arms = [(arm.name, arm.weight) for arm in config.parsed_arms()]
        self.salt = config.salt
        self.max_history = config.max_history
        self.supports_query = encoder is not None
        # Raw user ids exist only inside this method call; everything downstream sees the pseudonym.
        self.pseudonymizer = Pseudonymizer(load_or_create_key(config.key_dir or config.events))
        # Requests that arrive while batches are in flight go through the pipeline together: one call per
        # stage for the lot, instead of five calls per request (see serving/batching.py).
        self.pipeline = Coalescer(self._recommend_batch, config.max_batch, config.concurrent_batches)

    def __serve_build_asgi_app__(self):
        return make_api(self)

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
        try:
            return await self.pipeline(_Pending(request, user, assign_arm(user, self.arms, self.salt)))
        except (BackPressureError, DeploymentUnavailableError) as exc:
            raise Overloaded(type(exc).__name__) from None

    async def _recommend_batch(self, batch: list[_Pending]) -> list[RecommendResponse]:
        """One pass through the pipeline for the requests that waited together: a call per stage."""
        contexts = self.user_step.remote(
            [p.request.history for p in batch],
            [p.request.query for p in batch],
            [p.request.session_step for p in batch],
        )
        candidates = await self.retriever.retrieve.remote(contexts)
        by_arm: dict[str, list[int]] = {}
        for i, pending in enumerate(batch):
            by_arm.setdefault(pending.arm, []).append(i)
        slates = await asyncio.gather(
            *(
                self.rankers[arm].rank.remote(
                    [candidates[i] for i in rows], [batch[i].request.k for i in rows]
                )
                for arm, rows in by_arm.items()
            )
        )
        ranked: list[Ranked] = [None] * len(batch)  # type: ignore[list-item]
        for rows, arm_slates in zip(by_arm.values(), slates, strict=True):
            for i, slate in zip(rows, arm_slates, strict=True):
                ranked[i] = slate
        now = time.time()
        request_ids = [uuid.uuid4().hex for _ in batch]
        await self.logger.log_requests.remote(
            [
                r.request_row(rid, now, p.user, p.arm)
                for p, r, rid in zip(batch, ranked, request_ids, strict=True)
            ],
            [
                row
                for p, r, rid in zip(batch, ranked, request_ids, strict=True)
                for row in r.impressions(rid, now, p.user, p.arm)
            ],
        )
        return [
            RecommendResponse(
                request_id=rid,
                arm=p.arm,
                items=[
                    RecommendedItem(item_id=i, score=s, propensity=q)
                    for i, s, q in zip(r.item_ids, r.scores, r.propensities, strict=True)
                ],
                policy=r.policy,
                unknown_history=r.unknown,
                cold_start=r.cold_start,
            )
            for p, r, rid in zip(batch, ranked, request_ids, strict=True)
        ]

    async def feedback(self, request: FeedbackRequest) -> None:
        row = {**request.model_dump(), "ts": time.time()}
        try:
            status = await self.logger.log_feedback.remote(row)
        except (BackPressureError, DeploymentUnavailableError) as exc:
            raise Overloaded(type(exc).__name__) from None
        if status == "unknown-request":
            raise UnknownRequest(
                f"unknown request_id {request.request_id!r}: not answered by this server, or older than "
                "the requests it remembers"
            )
        if status == "not-shown":
            raise ItemNotShown(f"item {request.item_id!r} was not shown in request {request.request_id!r}")

    async def health(self) -> Health:
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
            f"{n}: {type(r).__name__}: {r}" for n, r in zip(names, results, strict=True) if n not in infos
        ]
        retriever = infos.get("retriever", {})
        return Health(
            ready=not problems,
            items=retriever.get("items", 0),
            index=retriever.get("index", ""),
            encoder=infos.get("encoder", {}).get("encoder"),
            arms=dict(self.arms),
            policies={arm: infos.get(f"ranker {arm}", {}).get("policy", "?") for arm in self.rankers},
            problems=problems,
        )


@dataclass(frozen=True)
class _Pending:
    """A validated request waiting for its batch: the pseudonymized user and its arm."""

    request: RecommendRequest
    user: str
    arm: str


async def _awaited(response):
    return await response


def resolve_encoder(config: AppConfig) -> tuple[str | None, int]:
    """(encoder name or path, index dim) from the config and the index's ``index.json``."""
    manifest = read_index_manifest(config.index)
    encoder = manifest.get("encoder") if config.encoder == "index" else config.encoder
    return encoder, int(manifest["dim"])


def check_policies(config: AppConfig, index_dim: int) -> dict[str, int]:
    """Load every arm's policy once, so that a typo or a policy trained for another index or feature set
    fails while the application is built, before anything is deployed.

    Returns:
        arm name → K its trained policy was trained with (baselines, which take any K, are left out).

    Raises:
        ArtifactError: a policy trained on another embedding dimension, or (from
            :func:`rayrec.slate_scorer.load_exported_policy`) on features other than
            :data:`rayrec.features.FEATURE_NAMES`.
    """
    trained: dict[str, int] = {}
    for arm in config.parsed_arms():
        export = trained_config(load_policy(arm.policy))
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
        ArtifactError: no index there, or a policy that does not fit it.
        ConfigError: a K that is not the trained policies' (see :meth:`AppConfig.with_num_candidates`).
    """
    config = config.with_absolute_paths()
    encoder_name, dim = resolve_encoder(config)
    return config.with_num_candidates(check_policies(config, dim)), encoder_name, dim


def build_app_from_config(config: AppConfig) -> serve.Application:
    """The bound application for ``config`` (``serve.run`` it, or let ``serve run``/``serve deploy`` do it)."""
    return bind_app(*resolve_config(config))


def bind_app(config: AppConfig, encoder_name: str | None, dim: int) -> serve.Application:
    """The bound application for a config settled by :func:`resolve_config` (and its encoder and dim)."""
    logging_config = {"enable_access_log": config.access_log}
    internal = {
        "ray_actor_options": {"num_cpus": 0.1},
        "logging_config": logging_config,
        "max_ongoing_requests": INTERNAL_MAX_ONGOING,
        "max_queued_requests": config.max_queued_requests,
    }
    encoder = None
    if encoder_name:
        encoder = (
            serve.deployment(QueryEncoder)
            .options(name="QueryEncoder", **internal)
            .bind(encoder_name, dim, config.batch_wait_s)
        )
    user_step = retriever = rankers = None
    if not config.colocate:
        index_config = {"index": config.index}
        user_step = (
            serve.deployment(UserStep)
            .options(name="UserStep", user_config=index_config, **internal)
            .bind(encoder)
        )
        retriever = (
            serve.deployment(Retriever)
            .options(name="Retriever", user_config=index_config, **internal)
            .bind(config.num_candidates, MAX_K, config.batch_wait_s)
        )
        rankers = {
            arm.name: serve.deployment(Ranker)
            .options(name=f"Ranker-{arm.name}", user_config={"policy": arm.policy}, **internal)
            .bind(config.num_candidates, config.batch_wait_s)
            for arm in config.parsed_arms()
        }
    logger = (
        serve.deployment(EventLogger)
        .options(name="EventLogger", num_replicas=1, graceful_shutdown_timeout_s=60, **internal)
        .bind(config.events, config.remembered_requests, config.flush_rows, config.flush_seconds)
    )
    stages = {"user_config": stages_user_config(config)} if config.colocate else {}
    ingress = serve.deployment(serve.ingress()(Recommender)).options(
        name="Recommender",
        **stages,
        ray_actor_options={"num_cpus": 0.1},
        logging_config=logging_config,
        max_ongoing_requests=config.max_ongoing_requests,
        max_queued_requests=config.max_queued_requests,
    )
    return ingress.bind(user_step, retriever, rankers, logger, encoder, config)


def build_app(args: dict[str, Any]) -> serve.Application:
    """Application builder for ``serve run serving.app:build_app key=value ...`` and ``serve deploy``.

    Args are :class:`serving.settings.AppConfig` fields; ``arms`` is ``NAME=POLICY[:WEIGHT]`` items
    (a list in YAML, comma-separated on the command line).
    """
    return build_app_from_config(app_config_from_args(args))
