"""The Serve application: ``serve run serving.app:build_app index=DIR arms=NAME=POLICY[:W],...``.

Deployments, composed with DeploymentHandles::

    HTTP ─► Recommender (FastAPI ingress: validation, pseudonymization, A/B assignment)
              ├─► UserStep ──(query)──► QueryEncoder          history → profile from stored embeddings
              ├─► Retriever                                   FAISS, batched; cold-start fallback
              ├─► Ranker-<arm> (one per arm)                   the arm's SlatePolicy, batched
              └─► EventLogger (one replica)                   requests + impressions + feedback → Parquet

The user state flows from UserStep to Retriever to Ranker as chained DeploymentResponses, so the
ingress only waits for the final slate. Rolling out a new index or policy: change the deployment's
``user_config`` (``index`` / ``policy``) in ``serving/config.yaml`` and ``serve deploy`` it; the running
replicas load the new artifact and swap it in without dropping requests (see config.yaml).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from rayrec.assignment import assign_arm
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
from serving.deployments import EventLogger, QueryEncoder, Ranker, Retriever, UserStep, read_index_manifest
from serving.settings import AppConfig, app_config_from_args

INTERNAL_MAX_ONGOING = 256
"""Concurrent calls an internal deployment takes: high, so batches can fill; the ingress bounds the load."""
HEALTH_TIMEOUT_S = 5.0


class Recommender:
    """The ingress: turns an HTTP request into one pass through the pipeline and logs what was shown.

    Args:
        user_step, retriever, rankers, logger, encoder: handles of the other deployments (``rankers`` by
            arm name; ``encoder`` None when queries are off).
        config: the application's :class:`serving.settings.AppConfig`.
    """

    def __init__(
        self, user_step, retriever, rankers: dict[str, Any], logger, encoder, config: AppConfig
    ) -> None:
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

    def __serve_build_asgi_app__(self):
        return make_api(self)

    async def recommend(self, request: RecommendRequest) -> RecommendResponse:
        user = self.pseudonymizer.pseudonymize(request.user_id)
        arm = assign_arm(user, self.arms, self.salt)
        request_id = uuid.uuid4().hex
        try:
            state = self.user_step.remote(request.history, request.query)
            candidates = self.retriever.retrieve.remote(state)
            ranked = await self.rankers[arm].rank.remote(candidates, request.k)
            now = time.time()
            rows = [
                {
                    "request_id": request_id,
                    "ts": now,
                    "user_id": user,
                    "arm": arm,
                    "policy": ranked.policy,
                    "item_id": item_id,
                    "position": position,
                    "score": score,
                    "propensity": propensity,
                }
                for position, (item_id, score, propensity) in enumerate(
                    zip(ranked.item_ids, ranked.scores, ranked.propensities, strict=True)
                )
            ]
            await self.logger.log_request.remote(ranked.request_row(request_id, now, user, arm), rows)
        except (BackPressureError, DeploymentUnavailableError) as exc:
            raise Overloaded(type(exc).__name__) from None
        return RecommendResponse(
            request_id=request_id,
            arm=arm,
            items=[
                RecommendedItem(item_id=i, score=s, propensity=p)
                for i, s, p in zip(ranked.item_ids, ranked.scores, ranked.propensities, strict=True)
            ],
            policy=ranked.policy,
            unknown_history=ranked.unknown,
            cold_start=ranked.cold_start,
        )

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


async def _awaited(response):
    return await response


def resolve_encoder(config: AppConfig) -> tuple[str | None, int]:
    """(encoder name or path, index dim) from the config and the index's ``index.json``."""
    manifest = read_index_manifest(config.index)
    encoder = manifest.get("encoder") if config.encoder == "index" else config.encoder
    return encoder, int(manifest["dim"])


def build_app_from_config(config: AppConfig) -> serve.Application:
    """The bound application for ``config`` (``serve.run`` it, or let ``serve run``/``serve deploy`` do it)."""
    config = config.with_absolute_paths()
    encoder_name, dim = resolve_encoder(config)
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
        .bind(config.batch_wait_s)
        for arm in config.parsed_arms()
    }
    logger = (
        serve.deployment(EventLogger)
        .options(name="EventLogger", num_replicas=1, graceful_shutdown_timeout_s=60, **internal)
        .bind(config.events, config.remembered_requests, config.flush_rows, config.flush_seconds)
    )
    ingress = serve.deployment(serve.ingress()(Recommender)).options(
        name="Recommender",
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
