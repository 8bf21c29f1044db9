"""Concurrency operators and the lanes of ``group_by``/``partition``: the promises the mutation run found unchecked.

``concurrent_map``/``thread_map``: default and given settings and names, every validation text, the exact number
of calls at once and of worker tasks (reused, never one per item), the exact read-ahead of the window (ordered and
unordered, counted with signals: ``wait_all_tasks_blocked``, never a clock), the notes naming the stage and item,
a failing key function in either order, the unordered metadata barrier, an interrupt from the upstream, the
tasks' names, ``thread_map``'s limiter private to the run, and cleanups cut at the run's cleanup deadline.
``buffer``: its name, validation and exact read-ahead.  The lanes: each group's input bound, the shared output's
bound, its line of waiting producers and ``abort``, the notes naming the key, the counters.

Every pipeline is built inside its test, so constructor code runs while the test runs.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import pytest

from talkpipe_async import Flush, error_context, segment, source
from talkpipe_async._core._closing import CLEANUP_TIMEOUT
from talkpipe_async.operators import KeyedStats, buffer, concurrent_map, group_by, partition, thread_map
from talkpipe_async.operators._lanes import Inbox, Output
from talkpipe_async.operators.concurrency import TaskScopes
from talkpipe_async.testing import virtual_backend
from tests.helpers.ops import task_count

pytestmark = pytest.mark.anyio

LIMIT = 5  # seconds: a wrong bound or a lost wake-up fails fast instead of hanging the test run


class Counted:
    """A source of ``0 .. n-1`` that counts what it has produced (``pulled``)."""

    def __init__(self, n: int = 1000) -> None:
        self.n = n
        self.pulled = 0

    def source(self) -> Any:
        @source
        async def counted() -> AsyncIterator[int]:
            for i in range(self.n):
                self.pulled += 1
                yield i

        return counted()


async def settle() -> None:
    """Let every other task run until all of them wait (the signal that a bound has been reached)."""
    await anyio.wait_all_tasks_blocked()


def notes_of(exc: BaseException) -> list[str]:
    return list(getattr(exc, "__notes__", []))


def task_names(text: str) -> list[str]:
    return [t.name or "" for t in anyio.get_running_tasks() if text in (t.name or "")]


async def echo(x: Any) -> Any:
    return x


def square(x: int) -> int:
    return x * x


# ------------------------------------------------------------------------------------------------ construction


def test_concurrent_map_defaults_and_names() -> None:
    op = concurrent_map(echo)
    assert (op.limit, op.window, op.ordered, op.key) == (16, 32, True, None)
    assert op.label == "concurrent_map(echo)"
    assert op.process_metadata is True
    assert concurrent_map(echo, 3).window == 6  # 2 * limit
    assert concurrent_map(echo, 3, window=3).window == 3  # window == limit is allowed
    assert concurrent_map(echo, 1).limit == 1
    assert concurrent_map(echo, 3, window=10, ordered=False).ordered is False
    assert concurrent_map(echo, name="fetch").label == "fetch"

    class Fetch:
        async def __call__(self, x: Any) -> Any:
            return x

    assert concurrent_map(Fetch()).label == "concurrent_map(Fetch)"  # no __name__: the type's name
    assert concurrent_map(functools.partial(echo)).label == "concurrent_map(partial)"


def test_thread_map_defaults_and_names() -> None:
    op = thread_map(square)
    assert (op.limit, op.window, op.ordered, op.key) == (4, 8, True, None)
    assert op.label == "thread_map(square)" and op.sync_fn is square
    assert op.process_metadata is True
    assert thread_map(square, name="sq").label == "sq"
    assert thread_map(functools.partial(square)).label == "thread_map(partial)"
    op = thread_map(square, 2, ordered=False, window=5, key="k")
    assert (op.limit, op.window, op.ordered) == (2, 5, False)
    assert op.key is not None and op.key({"k": 7}) == 7
    with pytest.raises(ValueError, match=r"^limit must be at least 1$"):
        thread_map(square, 0)
    with pytest.raises(ValueError, match=r"^window \(2\) must be at least limit \(3\)$"):
        thread_map(square, 3, window=2)


def test_validation_texts() -> None:
    with pytest.raises(ValueError, match=r"^limit must be at least 1$"):
        concurrent_map(echo, 0)
    with pytest.raises(ValueError, match=r"^window \(3\) must be at least limit \(4\)$"):
        concurrent_map(echo, 4, window=3)
    with pytest.raises(TypeError, match=r"^key must be a callable or a field name, not 5$"):
        concurrent_map(echo, key=5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^n must be at least 0$"):
        buffer(-1)


def test_keys_are_callables_or_field_paths() -> None:
    def kf(item: Any) -> Any:
        return item

    assert concurrent_map(echo, key=kf).key is kf
    by_field = concurrent_map(echo, key="a.b").key
    assert by_field is not None and by_field({"a": {"b": 3}}) == 3
    whole = concurrent_map(echo, key="_").key
    assert whole is not None and whole(("x", 1)) == ("x", 1)


def test_buffer_settings_and_names() -> None:
    assert buffer(0).n == 0 and buffer(0).label == "buffer(0)"
    assert buffer(3).label == "buffer(3)" and buffer(3, name="ahead").label == "ahead"
    assert buffer(1).process_metadata is True


# ------------------------------------------------------------------------------------------- concurrent_map runs


@pytest.mark.parametrize("limit", [1, 3])
async def test_exactly_limit_calls_at_once_in_limit_reused_workers(anyio_backend: Any, limit: int) -> None:
    """At most ``limit`` calls run at once, in ``limit`` worker tasks named after the stage, each reused."""
    running = 0
    workers: set[int] = set()
    gate = anyio.Event()

    async def fn(x: int) -> int:
        nonlocal running
        workers.add(anyio.get_current_task().id)
        running += 1
        if x < limit:
            await gate.wait()
        running -= 1
        return x

    counted = Counted(40)
    with anyio.fail_after(LIMIT):
        async with (counted.source() | concurrent_map(fn, limit)).stream() as items:
            first = items.__anext__()
            async with anyio.create_task_group() as tg:

                async def take_first() -> None:
                    assert await first == 0

                tg.start_soon(take_first)
                await settle()
                assert running == limit  # the first `limit` items each hold a worker
                assert counted.pulled == 2 * limit  # the default window
                names = task_names("talkpipe worker for")
                assert names == ["talkpipe worker for concurrent_map(fn)"] * limit
                assert task_names("talkpipe feeder for") == ["talkpipe feeder for concurrent_map(fn)"]
                gate.set()
            rest = [x async for x in items]
    assert rest == list(range(1, 40))
    assert len(workers) == limit  # 40 items, `limit` tasks


@pytest.mark.parametrize("ordered", [True, False])
async def test_the_window_bounds_what_is_read_ahead_exactly(anyio_backend: Any, ordered: bool) -> None:
    """Every call stuck: the stage reads exactly ``window`` items; each item the consumer takes lets one more in."""
    gate = anyio.Event()
    started: list[int] = []

    async def fn(x: int) -> int:
        started.append(x)
        await gate.wait()
        return x

    counted = Counted(100)
    with anyio.fail_after(LIMIT):
        async with (counted.source() | concurrent_map(fn, 2, window=5, ordered=ordered)).stream() as items:
            first = items.__anext__()
            got: list[int] = []
            async with anyio.create_task_group() as tg:

                async def take_first() -> None:
                    got.append(await first)

                tg.start_soon(take_first)
                await settle()
                assert counted.pulled == 5 and sorted(started) == [0, 1]  # window 5, limit 2
                gate.set()
            await settle()
            # the consumer holds one item: the stage holds the window again
            assert counted.pulled == 6
            for k in range(1, 4):
                got.append(await items.__anext__())
                await settle()
                assert counted.pulled == 6 + k
            got.extend([x async for x in items])
    assert sorted(got) == list(range(100))
    if ordered:
        assert got == list(range(100))


async def test_the_window_may_equal_the_limit(anyio_backend: Any) -> None:
    gate = anyio.Event()

    async def fn(x: int) -> int:
        await gate.wait()
        return x

    counted = Counted(10)
    with anyio.fail_after(LIMIT):
        async with (counted.source() | concurrent_map(fn, 3, window=3)).stream() as items:
            async with anyio.create_task_group() as tg:
                tg.start_soon(items.__anext__)
                await settle()
                assert counted.pulled == 3
                gate.set()
            assert [x async for x in items] == list(range(1, 10))


@pytest.mark.parametrize("ordered", [True, False])
async def test_an_error_of_the_function_names_the_stage_and_the_item(anyio_backend: Any, ordered: bool) -> None:
    async def fn(x: int) -> int:
        if x == 5:
            raise KeyError("five")
        return x

    with anyio.fail_after(LIMIT), pytest.raises(KeyError) as info:
        await (Counted(10).source() | concurrent_map(fn, 2, ordered=ordered, name="lookup")).collect()
    ctx = error_context(info.value)
    assert ctx is not None and (ctx.segment, ctx.item) == ("lookup", "5")
    assert "talkpipe_async: raised in 'lookup' while processing item 5" in notes_of(info.value)


async def test_an_error_in_a_thread_names_the_stage_and_the_item(anyio_backend: Any) -> None:
    def work(x: int) -> int:
        if x == 3:
            raise ZeroDivisionError("three")
        return x

    got: list[int] = []
    with anyio.fail_after(LIMIT), pytest.raises(ZeroDivisionError) as info:
        async with (Counted(6).source() | thread_map(work, 2)).stream() as items:
            async for x in items:
                got.append(x)
    assert got == [0, 1, 2]
    ctx = error_context(info.value)
    assert ctx is not None and (ctx.segment, ctx.item) == ("thread_map(work)", "3")


async def test_thread_map_calls_the_function_on_each_item_in_worker_threads(anyio_backend: Any) -> None:
    main = threading.get_ident()
    threads: set[int] = set()

    def work(x: int) -> int:
        threads.add(threading.get_ident())
        return x * 10

    with anyio.fail_after(LIMIT):
        out = await (Counted(12).source() | thread_map(work, 3, ordered=False)).collect()
    assert sorted(out) == [x * 10 for x in range(12)] and main not in threads


async def test_thread_map_runs_limit_calls_at_once(anyio_backend: Any) -> None:
    """Three calls are in threads at once (each waits for the loop to let it go)."""
    entered = 0
    release = threading.Event()
    all_in = anyio.Event()

    def work(x: int) -> int:
        nonlocal entered
        entered += 1  # under the GIL; read in the loop
        if entered == 3:
            anyio.from_thread.run_sync(all_in.set)
        if x < 3:
            release.wait(LIMIT)
        return x

    with anyio.fail_after(LIMIT):
        async with (Counted(10).source() | thread_map(work, 3)).stream() as items:
            async with anyio.create_task_group() as tg:
                tg.start_soon(items.__anext__)
                await all_in.wait()
                await settle()
                assert entered == 3
                release.set()
            assert [x async for x in items] == list(range(1, 10))


async def test_thread_map_limit_is_its_own_not_the_shared_thread_pool_limit(anyio_backend: Any) -> None:
    """``limit`` calls run at once even above the loop's default of 40 threads (a limiter private to the run)."""
    limit = 42
    lock = threading.Lock()
    entered = 0
    release = threading.Event()
    all_in = anyio.Event()

    def work(x: int) -> int:
        nonlocal entered
        with lock:
            entered += 1
            last = entered == limit
        if last:
            anyio.from_thread.run_sync(all_in.set)
        release.wait(LIMIT)
        return x

    try:
        with anyio.fail_after(LIMIT):
            async with (Counted(limit).source() | thread_map(work, limit)).stream() as items:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(items.__anext__)
                    await all_in.wait()
                    assert entered == limit
                    release.set()
                assert [x async for x in items] == list(range(1, limit))
    finally:
        release.set()


