"""Compiling one run (``talkpipe_async._core._build``): where metadata plumbing goes, what each stage is named by.

Pinned from the behaviour a user sees: which stages get metadata and where the rest is dropped and counted
(``metadata_dropped``), that an error is attributed to the stage that raised it whatever way the stage runs (inline,
fused sync, worker thread), and that statistics see every stage, sync and async, counted or timed.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import pytest

from talkpipe_async import AbstractSegment, Flush, error_context, segment
from talkpipe_async.operators import cast
from tests.helpers.sources import sync_fails_on, sync_seen_by

pytestmark = pytest.mark.anyio


@segment(process_metadata=True)
async def seen_by(items: AsyncIterator[Any], log: list[Any]) -> AsyncIterator[Any]:
    async for x in items:
        log.append(x)
        yield x


@segment
async def add(items: AsyncIterator[int], n: int = 1) -> AsyncIterator[int]:
    async for x in items:
        yield x + n


async def test_metadata_after_the_last_taker_is_dropped_and_counted_when_the_outlet_does_not_take_it() -> None:
    """A stage that takes metadata sees it; the plain stage after it, the last one, and the outlet do not: the
    metadata is dropped there (and counted), not sent on toward a receiver that does not exist."""
    log: list[Any] = []
    f0, f1 = Flush(n=0), Flush(n=1)
    run = (seen_by(log=log) | add(n=0)).stream([f0, 1, f1, 2])
    async with run as items:
        assert [x async for x in items] == [1, 2]
    assert log == [f0, 1, f1, 2]
    assert run.metadata_dropped == 2


@segment
def slow_sync(items: Iterable[int]) -> Iterator[int]:
    for x in items:
        time.sleep(0.005)  # the stage's own work, which the timed statistics measure
        yield x


async def test_timed_statistics_measure_a_fused_sync_stage() -> None:
    """``stats="timed"`` measures the time of a sync stage fused into the run inline, as its own time."""
    run = (slow_sync() | add(n=0)).stream(range(4), stats="timed")
    async with run as items:
        assert [x async for x in items] == [0, 1, 2, 3]
    by = {s.name: s for s in run.stats().stages}
    assert list(by) == ["input", "slow_sync", "add"]
    assert by["slow_sync"].items_out == 4 and by["slow_sync"].items_in == 4
    assert by["slow_sync"].time_s >= 0.015


async def test_statistics_read_a_stages_own_skipped_counter() -> None:
    """A stage that counts the items it skipped (``skipped``) has that figure in its statistics."""
    run = cast(int, on_error="skip").stream(["1", "x", "2", "y", "z"], stats=True)
    async with run as items:
        assert [x async for x in items] == [1, 2]
    by = {s.name: s for s in run.stats().stages}
    assert by["cast(int)"].skipped == 3
    assert by["input"].skipped is None


def test_a_sync_stage_that_takes_metadata_sees_it_in_iter_sync() -> None:
    """In a chain of plain generators, a stage that takes metadata gets it in its place, also after a stage that
    takes it too."""
    first: list[Any] = []
    second: list[Any] = []
    f = Flush(n=0)
    out = list((sync_seen_by(log=first) | sync_seen_by(log=second)).iter_sync([1, f, 2], metadata=True))
    assert first == second == out == [1, f, 2]


async def test_a_fused_sync_stage_that_takes_metadata_sees_it_in_a_run() -> None:
    log: list[Any] = []
    f = Flush(n=0)
    assert await (sync_seen_by(log=log) | add(n=0)).collect([1, f, 2]) == [1, 2]
    assert log == [1, f, 2]


@segment
def sync_plain_seen_by(items: Iterable[Any], log: list[Any]) -> Iterator[Any]:
    for x in items:
        log.append(x)
        yield x


def test_a_plain_sync_stage_after_one_that_takes_metadata_never_sees_it() -> None:
    """Metadata a stage passed on goes around the plain stage after it, and comes out at the end when asked for."""
    first: list[Any] = []
    second: list[Any] = []
    f = Flush(n=0)
    chain = sync_seen_by(log=first) | sync_plain_seen_by(log=second)
    assert list(chain.iter_sync([1, f, 2], metadata=True)) == [1, f, 2]
    assert first == [1, f, 2] and second == [1, 2]
    second.clear()
    assert list(chain.iter_sync(range(1, 3), metadata=True)) == [1, 2] and second == [1, 2]


def test_an_error_in_a_sync_stage_names_it_in_iter_sync() -> None:
    """An error raised in a plain-generator chain names the stage that raised it, whatever input it reads."""
    with pytest.raises(ValueError, match="bad item 2") as info:
        list(sync_fails_on(bad=2).iter_sync([1, 2, 3]))
    ctx = error_context(info.value)
    assert ctx is not None and ctx.segment == "sync_fails_on"
    for data in ([1, 2, 3], range(1, 4)):
        with pytest.raises(ValueError, match="bad item 4") as info:
            list((sync_double() | sync_fails_on(bad=4)).iter_sync(data))
        ctx = error_context(info.value)
        assert ctx is not None and ctx.segment == "sync_fails_on"


async def test_an_error_in_a_fused_sync_stage_names_it_in_a_run() -> None:
    for data in ([1, 2, 3], range(1, 4)):
        with pytest.raises(ValueError, match="bad item 4") as info:
            await (sync_double() | sync_fails_on(bad=4) | add(n=0)).collect(data)
        ctx = error_context(info.value)
        assert ctx is not None and ctx.segment == "sync_fails_on"


@segment
def sync_double(items: Iterable[int]) -> Iterator[int]:
    for x in items:
        yield 2 * x


class SkipOdd(AbstractSegment[int, int]):
    """A sync stage that counts what it skips, as a user's stage may (``skipped`` is read by the statistics)."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped = 0

    def transform(self, items: Iterable[int]) -> Iterator[int]:
        for x in items:
            if x % 2:
                self.skipped += 1
                continue
            yield x


