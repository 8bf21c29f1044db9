"""Run statistics (``talkpipe_async._core._stats``): what ``stream(stats=...)`` counts and what a snapshot holds.

Pinned from the promises of the observability page: per stage, ``items_out`` is exactly the items it handed on and
``items_in`` the figure of the stage before it (0 for the first); ``errors`` is a count (0, not missing);
``skipped`` is the stage's own integer counter or ``None``; the buffer figures are ``None`` for a stage without a
buffer; with ``stats="timed"`` each ``time_s`` is the stage's own time (its wait minus the stage before it), never
more than the run's elapsed time; ``running`` is ``True`` during the run and ``False`` after; ``format()`` is a
fixed plain-text table; and ``on_stats`` gets the final snapshot once the run has ended.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from talkpipe_async import AbstractSegment, Flush, RunStats, StageSnapshot, segment, source
from talkpipe_async.operators import cast
from tests.helpers.sources import Countdown  # not an async generator: counted by the generic step

pytestmark = pytest.mark.anyio

MODES = [True, "timed"]


@segment
async def add(items: AsyncIterator[int], n: int = 1) -> AsyncIterator[int]:
    async for x in items:
        yield x + n


@segment
def sync_keep_even(items: Iterable[int]) -> Iterator[int]:
    for x in items:
        if x % 2 == 0:
            yield x


@source
async def count_to(n: int) -> AsyncIterator[int]:
    for i in range(n):
        await anyio.lowlevel.checkpoint()
        yield i


def plain(s: StageSnapshot) -> tuple[str, int, int, int, int | None, int | None, int | None]:
    """A snapshot's figures other than the time."""
    return (s.name, s.items_in, s.items_out, s.errors, s.skipped, s.buffer_fill, s.buffer_capacity)


async def consume(run: Any, stop_after: int | None = None) -> list[Any]:
    got: list[Any] = []
    async with run as items:
        async for x in items:
            got.append(x)
            if stop_after is not None and len(got) == stop_after:
                break
    return got


@pytest.mark.parametrize("mode", MODES)
async def test_each_stage_counts_exactly_what_it_handed_on(speedups: str, mode: Any) -> None:
    """Exact ``items_in`` / ``items_out`` per stage for every kind of input (list, range, tuple, a list iterator, a
    sync generator, an async iterator that is not a generator, an empty list) through a sync stage and an async one,
    counted or timed; the first stage's ``items_in`` is 0; errors are 0 and ``skipped`` is ``None``; only a stage
    run in a worker thread (the sync stage after an async input) reports a buffer, empty at the end."""
    cases: list[tuple[Any, int]] = [
        (list(range(6)), 6),
        (range(6), 6),
        (tuple(range(6)), 6),
        (iter(list(range(6))), 6),
        ((x for x in range(6)), 6),
        (Countdown(6), 6),
        ([], 0),
    ]
    for data, n in cases:
        threaded = isinstance(data, Countdown)
        run = (sync_keep_even() | add(n=0)).stream(data, stats=mode)
        got = await consume(run)
        kept = (n + 1) // 2
        assert sorted(got) == [0, 2, 4][:kept]
        buffer = (0, 3 * 256) if threaded else (None, None)
        assert [plain(s) for s in run.stats().stages] == [
            ("input", 0, n, 0, None, None, None),
            ("sync_keep_even", n, kept, 0, None, *buffer),
            ("add", kept, kept, 0, None, None, None),
        ], data
    run = (count_to(n=5) | add(n=0)).stream(stats=mode)
    assert await consume(run) == [0, 1, 2, 3, 4]
    assert [plain(s) for s in run.stats().stages] == [
        ("count_to", 0, 5, 0, None, None, None),
        ("add", 5, 5, 0, None, None, None),
    ]