@pytest.mark.parametrize("ordered", [True, False])
async def test_a_failing_key_function_fails_that_item_at_once(anyio_backend: Any, ordered: bool) -> None:
    """The item whose key cannot be read fails in its place, even while a later call is still running."""
    release = anyio.Event()

    async def fn(x: Any) -> Any:
        await release.wait()
        return x

    def key(x: Any) -> Any:
        return x["k"]

    @source
    async def src() -> AsyncIterator[Any]:
        yield 1
        yield {"k": 2}
        await anyio.sleep_forever()  # the upstream goes on: its end wakes nobody

    with anyio.fail_after(LIMIT):
        async with (src() | concurrent_map(fn, 2, key=key, ordered=ordered)).stream() as items:
            with pytest.raises(TypeError) as info:
                await items.__anext__()
            release.set()
    ctx = error_context(info.value)
    assert ctx is not None and (ctx.segment, ctx.item) == ("concurrent_map(fn)", "1")


@pytest.mark.parametrize("ordered", [True, False])
async def test_a_failing_key_function_then_the_end(anyio_backend: Any, ordered: bool) -> None:
    """A failed key takes the item's place: after the items before it (ordered), or at once (unordered)."""

    def key(x: Any) -> Any:
        if x == 1:
            raise LookupError("no key")
        return x

    got: list[Any] = []
    errors: list[BaseException] = []
    with anyio.fail_after(LIMIT):
        async with (Flat([0, 1]).source() | concurrent_map(echo, 2, key=key, ordered=ordered)).stream() as items:
            while True:
                try:
                    got.append(await items.__anext__())
                except StopAsyncIteration:
                    break
                except LookupError as exc:
                    errors.append(exc)
                    break
    assert got == ([0] if ordered else []) and len(errors) == 1


