"""Core chain costs (issue 2): user segments, metadata flowing, the no-loop sync path."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from typing import Any

from talkpipe_async import Flush, segment

from ._harness import Result, compare, measure_async

__all__ = ["run"]


async def _inc(items: AsyncIterator[int]) -> AsyncIterator[int]:
    async for x in items:
        yield x + 1


def _inc_sync(items: Iterable[int]) -> Iterator[int]:
    for x in items:
        yield x + 1


async def _numbers(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


async def _numbers_with_flush(n: int, every: int) -> AsyncIterator[Any]:
    for i in range(n):
        if i % every == 0:
            yield Flush()
        yield i


inc = segment(_inc)
inc_sync = segment(_inc_sync)


@segment(process_metadata=True)
async def passthrough(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """Metadata-aware last stage (receives the Flush items)."""
    async for x in items:
        yield x


def _with_flush_list(n: int, every: int) -> list[Any]:
    out: list[Any] = []
    for i in range(n):
        if i % every == 0:
            out.append(Flush())
        out.append(i)
    return out


def chain_subject(n: int, **options: Any) -> Callable[[], Coroutine[Any, Any, None]]:
    """Five ``@segment`` stages over ``range(n)``, consumed with ``stream(**options)``."""
    chain5 = inc() | inc() | inc() | inc() | inc()

    async def subject() -> None:
        async with chain5.stream(range(n), **options) as items:
            async for _ in items:
                pass

    return subject


def chain_hand(n: int) -> Callable[[], Coroutine[Any, Any, None]]:
    """The same five generators chained by hand (the floor)."""

    async def hand() -> None:
        g: AsyncIterator[int] = _numbers(n)
        for _ in range(5):
            g = _inc(g)
        async for _ in g:
            pass

    return hand


def sync_subject(n: int) -> Callable[[], None]:
    """Five sync ``@segment`` stages through ``iter_sync()`` (no event loop)."""
    sync5 = inc_sync() | inc_sync() | inc_sync() | inc_sync() | inc_sync()

    def subject() -> None:
        for _ in sync5.iter_sync(range(n)):
            pass

    return subject


def sync_plain(n: int) -> Callable[[], None]:
    """The same five plain generators chained by hand."""

    def plain() -> None:
        g: Iterable[int] = range(n)
        for _ in range(5):
            g = _inc_sync(g)
        for _ in g:
            pass

    return plain


def run(quick: bool) -> list[Result]:
    """Run the core scenarios; 1,000,000 ints in full mode."""
    n = 100_000 if quick else 1_000_000
    repeat = 3 if quick else 5
    subject, hand = chain_subject(n), chain_hand(n)

    results = compare(
        "5 @segment async generators, no metadata",
        ("talkpipe_async", measure_async(subject)),
        [("hand-chained async generators", measure_async(hand))],
        repeat=repeat,
        targets={"hand-chained async generators": ("<= 1.10", lambda r: r <= 1.10)},
    )

    subject_stats, subject_timed = chain_subject(n, stats=True), chain_subject(n, stats="timed")

    results += compare(
        "5 @segment async generators, statistics on (stats=True; stats='timed')",
        ("talkpipe_async stats=True", measure_async(subject_stats)),
        [("talkpipe_async stats off", measure_async(subject)), ("stats='timed'", measure_async(subject_timed))],
        repeat=repeat if quick else 21,  # a 5% bar on a 4-5% cost: more samples for a steadier median
        targets={"talkpipe_async stats off": ("<= 1.05", lambda r: r <= 1.05)},
    )

    flushed = _with_flush_list(n, 1000)
    chain_meta = inc() | inc() | inc() | inc() | inc()

    async def subject_meta() -> None:
        async with chain_meta.stream(flushed, metadata=True) as items:
            async for _ in items:
                pass

    results += compare(
        "5 @segment async generators, one Flush per 1,000 items",
        ("talkpipe_async", measure_async(subject_meta)),
        [("hand-chained async generators", measure_async(hand))],
        repeat=repeat,
        targets={"hand-chained async generators": ("<= 2.0", lambda r: r <= 2.0)},
    )

    results += compare(
        "5 sync segments, no-loop path",
        ("talkpipe_async iter_sync", sync_subject(n)),
        [("plain chained generators", sync_plain(n))],
        repeat=repeat,
        targets={"plain chained generators": ("<= 1.15", lambda r: r <= 1.15)},
    )
    return results


if __name__ == "__main__":
    for r in run(quick=False):
        print(f"{r.scenario}: {r.subject_s:.3f}s vs {r.baseline}: {r.baseline_s:.3f}s")
        print(f"    ratio {r.ratio:.3f}, target {r.target}, met={r.met}")
