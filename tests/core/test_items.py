"""batch_items / BatchSource: the per-item step of batch-fed sources, in C and in its Python twin."""

from __future__ import annotations

import gc
import sys
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

from talkpipe_async import segment
from talkpipe_async._core import _batch_items as _items
from talkpipe_async._core._batch_items import BatchSource, batch_items

pytestmark = pytest.mark.anyio


class Log:
    def __init__(self) -> None:
        self.closed = 0
        self.batches = 0


async def batches_of(data: list[Any], log: Log) -> AsyncIterator[Any]:
    try:
        for b in data:
            log.batches += 1
            yield b
    finally:
        log.closed += 1


class Numbers(BatchSource[int]):
    """0..n-1 in lists of *size*."""

    def __init__(self, n: int, size: int, log: Log) -> None:
        super().__init__()
        self.n, self.size, self.log = n, size, log

    async def batches(self) -> AsyncIterator[list[int]]:
        try:
            for start in range(0, self.n, self.size):
                self.log.batches += 1
                yield list(range(start, min(self.n, start + self.size)))
        finally:
            self.log.closed += 1


async def test_items_in_order_empty_batches_skipped(speedups: str) -> None:
    log = Log()
    data: list[Any] = [[1, 2], [], (3,), [(4, 5), None, ValueError("an item")], []]
    got = [x async for x in batch_items(batches_of(data, log))]
    assert got[:5] == [1, 2, 3, (4, 5), None] and isinstance(got[5], ValueError)
    assert log.closed == 1


async def test_a_source_of_batches_in_a_pipeline(speedups: str) -> None:
    log = Log()

    @segment
    async def double(items: AsyncIterator[int]) -> AsyncIterator[int]:
        async for x in items:
            yield 2 * x

    assert await (Numbers(10_000, 333, log) | double()).collect() == [2 * i for i in range(10_000)]
    assert not Numbers(1, 1, log).is_sync
    async with Numbers(1000, 10, log).stream(stats=True) as items:
        assert [x async for x in items] == list(range(1000))


async def test_break_closes_the_batch_generator_before_the_next_statement(speedups: str) -> None:
    log = Log()
    async with Numbers(10**9, 100, log).stream() as items:
        async for x in items:
            if x == 250:
                break
    assert log.closed == 1 and log.batches == 3


async def test_errors_pass_through_unchanged_then_the_items_end(speedups: str) -> None:
    class Boom(Exception):
        pass

    async def failing() -> AsyncIterator[list[int]]:
        yield [1, 2]
        raise Boom("batch 2")

    it = batch_items(failing())
    assert [await it.__anext__(), await it.__anext__()] == [1, 2]
    with pytest.raises(Boom, match="batch 2"):
        await it.__anext__()
    with pytest.raises(StopAsyncIteration):
        await it.__anext__()


async def test_two_pending_steps_lose_and_repeat_nothing(speedups: str) -> None:
    log = Log()
    it = batch_items(batches_of([[1, 2, 3]], log))
    first = await it.__anext__()  # the first item of a batch comes through the fetch
    a = it.__anext__()
    b = it.__anext__()
    # C binds an item to each step when it is taken; an async generator when it is awaited.
    assert first == 1 and sorted([await b, await a]) == [2, 3]
    assert await anext(it, "end") == "end"


def test_ready_awaitable_protocol() -> None:
    if _items._speedups is None:
        pytest.skip("C extension not built")

    async def one() -> AsyncIterator[list[Any]]:
        yield [0, (1, 2), "x", "y"]

    it: Any = _items._FastItems(one())
    with pytest.raises(StopIteration):  # the first item comes through the Python fetch coroutine
        it.__anext__().send(None)
    ready = it.__anext__()
    with pytest.raises(StopIteration) as stop:
        ready.send(None)
    assert stop.value.value == (1, 2)  # a tuple stays one value
    ready = it.__anext__()
    assert ready.__await__() is ready
    with pytest.raises(KeyError):
        ready.throw(KeyError("k"))
    ready = it.__anext__()
    ready.close()
    with pytest.raises(StopIteration) as stop:
        next(ready)
    assert stop.value.value is None
    assert it.pending() == 0