async def test_keyed_items_of_one_key_wait_their_turn(anyio_backend: Any) -> None:
    """Items of one key run one at a time, in order; a later key runs beside them."""
    gates = {i: anyio.Event() for i in range(4)}
    started: list[int] = []

    async def fn(x: tuple[str, int]) -> tuple[str, int]:
        started.append(x[1])
        await gates[x[1]].wait()
        return x

    items_in = [("a", 0), ("a", 1), ("b", 2), ("a", 3)]
    with anyio.fail_after(LIMIT):
        async with (Flat(items_in).source() | concurrent_map(fn, 4, key=lambda p: p[0])).stream() as items:
            async with anyio.create_task_group() as tg:
                tg.start_soon(items.__anext__)
                await settle()
                assert started == [0, 2]
                gates[0].set()
                await settle()
                assert started == [0, 2, 1]
                gates[1].set()
                await settle()
                assert started == [0, 2, 1, 3]
                gates[2].set()
                gates[3].set()
            assert [x async for x in items] == items_in[1:]


async def test_unordered_metadata_is_a_barrier(anyio_backend: Any) -> None:
    """Unordered: a Flush waits for every item read before it, and items after it start only once it is queued."""
    gate = anyio.Event()
    started: list[int] = []

    async def fn(x: int) -> int:
        started.append(x)
        if x == 0:
            await gate.wait()
        return x

    counted: list[Any] = []

    @source
    async def src() -> AsyncIterator[Any]:
        for x in [0, 1, Flush(), 2, 3]:
            counted.append(x)
            yield x

    got: list[Any] = []
    with anyio.fail_after(LIMIT):
        async with (src() | concurrent_map(fn, 4, ordered=False)).stream(metadata=True) as items:
            got.append(await items.__anext__())
            async with anyio.create_task_group() as tg:

                async def rest() -> None:
                    got.extend([x async for x in items])

                tg.start_soon(rest)
                await settle()
                assert got == [1] and started == [0, 1] and len(counted) == 3  # the Flush was read, nothing after it
                gate.set()
    assert got[:3] == [1, 0, Flush()] and sorted(got[3:]) == [2, 3]


