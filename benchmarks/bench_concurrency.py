"""Concurrent map (issue 4): 20,000 items that each await 1 ms, limit 100, ordered.

Targets: at most 1.2x a hand-written semaphore-with-reordering baseline, and
at least 4x faster than aiostream's ``pipe.map(..., task_limit=100,
ordered=True)`` (ratio subject/aiostream <= 0.25).  All on asyncio.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

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


async def _numbers(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


numbers = source(_numbers)


async def hand_written(n: int, limit: int = LIMIT) -> int:
    """A semaphore bounds the tasks (one per item); the consumer reorders by index."""
    results: dict[int, int] = {}
    wake = [anyio.Event()]
    sem = anyio.Semaphore(limit)
    total = 0

    async def one(i: int, x: int) -> None:
        try:
            results[i] = await work(x)
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
    repeat = 3
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
            xs = stream.iterate(range(n)) | pipe.map(work, task_limit=LIMIT, ordered=True)
            async with xs.stream() as items:
                async for x in items:
                    total += x
            assert total == n * (n - 1) // 2

        baselines.append(("aiostream pipe.map task_limit=100 ordered", measure_async(peer)))
        targets["aiostream pipe.map task_limit=100 ordered"] = ("<= 0.25 (4x faster)", lambda r: r <= 0.25)
    except ImportError:  # pragma: no cover - aiostream is in the dev extra
        pass

    results = compare(
        f"concurrent_map, {n:,} items x 1 ms, limit {LIMIT}, ordered (asyncio)",
        ("talkpipe_async concurrent_map", measure_async(subject)),
        baselines,
        repeat=repeat,
        targets=targets,
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
