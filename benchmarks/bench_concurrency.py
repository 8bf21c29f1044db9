"""Concurrent map: 20,000 items that each await 1 ms, limit 100, ordered; and its pure overhead.

Subject: the README form, an ``@source`` async generator and
``concurrent_map(work, 100, ordered=True)``.  Baselines over the same async
generator: a hand-written loop (a semaphore bounds one task per item, the
consumer reorders by index), and aiostream's ``pipe.map(work,
task_limit=100, ordered=True)``.  Targets: at most 1.2x the hand-written loop
and at least 5x faster than aiostream (ratio <= 0.2) with 1 ms of work; with
no work at all (the pure overhead of scheduling and reordering) at most 1.5x
the hand-written loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import anyio

from talkpipe_async import source
from talkpipe_async.operators import concurrent_map

from ._harness import Result, compare, measure_async

__all__ = ["run"]

LIMIT = 100


async def work(x: int) -> int:
    """The per-item job: await 1 ms."""
    await anyio.sleep(0.001)
    return x


async def no_work(x: int) -> int:
    """The per-item job of the overhead scenario: nothing."""
    return x


async def _numbers(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


numbers = source(_numbers)


async def hand_written(n: int, limit: int = LIMIT, job: Callable[[int], Awaitable[int]] = work) -> int:
    """A semaphore bounds the tasks (one per item); the consumer reorders by index."""
    results: dict[int, int] = {}
    wake = [anyio.Event()]
    sem = anyio.Semaphore(limit)
    total = 0

    async def one(i: int, x: int) -> None:
        try:
            results[i] = await job(x)
        finally:
            sem.release()
        wake[0].set()

    async with anyio.create_task_group() as tg:

        async def produce() -> None:
            i = 0
            async for x in _numbers(n):
                await sem.acquire()
                tg.start_soon(one, i, x)
                i += 1

        tg.start_soon(produce)
        nxt = 0
        while nxt < n:
            while nxt in results:
                total += results.pop(nxt)
                nxt += 1
            if nxt < n:
                wake[0] = anyio.Event()
                if nxt not in results:
                    await wake[0].wait()
    return total


def run(quick: bool) -> list[Result]:
    """Run the concurrent-map scenario (4,000 items in quick mode, 20,000 in full)."""
    n = 4_000 if quick else 20_000
    repeat = 3 if quick else 5
    op = numbers(n) | concurrent_map(work, LIMIT, ordered=True)

    async def subject() -> None:
        total = 0
        async with op.stream() as items:
            async for x in items:
                total += x
        assert total == n * (n - 1) // 2

    async def hand() -> None:
        assert await hand_written(n) == n * (n - 1) // 2

    baselines = [("hand-written semaphore + reordering", measure_async(hand))]
    targets = {"hand-written semaphore + reordering": ("<= 1.2", lambda r: r <= 1.2)}
    try:
        from aiostream import pipe, stream

        async def peer() -> None:
            total = 0
            xs = stream.iterate(_numbers(n)) | pipe.map(work, task_limit=LIMIT, ordered=True)
            async with xs.stream() as items:
                async for x in items:
                    total += x
            assert total == n * (n - 1) // 2

        baselines.append(("aiostream pipe.map task_limit=100 ordered", measure_async(peer)))
        targets["aiostream pipe.map task_limit=100 ordered"] = ("<= 0.20 (5x faster)", lambda r: r <= 0.20)
    except ImportError:  # pragma: no cover - aiostream is in the dev extra
        pass

    results = compare(
        f"concurrent_map, {n:,} items x 1 ms, limit {LIMIT}, ordered (asyncio)",
        ("talkpipe_async concurrent_map", measure_async(subject)),
        baselines,
        repeat=repeat,
        targets=targets,
    )
    bare = numbers(n) | concurrent_map(no_work, LIMIT, ordered=True)

    async def overhead() -> None:
        total = 0
        async with bare.stream() as items:
            async for x in items:
                total += x
        assert total == n * (n - 1) // 2

    async def hand_overhead() -> None:
        assert await hand_written(n, job=no_work) == n * (n - 1) // 2

    results += compare(
        f"concurrent_map overhead, {n:,} items x no work, limit {LIMIT}, ordered (asyncio)",
        ("talkpipe_async concurrent_map", measure_async(overhead)),
        [("hand-written semaphore + reordering", measure_async(hand_overhead))],
        repeat=repeat if quick else 7,
        targets={"hand-written semaphore + reordering": ("<= 1.5", lambda r: r <= 1.5)},
    )
    results += compare(
        f"concurrent_map, {n:,} items x 1 ms, limit {LIMIT}, ordered (trio, informational)",
        ("talkpipe_async concurrent_map", measure_async(subject, backend="trio")),
        [("hand-written semaphore + reordering", measure_async(hand, backend="trio"))],
        repeat=repeat,
    )
    return results


if __name__ == "__main__":
    for r in run(quick=False):
        print(f"{r.scenario}: {r.subject_s:.3f}s vs {r.baseline}: {r.baseline_s:.3f}s")
        print(f"    ratio {r.ratio:.3f}, target {r.target}, met={r.met}")