async def test_unordered_barrier_lifts_when_the_last_call_before_it_ends(anyio_backend: Any) -> None:
    """Unordered: once every item read before a Flush is done, the Flush is queued and reading goes on, even while
    the consumer holds an item and asks for nothing."""
    gate = anyio.Event()
    started: list[int] = []

    async def fn(x: int) -> int:
        started.append(x)
        if x == 1:
            await gate.wait()
        return x

    with anyio.fail_after(LIMIT):
        stage = concurrent_map(fn, 2, window=6, ordered=False)
        async with (Flat([0, 1, Flush(), 2, 3]).source() | stage).stream(metadata=True) as items:
            assert await items.__anext__() == 0  # held: the consumer asks for nothing more for now
            await settle()
            assert sorted(started) == [0, 1]  # the Flush waits for item 1
            gate.set()
            await settle()
            assert sorted(started) == [0, 1, 2, 3]
            rest = [x async for x in items]
    assert rest[:2] == [1, Flush()] and sorted(rest[2:]) == [2, 3]


async def test_workers_return_once_nothing_more_can_come(anyio_backend: Any) -> None:
    """After the upstream's end and the last call, no worker task is left, even while the consumer holds results."""
    with anyio.fail_after(LIMIT):
        async with (Counted(6).source() | concurrent_map(echo, 3)).stream() as items:
            assert await items.__anext__() == 0
            await settle()
            assert task_names("talkpipe worker for") == [] and task_names("talkpipe feeder for") == []
            assert [x async for x in items] == [1, 2, 3, 4, 5]


async def test_an_interrupt_from_the_upstream_is_raised_by_the_stage(anyio_backend: Any) -> None:
    """A SystemExit read from the upstream is raised to the consumer: the stream does not look ended first."""

    @source
    async def src() -> AsyncIterator[int]:
        raise SystemExit(4)
        yield 0  # pragma: no cover - makes this a generator

    ended_normally = False
    with anyio.fail_after(LIMIT), pytest.raises(SystemExit):
        async with (src() | concurrent_map(echo, 2)).stream() as items:
            async for _ in items:
                pass
            ended_normally = True
    assert not ended_normally


async def test_a_keyed_thread_call_that_returns_after_the_consumer_left(anyio_backend: Any) -> None:
    """Leaving while a keyed call is in a thread: the call returns after the stop, and the block leaves cleanly."""
    in_thread = anyio.Event()
    release = threading.Event()
    calls: list[int] = []

    @source
    async def src() -> AsyncIterator[int]:
        try:
            yield 0
            yield 1
            await in_thread.wait()
            yield 3  # the same key as 1: waits behind it
            await anyio.sleep_forever()
        finally:
            release.set()  # the stop reached the upstream: let the thread return

    def work(x: int) -> int:
        calls.append(x)
        if x == 1:
            anyio.from_thread.run_sync(in_thread.set)
            release.wait(LIMIT)
        return x

    with anyio.fail_after(LIMIT):
        async with (src() | thread_map(work, 2, key=lambda x: x % 2)).stream() as items:
            async for x in items:
                assert x == 0
                await in_thread.wait()
                await settle()
                break
    assert sorted(calls) == [0, 1]  # 3 waits behind 1 and never starts


async def test_ordered_metadata_keeps_its_place(anyio_backend: Any) -> None:
    async def fn(x: int) -> int:
        for _ in range((x * 3) % 4):
            await anyio.lowlevel.checkpoint()
        return x

    xs: list[Any] = [Flush(), 1, 2, Flush(), 3]
    with anyio.fail_after(LIMIT):
        out = await (Flat(xs).source() | concurrent_map(fn, 3)).collect(metadata=True)
    assert out == xs


