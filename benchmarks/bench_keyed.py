"""Key-ordered concurrent map: 20,000 items x 1 ms over 100 keys, limit 100; and group_by's cost per item.

Subject: ``concurrent_map(work, 100, key=lambda x: x % 100)`` (items of a key
one at a time, in arrival order; output in input order) over an ``@source``
async generator.  Baseline: a hand-written per-key queue design doing exactly
the same work: one worker task per key draining that key's queue, a
counter bounding the calls running at once to 100, the same window of 200
items taken from the source and not yet handed to the consumer, and the
consumer reordering by index.  Ideal: 200 items per key x 1 ms = 0.2 s.
Target: at most 1.2x the hand-written design.

A second scenario, informational: ``group_by(key, map(...))`` over 100 keys
(a sub-pipeline per key, all live) against a hand-written dict of per-key
generator state, with no waiting work: the cost of routing each item
through a task boundary.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator

import anyio

from talkpipe_async import source
from talkpipe_async.operators import concurrent_map, group_by
from talkpipe_async.operators import map as map_op

from ._harness import Result, compare, measure_async

__all__ = ["run"]

LIMIT = 100
KEYS = 100
WINDOW = 2 * LIMIT


async def work(x: int) -> int:
    """The per-item job: await 1 ms."""
    await anyio.sleep(0.001)
    return x


async def _numbers(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


numbers = source(_numbers)


def key_of(x: int) -> int:
    """The item's key: 100 keys, round robin."""
    return x % KEYS


async def hand_written(n: int) -> int:
    """Per-key queues, a worker task per key, counters for the limit and the window, reordering by index."""
    results: dict[int, int] = {}
    queues: dict[int, deque[tuple[int, int]]] = {}
    wakeups: dict[int, anyio.Event] = {}
    consumer = [anyio.Event()]
    room = [anyio.Event()]
    slot = [anyio.Event()]
    state = {"held": 0, "running": 0, "done": False}
    total = 0

    async def worker(k: int) -> None:
        queue = queues[k]
        while True:
            while queue:
                i, x = queue.popleft()
                while state["running"] >= LIMIT:
                    slot[0] = anyio.Event()
                    await slot[0].wait()
                state["running"] += 1
                results[i] = await work(x)
                state["running"] -= 1
                slot[0].set()
                consumer[0].set()
            if state["done"]:
                return
            wakeups[k] = anyio.Event()
            await wakeups[k].wait()

    async with anyio.create_task_group() as tg:

        async def produce() -> None:
            i = 0
            async for x in _numbers(n):
                while state["held"] >= WINDOW:
                    room[0] = anyio.Event()
                    await room[0].wait()
                state["held"] += 1
                k = key_of(x)
                if k not in queues:
                    queues[k] = deque()
                    wakeups[k] = anyio.Event()
                    tg.start_soon(worker, k)
                queues[k].append((i, x))
                wakeups[k].set()
                i += 1
            state["done"] = True
            for event in wakeups.values():
                event.set()

        tg.start_soon(produce)
        nxt = 0
        while nxt < n:
            while nxt in results:
                total += results.pop(nxt)
                state["held"] -= 1
                room[0].set()
                nxt += 1
            if nxt < n and nxt not in results:
                consumer[0] = anyio.Event()
                await consumer[0].wait()
    return total


async def hand_grouped(n: int) -> int:
    """Per-key state in a dict, updated in the consumer's own loop (what group_by(key, map(f)) computes)."""
    total = 0
    seen: dict[int, int] = {}
    async for x in _numbers(n):
        k = key_of(x)
        seen[k] = seen.get(k, 0) + 1
        total += x + 1
    return total


def run(quick: bool) -> list[Result]:
    """Run the keyed scenarios (4,000 items in quick mode, 20,000 in full)."""
    n = 4_000 if quick else 20_000
    repeat = 3 if quick else 5
    expected = n * (n - 1) // 2
    op = numbers(n) | concurrent_map(work, LIMIT, key=key_of, window=WINDOW)

    async def subject() -> None:
        total = 0
        async with op.stream() as items:
            async for x in items:
                total += x
        assert total == expected

    async def hand() -> None:
        assert await hand_written(n) == expected

    name = "hand-written per-key queues + reordering"
    results = compare(
        f"concurrent_map key=, {n:,} items x 1 ms over {KEYS} keys, limit {LIMIT}, ordered (asyncio)",
        ("talkpipe_async concurrent_map(key=)", measure_async(subject)),
        [(name, measure_async(hand))],
        repeat=repeat,
        targets={name: ("<= 1.2", lambda r: r <= 1.2)},
    )
    results += compare(
        f"concurrent_map key=, {n:,} items x 1 ms over {KEYS} keys, limit {LIMIT}, ordered (trio, informational)",
        ("talkpipe_async concurrent_map(key=)", measure_async(subject, backend="trio")),
        [(name, measure_async(hand, backend="trio"))],
        repeat=repeat,
    )
    grouped = numbers(n) | group_by(key_of, map_op(lambda x: x + 1), max_keys=KEYS)

    async def groups() -> None:
        total = 0
        async with grouped.stream() as items:
            async for x in items:
                total += x
        assert total == expected + n

    async def hand_groups() -> None:
        assert await hand_grouped(n) == expected + n

    results += compare(
        f"group_by, {n:,} items over {KEYS} keys, a map per key, no waiting work (asyncio, informational)",
        ("talkpipe_async group_by", measure_async(groups)),
        [("a dict of per-key state in one loop", measure_async(hand_groups))],
        repeat=repeat,
    )
    return results


if __name__ == "__main__":
    for r in run(quick=False):
        print(f"{r.scenario}: {r.subject_s:.3f}s vs {r.baseline}: {r.baseline_s:.3f}s")
        print(f"    ratio {r.ratio:.3f}, target {r.target}, met={r.met}")