async def test_no_reference_leaks_and_the_iterator_is_collected(speedups: str) -> None:
    marker = object()
    before = sys.getrefcount(marker)
    log = Log()
    it = batch_items(batches_of([[marker] * 1000, [marker]], log))
    n = 0
    async for x in it:
        n += x is marker
    del x
    assert n == 1001
    assert sys.getrefcount(marker) == before
    ref = weakref.ref(it)
    del it
    gc.collect()
    assert ref() is None


async def test_cancelled_while_fetching_closes_the_batches(speedups: str, anyio_backend: Any) -> None:
    waiting = anyio.Event()
    closed = anyio.Event()

    async def slow() -> AsyncIterator[list[int]]:
        try:
            yield [1]
            waiting.set()
            await anyio.sleep_forever()
            yield [2]
        finally:
            closed.set()

    class Slow(BatchSource[int]):
        async def batches(self) -> AsyncIterator[list[int]]:
            async for batch in slow():
                yield batch

    got = []
    async with anyio.create_task_group() as tg:

        async def consume() -> None:
            async with Slow().stream() as items:
                async for x in items:
                    got.append(x)

        tg.start_soon(consume)
        await waiting.wait()
        tg.cancel_scope.cancel()
    assert got == [1] and closed.is_set()


def test_the_python_twin_is_chosen_when_the_extension_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_items, "SPEEDUPS", False)

    async def none() -> AsyncIterator[list[int]]:
        yield []

    gen = batch_items(none())
    assert hasattr(gen, "ag_frame") and type(gen).__name__ == "async_generator"
    anyio.run(gen.aclose)  # type: ignore[attr-defined]