async def test_an_upstream_error_arrives_after_the_items_before_it(anyio_backend: Any) -> None:
    gate = anyio.Event()

    @source
    async def src() -> AsyncIterator[int]:
        yield 0
        yield 1
        raise OSError("broken")

    async def fn(x: int) -> int:
        if x == 0:
            await gate.wait()
        return x

    got: list[int] = []
    with anyio.fail_after(LIMIT), pytest.raises(OSError, match="broken"):
        async with (src() | concurrent_map(fn, 2, ordered=False)).stream() as items:
            got.append(await items.__anext__())
            gate.set()
            async for x in items:
                got.append(x)
    assert got == [1, 0]


async def test_an_interrupt_from_the_upstream_stops_the_run_at_once(anyio_backend: Any) -> None:
    """A SystemExit in the upstream leaves at once: items read but not started never start."""
    started: list[int] = []
    gate = anyio.Event()

    began = anyio.Event()

    @source
    async def src() -> AsyncIterator[int]:
        yield 0
        await began.wait()
        yield 1
        yield 2
        raise SystemExit(3)

    async def fn(x: int) -> int:
        started.append(x)
        if x == 0:
            began.set()
            await gate.wait()
        return x

    with anyio.fail_after(LIMIT), pytest.raises(SystemExit):
        async with (src() | concurrent_map(fn, 1, window=4)).stream() as items:
            async for _ in items:
                pass
    assert started == [0]


async def test_an_interrupt_from_the_upstream_starts_no_queued_thread_call(anyio_backend: Any) -> None:
    """A call already in a thread finishes; the items queued behind it are not started."""
    started: list[int] = []
    in_thread = anyio.Event()
    release = threading.Event()

    @source
    async def src() -> AsyncIterator[int]:
        yield 0
        await in_thread.wait()
        yield 1
        yield 2
        release.set()
        raise SystemExit(3)

    def work(x: int) -> int:
        started.append(x)
        if x == 0:
            anyio.from_thread.run_sync(in_thread.set)
            release.wait(LIMIT)
        return x

    with anyio.fail_after(LIMIT), pytest.raises(SystemExit):
        async with (src() | thread_map(work, 1, window=4)).stream() as items:
            async for _ in items:
                pass
    assert started == [0]


async def test_breaking_out_stops_the_workers_and_starts_nothing_more(anyio_backend: Any) -> None:
    started: list[int] = []
    closed = 0

    async def fn(x: int) -> int:
        nonlocal closed
        started.append(x)
        try:
            if x > 0:
                await anyio.sleep_forever()
            return x
        finally:
            closed += 1

    before = task_count()
    with anyio.fail_after(LIMIT):
        async with (Counted(50).source() | concurrent_map(fn, 3)).stream() as items:
            async for _ in items:
                await settle()
                break
    assert sorted(started) == [0, 1, 2, 3] and closed == 4
    assert task_count() == before


# ------------------------------------------------------------------------------------------------------ buffer


@pytest.mark.parametrize("n", [0, 1, 4])
async def test_buffer_reads_ahead_exactly_n_items(anyio_backend: Any, n: int) -> None:
    counted = Counted(30)
    with anyio.fail_after(LIMIT):
        async with (counted.source() | buffer(n)).stream() as items:
            await settle()
            assert counted.pulled == 0  # nothing is asked for yet
            for k in range(1, 8):
                assert await items.__anext__() == k - 1
                assert task_names("talkpipe feeder for") == [f"talkpipe feeder for buffer({n})"]
                await settle()
                assert counted.pulled == k + n
            assert [x async for x in items] == list(range(7, 30))


async def test_buffer_leaves_no_task_when_the_consumer_leaves(anyio_backend: Any) -> None:
    before = task_count()
    counted = Counted(100)
    with anyio.fail_after(LIMIT):
        async with (counted.source() | buffer(2)).stream() as items:
            async for x in items:
                if x == 3:
                    await settle()
                    break
        assert task_count() == before
    assert counted.pulled == 6


async def test_buffer_passes_metadata_and_errors_in_order(anyio_backend: Any) -> None:
    @source
    async def src() -> AsyncIterator[Any]:
        yield 1
        yield Flush()
        yield 2
        raise ValueError("late")

    got: list[Any] = []
    with anyio.fail_after(LIMIT), pytest.raises(ValueError, match="late"):
        async with (src() | buffer(0)).stream(metadata=True) as items:
            async for x in items:
                got.append(x)
    assert got == [1, Flush(), 2]


# ------------------------------------------------------------------------------------------------------ lanes


class Flat:
    """A source of the given items that counts what it has produced."""

    def __init__(self, xs: list[Any]) -> None:
        self.xs = xs
        self.pulled = 0

    def source(self) -> Any:
        @source
        async def flat() -> AsyncIterator[Any]:
            for x in self.xs:
                self.pulled += 1
                yield x

        return flat()