async def test_statistics_of_fused_sync_stages_name_them_and_read_their_counters() -> None:
    """Statistics of sync stages fused inline (``stats=True``): each under its own name, its items counted, and a
    stage's own ``skipped`` counter read."""
    run = (sync_double() | SkipOdd() | sync_fails_on(bad=-1) | add(n=0)).stream([1, 2, 3], stats=True)
    async with run as items:
        assert [x async for x in items] == [2, 4, 6]
    stages = run.stats().stages
    assert [s.name for s in stages] == ["input", "sync_double", "SkipOdd", "sync_fails_on", "add"]
    assert [s.items_out for s in stages] == [3, 3, 3, 3, 3]
    assert [s.skipped for s in stages] == [None, None, 0, None, None]
    run = (SkipOdd() | add(n=0)).stream(range(5), stats=True)
    async with run as items:
        assert [x async for x in items] == [0, 2, 4]
    assert [s.skipped for s in run.stats().stages] == [None, 2, None]
    run = (SkipOdd() | add(n=0)).stream([0, 1, 2, 3, 4, Flush()], stats=True)  # a list may carry metadata
    async with run as items:
        assert [x async for x in items] == [0, 2, 4]
    assert [s.skipped for s in run.stats().stages] == [None, 2, None]


def test_iter_sync_without_metadata_strips_what_the_last_stage_passed_on() -> None:
    """``iter_sync(metadata=False)``: metadata that a stage taking it passed on is dropped at the end, not yielded."""
    log: list[Any] = []
    f = Flush(n=0)
    assert list(sync_seen_by(log=log).iter_sync([1, f, 2, Flush(n=1)])) == [1, 2]
    assert log[:3] == [1, f, 2] and len(log) == 4


@segment(process_metadata=True)
def flush_after_each(items: Iterable[Any]) -> Iterator[Any]:
    for x in items:
        yield x
        yield Flush(n=x)


def test_metadata_a_sync_stage_creates_goes_around_the_plain_stage_after_it() -> None:
    """Input that cannot hold metadata (a range), then a stage that takes metadata and makes its own: the plain
    stage after it never sees that metadata, which still comes out at the end when asked for."""
    seen: list[Any] = []
    chain = flush_after_each() | sync_plain_seen_by(log=seen)
    out = list(chain.iter_sync(range(2), metadata=True))
    assert seen == [0, 1]
    assert out == [0, Flush(n=0), 1, Flush(n=1)]
