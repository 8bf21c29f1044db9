"""Fan-out / fan-in (issue 6): ``fork`` broadcast to 3 branches, outputs merged.

Subject: ``fork(map(f), map(f), map(f))`` over N ints (every item to every
branch, branch outputs merged back).  Baseline: the hand-written asyncio
equivalent: one producer putting each item into three bounded
``asyncio.Queue``s, three branch tasks applying ``f`` and putting into one
output queue, the consumer reading 3N results.  Both move one item at a time
through queues of the same size.
"""

from __future__ import annotations

import asyncio
from typing import Any

from talkpipe_async.operators import fork, map

from ._harness import Result, compare, measure_async

__all__ = ["run"]

BUFFER = 64


def _f(x: int) -> int:
    return x + 1


def _subject(n: int) -> Any:
    pipeline = fork(map(_f), map(_f), map(_f), buffer=BUFFER)

    async def main() -> None:
        got = 0
        async with pipeline.stream(range(n)) as items:
            async for _ in items:
                got += 1
        assert got == 3 * n, got

    return main


def _hand(n: int) -> Any:
    async def main() -> None:
        queues: list[asyncio.Queue[Any]] = [asyncio.Queue(BUFFER) for _ in range(3)]
        out: asyncio.Queue[Any] = asyncio.Queue(BUFFER)
        end = object()

        async def produce() -> None:
            for i in range(n):
                for q in queues:
                    await q.put(i)
            for q in queues:
                await q.put(end)

        async def branch(q: asyncio.Queue[Any]) -> None:
            while (x := await q.get()) is not end:
                await out.put(_f(x))
            await out.put(end)

        tasks = [asyncio.create_task(produce())] + [asyncio.create_task(branch(q)) for q in queues]
        ended = got = 0
        while ended < 3:
            x = await out.get()
            if x is end:
                ended += 1
            else:
                got += 1
        await asyncio.gather(*tasks)
        assert got == 3 * n, got

    return main


def run(quick: bool) -> list[Result]:
    """Broadcast to three branches and merge, against hand-written asyncio queues."""
    n = 20_000 if quick else 200_000
    return compare(
        f"fork: broadcast {n:,} ints to 3 map branches, merged",
        ("talkpipe_async fork", measure_async(_subject(n))),
        [("hand-written asyncio.Queue fan-out/fan-in", measure_async(_hand(n)))],
        repeat=3 if quick else 5,
    )