async def test_group_input_holds_at_most_buffer_items(anyio_backend: Any) -> None:
    """A stuck sub-pipeline: its input fills to ``buffer``, then the feeder waits with one item in hand."""
    gate = anyio.Event()
    taken = 0

    @segment
    async def stuck(items: AsyncIterator[int]) -> AsyncIterator[int]:
        nonlocal taken
        async for x in items:
            taken += 1
            await gate.wait()
            yield x

    counted = Counted(50)
    stage: group_by[int, int] = group_by(lambda x: 0, stuck(), buffer=3)
    with anyio.fail_after(LIMIT):
        async with (counted.source() | stage).stream() as items:
            async with anyio.create_task_group() as tg:
                tg.start_soon(items.__anext__)
                await settle()
                assert taken == 1
                assert counted.pulled == 1 + 3 + 1  # in the sub-pipeline, in its input, in the feeder's hand
                gate.set()
            assert [x async for x in items] == list(range(1, 50))


async def test_partition_lane_input_holds_at_most_buffer_items(anyio_backend: Any) -> None:
    gate = anyio.Event()

    @segment
    async def stuck(items: AsyncIterator[int]) -> AsyncIterator[int]:
        async for x in items:
            await gate.wait()
            yield x

    counted = Counted(50)
    with anyio.fail_after(LIMIT):
        async with (counted.source() | partition(lambda x: 0, 1, stuck(), buffer=2)).stream() as items:
            async with anyio.create_task_group() as tg:
                tg.start_soon(items.__anext__)
                await settle()
                assert counted.pulled == 1 + 2 + 1
                gate.set()
            assert [x async for x in items] == list(range(1, 50))


async def test_output_wakes_only_as_many_waiting_producers_as_it_has_room_for(anyio_backend: Any) -> None:
    out = Output(2)
    done: list[str] = []

    async def put(x: str) -> None:
        await out.put(x)
        done.append(x)

    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            await out.put("a")
            await out.put("b")
            for x in "cde":
                tg.start_soon(put, x)
                await settle()
            assert done == [] and list(out.items) == ["a", "b"]  # full: each producer waits in line
            assert await out.get_batch() == ["a", "b"]
            # the first two in line have room; newcomers wait behind the third
            tg.start_soon(put, "f")
            await settle()
            tg.start_soon(put, "g")
            await settle()
            assert sorted(done) == ["c", "d"] and sorted(out.items) == ["c", "d"]
            assert sorted(await out.get_batch()) == ["c", "d"]
            await settle()
            assert sorted(done) == ["c", "d", "e", "f"]
            assert sorted(await out.get_batch()) == ["e", "f"]
            await settle()
            assert sorted(done) == ["c", "d", "e", "f", "g"]
            assert await out.get_batch() == ["g"]


async def test_output_newcomer_waits_behind_woken_producers(anyio_backend: Any) -> None:
    """Room handed to producers woken from the line is theirs: a newcomer cannot take it first."""
    out = Output(2)
    snapshot: list[list[str]] = []

    async def put(x: str) -> None:
        await out.put(x)

    async def reader() -> None:
        await settle()
        snapshot.append(list(out.items))
        await out.get_batch()

    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            await out.put("a")
            await out.put("b")
            tg.start_soon(put, "c")
            tg.start_soon(put, "d")
            await settle()
            assert await out.get_batch() == ["a", "b"]  # wakes c and d
            tg.start_soon(reader)
            await out.put("f")  # in the same step: the room is promised to c and d
    assert [sorted(x) for x in snapshot] == [["c", "d"]]
    assert list(out.items) == ["f"]


async def test_output_a_cancelled_producer_gives_its_turn_to_the_next(anyio_backend: Any) -> None:
    out = Output(1)
    done: list[str] = []

    async def put(x: str, scope_box: list[anyio.CancelScope] | None = None) -> None:
        with anyio.CancelScope() as scope:
            if scope_box is not None:
                scope_box.append(scope)
            await out.put(x)
            done.append(x)

    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            await out.put("a")
            first: list[anyio.CancelScope] = []
            second: list[anyio.CancelScope] = []
            tg.start_soon(put, "b", first)
            await settle()
            tg.start_soon(put, "c", second)
            await settle()
            tg.start_soon(put, "d")
            await settle()
            second[0].cancel()  # waiting, not woken: it leaves the line
            await settle()
            first[0].cancel()  # cancelled, then woken in the same step: its room goes to the next in line
            assert await out.get_batch() == ["a"]
            await settle()
            assert done == ["d"] and list(out.items) == ["d"]
            assert await out.get_batch() == ["d"]
            # the room is counted right again: one item fits, the next waits
            await out.put("e")
            tg.start_soon(put, "f")
            await settle()
            assert done == ["d"] and list(out.items) == ["e"]
            assert await out.get_batch() == ["e"]
            await settle()
            assert done == ["d", "f"]