async def test_metadata_and_statistics_together_leak_nothing(speedups: str) -> None:
    from talkpipe_async import Flush

    @segment
    async def same(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for x in items:
            yield x

    marker = object()
    before = sys.getrefcount(marker)
    data: list[Any] = []
    for i in range(3000):
        data.append(marker)
        if i % 100 == 0:
            data.append(Flush(n=i))
    run = (same() | same() | same()).stream(data, metadata=True, stats=True)
    n = flushes = 0
    async with run as items:
        async for x in items:
            if x is marker:
                n += 1
            else:
                flushes += 1
    del x
    assert (n, flushes) == (3000, 30)
    assert [s.items_out for s in run.stats().stages] == [3030, 3000, 3000, 3000]  # the input counts its Flushes
    data.clear()
    gc.collect()
    assert sys.getrefcount(marker) == before


# ----------------------------------------------------------------- the metadata strip after a source
# A source may yield Metadata (unless it says emits_metadata=False), so the runner puts a strip step between it
# and the first segment that does not take metadata: in C (Strip / StripIter) or its Python twin.


def with_metadata(n: int, every: int) -> list[Any]:
    from talkpipe_async import Flush, Metadata

    out: list[Any] = []
    for i in range(n):
        if i % every == 0:
            out.append(Flush(n=i) if i % (2 * every) else Metadata(kind="mark", n=i))
        out.append(i)
    return out


async def test_strip_bypasses_metadata_in_order_past_segments(speedups: str) -> None:
    from talkpipe_async import source

    data = with_metadata(200, 7)

    @source
    async def feed() -> AsyncIterator[Any]:
        for x in data:
            await anyio.lowlevel.checkpoint()  # the strip passes the event loop's signals through
            yield x

    @segment
    async def inc(items: AsyncIterator[int]) -> AsyncIterator[int]:
        async for x in items:
            yield x + 1

    @segment
    def dec(items: Any) -> Iterator[int]:
        for x in items:
            yield x - 1

    expected = [x if not isinstance(x, int) else x + 1 for x in data]
    assert await (feed() | inc()).collect(metadata=True) == expected
    assert await (feed() | inc() | inc() | dec()).collect(metadata=True) == expected
    run = (feed() | inc()).stream()
    async with run as items:
        got = [x async for x in items]
    assert got == [x + 1 for x in range(200)]
    assert run.metadata_dropped == len(data) - 200


async def test_strip_passes_errors_and_break_closes_the_source(speedups: str) -> None:
    from talkpipe_async import Flush, source

    closed: list[bool] = []

    @source
    async def failing() -> AsyncIterator[Any]:
        try:
            yield 1
            yield Flush()
            yield 2
            raise KeyError("boom")
        finally:
            closed.append(True)

    @segment
    async def same(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for x in items:
            yield x

    got: list[Any] = []
    with pytest.raises(KeyError, match="boom"):
        async with (failing() | same()).stream(metadata=True) as items:
            async for x in items:
                got.append(x)
    assert got == [1, Flush(), 2] and closed == [True]
    async with (failing() | same()).stream() as items:
        first = await items.__anext__()
    assert first == 1 and closed == [True, True]


async def test_strip_leaks_nothing_and_is_collected(speedups: str) -> None:
    from talkpipe_async import Flush, source

    marker = object()
    before = sys.getrefcount(marker)

    @source
    async def feed() -> AsyncIterator[Any]:
        for i in range(2000):
            yield marker
            if i % 100 == 0:
                yield Flush()

    @segment
    async def same(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for x in items:
            yield x

    for metadata in (False, True):
        n = 0
        async with (feed() | same() | same()).stream(metadata=metadata) as items:
            async for x in items:
                n += x is marker
        del x
        assert n == 2000
    gc.collect()
    assert sys.getrefcount(marker) == before


def test_strip_step_protocol() -> None:
    if _items._speedups is None:
        pytest.skip("C extension not built")
    from talkpipe_async import Flush
    from talkpipe_async._core._metadata_path import MetaCounter, _Bypass, strip_async

    async def gen() -> AsyncIterator[Any]:
        yield Flush()
        yield 1

    counter = MetaCounter()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_items, "SPEEDUPS", True)
        strip = strip_async(gen(), True, counter)
    step = strip.__anext__()
    signal = step.send(None)  # the bypass travels up as the awaitable's yielded value
    assert type(signal) is _Bypass and signal.item == Flush()
    with pytest.raises(StopIteration) as done:
        step.send(None)  # resumed: the next data item
    assert done.value.value == 1
    with pytest.raises(RuntimeError, match="already awaited"):
        step.send(None)
    step = strip.__anext__()
    with pytest.raises(ValueError):
        step.throw(ValueError("into the chain"))
    ref = weakref.ref(strip)
    del strip, step
    gc.collect()
    assert ref() is None and counter.dropped == 0


@pytest.mark.parametrize("flavour", ["c", "python"])
def test_sync_strip_holds_or_drops_metadata(flavour: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if flavour == "c" and _items._speedups is None:
        pytest.skip("C extension not built")
    monkeypatch.setattr(_items, "SPEEDUPS", flavour == "c")
    from talkpipe_async import source

    data = with_metadata(50, 5)

    @source
    def feed() -> Iterator[Any]:
        yield from data

    @segment
    def inc(items: Any) -> Iterator[int]:
        for x in items:
            yield x + 1

    plain = list((feed() | inc() | inc()).iter_sync())
    assert plain == [x + 2 for x in range(50)]
    held = list((feed() | inc()).iter_sync(metadata=True))
    assert [x for x in held if isinstance(x, int)] == [x + 1 for x in range(50)]
    assert [x for x in held if not isinstance(x, int)] == [x for x in data if not isinstance(x, int)]
    if flavour == "c":
        with pytest.raises(TypeError, match="list or None"):
            _items._speedups.StripIter([], object, (), None)


# ----------------------------------------------------------------- the run of a sync chain (iter_sync)


@pytest.fixture(params=["c", "python"])
def sync_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """iter_sync with the C run step and with its generator twin."""
    if request.param == "c" and _items._speedups is None:
        pytest.skip("C extension not built")
    monkeypatch.setattr(_items, "SPEEDUPS", request.param == "c")
    return str(request.param)


def closing_chain(log: list[str], fail_at: int | None = None, fail_close: bool = False) -> Any:
    from talkpipe_async import source

    @source
    def numbers() -> Iterator[int]:
        try:
            yield from range(10)
        finally:
            log.append("source closed")

    @segment
    def check(items: Any) -> Iterator[int]:
        try:
            for item in items:
                if item == fail_at:
                    raise ValueError(f"bad {item}")
                yield item
        finally:
            log.append("check closed")
            if fail_close:
                raise RuntimeError("close failed")

    return numbers() | check()


def test_sync_run_errors_name_the_segment_and_close_every_stage(sync_mode: str) -> None:
    from talkpipe_async import error_context

    log: list[str] = []
    got: list[int] = []
    with pytest.raises(ValueError, match="bad 3") as info:
        for x in closing_chain(log, fail_at=3).iter_sync():
            got.append(x)
    ctx = error_context(info.value)
    assert got == [0, 1, 2] and ctx is not None and ctx.segment == "check" and ctx.item == "3"
    assert log == ["check closed", "source closed"]
    log.clear()
    with pytest.raises(RuntimeError, match="close failed") as closing:
        list(closing_chain(log, fail_at=3, fail_close=True).iter_sync())
    assert isinstance(closing.value.__context__, ValueError) and "source closed" in log


def test_sync_run_break_close_and_drop_close_at_once(sync_mode: str) -> None:
    log: list[str] = []
    for x in closing_chain(log).iter_sync():
        if x == 2:
            break
    assert log == ["check closed", "source closed"]  # the dropped iterator closed the stages before this line
    log.clear()
    items = closing_chain(log).iter_sync()
    assert next(items) == 0
    items.close()  # type: ignore[attr-defined]
    assert log == ["check closed", "source closed"]
    assert list(items) == []
    items.close()  # type: ignore[attr-defined]
    assert log == ["check closed", "source closed"]
    log.clear()
    assert list(closing_chain(log).iter_sync()) == list(range(10))
    assert log == ["source closed", "check closed"]  # at the end each stage finishes after its input


def test_sync_run_collected_with_a_cycle(sync_mode: str) -> None:
    log: list[str] = []
    items = closing_chain(log).iter_sync()
    next(items)
    holder: list[Any] = [items]
    holder.append(holder)  # a cycle: only the collector frees it
    ref = weakref.ref(items)
    del items, holder
    gc.collect()
    assert ref() is None and sorted(log) == ["check closed", "source closed"]  # the collector picks the order


def test_sync_run_c_type_directly() -> None:
    # From Python 3.13 iter_sync() uses the generator (see run_sync); the C type is checked on every Python here.
    if _items._speedups is None:
        pytest.skip("C extension not built")
    seen: list[BaseException] = []
    closed: list[bool] = []
    run = _items._speedups.SyncRun(iter([1, 2]), seen.append, lambda: closed.append(True))
    assert list(run) == [1, 2] and closed == [True] and seen == []

    def failing() -> Iterator[int]:
        yield 1
        raise KeyError("x")

    run = _items._speedups.SyncRun(failing(), seen.append, lambda: closed.append(True))
    assert next(run) == 1
    with pytest.raises(KeyError):
        next(run)
    assert isinstance(seen[0], KeyError) and closed == [True, True]
    run = _items._speedups.SyncRun(iter([1, 2]), seen.append, lambda: closed.append(True))
    del run
    assert closed == [True, True, True]  # dropped: closed at once
    with pytest.raises(TypeError):
        _items._speedups.SyncRun([1], seen.append, lambda: None)
