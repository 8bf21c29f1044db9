"""Core plumbing at its exact edges: ``|`` with a plain callable on the left, the order of metadata in
``iter_sync(metadata=True)``, the exact read-ahead of every buffered stage, and the closing of the
generator that ``on_error`` wraps.

Each test pins a figure or an order exactly, so that changing the behaviour by one item fails it.
Read-ahead is measured with a source that never awaits (it runs until a bound stops it) and read
once every task of the loop is blocked (``anyio.wait_all_tasks_blocked``): the count is then final.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterable, Iterator

import anyio
import pytest

from talkpipe_async import CallableSegment, Flush, Pipeline, segment, source
from talkpipe_async._core import _threads
from talkpipe_async.operators import batch, buffer, concurrent_map, on_error

pytestmark = pytest.mark.anyio


@segment
async def add(items: AsyncIterator[int], n: int = 1) -> AsyncIterator[int]:
    async for x in items:
        yield x + n


def triple(items: Iterable[int]) -> Iterator[int]:
    """A TalkPipe-style segment: a plain callable from an iterable to an iterator."""
    return (3 * x for x in items)


# --- a plain callable on the left of | ---------------------------------------------------------


async def test_callable_on_the_left_of_a_segment() -> None:
    p = triple | add(n=1)
    assert isinstance(p, Pipeline)
    assert [type(s) for s in p.stages] == [CallableSegment, add]
    assert p.stages[0].label == "triple"
    assert await p.collect([1, 2]) == [4, 7]  # (3x) + 1, not 3(x + 1)


async def test_callable_on_the_left_of_a_pipeline() -> None:
    p = triple | (add(n=1) | add(n=10))
    assert [type(s) for s in p.stages] == [CallableSegment, add, add]
    assert await p.collect([1, 2]) == [14, 17]
    r = (lambda items: (x - 1 for x in items)) | Pipeline(triple)
    assert [type(s) for s in r.stages] == [CallableSegment, CallableSegment]
    assert await r.collect([1, 2]) == [0, 3]


# --- the exact order of metadata in iter_sync(metadata=True) ---------------------------------


@segment
def keep_odd(items: Iterable[int]) -> Iterator[int]:
    for x in items:
        if x % 2:
            yield x


@segment
def double(items: Iterable[int]) -> Iterator[int]:
    for x in items:
        yield 2 * x


def test_iter_sync_metadata_comes_out_before_the_next_output() -> None:
    f0, f1 = Flush(n=0), Flush(n=1)
    out = list((keep_odd() | double()).iter_sync([1, f0, 2, f1, 3], metadata=True))
    # keep_odd: 1, (2 dropped), 3; both flushes went past it and come out just before its next output (3),
    # in their order; double does the same with them before its output for 3.
    assert out == [2, f0, f1, 6]
    assert out[1] is f0 and out[2] is f1


def test_iter_sync_metadata_after_the_last_output_comes_out_at_the_end() -> None:
    f0, f1 = Flush(n=0), Flush(n=1)
    out = list((keep_odd() | double()).iter_sync([1, f0, 2, f1], metadata=True))
    assert out == [2, f0, f1]
    out = list((keep_odd() | double()).iter_sync([f0, 2, 4, f1], metadata=True))
    assert out == [f0, f1]
    assert list((keep_odd() | double()).iter_sync([1, f0, 3], metadata=False)) == [2, 6]


# --- exact read-ahead of the buffered stages -------------------------------------------------


class Count:
    def __init__(self) -> None:
        self.n = 0


@source
async def counting(produced: Count) -> AsyncIterator[int]:
    """0, 1, 2 ... without ever awaiting: it runs until a bound downstream stops it."""
    i = 0
    while True:
        produced.n += 1
        yield i
        i += 1


@pytest.mark.parametrize("n", [0, 1, 5])
async def test_buffer_reads_ahead_exactly_n(n: int) -> None:
    produced = Count()
    async with (counting(produced=produced) | buffer(n)).stream() as items:
        await anyio.wait_all_tasks_blocked()
        assert produced.n == 0, "nothing is read before the first item is asked for"
        for k in range(1, 4):
            assert await items.__anext__() == k - 1
            await anyio.wait_all_tasks_blocked()
            assert produced.n == k + n


async def test_concurrent_map_holds_exactly_its_window() -> None:
    produced = Count()
    go = anyio.Event()
    calls = Count()

    async def slow(x: int) -> int:
        calls.n += 1
        await go.wait()
        return x

    async with (counting(produced=produced) | concurrent_map(slow, limit=3, window=7)).stream() as items:
        first = items.__anext__()
        async with anyio.create_task_group() as tg:

            async def take() -> None:
                assert await first == 0

            tg.start_soon(take)
            await anyio.wait_all_tasks_blocked()
            assert (produced.n, calls.n) == (7, 3), "window 7 items read, limit 3 calls running"
            go.set()
        await anyio.wait_all_tasks_blocked()
        assert produced.n == 7 + 1, "one item delivered: one more read"
        assert [await items.__anext__() for _ in range(4)] == [1, 2, 3, 4]
        await anyio.wait_all_tasks_blocked()
        assert produced.n == 7 + 5


@pytest.mark.parametrize("size", [1, 3])
async def test_batch_with_timeout_reads_ahead_exactly_size(size: int) -> None:
    produced = Count()
    async with (counting(produced=produced) | batch(size, timeout=60)).stream() as items:
        assert await items.__anext__() == list(range(size))
        await anyio.wait_all_tasks_blocked()
        # the batch handed out, `size` items waiting in the feed's channel, one in the feeder's hand
        assert produced.n == size + size + 1
        assert await items.__anext__() == list(range(size, 2 * size))
        await anyio.wait_all_tasks_blocked()
        assert produced.n == 2 * size + size + 1


async def test_thread_stage_inbox_holds_exactly_one_batch(no_latency_flush: None) -> None:
    produced = Count()
    gate = threading.Event()

    @segment(blocking=True)
    def held(items: Iterable[int]) -> Iterator[int]:
        gate.wait()  # the worker holds before it reads any input
        yield from items

    try:
        async with (counting(produced=produced) | held()).stream() as items:
            await anyio.wait_all_tasks_blocked()
            assert produced.n == _threads.DEFAULT_BATCH + 1, "the inbox's batch, and one item in the feeder's hand"
            gate.set()
            assert await items.__anext__() == 0
    finally:
        gate.set()


async def test_thread_stage_outbox_holds_exactly_two_batches_and_one_waiting(no_latency_flush: None) -> None:
    made = Count()

    @source(blocking=True)
    def made_in_thread() -> Iterator[int]:
        i = 0
        while True:
            made.n += 1
            yield i
            i += 1

    size = _threads.DEFAULT_BATCH
    run = made_in_thread().stream()
    async with run as items:
        outbox = run._build.threads[0].outbox  # type: ignore[union-attr]
        await outbox.wait_blocked_put()  # the worker waits with its third batch: the thread made no more
        assert (len(outbox), made.n) == (2 * size, 3 * size)
        assert await items.__anext__() == 0


# --- on_error closes the generator it wraps ----------------------------------------------------


@segment
async def recorded(items: AsyncIterator[int], log: list[str], fail_on: int = -1) -> AsyncIterator[int]:
    log.append("started")
    try:
        async for x in items:
            if x == fail_on:
                raise ValueError(f"bad {x}")
            yield x
    finally:
        await anyio.lowlevel.checkpoint()
        log.append("closed")
        log.append(f"in task {anyio.get_current_task().id}")


async def test_on_error_closes_the_inner_generator_when_the_consumer_breaks() -> None:
    log: list[str] = []
    produced = Count()
    async with (counting(produced=produced) | on_error(recorded(log=log), "skip")).stream() as items:
        async for x in items:
            if x == 2:
                break
    # closed by the wrapper, in the consumer's task, before the next statement (not later by a finalizer task)
    assert log == ["started", "closed", f"in task {anyio.get_current_task().id}"]


async def test_on_error_closes_each_inner_generator_before_starting_the_next() -> None:
    log: list[str] = []
    out = await (add(n=0) | on_error(recorded(log=log, fail_on=2), "skip")).collect([0, 1, 2, 3, 4])
    assert out == [0, 1, 3, 4]
    assert [entry for entry in log if not entry.startswith("in task")] == ["started", "closed", "started", "closed"]