async def test_output_abort_and_close(anyio_backend: Any) -> None:
    from talkpipe_async._core._channel import ChannelClosed

    out = Output(1)
    errors: list[str] = []

    async def put(x: str) -> None:
        try:
            await out.put(x)
        except ChannelClosed as exc:
            errors.append(str(exc))

    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            await out.put("a")
            tg.start_soon(put, "b")
            await settle()
            out.abort()
        await put("c")
    assert errors == ["the consumer of this stage has gone"] * 2 and not out.items

    out = Output(4)
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            got: list[Any] = []

            async def read() -> None:
                got.append(await out.get_batch())
                with pytest.raises(KeyError):
                    await out.get_batch()
                with pytest.raises(anyio.EndOfStream):
                    await out.get_batch()

            tg.start_soon(read)
            await settle()
            await out.put(1)
            await settle()
            out.close(KeyError("k"))
    assert got == [[1]]


async def test_output_a_put_after_abort_raises_at_once(anyio_backend: Any) -> None:
    """Once the consumer is gone, a later ``put`` raises at once, even while the producers the abort woke from the
    line have not run yet (their promised room must not make it wait)."""
    from talkpipe_async._core._channel import ChannelClosed

    out = Output(1)
    errors: list[str] = []

    async def put(x: str) -> None:
        try:
            await out.put(x)
        except ChannelClosed:
            errors.append(x)

    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            await out.put("a")
            tg.start_soon(put, "b")
            tg.start_soon(put, "c")
            await settle()
            out.abort()
            with pytest.raises(ChannelClosed, match=r"^the consumer of this stage has gone$"):
                await out.put("d")  # in the same step: b and c are still waking up
    assert sorted(errors) == ["b", "c"]


async def test_inbox_bound_end_and_leave(anyio_backend: Any) -> None:
    inbox = Inbox(2)
    assert await inbox.put(1) and await inbox.put(Flush())
    results: list[bool] = []

    async def put(x: Any) -> None:
        results.append(await inbox.put(x))

    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(put, 3)
            await settle()
            assert results == [] and len(inbox.items) == 2  # full
            assert await inbox.__anext__() == 1
            await settle()
            assert results == [True] and list(inbox.items) == [Flush(), 3]
            tg.start_soon(put, 4)
            await settle()
            assert inbox.leave() == 1  # the Flush is not a data item
            await settle()
        assert results == [True, False]
        assert await inbox.put(5) is False and not inbox.items

    inbox = Inbox(3)
    got: list[Any] = []

    async def read() -> None:
        async for x in inbox:
            got.append(x)

    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await settle()
            await inbox.put("x")
            await settle()
            assert got == ["x"]
            inbox.end()
    assert got == ["x"]


async def test_a_failing_factory_names_the_key_and_the_stage(anyio_backend: Any) -> None:
    def factory(key: str) -> Any:
        raise RuntimeError("no pipeline")

    with anyio.fail_after(LIMIT), pytest.raises(RuntimeError) as info:
        await (Flat([{"u": "a"}]).source() | group_by("u", factory, name="per_user")).collect()
    assert notes_of(info.value) == [  # the stage first, then what it was doing
        "talkpipe_async: raised in 'per_user'",
        "talkpipe_async: making the sub-pipeline of key 'a' of per_user",
    ]
    ctx = error_context(info.value)
    assert ctx is not None and ctx.segment == "per_user"


