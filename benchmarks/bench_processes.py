"""Process map: 2,000 items of 1 ms of pure-CPU work each, on 2 worker processes.

Subject: ``process_map(burn, workers=2)`` (ordered, batches of 16) after an
``@source`` async generator.  Baselines over the same items: the serial loop
(``[burn(x) for x in items]`` in this process) and
``multiprocessing.Pool(2).imap(burn, items, chunksize=16)``.  Each timed run
starts and stops its own pool (both pool forms pay their start-up).  Target:
at least 1.8x faster than serial (ratio <= 0.56) on 2 free cores; on a
loaded machine the ratio shows the cores that were actually free.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import AsyncIterator

from talkpipe_async import source
from talkpipe_async.operators import process_map

from ._harness import Result, compare, measure_async

__all__ = ["burn", "run"]

WORKERS = 2
BATCH = 16


def burn(loops: int) -> int:
    """Pure-CPU work: a loop of *loops* additions (calibrated to about 1 ms)."""
    total = 0
    for i in range(loops):
        total += i
    return total


def calibrate(target: float = 0.001) -> int:
    """The loop count that takes about *target* seconds here (best of a few tries, so load inflates it less)."""
    loops = 10_000
    best = min(_timed_burn(loops) for _ in range(5))
    return max(1, int(loops * target / best))


def _timed_burn(loops: int) -> float:
    start = time.perf_counter()
    burn(loops)
    return time.perf_counter() - start


async def _items(n: int, loops: int) -> AsyncIterator[int]:
    for _ in range(n):
        yield loops


items = source(_items)


def run(quick: bool) -> list[Result]:
    """Run the scenario (400 items in quick mode, 2,000 in full)."""
    n = 400 if quick else 2_000
    repeat = 2 if quick else 3
    loops = calibrate()
    expected = n * burn(loops)
    op = items(n, loops) | process_map(burn, workers=WORKERS, batch_size=BATCH)

    async def subject() -> None:
        assert sum(await op.collect()) == expected

    def serial() -> None:
        assert sum(burn(loops) for _ in range(n)) == expected

    def pool_imap() -> None:
        with multiprocessing.Pool(WORKERS) as pool:
            assert sum(pool.imap(burn, (loops for _ in range(n)), chunksize=BATCH)) == expected

    results = compare(
        f"process_map, {n:,} items x 1 ms CPU, {WORKERS} workers, batches of {BATCH} (asyncio)",
        ("talkpipe_async process_map", measure_async(subject)),
        [("serial loop", serial), (f"multiprocessing.Pool({WORKERS}).imap", pool_imap)],
        repeat=repeat,
        targets={"serial loop": ("<= 0.56 (1.8x faster)", lambda r: r <= 0.56)},
    )
    for result in results:
        result.note = "shared, loaded 2-core machine" if not quick else ""
        result.extra["loops_per_ms"] = loops
    return results
