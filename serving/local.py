"""Stages in the ingress's own process: for small machines, and for the plain-uvicorn benchmark peer.

With ``colocate`` the ingress holds the request-context step, the retriever and one ranker per arm as plain
objects (the very classes of :mod:`serving.deployments`) behind :class:`LocalHandle`, so a batch costs
one handle call (the event logger) instead of four; see :class:`serving.settings.AppConfig`.
"""

from __future__ import annotations

import asyncio
import inspect

from serving.api import MAX_K
from serving.deployments import Ranker, Retriever, UserStep
from serving.settings import DEFAULT_NUM_CANDIDATES, AppConfig


class LocalHandle:
    """A DeploymentHandle look-alike over an in-process object: ``handle.method.remote(*args)`` is awaitable
    and may take other calls' results as arguments, as chained DeploymentResponses can."""

    def __init__(self, target, method: str = "__call__") -> None:
        self._target, self._method = target, method

    def __getattr__(self, name: str) -> LocalHandle:
        return LocalHandle(self._target, name)

    def remote(self, *args) -> asyncio.Future:
        async def call():
            resolved = [await arg if isinstance(arg, asyncio.Future) else arg for arg in args]
            result = getattr(self._target, self._method)(*resolved)
            return await result if inspect.isawaitable(result) else result

        return asyncio.ensure_future(call())


class LocalStages:
    """The request-context step, retriever and per-arm rankers of one process, loaded through ``reconfigure``.

    Args:
        encoder: handle of the query encoder deployment, or None.
        dim: the application's embedding dimension (an index or policy of another is refused), or None.
        config: the application's config (candidates per request, arms); K is settled by
            :func:`serving.app.resolve_config` (unset, as in a config built by hand: the baselines'
            default, and the rankers refuse a trained policy of another K).
    """

    def __init__(self, encoder, config: AppConfig, dim: int | None = None) -> None:
        num_candidates = DEFAULT_NUM_CANDIDATES if config.num_candidates is None else config.num_candidates
        self.user_step = UserStep(encoder, dim, initial=config.index, user_model=config.user_model)
        self.retriever = Retriever(
            num_candidates, MAX_K, None, dim, initial=config.index, user_model=config.user_model
        )
        self.rankers = {
            arm.name: Ranker(num_candidates, None, dim, initial=arm.policy, index=config.index)
            for arm in config.parsed_arms()
        }

    def handles(self) -> tuple[LocalHandle, LocalHandle, dict[str, LocalHandle]]:
        """(user step, retriever, rankers by arm) as handles for :class:`serving.app.Recommender`."""
        rankers = {arm: LocalHandle(ranker) for arm, ranker in self.rankers.items()}
        return LocalHandle(self.user_step), LocalHandle(self.retriever), rankers

    async def reconfigure(self, user_config: dict) -> None:
        """``{"index": URI, "policies": {arm: SPEC}}``: load what changed (as the deployments' own
        ``reconfigure`` does: the new artifact is loaded next to the old one, then swapped in, and a bad
        one is refused while the old one keeps serving)."""
        await self.user_step.reconfigure({"index": user_config["index"]})
        await self.retriever.reconfigure({"index": user_config["index"]})
        for arm, ranker in self.rankers.items():
            await ranker.reconfigure({"policy": user_config["policies"][arm]})


def stages_user_config(config: AppConfig) -> dict:
    """The ``user_config`` of a colocated ingress: the index and each arm's policy."""
    return {"index": config.index, "policies": {arm.name: arm.policy for arm in config.parsed_arms()}}
