"""Thread stages (``talkpipe_async._core._threads``): sync code run in a worker thread, fed and drained in batches.

Pinned from the promises of the model page: every item crosses the thread boundary once and in order, for any count
around the batch size; an error raised in the thread, or upstream of it, reaches the consumer in order (after the
items before it) with its own type and the name of the stage that raised it; metadata reaches a stage that takes it
in its place, and is counted as dropped when none does; the statistics report the stage's buffer and its bound
(one batch in, two out); a lone item reaches an idle consumer without waiting for the next; the upstream is fed in a
task named after the stage; and leaving the run closes the sync generator (its ``finally`` runs, in the worker
thread) before the ``async with`` returns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from talkpipe_async import AbstractSegment, Flush, error_context, segment, source
from tests.helpers.sources import numbers

pytestmark = pytest.mark.anyio

BATCH = 256  # the documented batch: up to 256 items per hop


@segment
async def add(items: AsyncIterator[int], n: int = 1) -> AsyncIterator[int]:
    async for x in items:
        yield x + n


@segment(blocking=True)
def triple(items: Iterable[int]) -> Iterator[int]:
    for x in items:
        yield 3 * x


@source(blocking=True)
def thread_numbers(n: int) -> Iterator[int]:
    yield from range(n)


@segment(process_metadata=True)
async def seen_by(items: AsyncIterator[Any], log: list[Any]) -> AsyncIterator[Any]:
    async for x in items:
        log.append(x)
        yield x


SIZES = [0, 1, 2, BATCH - 1, BATCH, BATCH + 1, 2 * BATCH + 1, 1000]


@pytest.mark.parametrize("n", SIZES)
async def test_every_item_crosses_once_and_in_order(n: int) -> None:
    """A thread segment fed by an async stage, and a thread source, hand on every item once and in order."""
    assert await (add(n=0) | triple() | add(n=0)).collect(range(n)) == [3 * x for x in range(n)]
    assert await (thread_numbers(n=n) | add(n=0)).collect() == list(range(n))


@segment(blocking=True)
def fails_on(items: Iterable[int], bad: int) -> Iterator[int]:
    for x in items:
        if x == bad:
            raise LookupError(f"no {x}")
        yield x


@segment
async def async_fails_on(items: AsyncIterator[int], bad: int) -> AsyncIterator[int]:
    async for x in items:
        if x == bad:
            raise KeyError(f"no {x}")
        yield x


@pytest.mark.parametrize("bad", [0, 5, BATCH + 3])
async def test_an_error_in_the_thread_comes_after_the_items_before_it(bad: int) -> None:
    """An error the sync code raises reaches the consumer with its own type, after every item before it, and names
    the thread stage."""
    got: list[int] = []
    with pytest.raises(LookupError, match=f"no {bad}") as info:
        async with (add(n=0) | fails_on(bad=bad) | add(n=0)).stream(range(1000)) as items:
            async for x in items:
                got.append(x)
    assert got == list(range(bad))
    ctx = error_context(info.value)
    assert ctx is not None and ctx.segment == "fails_on"


@pytest.mark.parametrize("bad", [0, 5, BATCH + 3])
async def test_an_error_upstream_crosses_the_thread_in_order(bad: int) -> None:
    """An error raised upstream of a thread stage reaches the consumer after the items before it went through the
    thread, with its own type and the upstream stage's name."""
    got: list[int] = []
    with pytest.raises(KeyError) as info:
        async with (async_fails_on(bad=bad) | triple() | add(n=0)).stream(range(1000)) as items:
            async for x in items:
                got.append(x)
    assert got == [3 * x for x in range(bad)]
    ctx = error_context(info.value)
    assert ctx is not None and ctx.segment == "async_fails_on"


async def test_an_error_in_a_thread_source_names_it() -> None:
    """A thread source's error comes after its items, with its type and name."""

    @source(blocking=True)
    def breaks_after(n: int) -> Iterator[int]:
        yield from range(n)
        raise OSError("source gone")

    got: list[int] = []
    with pytest.raises(OSError, match="source gone") as info:
        async with (breaks_after(n=300) | add(n=0)).stream() as items:
            async for x in items:
                got.append(x)
    assert got == list(range(300))
    ctx = error_context(info.value)
    assert ctx is not None and ctx.segment == "breaks_after"