@pytest.mark.parametrize("mode", MODES)
async def test_an_input_read_in_part_counts_only_what_was_taken(speedups: str, mode: Any) -> None:
    """A list, range or tuple input that the run stops reading counts the items taken from it, not its length;
    mid-run, a snapshot holds the items handed on so far."""
    for data in (list(range(10)), range(10), tuple(range(10))):
        run = add(n=0).stream(data, stats=mode)
        async with run as items:
            async for x in items:
                if x == 2:
                    snap = run.stats()
                    assert snap.running is True
                    assert [s.items_out for s in snap.stages] == [3, 3], data
                    break
        assert [(s.items_in, s.items_out) for s in run.stats().stages] == [(0, 3), (3, 3)], data


async def test_running_elapsed_and_dropped_metadata() -> None:
    """``running`` is exactly ``True`` during the run and ``False`` after; ``elapsed_s`` is the run's time so far
    (between 0 and the time measured around it); ``metadata_dropped`` counts the metadata no stage took."""
    before = time.monotonic()
    run = add(n=0).stream([1, Flush(n=0), 2, Flush(n=1)], stats=True)
    async with run as items:
        assert [x async for x in items] == [1, 2]
        during = run.stats()
    after = time.monotonic()
    snap = run.stats()
    assert during.running is True and snap.running is False
    assert 0.0 <= during.elapsed_s <= after - before
    assert during.elapsed_s <= snap.elapsed_s < 60
    assert snap.metadata_dropped == 2 and isinstance(snap.metadata_dropped, int)
    first = snap.stages[0]
    assert (first.name, first.items_in, first.errors, first.skipped, first.buffer_fill, first.buffer_capacity) == (
        "input",
        0,
        0,
        None,
        None,
        None,
    )


async def test_elapsed_time_stops_when_the_run_ends() -> None:
    """After the run, ``elapsed_s`` is the run's duration: it lies within the time measured around the run and does
    not grow with later calls of ``stats()`` (a rate computed from it would otherwise keep falling)."""
    before = time.monotonic()
    run = add(n=0).stream([1, 2], stats=True)
    async with run as items:
        assert [x async for x in items] == [1, 2]
    after = time.monotonic()
    await anyio.sleep(0.05)
    snap = run.stats()
    assert snap.running is False
    assert snap.elapsed_s <= after - before, snap.elapsed_s


class KeepsAListOfSkipped(AbstractSegment[int, int]):
    """A user's stage whose ``skipped`` attribute is not a count (a list of what it left out)."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped: list[int] = []

    def transform(self, items: Iterable[int]) -> Iterator[int]:
        for x in items:
            if x < 0:
                self.skipped.append(x)
                continue
            yield x


async def test_skipped_is_the_stages_own_count_or_none() -> None:
    """``skipped`` is read from the stage's own integer ``skipped`` counter (``on_error="skip"``); a ``skipped``
    attribute that is not an integer is not reported; stages without one report ``None``."""
    run = (cast(int, on_error="skip") | add(n=0)).stream(["1", "x", "2", "y", "z"], stats=True)
    assert await consume(run) == [1, 2]
    assert [(s.name, s.skipped, s.items_out) for s in run.stats().stages] == [
        ("input", None, 5),
        ("cast(int)", 3, 2),
        ("add", None, 2),
    ]
    run = (KeepsAListOfSkipped() | add(n=0)).stream([1, -1, 2], stats=True)
    assert await consume(run) == [1, 2]
    assert [(s.name, s.skipped) for s in run.stats().stages] == [
        ("input", None),
        ("KeepsAListOfSkipped", None),
        ("add", None),
    ]


@segment
async def boom_on(items: AsyncIterator[int], bad: int) -> AsyncIterator[int]:
    async for x in items:
        if x == bad:
            raise ValueError(f"bad item {x}")
        yield x


async def test_errors_are_counted_on_the_stage_that_raised() -> None:
    """``errors`` is 1 on the stage that raised and exactly 0 (an int) on every other stage."""
    run = (add(n=0) | boom_on(bad=3) | add(n=0)).stream(range(10), stats=True)
    with pytest.raises(ValueError, match="bad item 3"):
        await consume(run)
    stages = run.stats().stages
    assert [(s.name, s.errors, s.items_out) for s in stages] == [
        ("input", 0, 4),
        ("add", 0, 4),
        ("boom_on", 1, 3),
        ("add", 0, 3),
    ]
    assert all(type(s.errors) is int for s in stages)


@source
async def slow_numbers(n: int, pause: float) -> AsyncIterator[int]:
    for i in range(n):
        await anyio.sleep(pause)
        yield i
    await anyio.sleep(pause)  # the wait for the end of the stream counts too


@source
def slow_sync_numbers(n: int, pause: float) -> Iterator[int]:
    for i in range(n):
        time.sleep(pause)  # the stage's own work, which the timed statistics measure
        yield i
    time.sleep(pause)  # the wait for the end of the stream counts too


#: How early an event loop's timer may wake, measured on the statistics' clock.
TIMER_SLACK = 0.001


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_timed_statistics_give_each_stage_its_own_time(kind: str) -> None:
    """``stats="timed"``: the first stage's time is all the time spent waiting for its items (every item's pause
    and the pause before the end, summed), each later stage gets its own time only (its wait minus the stage
    before it, so a trivial stage after a slow one shows less than the slow one), and no stage's time exceeds the
    run's elapsed time."""
    n, pause = 5, 0.01
    src = slow_numbers(n=n, pause=pause) if kind == "async" else slow_sync_numbers(n=n, pause=pause)
    run = (src | add(n=0)).stream(stats="timed")
    before = time.perf_counter()
    assert await consume(run) == list(range(n))
    wall = time.perf_counter() - before
    snap = run.stats()
    first, second = snap.stages
    assert (first.items_out, second.items_in, second.items_out) == (n, n, n)
    # libuv (uvloop) keeps a millisecond clock that it updates once per loop turn, so a sleep can end up to a
    # millisecond before its time on the precise clock the statistics use.
    assert (n + 1) * (pause - TIMER_SLACK) <= first.time_s <= wall, snap.format()
    assert 0.0 <= second.time_s < first.time_s, snap.format()
    assert first.time_s + second.time_s <= snap.elapsed_s, snap.format()


