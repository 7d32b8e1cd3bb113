"""Batching for the serving pipeline: request coalescing at the ingress, ``serve.batch`` merging inside.

Every DeploymentHandle call costs a few milliseconds of CPU on each side (routing, serialization, the
replica's bookkeeping): on 2 cores, five calls per HTTP request cap the server far below 200 requests/s
(see ``benchmarks/serve.py``). So the ingress does not send a request through the pipeline on its own:
:class:`Coalescer` gathers the requests that wait while earlier ones are in flight and sends them as one
batch, one call per stage. It never waits for a batch to fill, so an idle server answers a lone request
at once, and batches grow by themselves as the load rises. The stages take lists, and :func:`batched`
lets ``serve.batch`` merge the batches that reach one replica together (from several ingress replicas,
or from the ingress's concurrent batches).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from ray import serve

from serving.settings import MAX_MERGED

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """Calls a list-in, list-out coroutine function on whatever items are waiting, a batch at a time.

    Up to ``max_concurrent`` batches are in flight at once (so that the stages, in other processes, work
    on one batch while the next is on its way); an item that arrives while they all are joins the next
    batch. An exception raised by ``fn`` fails every item of its batch.

    Args:
        fn: ``async fn(items: list[T]) -> list[R]``, one result per item, in order.
        max_batch: largest batch.
        max_concurrent: batches in flight at once.
    """

    def __init__(
        self,
        fn: Callable[[list[T]], Awaitable[Sequence[R]]],
        max_batch: int,
        max_concurrent: int,
    ) -> None:
        if max_batch < 1 or max_concurrent < 1:
            raise ValueError(f"max_batch and max_concurrent must be >= 1, got {max_batch}, {max_concurrent}")
        self.fn = fn
        self.max_batch = max_batch
        self.max_concurrent = max_concurrent
        self.waiting: list[tuple[T, asyncio.Future]] = []
        self.in_flight: set[asyncio.Task] = set()  # referenced here so that they are not collected

    async def __call__(self, item: T) -> R:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((item, future))
        self._start_batches()
        return await future

    def _start_batches(self) -> None:
        # callers that went away while waiting (a deadline, a disconnect) are not sent through the pipeline
        self.waiting = [(item, future) for item, future in self.waiting if not future.done()]
        while self.waiting and len(self.in_flight) < self.max_concurrent:
            batch, self.waiting = self.waiting[: self.max_batch], self.waiting[self.max_batch :]
            task = asyncio.ensure_future(self._run(batch))
            self.in_flight.add(task)
            task.add_done_callback(self._finished)

    async def _run(self, batch: list[tuple[T, asyncio.Future]]) -> None:
        try:
            results = await self.fn([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():  # done: the caller went away (client disconnect)
                    future.set_result(result)
        except BaseException as exc:  # cancellation too: no caller may wait forever
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    def _finished(self, task: asyncio.Task) -> None:
        self.in_flight.discard(task)
        self._start_batches()


def batched(method: Callable[..., Awaitable[list[Any]]], batch_wait_s: float | None):
    """``method`` (list arguments in, a list out) with concurrent calls merged by a ``serve.batch`` queue.

    Each call passes lists of equal length (one entry per request) and gets its own slice of the
    merged result. Decorating the bound method (not the class attribute) gives every instance its own
    queue: with a class-level ``@serve.batch`` two rankers in one process would share one queue and one
    policy. ``batch_wait_s`` is how long a merge waits for more calls (0: take what is already waiting);
    ``None`` returns ``method`` itself (``serve.batch`` needs a replica; the plain-process benchmark peer
    runs without one).
    """
    if batch_wait_s is None:
        return method

    async def merged(*calls: list[list[Any]]) -> list[list[Any]]:
        # calls[a][c] is argument a of call c: concatenate per argument, split the answer per call
        sizes = [len(items) for items in calls[0]]
        results = await method(*[[x for items in arg for x in items] for arg in calls])
        out, start = [], 0
        for size in sizes:
            out.append(results[start : start + size])
            start += size
        return out

    return serve.batch(
        max_batch_size=MAX_MERGED,
        batch_wait_timeout_s=batch_wait_s,
        batch_size_fn=lambda first_args: sum(len(items) for items in first_args),
    )(merged)
