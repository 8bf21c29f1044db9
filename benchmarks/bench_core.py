"""Core chain costs: what users write, against hand-written code doing the same work.

Every subject is one of the forms the README shows, and every baseline has
the same number of generators fed by the same kind of source:

- **README form**: an ``@source`` async generator and five ``@segment``
  async generators, consumed with ``stream()``; baseline: the same six async
  generators chained by hand (one over ``range(n)``, five that add 1).
- **caller-input form**: five ``@segment`` stages over ``stream(range(n))``;
  baseline: an async generator over ``range(n)`` and the five hand-chained
  generators (the pipeline turns the caller's iterable into an async
  iterator with one generator: the same count).
- **one Flush every 1,000 items**: the README form whose source also
  yields a ``Flush`` every 1,000 items, consumed with ``metadata=True`` (the
  Flush goes past the five segments); baseline: the metadata-free
  hand-chained floor (the subject does more work: a strict bar).
- **statistics**: the README form with ``stats=True`` against itself with
  statistics off.
- **sync form**: a sync ``@source`` and five sync ``@segment`` generators,
  through ``iter_sync()`` (no event loop); baseline: the same six plain
  generators chained by hand.  And the same pipeline inside ``stream()``
  (an async consumer); baseline: the six plain generators consumed through
  one async generator.

All of them are CPU-bound and timed in the process's CPU time (``cpu=True``:
other work on a shared machine stays out of the figures).  The async
scenarios run on asyncio, uvloop and trio (``loops`` below);
``python -m benchmarks`` runs them on every Python it finds as well.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from typing import Any

from talkpipe_async import Flush, Pipeline, segment, source

from ._harness import Result, compare, measure_async

__all__ = ["chain_hand", "loops", "readme_pipeline", "run", "sync_pipeline"]


# ---------------------------------------------------------------- the subjects, as a user writes them


@source
async def numbers(n: int) -> AsyncIterator[int]:
    """The README's source: the ints 0..n-1."""
    for i in range(n):
        yield i


@source
async def numbers_with_flush(n: int, every: int) -> AsyncIterator[Any]:
    """The ints 0..n-1 with a Flush before every *every*-th."""
    for i in range(n):
        if i % every == 0:
            yield Flush()
        yield i


@segment
async def inc(items: AsyncIterator[int]) -> AsyncIterator[int]:
    """The README's segment: add 1."""
    async for x in items:
        yield x + 1


@source
def numbers_sync(n: int) -> Iterator[int]:
    """The sync mirror of :func:`numbers`."""
    yield from range(n)


@segment
def inc_sync(items: Iterable[int]) -> Iterator[int]:
    """The sync mirror of :func:`inc`."""
    for x in items:
        yield x + 1


def readme_pipeline(n: int) -> Pipeline[Any, Any]:
    """``numbers(n) | inc() | inc() | inc() | inc() | inc()``."""
    return numbers(n) | inc() | inc() | inc() | inc() | inc()


def sync_pipeline(n: int) -> Pipeline[Any, Any]:
    """The sync README form: ``numbers_sync(n) | inc_sync() x 5``."""
    return numbers_sync(n) | inc_sync() | inc_sync() | inc_sync() | inc_sync() | inc_sync()


def drain(pipeline: Pipeline[Any, Any], input: Any = None, **options: Any) -> Callable[[], Coroutine[Any, Any, None]]:
    """``async with pipeline.stream(input, **options) as items: async for _ in items``."""

    async def run() -> None:
        async with pipeline.stream(input, **options) as items:
            async for _ in items:
                pass

    return run


# ---------------------------------------------------------------- the same work, by hand