async def test_counted_statistics_report_the_sampled_time_not_the_wait() -> None:
    """``stats=True`` reports the sampled running time: a stage that only waits (sleeps) gains nothing, and a short
    run's figures stay far below a second."""
    run = (slow_numbers(n=3, pause=0.01) | add(n=0)).stream(stats=True)
    assert await consume(run) == [0, 1, 2]
    snap = run.stats()
    assert all(0.0 <= s.time_s < 0.5 for s in snap.stages), snap.format()


def test_format_is_a_fixed_table() -> None:
    """``format()``: a header, one line per stage (name cut to 24 characters, counts right-aligned, time to the
    millisecond, ``fill/capacity`` for a stage with a buffer, blank without one), then the elapsed time and dropped
    metadata, joined by newlines."""
    snap = RunStats(
        stages=(
            StageSnapshot("input", 0, 12, 0, None, 0.0, None, None),
            StageSnapshot("a_stage_with_a_very_long_name", 12, 7, 2, 5, 1.23456, 3, 16),
        ),
        elapsed_s=2.5,
        metadata_dropped=4,
        running=False,
    )
    assert snap.format().split("\n") == [
        "stage                            in        out errors    time s      buffer",
        "input                             0         12      0     0.000            ",
        "a_stage_with_a_very_long         12          7      2     1.235        3/16",
        "elapsed 2.500 s, metadata dropped 4",
    ]


async def test_on_stats_gets_the_final_snapshot_after_the_run() -> None:
    """``on_stats`` without ``stats_every`` is called once, as the run ends, with the final figures and
    ``running=False``; an error in the hook leaves the ``async with``."""
    seen: list[RunStats] = []
    run = (count_to(n=4) | add(n=0)).stream(stats=True, on_stats=seen.append)
    async with run as items:
        assert [x async for x in items] == [0, 1, 2, 3]
        assert seen == []
    assert len(seen) == 1 and seen[0].running is False
    assert [(s.name, s.items_in, s.items_out) for s in seen[0].stages] == [("count_to", 0, 4), ("add", 4, 4)]

    def failing(snap: RunStats) -> None:
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        await consume((count_to(n=2) | add(n=0)).stream(stats=True, on_stats=failing))
