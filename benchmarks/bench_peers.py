"""The 5-stage chain against the async peers, with equal work.

Each peer runs the chain its own way over the same source as our subject:
aiostream's ``stream.iterate(range(n)) | pipe.map(...)`` x5 against our
caller-input form (five ``@segment`` stages over ``stream(range(n))``);
asyncstdlib's ``map`` x5 over an async generator against our README form
(an ``@source`` async generator and five ``@segment`` stages); TalkPipe 1.2's
five sync segments over ``range(n)`` against ours through ``iter_sync()``
(TalkPipe is optional: its install is heavy).  The per-loop floors (hand
written generators) are in ``bench_core``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Iterator
from typing import Any

from ._harness import Result, compare, measure_async
from .bench_core import _numbers, drain, inc, inc_sync, readme_pipeline

__all__ = ["run"]


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run(quick: bool) -> list[Result]:
    """Our forms against aiostream, asyncstdlib and TalkPipe 1.2."""
    n = 100_000 if quick else 1_000_000
    repeat = 3 if quick else 5
    results: list[Result] = []
    if _has("aiostream"):
        from aiostream import pipe, stream

        def plus1(x: int) -> int:
            return x + 1

        async def aiostream_chain() -> None:
            xs = stream.iterate(range(n))
            for _ in range(5):
                xs = xs | pipe.map(plus1)
            async with xs.stream() as items:
                async for _ in items:
                    pass

        results += compare(
            "5 stages over range(n) against aiostream (asyncio)",
            ("talkpipe_async stream(range(n))", measure_async(drain(inc() | inc() | inc() | inc() | inc(), range(n)))),
            [("aiostream pipe.map x5 over stream.iterate(range(n))", measure_async(aiostream_chain))],
            repeat=repeat,
        )
    if _has("asyncstdlib"):
        import asyncstdlib as a

        async def asyncstdlib_chain() -> None:
            it: Any = _numbers(n)
            for _ in range(5):
                it = a.map(lambda x: x + 1, it)
            async for _ in it:
                pass

        results += compare(
            "source + 5 stages against asyncstdlib (asyncio)",
            ("talkpipe_async README form", measure_async(drain(readme_pipeline(n)))),
            [("asyncstdlib map x5 over an async generator", measure_async(asyncstdlib_chain))],
            repeat=repeat,
        )
    if _has("talkpipe"):
        from talkpipe.pipe.core import segment as tp_segment

        @tp_segment
        def tp_inc(items: Iterable[int]) -> Iterator[int]:
            for x in items:
                yield x + 1

        tp_chain = tp_inc() | tp_inc() | tp_inc() | tp_inc() | tp_inc()
        ours = inc_sync() | inc_sync() | inc_sync() | inc_sync() | inc_sync()

        def talkpipe_run() -> None:
            for _ in tp_chain(range(n)):
                pass

        def ours_run() -> None:
            for _ in ours.iter_sync(range(n)):
                pass

        results += compare(
            "5 sync stages over range(n) against TalkPipe 1.2",
            ("talkpipe_async iter_sync(range(n))", ours_run),
            [("TalkPipe 1.2 (sync)", talkpipe_run)],
            repeat=repeat,
        )
    else:
        print("   TalkPipe not installed: skipping the TalkPipe 1.2 baseline (pip install talkpipe to include it)")
    return results