async def test_metadata_goes_past_a_thread_stage_in_its_place() -> None:
    """Metadata that a thread stage does not take is passed on, in its place among the items, to a later stage that
    takes it; a thread stage that takes metadata sees it in order; with no stage taking it, it is dropped and
    counted."""
    f0, f1 = Flush(n=0), Flush(n=1)
    log: list[Any] = []
    got = await (triple() | seen_by(log=log)).collect([1, f0, 2, f1, 3], metadata=True)
    assert log == [3, f0, 6, f1, 9]
    assert got == [3, f0, 6, f1, 9]

    @segment(blocking=True, process_metadata=True)
    def sees_all(items: Iterable[Any], log: list[Any]) -> Iterator[Any]:
        for x in items:
            log.append(x)
            yield x

    inner: list[Any] = []
    assert await (add(n=0) | sees_all(log=inner) | add(n=0)).collect([1, f0, 2]) == [1, 2]
    assert inner == [1, f0, 2]

    run = (add(n=0) | triple() | add(n=0)).stream([1, f0, 2, f1, 3])
    async with run as items:
        assert [x async for x in items] == [3, 6, 9]
    assert run.metadata_dropped == 2


async def test_statistics_report_the_buffer_and_its_bound() -> None:
    """With statistics on, a thread segment reports the items it holds and its bound: one batch in the inbox and
    two in the outbox; a thread source has no inbox. The buffer is empty once the run has ended."""
    run = (add(n=0) | triple() | add(n=0)).stream(range(10), stats=True)
    async with run as items:
        assert [x async for x in items] == [3 * x for x in range(10)]
    by = {s.name: s for s in run.stats().stages}
    assert (by["triple"].buffer_fill, by["triple"].buffer_capacity) == (0, 3 * BATCH)
    assert by["triple"].items_out == 10 and by["add"].buffer_fill is None
    run = (thread_numbers(n=5) | add(n=0)).stream(stats=True)
    async with run as items:
        assert [x async for x in items] == list(range(5))
    by = {s.name: s for s in run.stats().stages}
    assert (by["thread_numbers"].buffer_fill, by["thread_numbers"].buffer_capacity) == (0, 2 * BATCH)


async def test_a_lone_item_reaches_an_idle_consumer_at_once() -> None:
    """The worker blocks inside the sync code after producing one item; the waiting consumer still gets that item
    (and the next, one at a time) without the worker producing more."""
    taken = [threading.Event() for _ in range(4)]

    @source(blocking=True)
    def paced() -> Iterator[int]:
        for i in range(4):
            yield i
            if not taken[i].wait(10):  # a held-back item becomes a failure, not a hang
                raise TimeoutError(f"item {i} never reached the consumer")

    got: list[int] = []
    try:
        with anyio.fail_after(20):
            async with (paced() | add(n=0)).stream() as items:
                async for x in items:
                    got.append(x)
                    taken[x].set()
    finally:
        for e in taken:
            e.set()
    assert got == [0, 1, 2, 3]


async def test_the_upstream_is_fed_in_a_task_named_after_the_stage() -> None:
    """The async stages before a thread stage run in the feeding task, named ``talkpipe feeder for <stage>``."""
    names: list[str] = []

    @segment
    async def where(items: AsyncIterator[int]) -> AsyncIterator[int]:
        async for x in items:
            names.append(str(anyio.get_current_task().name))
            yield x

    assert await (where() | triple(name="tripler") | add(n=0)).collect([1, 2]) == [3, 6]
    assert names == ["talkpipe feeder for tripler"] * 2


