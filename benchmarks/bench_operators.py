"""Operators part A (issue 4): a chain of 5 built-in map/filter operators over 1,000,000 ints.

Subject: an ``@source`` async generator and ``map | filter | map | filter |
map`` from ``talkpipe_async.operators`` (fused into one stage).  Baselines:
the same source generator and five hand-written chained async generators
doing the same work, and aiostream's ``pipe.map``/``pipe.filter`` over
``stream.iterate(range(n))``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from talkpipe_async import Pipeline, source
from talkpipe_async.operators.transform import filter, fuse_stages, map

from ._harness import Result, compare, measure_async

__all__ = ["run"]


@source
async def numbers(n: int) -> AsyncIterator[int]:
    """The ints 0..n-1 (the README's plain @source: the runner strips metadata after it, as for a user)."""
    for i in range(n):
        yield i


def _inc(x: int) -> int:
    return x + 1


def _odd(x: int) -> bool:
    return x % 2 == 1


def _not3(x: int) -> bool:
    return x % 3 != 0


def _double(x: int) -> int:
    return x * 2


async def _numbers(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


async def _h_inc(items: AsyncIterator[int]) -> AsyncIterator[int]:
    async for x in items:
        yield x + 1


async def _h_odd(items: AsyncIterator[int]) -> AsyncIterator[int]:
    async for x in items:
        if x % 2 == 1:
            yield x


async def _h_not3(items: AsyncIterator[int]) -> AsyncIterator[int]:
    async for x in items:
        if x % 3 != 0:
            yield x


async def _h_double(items: AsyncIterator[int]) -> AsyncIterator[int]:
    async for x in items:
        yield x * 2


def build(n: int) -> Pipeline[Any, Any]:
    """The subject pipeline, fused (by the core, or here while the core does not yet call ``fuse_with``)."""
    pipeline: Pipeline[Any, Any] = numbers(n) | map(_inc) | filter(_odd) | map(_double) | filter(_not3) | map(_inc)
    if len(pipeline.stages) > 2:
        pipeline = Pipeline(*fuse_stages(pipeline.stages))
    return pipeline


def run(quick: bool) -> list[Result]:
    """Run the fused-chain scenario (100,000 ints in quick mode)."""
    n = 100_000 if quick else 1_000_000
    repeat = 3 if quick else 5
    pipeline = build(n)
    expected = sum(1 for i in range(n) if (i + 1) % 2 == 1 and ((i + 1) * 2) % 3 != 0)

    async def subject() -> None:
        count = 0
        async with pipeline.stream() as items:
            async for _ in items:
                count += 1
        assert count == expected

    async def hand() -> None:
        g = _h_inc(_h_not3(_h_double(_h_odd(_h_inc(_numbers(n))))))
        count = 0
        async for _ in g:
            count += 1
        assert count == expected

    results = compare(
        f"5 map/filter operators over {n:,} ints",
        ("talkpipe_async operators (fused)", measure_async(subject)),
        [("hand-chained async generators", measure_async(hand))],
        repeat=repeat,
        targets={"hand-chained async generators": ("<= 1.0", lambda r: r <= 1.0)},
    )

    try:
        from aiostream import pipe, stream
    except ImportError:  # pragma: no cover - aiostream is a dev dependency
        return results

    m = n // 10 if quick else n  # aiostream is slow: a tenth of the items in quick mode

    async def aio() -> None:
        xs = stream.iterate(range(m)) | pipe.map(_inc) | pipe.filter(_odd) | pipe.map(_double)
        xs = xs | pipe.filter(_not3) | pipe.map(_inc)
        count = 0
        async with xs.stream() as items:
            async for _ in items:
                count += 1

    small = build(m)

    async def subject_small() -> None:
        async with small.stream() as items:
            async for _ in items:
                pass

    results += compare(
        f"5 map/filter operators over {m:,} ints",
        ("talkpipe_async operators (fused)", measure_async(subject_small)),
        [("aiostream pipe.map/pipe.filter", measure_async(aio))],
        repeat=repeat if quick else 2,
        targets={"aiostream pipe.map/pipe.filter": ("<= 0.10", lambda r: r <= 0.10)},
    )
    return results


if __name__ == "__main__":
    import sys

    for r in run(quick="--quick" in sys.argv):
        print(f"{r.scenario}: {r.subject_s:.3f}s vs {r.baseline}: {r.baseline_s:.3f}s", end=" ")
        print(f"ratio {r.ratio:.3f} target {r.target} met={r.met}")
