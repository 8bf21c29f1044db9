"""Concurrency operators: concurrent_map, thread_map, buffer (asyncio, uvloop, trio)."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from talkpipe_async import Flush, Pipeline, source
from talkpipe_async.operators import buffer, concurrent_map, thread_map
from tests.helpers.ops import task_count, until

pytestmark = pytest.mark.anyio

PROPS = settings(max_examples=25, deadline=None)


@source
async def from_list(xs: list[Any], pulled: list[int] | None = None) -> AsyncIterator[Any]:
    """Yield *xs*; append each index to *pulled* as it is produced."""
    for i, x in enumerate(xs):
        if pulled is not None:
            pulled.append(i)
        yield x


async def jittery(x: int) -> int:
    """Finish after a number of checkpoints that depends on the item (reorders completion)."""
    for _ in range((x * 7) % 5):
        await anyio.lowlevel.checkpoint()
    return x * 3


@PROPS
@given(xs=st.lists(st.integers(-1000, 1000), max_size=60), limit=st.integers(1, 8))
async def test_ordered_concurrent_map_equals_map(xs: list[int], limit: int) -> None:
    assert await (from_list(xs) | concurrent_map(jittery, limit)).collect() == [x * 3 for x in xs]


@PROPS
@given(xs=st.lists(st.integers(-1000, 1000), max_size=60), limit=st.integers(1, 8))
async def test_unordered_concurrent_map_same_multiset(xs: list[int], limit: int) -> None:
    out = await (from_list(xs) | concurrent_map(jittery, limit, ordered=False)).collect()
    assert sorted(out) == sorted(x * 3 for x in xs)


async def test_unordered_yields_in_completion_order() -> None:
    release = anyio.Event()

    async def fn(x: int) -> int:
        if x == 0:
            await release.wait()
        return x

    async with (from_list([0, 1, 2]) | concurrent_map(fn, 3, ordered=False)).stream() as items:
        first = [await items.__anext__(), await items.__anext__()]
        release.set()
        rest = [x async for x in items]
    assert sorted(first) == [1, 2] and rest == [0]


@pytest.mark.parametrize("limit", [1, 3, 7])
async def test_limit_is_respected_and_reached(limit: int) -> None:
    active = 0
    peak = 0

    async def fn(x: int) -> int:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
        active -= 1
        return x

    assert await (from_list(list(range(40))) | concurrent_map(fn, limit)).collect() == list(range(40))
    assert peak == limit


async def test_window_bounds_reads_ahead_of_a_slow_head() -> None:
    pulled: list[int] = []
    release = anyio.Event()

    async def fn(x: int) -> int:
        if x == 0:
            await release.wait()
        return x

    op = concurrent_map(fn, 4, window=6)
    async with (from_list(list(range(100)), pulled) | op).stream() as items:
        task = items.__anext__()
        async with anyio.create_task_group() as tg:

            async def first() -> None:
                assert await task == 0

            tg.start_soon(first)
            await until(lambda: len(pulled) >= 6)
            for _ in range(200):
                await anyio.lowlevel.checkpoint()
            assert len(pulled) == 6  # exactly the window: nothing more is read while the head is stuck
            release.set()
        rest = [x async for x in items]
    assert rest == list(range(1, 100))


async def test_function_error_in_position_with_type_and_item_note() -> None:
    async def fn(x: int) -> int:
        if x == 5:
            raise KeyError("five")
        return x

    got: list[int] = []
    with pytest.raises(KeyError) as info:
        async with (from_list(list(range(10))) | concurrent_map(fn, 4)).stream() as items:
            async for x in items:
                got.append(x)
    assert got == [0, 1, 2, 3, 4]
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "concurrent_map(fn)" in notes and "5" in notes


async def test_upstream_error_after_items_before_it() -> None:
    @source
    async def failing() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise OSError("source broke")

    async def fn(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return x

    got: list[int] = []
    with pytest.raises(OSError, match="source broke"):
        async with (failing() | concurrent_map(fn, 4)).stream() as items:
            async for x in items:
                got.append(x)
    assert got == [1, 2]


@pytest.mark.parametrize("ordered", [True, False])
async def test_metadata_passes_through(ordered: bool) -> None:
    xs: list[Any] = [1, 2, Flush(), 3, Flush(), 4]
    out = await (from_list(xs) | concurrent_map(jittery, 3, ordered=ordered)).collect(metadata=True)
    if ordered:
        assert out == [3, 6, Flush(), 9, Flush(), 12]
    else:  # a barrier: items read before a Flush come out before it
        assert sorted(out[:2]) == [3, 6] and out[2] == Flush() and out[3] == 9 and out[4] == Flush()
        assert out[5] == 12


async def test_early_break_cancels_workers_and_leaves_no_tasks() -> None:
    started = 0
    finished = 0
    before = task_count()

    async def fn(x: int) -> int:
        nonlocal started, finished
        started += 1
        if x > 0:
            await anyio.sleep_forever()
        finished += 1
        return x

    async with (from_list(list(range(50))) | concurrent_map(fn, 5)).stream() as items:
        async for x in items:
            assert x == 0
            await until(lambda: started >= 5)
            break
    assert task_count() == before, [t.name for t in anyio.get_running_tasks()]
    assert finished == 1


async def test_source_context_variable_survives_across_items() -> None:
    var: contextvars.ContextVar[int] = contextvars.ContextVar("var", default=-1)
    seen: list[int] = []

    @source
    async def stateful() -> AsyncIterator[int]:
        for i in range(20):
            seen.append(var.get())  # the value set at the previous step, in the same context
            var.set(i)
            yield i

    async def fn(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return x

    assert await (stateful() | concurrent_map(fn, 4)).collect() == list(range(20))
    assert seen == [-1, *range(19)]


async def test_source_timeout_inside_a_step_still_works() -> None:
    @source
    async def with_timeout() -> AsyncIterator[str]:
        for i in range(3):
            with anyio.move_on_after(0.01) as scope:
                await anyio.sleep_forever()
            yield f"{i}:{scope.cancelled_caught}"

    async def fn(x: str) -> str:
        return x

    assert await (with_timeout() | concurrent_map(fn, 2)).collect() == ["0:True", "1:True", "2:True"]


async def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        concurrent_map(jittery, 0)
    with pytest.raises(ValueError):
        concurrent_map(jittery, 4, window=2)
    with pytest.raises(ValueError):
        buffer(-1)


# ---------------------------------------------------------------- thread_map


async def test_thread_map_results_limit_and_threads() -> None:
    lock = threading.Lock()
    active = 0
    peak = 0
    threads: set[int] = set()

    def work(x: int) -> int:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
            threads.add(threading.get_ident())
        time.sleep(0.002)
        with lock:
            active -= 1
        return x * x

    out = await (from_list(list(range(30))) | thread_map(work, 3)).collect()
    assert out == [x * x for x in range(30)]
    assert 1 < peak <= 3
    assert threading.get_ident() not in threads


async def test_thread_map_early_exit_leaves_no_running_call() -> None:
    lock = threading.Lock()
    active = 0

    def work(x: int) -> int:
        nonlocal active
        with lock:
            active += 1
        time.sleep(0.005)
        with lock:
            active -= 1
        return x

    before = task_count()
    async with (from_list(list(range(100))) | thread_map(work, 4)).stream() as items:
        async for _ in items:
            break
    assert active == 0  # stream() waited for every call already in a thread
    assert task_count() == before


async def test_thread_map_error_keeps_type() -> None:
    def work(x: int) -> int:
        if x == 3:
            raise ZeroDivisionError("three")
        return x

    with pytest.raises(ZeroDivisionError):
        await (from_list(list(range(6))) | thread_map(work, 2)).collect()


# -------------------------------------------------------------------- buffer


@pytest.mark.parametrize("n", [0, 1, 5])
async def test_buffer_reads_ahead_exactly_n(n: int) -> None:
    pulled: list[int] = []
    async with (from_list(list(range(30)), pulled) | buffer(n)).stream() as items:
        for k in range(1, 11):
            assert await items.__anext__() == k - 1
            await until(lambda k=k: len(pulled) >= k + n)
            for _ in range(100):
                await anyio.lowlevel.checkpoint()
            assert len(pulled) == k + n  # the consumer asked for k items: the source made k + n
    # strict pull for n == 0: nothing computed beyond what was asked


@PROPS
@given(xs=st.lists(st.integers(), max_size=50), n=st.integers(0, 10))
async def test_buffer_is_identity(xs: list[int], n: int) -> None:
    assert await (from_list(xs) | buffer(n)).collect() == xs


async def test_buffer_metadata_and_errors_in_order() -> None:
    @source
    async def src() -> AsyncIterator[Any]:
        yield 1
        yield Flush()
        yield 2
        raise ValueError("late")

    got: list[Any] = []
    with pytest.raises(ValueError, match="late"):
        async with Pipeline(src(), buffer(3)).stream(metadata=True) as items:
            async for x in items:
                got.append(x)
    assert got == [1, Flush(), 2]


async def test_buffer_early_break_leaves_no_tasks() -> None:
    before = task_count()
    async with (from_list(list(range(1000))) | buffer(10)).stream() as items:
        async for x in items:
            if x == 3:
                break
    assert task_count() == before