@pytest.mark.parametrize("kind", ["segment", "source"])
async def test_leaving_early_closes_the_sync_generator_in_its_thread(kind: str) -> None:
    """A consumer that leaves early: the sync generator is closed (its ``finally`` runs, in the worker thread, not
    the loop's) before the ``async with`` returns, and it produced a bounded number of items past those taken."""
    log: list[Any] = []
    produced = 0
    loop_thread = threading.get_ident()

    def body(items: Iterable[int]) -> Iterator[int]:
        nonlocal produced
        try:
            for x in items:
                produced += 1
                yield x
        finally:
            log.append(("closed", threading.get_ident() != loop_thread))

    @segment(blocking=True)
    def through(items: Iterable[int]) -> Iterator[int]:
        yield from body(items)

    @source(blocking=True)
    def endless() -> Iterator[int]:
        def count() -> Iterator[int]:
            i = 0
            while True:
                yield i
                i += 1

        yield from body(count())

    pipeline: Any = (numbers() | through()) if kind == "segment" else endless()
    got: list[int] = []
    async with (pipeline | add(n=0)).stream() as items:
        async for x in items:
            got.append(x)
            if x == 600:
                break
    assert got == list(range(601))
    assert log == [("closed", True)]
    assert produced <= 601 + 4 * BATCH


async def test_cancelling_the_run_closes_the_sync_generator() -> None:
    """A run cancelled from outside while the worker waits for input closes the sync generator and leaves no error."""
    log: list[str] = []
    started = anyio.Event()

    @source
    async def one_then_wait() -> AsyncIterator[int]:
        yield 1
        started.set()
        await anyio.sleep_forever()

    @segment(blocking=True)
    def guarded(items: Iterable[int]) -> Iterator[int]:
        try:
            yield from items
        finally:
            log.append("closed")

    got: list[int] = []

    async def consume() -> None:
        async with (one_then_wait() | guarded() | add(n=0)).stream() as items:
            async for x in items:
                got.append(x)

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await started.wait()
        tg.cancel_scope.cancel()
    assert log == ["closed"]


async def test_the_worker_runs_in_a_task_named_after_the_stage() -> None:
    """While a thread stage runs, the run holds a task named ``talkpipe worker for <stage>``."""
    async with (thread_numbers(n=10**6, name="counter") | add(n=0)).stream() as items:
        async for _ in items:
            names = {task.name for task in anyio.get_running_tasks()}
            break
    assert "talkpipe worker for counter" in names


@segment(blocking=True)
def read_in_own_thread(items: Iterable[Any]) -> Iterator[Any]:
    """Reads its whole input in a thread it starts itself (as some TalkPipe segments do), then yields it."""
    got: list[Any] = []
    helper = threading.Thread(target=lambda: got.extend(items))
    helper.start()
    helper.join()
    yield from got


async def test_sync_code_may_read_its_input_from_a_thread_it_starts() -> None:
    """The input of a thread stage may be read from a thread the sync code starts: items and the metadata passed on
    around the stage arrive in order."""
    f0 = Flush(n=0)
    log: list[Any] = []
    assert await (add(n=0) | read_in_own_thread() | seen_by(log=log)).collect([1, f0, 2]) == [1, 2]
    assert log == [f0, 1, 2]  # the metadata is passed on when read, ahead of the items the stage yields at the end


class ListTransform(AbstractSegment[int, int]):
    """A class stage whose transform returns a list (an iterator without ``close``)."""

    def transform(self, items: Iterable[int]) -> list[int]:  # type: ignore[override]
        return [x * 2 for x in items]


async def test_a_stage_returning_a_list_runs_in_a_thread() -> None:
    """A blocking stage whose transform returns a list (no ``close`` method) hands on its items and ends cleanly."""
    assert await (add(n=0) | ListTransform(blocking=True) | add(n=0)).collect(range(5)) == [0, 2, 4, 6, 8]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_a_thread_the_sync_code_started_that_dies_fails_the_run() -> None:
    """An exception in a thread the sync code started itself is not lost: the run fails with it."""

    def die() -> None:
        raise RuntimeError("helper died")

    @segment(blocking=True)
    def with_helper(items: Iterable[int]) -> Iterator[int]:
        helper = threading.Thread(target=die)
        helper.start()
        helper.join()
        yield from items

    with pytest.raises(RuntimeError, match="helper died"):
        await (add(n=0) | with_helper() | add(n=0)).collect(range(3))