async def test_a_failing_sub_pipeline_names_the_key_and_the_stage(anyio_backend: Any) -> None:
    @segment
    async def boom(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for x in items:
            if x["n"] == 2:
                raise ArithmeticError("bad")
            yield x

    stats = KeyedStats()
    xs = [{"u": "a", "n": 1}, {"u": "b", "n": 2}]
    with anyio.fail_after(LIMIT), pytest.raises(ArithmeticError) as info:
        await (Flat(xs).source() | group_by("u", boom(), name="per_user", stats=stats)).collect()
    assert "talkpipe_async: in the sub-pipeline of key 'b' of per_user" in notes_of(info.value)
    ctx = error_context(info.value)
    assert ctx is not None and ctx.segment == "boom"
    assert stats.live == 0 and stats.opened == 2


@pytest.mark.parametrize("stage", [group_by, partition])
async def test_an_interrupt_from_a_sub_pipeline_leaves_the_run_as_it_came(stage: Any, anyio_backend: Any) -> None:
    """An exit raised inside a sub-pipeline is not that stage's failure: like everywhere else in a run, it carries
    no stage, item or note (only errors are attributed)."""
    @segment
    async def exits(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for x in items:
            raise SystemExit(3)
            yield x

    grouped = group_by("u", exits()) if stage is group_by else partition("u", 2, exits())
    with anyio.fail_after(LIMIT), pytest.raises(SystemExit) as info:
        await (Flat([{"u": "a"}]).source() | grouped).collect()
    assert info.value.code == 3 and error_context(info.value) is None and notes_of(info.value) == []


async def test_group_tasks_are_named_after_the_key_and_counted(anyio_backend: Any) -> None:
    gate = anyio.Event()

    @segment
    async def hold(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for x in items:
            await gate.wait()
            yield x

    stats = KeyedStats()
    stage: group_by[int, int] = group_by(lambda x: x % 2, hold(), stats=stats, name="g")
    with anyio.fail_after(LIMIT):
        async with (Counted(4).source() | stage).stream() as items:
            got: list[int] = []
            async with anyio.create_task_group() as tg:

                async def first() -> None:
                    got.append(await items.__anext__())

                tg.start_soon(first)
                await settle()
                assert sorted(task_names("talkpipe group")) == ["talkpipe group 0 of g", "talkpipe group 1 of g"]
                assert (stats.opened, stats.live) == (2, 2)
                gate.set()
            got.extend([x async for x in items])
            assert sorted(got) == [0, 1, 2, 3]
    assert (stats.opened, stats.live, stats.dropped) == (2, 0, 0)
    assert task_names("talkpipe group") == []


async def test_items_for_a_sub_pipeline_that_stopped_reading_are_dropped(anyio_backend: Any) -> None:
    @segment
    async def first_only(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for x in items:
            yield x
            return

    stats = KeyedStats()
    with anyio.fail_after(LIMIT):
        out = await (Counted(10).source() | group_by(lambda x: 0, first_only(), stats=stats, buffer=1)).collect()
    assert out == [0] and stats.dropped == 9


async def test_sub_pipelines_see_metadata(anyio_backend: Any) -> None:
    seen: list[Any] = []

    @segment(process_metadata=True)
    async def look(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for x in items:
            seen.append(x)
            yield x

    with anyio.fail_after(LIMIT):
        out = await (Flat([1, Flush(), 2]).source() | partition(lambda x: 0, 1, look())).collect(metadata=True)
    assert out == [1, Flush(), 2] and seen == [1, Flush(), 2]


# ------------------------------------------------------------------------------------------- stopping the tasks

VIRTUAL = pytest.mark.parametrize(
    "anyio_backend",
    [virtual_backend("asyncio"), virtual_backend("trio")],
    ids=["asyncio-virtual", "trio-virtual"],
)


async def cleanup_log(make_stage: Any) -> list[str]:
    """Run ``just 0, 1 | stage`` whose work on item 1 never ends and whose cleanup on it never ends either;
    leave after the first output; return what the cleanups logged (times on the virtual clock)."""
    log: list[str] = []

    async def work(x: int) -> int:
        if x == 0:
            return x
        try:
            await anyio.sleep_forever()
        finally:
            started = anyio.current_time()
            try:
                await anyio.sleep_forever()
            finally:
                log.append(f"{x} after {anyio.current_time() - started:.0f} s")
        return x  # pragma: no cover - never reached

    with anyio.fail_after(10 * CLEANUP_TIMEOUT):
        async with (Flat([0, 1]).source() | make_stage(work)).stream() as items:
            async for _ in items:
                await anyio.wait_all_tasks_blocked()
                break
    return log


@VIRTUAL
async def test_a_call_whose_cleanup_never_ends_is_cut_at_the_cleanup_deadline(anyio_backend: Any) -> None:
    """Leaving a concurrent_map stops its workers: a call's ``finally`` may await, until the cleanup deadline."""
    log = await cleanup_log(lambda work: concurrent_map(work, 2))
    assert log == [f"1 after {CLEANUP_TIMEOUT:.0f} s"]


@VIRTUAL
async def test_an_upstream_whose_cleanup_never_ends_is_cut_at_the_cleanup_deadline(anyio_backend: Any) -> None:
    """Leaving a buffer stops its feeder: the upstream's ``finally`` may await, until the cleanup deadline."""
    log: list[str] = []

    @source
    async def src() -> AsyncIterator[int]:
        try:
            yield 0
            await anyio.sleep_forever()
        finally:
            started = anyio.current_time()
            try:
                await anyio.sleep_forever()
            finally:
                log.append(f"after {anyio.current_time() - started:.0f} s")

    with anyio.fail_after(10 * CLEANUP_TIMEOUT):
        async with (src() | buffer(1)).stream() as items:
            async for _ in items:
                await anyio.wait_all_tasks_blocked()
                break
    assert log == [f"after {CLEANUP_TIMEOUT:.0f} s"]


async def test_task_scopes_start_nothing_once_cancelled(anyio_backend: Any) -> None:
    """The tasks an operator starts after it has stopped them all never run."""
    ran: list[str] = []

    async def job(tag: str) -> None:
        ran.append(tag)

    @segment
    async def probe(items: AsyncIterator[int]) -> AsyncIterator[int]:
        scopes = TaskScopes()
        scopes.start(job, "before", name="before")
        await anyio.wait_all_tasks_blocked()
        scopes.cancel()
        scopes.start(job, "after", name="after")
        await anyio.wait_all_tasks_blocked()
        async for x in items:
            yield x

    with anyio.fail_after(LIMIT):
        assert await (Flat([1]).source() | probe()).collect() == [1]
    assert ran == ["before"]
