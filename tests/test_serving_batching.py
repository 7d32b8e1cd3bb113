"""Request coalescing at the ingress (serving/batching.py): batches form from waiting calls, never by waiting."""

from __future__ import annotations

import asyncio

import pytest

from serving.batching import Coalescer


async def settle() -> None:
    """Let every ready task on the loop run (a task that starts a task needs several turns)."""
    for _ in range(10):
        await asyncio.sleep(0)


class Doubler:
    """A batch function that records the batches it saw and can be held open or made to fail."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_on: int | None = None

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await self.gate.wait()
        if self.fail_on in items:
            raise RuntimeError(f"item {self.fail_on} broke the batch")
        return [2 * x for x in items]


def test_a_lone_call_goes_at_once_and_waiting_calls_share_the_next_batch():
    async def scenario():
        fn = Doubler()
        coalescer = Coalescer(fn, max_batch=4, max_concurrent=1)
        fn.gate.clear()
        first = asyncio.ensure_future(coalescer(0))
        await settle()
        assert fn.batches == [[0]]  # nothing else waiting: no wait for a batch to fill
        rest = [asyncio.ensure_future(coalescer(i)) for i in range(1, 7)]
        await settle()
        assert fn.batches == [[0]]  # one batch in flight at a time
        fn.gate.set()
        results = await asyncio.gather(first, *rest)
        return fn.batches, results

    batches, results = asyncio.run(scenario())
    assert results == [2 * i for i in range(7)]
    assert batches == [[0], [1, 2, 3, 4], [5, 6]]  # max_batch respected, arrival order kept


def test_concurrent_batches_run_side_by_side():
    async def scenario():
        fn = Doubler()
        fn.gate.clear()
        coalescer = Coalescer(fn, max_batch=8, max_concurrent=2)
        calls = [asyncio.ensure_future(coalescer(i)) for i in range(5)]
        await settle()
        started = [list(b) for b in fn.batches]
        fn.gate.set()
        await asyncio.gather(*calls)
        return started

    assert asyncio.run(scenario()) == [[0], [1]]


def test_a_failing_batch_fails_its_callers_only_and_the_next_batch_still_runs():
    async def scenario():
        fn = Doubler()
        fn.fail_on = 2
        fn.gate.clear()
        coalescer = Coalescer(fn, max_batch=2, max_concurrent=1)
        calls = [asyncio.ensure_future(coalescer(i)) for i in range(5)]
        await settle()
        fn.gate.set()
        return fn.batches, await asyncio.gather(*calls, return_exceptions=True)

    batches, results = asyncio.run(scenario())
    assert batches == [[0], [1, 2], [3, 4]]
    assert results[0] == 0 and results[3:] == [6, 8]
    assert all(isinstance(r, RuntimeError) and "item 2 broke" in str(r) for r in results[1:3])


def test_a_caller_that_goes_away_does_not_break_the_batch():
    async def scenario():
        fn = Doubler()
        fn.gate.clear()
        coalescer = Coalescer(fn, max_batch=4, max_concurrent=1)
        kept = asyncio.ensure_future(coalescer(1))
        gone = asyncio.ensure_future(coalescer(2))
        await settle()
        gone.cancel()
        fn.gate.set()
        return await kept

    assert asyncio.run(scenario()) == 2


def test_a_batch_function_that_loses_items_is_an_error():
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    async def scenario():
        coalescer = Coalescer(short, max_batch=4, max_concurrent=1)
        return await asyncio.gather(coalescer(1), coalescer(2), return_exceptions=True)

    results = asyncio.run(scenario())
    assert all(isinstance(r, RuntimeError) and "0 results for 1 items" in str(r) for r in results)


@pytest.mark.parametrize(("max_batch", "max_concurrent"), [(0, 1), (1, 0)])
def test_bad_limits_are_refused(max_batch, max_concurrent):
    with pytest.raises(ValueError, match="must be >= 1"):
        Coalescer(Doubler(), max_batch=max_batch, max_concurrent=max_concurrent)