@pytest.mark.parametrize("kind", ["segment", "source"])
async def test_a_stalled_consumer_sees_the_buffer_fill(kind: str) -> None:
    """While the consumer holds back, the items waiting in the stage's buffer show in the statistics: more than
    zero, and within the bound the stage reports plus one batch a hand-over may add."""

    pipeline: Any = (numbers() | triple()) if kind == "segment" else thread_numbers(n=10**6)
    run = (pipeline | add(n=0)).stream(stats=True)
    async with run as items:
        async for _ in items:
            break  # hold the run (the stages stay open) while the buffer fills
        with anyio.fail_after(10):
            while True:
                stage = run.stats().stages[-2]
                assert stage.buffer_fill is not None and stage.buffer_capacity is not None
                if stage.buffer_fill > 0:
                    break
                await anyio.sleep(0.001)  # polls the figures
    assert 0 < stage.buffer_fill <= stage.buffer_capacity + BATCH


@pytest.mark.parametrize("kind", ["segment", "source"])
async def test_a_busy_consumer_gets_every_item_once_and_in_order(kind: str) -> None:
    """A consumer that works on each item (so the worker runs ahead and holds items, handing them over in batches,
    by time, or when it waits for input) still gets every item once and in order, and the run ends cleanly."""
    n = 3 * BATCH + 7
    pipeline: Any = (add(n=0) | triple()) if kind == "segment" else thread_numbers(n=n)
    got: list[int] = []
    async with (pipeline | add(n=0)).stream(range(n) if kind == "segment" else None) as items:
        async for x in items:
            got.append(x)
            if len(got) % 8 == 0:
                time.sleep(0.002)  # the consumer's own work, which blocks the loop for a while
    assert got == ([3 * x for x in range(n)] if kind == "segment" else list(range(n)))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_a_helper_thread_that_dies_fails_the_run_at_once() -> None:
    """The run fails with a helper thread's error as soon as that thread dies, while the sync code itself is still
    busy: the consumer does not wait for the stage to finish."""
    resume = threading.Event()

    def die() -> None:
        raise RuntimeError("helper died")

    @segment(blocking=True)
    def busy_after_helper(items: Iterable[int]) -> Iterator[int]:
        helper = threading.Thread(target=die)
        helper.start()
        helper.join()
        resume.wait(10)  # still busy; released once the consumer has its error (bounded: never a hang)
        yield from items

    try:
        with pytest.raises(RuntimeError, match="helper died"), anyio.fail_after(5):
            async with (add(n=0) | busy_after_helper() | add(n=0)).stream(range(3)) as items:
                try:
                    async for _ in items:
                        pass
                finally:
                    resume.set()
    finally:
        resume.set()


async def test_the_buffer_counts_the_items_waiting_in_the_inbox() -> None:
    """While the sync code holds before reading its input, the upstream fills the stage's inbox: the statistics
    show exactly one batch waiting."""
    gate = threading.Event()

    @segment(blocking=True)
    def held(items: Iterable[int]) -> Iterator[int]:
        gate.wait(10)  # the worker holds before it reads any input (bounded: never a hang)
        yield from items

    run = (add(n=0) | held() | add(n=0)).stream(range(10 * BATCH), stats=True)
    try:
        async with run as items:
            with anyio.fail_after(10):
                while run.stats().stages[2].buffer_fill != BATCH:
                    await anyio.sleep(0.001)  # polls the figures
            assert run.stats().stages[2].name == "held"
            gate.set()
            assert await items.__anext__() == 0
    finally:
        gate.set()


async def test_items_the_worker_holds_reach_a_consumer_that_was_busy() -> None:
    """An item the worker holds back while the consumer is busy is not lost or delayed: the consumer takes it itself
    when it asks next (the worker blocked in the sync code), or the worker hands it over before it waits for input;
    the items after it follow in order."""
    added, resume = threading.Event(), threading.Event()

    @source(blocking=True)
    def two_then_hold() -> Iterator[int]:
        yield 0
        yield 1
        added.set()  # item 1 is in the worker's hands, held back: the consumer was busy when it was added
        resume.wait(10)  # bounded: never a hang
        yield 2

    got: list[int] = []
    try:
        with anyio.fail_after(10):
            async with (two_then_hold() | add(n=0)).stream() as items:
                async for x in items:
                    got.append(x)
                    if x == 0:
                        while not added.is_set():
                            await anyio.sleep(0.001)  # busy elsewhere (not asking) until the worker holds item 1
                    elif x == 1:
                        resume.set()
    finally:
        resume.set()
    assert got == [0, 1, 2]

    @segment(blocking=True)
    def with_echo(items: Iterable[int]) -> Iterator[int]:
        for x in items:
            yield x
            yield x + 100  # added while the consumer is busy with x: held, then handed over before the next input

    got = []
    with anyio.fail_after(10):
        async with (add(n=0) | with_echo() | add(n=0)).stream([0, 1]) as items:
            async for x in items:
                got.append(x)
                if x == 0:
                    time.sleep(0.05)  # the consumer's own work, which blocks the loop for a while
    assert got == [0, 100, 1, 101]