async def _numbers(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


async def _inc(items: AsyncIterator[int]) -> AsyncIterator[int]:
    async for x in items:
        yield x + 1


def _numbers_sync(n: int) -> Iterator[int]:
    yield from range(n)


def _inc_sync(items: Iterable[int]) -> Iterator[int]:
    for x in items:
        yield x + 1


def chain_hand(n: int) -> Callable[[], Coroutine[Any, Any, None]]:
    """Six async generators chained by hand: one over ``range(n)``, five that add 1 (the floor)."""

    async def hand() -> None:
        g: AsyncIterator[int] = _numbers(n)
        for _ in range(5):
            g = _inc(g)
        async for _ in g:
            pass

    return hand


async def _numbers_with_flush(n: int, every: int, pending: list[Flush]) -> AsyncIterator[int]:
    for i in range(n):
        if i % every == 0:
            pending.append(Flush())
        yield i


def flush_hand(n: int, every: int) -> Callable[[], Coroutine[Any, Any, None]]:
    """The hand chain with the Flush source's work: the same test per item, each Flush handed to the consumer.

    The cheapest hand-written way to deliver a marker in order past five stages that know nothing of it: the
    source puts it on a side list before the item it precedes, and the consumer looks at that list once per item
    (no stage buffers, so the marker is there when the item arrives).
    """

    async def hand() -> None:
        pending: list[Flush] = []
        g: AsyncIterator[int] = _numbers_with_flush(n, every, pending)
        for _ in range(5):
            g = _inc(g)
        async for _ in g:
            if pending:
                pending.clear()

    return hand


def sync_hand(n: int) -> Callable[[], None]:
    """Six plain generators chained by hand."""

    def hand() -> None:
        g: Iterable[int] = _numbers_sync(n)
        for _ in range(5):
            g = _inc_sync(g)
        for _ in g:
            pass

    return hand


def sync_hand_async(n: int) -> Callable[[], Coroutine[Any, Any, None]]:
    """Six plain generators chained by hand, consumed through one async generator."""

    async def adapt(items: Iterable[int]) -> AsyncIterator[int]:
        for x in items:
            yield x

    async def hand() -> None:
        g: Iterable[int] = _numbers_sync(n)
        for _ in range(5):
            g = _inc_sync(g)
        async for _ in adapt(g):
            pass

    return hand


def runs(pipeline: Pipeline[Any, Any], count: int) -> Callable[[], Coroutine[Any, Any, None]]:
    """*count* runs of *pipeline* one after the other, each drained with ``stream()`` (the fixed cost of a run)."""

    async def many() -> None:
        for _ in range(count):
            async with pipeline.stream() as items:
                async for _ in items:
                    pass

    return many


def hand_runs(count: int) -> Callable[[], Coroutine[Any, Any, None]]:
    """*count* runs of the hand-chained generators over one item."""
    hand = chain_hand(1)

    async def many() -> None:
        for _ in range(count):
            await hand()

    return many


def sync_subject(n: int) -> Callable[[], None]:
    """The sync README form through ``iter_sync()``."""
    pipeline = sync_pipeline(n)

    def subject() -> None:
        for _ in pipeline.iter_sync():
            pass

    return subject


# ---------------------------------------------------------------- the scenarios


def loops() -> list[tuple[str, str, dict[str, Any]]]:
    """(label, anyio backend, backend options) of every event loop installed."""
    found: list[tuple[str, str, dict[str, Any]]] = [("asyncio", "asyncio", {})]
    if importlib.util.find_spec("uvloop") is not None:
        found.append(("uvloop", "asyncio", {"use_uvloop": True}))
    if importlib.util.find_spec("trio") is not None:
        found.append(("trio", "trio", {}))
    return found


HAND = "hand-chained async generators (6, same work)"
HAND_FLUSH = "hand-chained async generators (6, same source, each Flush handed to the consumer)"


def _bar(limit: float) -> tuple[str, Callable[[float], bool]]:
    return f"<= {limit:.2f}", lambda r: r <= limit


def run(quick: bool) -> list[Result]:
    """The core scenarios; 1,000,000 ints in full mode (100,000 in quick mode)."""
    n = 100_000 if quick else 1_000_000
    repeat = 3 if quick else 7
    results: list[Result] = []
    for label, backend, options in loops():

        def on_loop(func: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], Any]:
            return measure_async(func, backend, **options)  # noqa: B023 - called at once, in this iteration

        hand = on_loop(chain_hand(n))
        results += compare(
            f"README form: @source + 5 @segment ({label})",
            ("talkpipe_async stream()", on_loop(drain(readme_pipeline(n)))),
            [(HAND, hand)],
            repeat=repeat,
            cpu=True,
            targets={HAND: _bar(1.05)},
        )
        results += compare(
            f"caller-input form: 5 @segment over stream(range(n)) ({label})",
            ("talkpipe_async stream(range(n))", on_loop(drain(inc() | inc() | inc() | inc() | inc(), range(n)))),
            [(HAND, hand)],
            repeat=repeat,
            cpu=True,
            targets={HAND: _bar(1.05)},
        )
        results += compare(
            f"README form, one Flush per 1,000 items, metadata=True ({label})",
            (
                "talkpipe_async stream(metadata=True)",
                on_loop(drain(numbers_with_flush(n, 1000) | inc() | inc() | inc() | inc() | inc(), metadata=True)),
            ),
            [(HAND_FLUSH, on_loop(flush_hand(n, 1000))),
             ("hand-chained async generators (6, no Flush at all; informational)", hand)],
            repeat=repeat,
            cpu=True,
            targets={HAND_FLUSH: _bar(1.15)},
        )
        results += compare(
            f"sync form inside stream(): sync @source + 5 sync @segment ({label})",
            ("talkpipe_async stream()", on_loop(drain(sync_pipeline(n)))),
            [("6 plain generators through one async generator", on_loop(sync_hand_async(n)))],
            repeat=repeat,
            cpu=True,
            targets={"6 plain generators through one async generator": _bar(1.10)},
        )
        count = 200 if quick else 1000
        results += compare(
            f"fixed cost of a run: README form over 1 item, {count} runs ({label})",
            ("talkpipe_async stream()", on_loop(runs(readme_pipeline(1), count))),
            [("hand-chained async generators over 1 item", on_loop(hand_runs(count)))],
            repeat=repeat,
            cpu=True,
        )

    results += compare(
        "README form, statistics on (stats=True; stats='timed') (asyncio)",
        ("talkpipe_async stats=True", measure_async(drain(readme_pipeline(n), stats=True))),
        [
            ("talkpipe_async stats off", measure_async(drain(readme_pipeline(n)))),
            ("stats='timed'", measure_async(drain(readme_pipeline(n), stats="timed"))),
        ],
        repeat=repeat if quick else 21,  # a 3% bar: more samples for a steadier median
        cpu=True,
        targets={"talkpipe_async stats off": _bar(1.03)},
    )
    results += compare(
        "sync form: sync @source + 5 sync @segment, iter_sync() (no event loop)",
        ("talkpipe_async iter_sync()", sync_subject(n)),
        [("6 plain generators chained by hand", sync_hand(n))],
        repeat=repeat if quick else 11,
        cpu=True,
        targets={"6 plain generators chained by hand": _bar(1.10)},
    )
    return results


if __name__ == "__main__":
    import sys

    for r in run(quick="--quick" in sys.argv):
        print(f"{r.scenario}: {r.subject_s:.3f}s vs {r.baseline}: {r.baseline_s:.3f}s")
        print(f"    ratio {r.ratio:.3f}, target {r.target}, met={r.met}")