@segment(blocking=True)
def twice(items: Iterable[int]) -> Iterator[int]:
    for x in items:
        yield x
        yield 10 * x


async def held_back_then_read(stage: Any) -> None:
    """Take one item of ``range(5) | stage`` and hold back until the other nine show in the stage's buffer (the
    worker hands them over without being asked), then read them all, in order."""
    run = (add(n=0) | stage).stream(range(5), stats=True)
    got: list[int] = []
    async with run as items:
        async for x in items:
            got.append(x)
            break  # hold the run while the worker finishes its input
        with anyio.fail_after(10):
            while run.stats().stages[-1].buffer_fill != 10 - len(got):
                await anyio.sleep(0.001)  # polls the figures
        got += [x async for x in items]
    assert got == [y for x in range(5) for y in (x, 10 * x)]


async def test_what_the_worker_made_before_it_waits_for_input_reaches_the_buffer(no_latency_flush: None) -> None:
    """Items a thread segment made are handed over to the buffer when it waits for more input (or its input ends),
    without the consumer asking: with no latency bound and batches larger than the stream, the items made after the
    one an idle consumer waited for show in the buffer, all of them, while the consumer holds back."""
    await held_back_then_read(twice())


@segment(blocking=True)
def twice_reading_in_a_helper(items: Iterable[int]) -> Iterator[int]:
    """Reads its input in a thread it starts, one item per item it has made twice of."""
    got: list[int] = []
    ready, done = threading.Semaphore(0), threading.Semaphore(0)
    ended = False

    def read() -> None:
        nonlocal ended
        try:
            for x in items:
                got.append(x)
                ready.release()
                done.acquire()  # the next item is read once the worker made this one's two
        finally:
            ended = True
            ready.release()

    helper = threading.Thread(target=read)
    helper.start()
    while True:
        ready.acquire()
        if not got:
            break
        x = got.pop()
        yield x
        yield 10 * x
        done.release()
    helper.join()
    assert ended


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_what_the_worker_made_is_handed_over_when_a_thread_it_started_waits_for_input(
    no_latency_flush: None,
) -> None:
    """The hand-over before waiting for input also works from a thread the sync code started to read its input:
    with the consumer holding back, everything the worker made reaches the buffer, and then the consumer."""
    await held_back_then_read(twice_reading_in_a_helper())


async def test_no_new_item_enters_the_sync_code_once_the_run_is_closing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Items already fetched into the worker are not handed to the sync code once the run is closing: the consumer
    leaves while the sync code is busy with the first item of a batch of ten, and the sync code sees no other."""
    from talkpipe_async._core import _threads

    fed, busy = threading.Event(), threading.Event()
    seen: list[int] = []

    @source
    async def ten() -> AsyncIterator[int]:
        for i in range(10):
            yield i
        fed.set()  # the feeder has put every item into the stage's inbox

    @segment(blocking=True)
    def busy_after_each(items: Iterable[int]) -> Iterator[int]:
        fed.wait()  # the worker's first read takes the whole batch
        for x in items:
            seen.append(x)
            yield x
            busy.wait()  # the sync code is still working when the consumer leaves

    closing = _threads.ThreadStage.abort

    def abort_then_finish(self: Any) -> None:
        closing(self)
        busy.set()  # the sync code finishes its item only once the run is closing

    monkeypatch.setattr(_threads.ThreadStage, "abort", abort_then_finish)
    async with (ten() | busy_after_each()).stream() as items:
        async for _ in items:
            break
    assert seen == [0]
