"""Core: segments, sources, pipelines, metadata, errors and cleanup (issue 2)."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import aclosing
from typing import Any

import anyio
import pytest

from talkpipe_async import (
    AbstractFieldSegment,
    AbstractSegment,
    AbstractSource,
    Flush,
    Metadata,
    Pipeline,
    error_context,
    field_segment,
    is_metadata,
    segment,
    source,
)
from tests.conftest import open_fds

pytestmark = pytest.mark.anyio


@source
async def count_up(start: int = 0, log: list[Any] | None = None) -> AsyncIterator[int]:
    i = start
    try:
        while True:
            yield i
            i += 1
    finally:
        if log is not None:
            log.append("source closed")


@segment
async def add(items: AsyncIterator[int], n: int = 1) -> AsyncIterator[int]:
    async for x in items:
        yield x + n


@segment
async def closing(items: AsyncIterator[Any], tag: str, log: list[Any]) -> AsyncIterator[Any]:
    try:
        async for x in items:
            yield x
    finally:
        log.append(f"{tag} closed")


@segment
async def drop_all(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for _ in items:
        if False:
            yield _


@segment(process_metadata=True)
async def recorder(items: AsyncIterator[Any], log: list[Any]) -> AsyncIterator[Any]:
    async for x in items:
        log.append(("got", x))
        yield x


@segment
def sync_double(items: Iterable[int]) -> Iterator[int]:
    for x in items:
        yield 2 * x


# --- decorators and construction -------------------------------------------------


async def test_decorator_with_and_without_parentheses() -> None:
    @segment()
    async def times(items: AsyncIterator[int], k: int = 2) -> AsyncIterator[int]:
        async for x in items:
            yield x * k

    @segment(k=5)
    async def times5(items: AsyncIterator[int], k: int = 2) -> AsyncIterator[int]:
        async for x in items:
            yield x * k

    assert await times().collect([1, 2]) == [2, 4]
    assert await times(k=3).collect([1, 2]) == [3, 6]
    assert await times5().collect([1]) == [5]
    assert await times5(k=7).collect([1]) == [7], "constructor arguments override decorator defaults"
    assert times5().name == "times5"


def test_unknown_parameter_is_rejected_at_construction() -> None:
    with pytest.raises(TypeError, match="add"):
        add(m=3)


async def test_class_based_source_and_segment() -> None:
    class Letters(AbstractSource[str]):
        async def generate(self) -> AsyncIterator[str]:
            for c in "abc":
                yield c

    class Upper(AbstractSegment[str, str]):
        async def transform(self, items: AsyncIterator[str]) -> AsyncIterator[str]:
            async for c in items:
                yield c.upper()

    assert await (Letters() | Upper()).collect() == ["A", "B", "C"]


# --- pipelines ---------------------------------------------------------------------


async def test_pipe_builds_new_pipeline_and_mutates_nothing() -> None:
    a, b, c = add(n=1), add(n=10), add(n=100)
    ab = a | b
    abc = ab | c
    assert ab.stages == (a, b)
    assert abc.stages == (a, b, c)
    assert await ab.collect([0]) == [11]
    assert await abc.collect([0]) == [111]
    assert await a.as_function(single_in=True, single_out=True)(0) == 1


async def test_pipeline_runs_twice_with_same_output() -> None:
    log: list[Any] = []
    p = count_up() | add(n=1) | drop_odd() | recorder(log=log)
    first = await (p | take3()).collect()
    second = await (p | take3()).collect()
    assert first == second == [2, 4, 6]


@segment
async def drop_odd(items: AsyncIterator[int]) -> AsyncIterator[int]:
    async for x in items:
        if x % 2 == 0:
            yield x


@segment
async def take3(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
    n = 0
    async for x in items:
        yield x
        n += 1
        if n == 3:
            return


async def test_segment_pipeline_takes_sync_or_async_input() -> None:
    async def agen() -> AsyncIterator[int]:
        for i in range(3):
            yield i

    p = add(n=1) | add(n=1)
    assert await p.collect([1, 2]) == [3, 4]
    assert await p.collect(agen()) == [2, 3, 4]
    with pytest.raises(TypeError, match="give stream"):
        await p.collect()
    with pytest.raises(TypeError, match="takes no input"):
        await (count_up() | add()).collect([1])


async def test_as_function_forms() -> None:
    f = (add(n=1) | add(n=1)).as_function()
    assert await f([1, 2]) == [3, 4]
    g = add(n=1).as_function(single_in=True, single_out=True)
    assert await g(41) == 42
    h = sync_double().as_function(single_in=True)
    assert await h(4) == [8]
    with pytest.raises(ValueError, match="exactly 1"):
        await add().as_function(single_out=True)([1, 2])


async def test_source_only_after_start() -> None:
    with pytest.raises(TypeError, match="can only start"):
        add() | count_up()


async def test_bare_async_for_is_refused() -> None:
    with pytest.raises(TypeError, match="stream"):
        async for _ in count_up() | add():  # type: ignore[attr-defined]
            pass


async def test_nested_pipelines_flatten() -> None:
    inner = add(n=1) | (add(n=10) | add(n=100))
    p = Pipeline(count_up(), inner) | take3()
    assert await p.collect() == [111, 112, 113]


# --- metadata ----------------------------------------------------------------------


@source
async def flushing_source(log: list[Any], every: int = 5) -> AsyncIterator[Any]:
    i = 0
    while True:
        if i % every == 0:
            log.append(("emit", f"flush{i}"))
            yield Flush(n=i)
        log.append(("emit", i))
        yield i
        i += 1


@segment(process_metadata=True)
async def flush_recorder(items: AsyncIterator[Any], log: list[Any], stop: int) -> AsyncIterator[Any]:
    seen = 0
    async for x in items:
        if isinstance(x, Flush):
            log.append(("got", f"flush{x.n}"))
            seen += 1
            if seen == stop:
                return
        else:
            log.append(("got", x))
        yield x


async def test_metadata_prompt_and_ordered_through_flat_chain_with_dropping_filter(speedups: str) -> None:
    log: list[Any] = []
    chain = add(n=0) | add(n=0) | drop_all() | add(n=0) | add(n=0)
    p = flushing_source(log=log) | chain | flush_recorder(log=log, stop=4)
    await p.collect()
    got = [entry for entry in log if entry[0] == "got"]
    assert got == [("got", "flush0"), ("got", "flush5"), ("got", "flush10"), ("got", "flush15")]
    for k, entry in enumerate(log):
        if entry[0] == "emit" and isinstance(entry[1], str):
            assert log[k + 1] == ("got", entry[1]), "metadata must arrive before the source produces again"


async def test_metadata_in_nested_chains_and_reruns(speedups: str) -> None:
    log: list[Any] = []
    inner = add(n=0) | (drop_all() | add(n=0))
    p = Pipeline(flushing_source(log=log), inner, flush_recorder(log=log, stop=2))
    await p.collect()
    first = [e for e in log if e[0] == "got"]
    log.clear()
    await p.collect()
    assert [e for e in log if e[0] == "got"] == first == [("got", "flush0"), ("got", "flush5")]


@segment
async def tick_each(items: AsyncIterator[Any], log: list[Any] | None = None) -> AsyncIterator[Any]:
    """Pass items on, giving the event loop a turn before each."""
    try:
        async for x in items:
            await anyio.lowlevel.checkpoint()
            yield x
    finally:
        if log is not None:
            log.append("tick_each closed")


async def test_metadata_bypass_through_stages_that_await_the_loop(speedups: str) -> None:
    items: list[Any] = [1, Flush(n=0), 2, 3, Flush(n=1), 4]
    out = await (tick_each() | add(n=10) | tick_each()).collect(items, metadata=True)
    assert out == [11, Flush(n=0), 12, 13, Flush(n=1), 14]


async def test_cancelled_while_a_bypassed_chain_waits(speedups: str) -> None:
    log: list[Any] = []
    waiting = anyio.Event()

    @source
    async def flush_then_wait() -> AsyncIterator[Any]:
        try:
            yield 1
            yield Flush(n=0)
            waiting.set()
            await anyio.sleep_forever()
        finally:
            log.append("source closed")

    got: list[Any] = []
    async with anyio.create_task_group() as tg:

        async def consume() -> None:
            async with (flush_then_wait() | tick_each(log=log) | add(n=0)).stream(metadata=True) as items:
                async for x in items:
                    got.append(x)

        tg.start_soon(consume)
        await waiting.wait()
        tg.cancel_scope.cancel()
    assert got == [1, Flush(n=0)]
    assert sorted(log) == ["source closed", "tick_each closed"]  # the cancellation unwinds from the source up


async def test_errors_after_a_bypass_keep_type_and_stage(speedups: str) -> None:
    items: list[Any] = [1, Flush(n=0), 2, 7, 3]
    with pytest.raises(ValueError) as info:
        await (tick_each() | explode_on(bad=7, name="boom") | add(n=0)).collect(items, metadata=True)
    assert "boom" in "\n".join(getattr(info.value, "__notes__", []))


async def test_metadata_order_relative_to_data(speedups: str) -> None:
    items: list[Any] = [1, Flush(n=0), 2, 3, Flush(n=1), 4]
    out = await (add(n=10) | add(n=0)).collect(items, metadata=True)
    assert out == [11, Flush(n=0), 12, 13, Flush(n=1), 14]
    assert await (add(n=10)).collect(items) == [11, 12, 13, 14]


async def test_segments_not_opting_in_never_see_metadata(speedups: str) -> None:
    seen: list[Any] = []

    @segment
    async def spy(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for x in items:
            seen.append(x)
            yield x

    await (spy() | spy()).collect([Flush(), 1, Metadata(kind="x"), 2], metadata=True)
    assert not any(is_metadata(x) for x in seen)


async def test_metadata_dropped_without_receiver_is_counted(speedups: str) -> None:
    run = add().stream([Flush(), 1, Flush()])
    async with run as items:
        assert [x async for x in items] == [2]
    assert run.metadata_dropped == 2


async def test_metadata_through_sync_segments(speedups: str) -> None:
    out = await (sync_double() | add(n=0)).collect([1, Flush(n=0), 2], metadata=True)
    assert out == [2, Flush(n=0), 4]
    blocking = sync_double(blocking=True) | add(n=0)
    assert await blocking.collect([1, Flush(n=0), 2], metadata=True) == [2, Flush(n=0), 4]


# --- sync mirror ---------------------------------------------------------------------


def test_iter_sync_runs_without_event_loop() -> None:
    @source
    def numbers(n: int) -> Iterator[int]:
        yield from range(n)

    p = numbers(n=4) | sync_double() | sync_double()
    assert list(p.iter_sync()) == [0, 4, 8, 12]
    assert list((sync_double() | sync_double()).iter_sync([1])) == [4]
    with pytest.raises(TypeError, match="is async"):
        list((sync_double() | add()).iter_sync([1]))


def test_iter_sync_break_closes_every_stage() -> None:
    log: list[str] = []

    @source
    def forever() -> Iterator[int]:
        i = 0
        try:
            while True:
                yield i
                i += 1
        finally:
            log.append("source closed")

    @segment
    def watch(items: Iterable[int], tag: str) -> Iterator[int]:
        try:
            yield from items
        finally:
            log.append(f"{tag} closed")

    for x in (forever() | watch(tag="a") | watch(tag="b")).iter_sync():
        if x == 2:
            break
    assert sorted(log) == ["a closed", "b closed", "source closed"]


async def test_sync_and_async_segments_mix() -> None:
    @source
    def numbers() -> Iterator[int]:
        yield from range(5)

    p = numbers() | sync_double() | add(n=1) | sync_double() | add(n=0)
    assert await p.collect() == [2, 6, 10, 14, 18]


async def test_talkpipe_style_callable_drops_in() -> None:
    class TalkPipeLike:
        """A segment in TalkPipe's protocol: call with an iterable, get an iterator."""

        def __call__(self, input_iter: Iterable[int]) -> Iterator[int]:
            return (x * 3 for x in input_iter)

    p = add(n=0) | TalkPipeLike() | add(n=1)
    assert await p.collect([1, 2]) == [4, 7]


async def test_blocking_sync_segment_keeps_loop_responsive() -> None:
    @segment(blocking=True)
    def slow(items: Iterable[int]) -> Iterator[int]:
        for x in items:
            time.sleep(0.05)
            yield x

    ticks = 0
    done = anyio.Event()

    async def heartbeat() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(heartbeat)
        out = await (slow() | add(n=0)).collect(range(5))
        done.set()
    assert out == [0, 1, 2, 3, 4]
    assert ticks >= 8, f"the loop stalled: only {ticks} heartbeats in ~250 ms"


async def test_slow_blocking_segment_holds_back_fast_upstream() -> None:
    produced = 0

    @source
    async def fast() -> AsyncIterator[int]:
        nonlocal produced
        while True:
            produced += 1
            yield produced

    @segment(blocking=True)
    def slow(items: Iterable[int]) -> Iterator[int]:
        for x in items:
            time.sleep(0.001)
            yield x

    async with (fast() | slow()).stream() as items:
        async for x in items:
            if x == 20:
                break
    assert produced <= 20 + 3 * 256, "read-ahead across the thread boundary is bounded by the batch size"


# --- errors ------------------------------------------------------------------------


@segment
async def explode_on(items: AsyncIterator[int], bad: int) -> AsyncIterator[int]:
    async for item in items:
        if item == bad:
            raise ValueError(f"cannot take {item}")
        yield item


async def test_exception_names_segment_and_item() -> None:
    p = count_up() | add(n=0) | add(n=0) | explode_on(bad=7, name="third") | add(n=0) | add(n=0)
    with pytest.raises(ValueError, match="cannot take 7") as info:
        await p.collect()
    ctx = error_context(info.value)
    assert ctx is not None and ctx.segment == "third" and ctx.item == "7"
    assert any("third" in note and "7" in note for note in info.value.__notes__)


async def test_exception_in_source_and_thread_stage() -> None:
    @source
    async def broken() -> AsyncIterator[int]:
        yield 1
        raise KeyError("gone")

    with pytest.raises(KeyError) as info:
        await (broken() | add()).collect()
    ctx = error_context(info.value)
    assert ctx is not None and ctx.segment == "broken"

    @segment(blocking=True)
    def sync_bad(items: Iterable[int]) -> Iterator[int]:
        for row in items:
            if row == 3:
                raise ZeroDivisionError("row 3")
            yield row

    with pytest.raises(ZeroDivisionError) as info2:
        await (count_up() | sync_bad() | add()).collect()
    ctx2 = error_context(info2.value)
    assert ctx2 is not None and ctx2.segment == "sync_bad" and ctx2.item == "3"


async def test_exception_caught_in_block_then_leaves_with_context() -> None:
    p = count_up() | explode_on(bad=2)
    with pytest.raises(ValueError) as info:
        async with p.stream() as items:
            async for _ in items:
                pass
    assert error_context(info.value) is not None


# --- cleanup -----------------------------------------------------------------------


async def test_break_runs_every_finally_before_next_statement() -> None:
    log: list[Any] = []
    p = count_up(log=log) | closing(tag="a", log=log) | closing(tag="b", log=log)
    p = p | sync_double(blocking=True) | closing(tag="c", log=log)
    got = []
    async with p.stream() as items:
        async for x in items:
            got.append(x)
            if len(got) == 3:
                break
    assert got == [0, 2, 4]
    assert sorted(log) == ["a closed", "b closed", "c closed", "source closed"]
    assert log[0] == "c closed", "downstream closes first"


async def test_cancellation_closes_every_stage() -> None:
    log: list[Any] = []
    p = count_up(log=log) | closing(tag="a", log=log) | slow_each()
    with anyio.move_on_after(0.05):
        await p.collect()
    assert sorted(log) == ["a closed", "source closed"]


@segment
async def slow_each(items: AsyncIterator[int]) -> AsyncIterator[int]:
    async for x in items:
        await anyio.sleep(0.01)
        yield x


async def test_consumer_exception_closes_stages() -> None:
    log: list[Any] = []
    with pytest.raises(RuntimeError, match="consumer"):
        async with (count_up(log=log) | closing(tag="a", log=log)).stream() as items:
            async for _ in items:
                raise RuntimeError("consumer failed")
    assert sorted(log) == ["a closed", "source closed"]


async def test_no_thread_task_or_fd_left_after_100_runs() -> None:
    p = count_up() | add(n=1) | sync_double(blocking=True) | take3()
    await p.collect()  # warm the worker-thread pool
    gc.collect()
    tasks_before = _live_tasks()
    threads_before = threading.active_count()
    fds_before = open_fds()
    for _ in range(100):
        assert await p.collect() == [2, 4, 6]
    gc.collect()
    assert threading.active_count() <= threads_before
    assert open_fds() <= fds_before
    assert _live_tasks() <= tasks_before, "tasks left behind"


def _live_tasks() -> int:
    import sniffio

    if sniffio.current_async_library() == "asyncio":
        import asyncio

        return len([t for t in asyncio.all_tasks() if not t.done()])
    import trio

    root = trio.lowlevel.current_root_task()
    assert root is not None

    def count(task: Any) -> int:
        return 1 + sum(count(child) for nursery in task.child_nurseries for child in nursery.child_tasks)

    return count(trio.lowlevel.current_task())


# --- field segments ---------------------------------------------------------------


@field_segment
def domain(email: str) -> str:
    return email.split("@")[1]


@field_segment(multi_emit=True)
def words(text: str) -> list[str]:
    return text.split()


async def test_field_segment_semantics() -> None:
    rows = [{"user": {"email": "a@x.org"}}, {"user": {"email": "b@y.org"}}]
    assert await domain(field="user.email").collect(rows) == ["x.org", "y.org"]
    out = await domain(field="user.email", set_as="d").collect([dict(r) for r in rows])
    assert [r["d"] for r in out] == ["x.org", "y.org"]
    assert await domain(field="_").collect(["q@z.com"]) == ["z.com"]
    multi = await words(field="t", set_as="w").collect([{"t": "a b"}])
    assert multi == [{"t": "a b", "w": "a"}, {"t": "a b", "w": "b"}]
    with pytest.raises(KeyError, match=r"user\.mail"):
        await domain(field="user.mail").collect(rows)


async def test_async_field_function_and_class() -> None:
    @field_segment(field="n")
    async def slow_square(n: int) -> int:
        await anyio.sleep(0)
        return n * n

    class Neg(AbstractFieldSegment):
        def process_value(self, value: Any) -> Any:
            return -value

    assert await slow_square().collect([{"n": 3}]) == [9]
    assert await Neg(field="n", set_as="m").collect([{"n": 1}]) == [{"n": 1, "m": -1}]


# --- statistics --------------------------------------------------------------------


async def test_stats_count_items_and_time_per_stage() -> None:
    p = count_up() | add(n=1) | drop_odd() | take3()
    run = p.stream(stats="timed")
    async with run as items:
        got = [x async for x in items]
    assert got == [2, 4, 6]
    snap = run.stats()
    names = [s.name for s in snap.stages]
    assert names == ["count_up", "add", "drop_odd", "take3"]
    by = {s.name: s for s in snap.stages}
    assert by["add"].items_in == by["count_up"].items_out
    assert by["drop_odd"].items_out == 3 and by["take3"].items_out == 3
    assert by["drop_odd"].items_in >= 5
    assert all(s.time_s >= 0 for s in snap.stages) and not snap.running
    assert sum(s.time_s for s in snap.stages) > 0
    with pytest.raises(ValueError, match="stats must be"):
        p.stream(stats="yes")
    assert "drop_odd" in snap.format()


async def test_stats_off_by_default_and_errors_counted() -> None:
    run = (count_up() | explode_on(bad=2, name="boom")).stream(stats=True)
    with pytest.raises(ValueError):
        async with run as items:
            async for _ in items:
                pass
    assert {s.name: s.errors for s in run.stats().stages}["boom"] == 1
    plain = (count_up() | take3()).stream()
    async with plain as items:
        assert [x async for x in items] == [0, 1, 2]
    assert plain.stats().stages == ()


async def test_stats_reporter_and_thread_buffer() -> None:
    seen: list[Any] = []
    p = count_up() | sync_double(blocking=True) | take3()
    async with p.stream(on_stats=seen.append, stats_every=0.01) as items:
        assert [x async for x in items] == [0, 2, 4]
    assert seen and not seen[-1].running
    stage = {s.name: s for s in seen[-1].stages}["sync_double"]
    assert stage.buffer_capacity is not None and stage.buffer_capacity > 0


@source
async def ticking(started: Any = None) -> AsyncIterator[int]:
    """0, 1, 2 ... with a checkpoint per item; after 100 items, sets *started* and waits forever."""
    for i in range(100):
        await anyio.lowlevel.checkpoint()
        yield i
    if started is not None:
        started.set()
    await anyio.sleep_forever()


async def test_final_snapshot_and_no_error_when_cancelled_inside_the_loop() -> None:
    seen: list[Any] = []
    with anyio.CancelScope() as scope:
        async with (ticking() | add(n=0)).stream(on_stats=seen.append) as items:
            async for x in items:
                if x == 10:
                    scope.cancel()
    assert scope.cancelled_caught
    assert seen and not seen[-1].running
    assert all(s.errors == 0 for s in seen[-1].stages), seen[-1].format()


async def test_final_snapshot_and_no_error_when_cancelled_from_outside() -> None:
    seen: list[Any] = []
    started = anyio.Event()

    async def consume() -> None:
        async with (ticking(started=started) | add(n=0)).stream(on_stats=seen.append) as items:
            async for _ in items:
                pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(consume)
        await started.wait()
        tg.cancel_scope.cancel()
    assert seen and not seen[-1].running
    assert [s.items_out for s in seen[-1].stages] == [100, 100]
    assert all(s.errors == 0 for s in seen[-1].stages), seen[-1].format()


def outs(snap: Any) -> dict[str, tuple[int, int]]:
    return {s.name: (s.items_in, s.items_out) for s in snap.stages}


async def test_stats_exact_mid_run_with_an_item_in_flight(speedups: str) -> None:
    gate = anyio.Event()
    waiting = anyio.Event()

    @source
    async def three_then_wait() -> AsyncIterator[int]:
        yield 0
        yield 1
        yield 2
        waiting.set()
        await gate.wait()
        yield 3

    run = (three_then_wait() | add(n=0) | drop_odd() | add(n=0)).stream(stats=True)
    got = []
    async with anyio.create_task_group() as tg, run as items:

        async def look() -> None:
            await waiting.wait()  # every stage is now waiting on the source's 4th item
            snap = run.stats()
            assert outs(snap) == {
                "three_then_wait": (0, 3),
                "add": (2, 2),  # the second add's figures win the name; checked by position below
                "drop_odd": (3, 2),
            }
            assert [s.items_out for s in snap.stages] == [3, 3, 2, 2]
            gate.set()

        tg.start_soon(look)
        async for x in items:
            got.append(x)
    assert got == [0, 2]
    assert [s.items_out for s in run.stats().stages] == [4, 4, 2, 2]


async def test_stats_exact_when_a_stage_fails_or_stops_early(speedups: str) -> None:
    run = (count_up() | add(n=0) | explode_on(bad=5, name="boom") | add(n=0)).stream(stats=True)
    with pytest.raises(ValueError):
        async with run as items:
            async for _ in items:
                pass
    assert [s.items_out for s in run.stats().stages] == [6, 6, 5, 5]

    run = (count_up() | add(n=0) | take3() | add(n=0)).stream(stats=True)
    async with run as items:
        assert [x async for x in items] == [0, 1, 2]
    assert [s.items_out for s in run.stats().stages] == [3, 3, 3, 3]

    @segment
    async def closes_its_input(items: AsyncIterator[int]) -> AsyncIterator[int]:
        async with aclosing(items) as inp:  # type: ignore[type-var]
            async for x in inp:
                yield x
                if x == 4:
                    break
        yield -1

    run = (count_up() | add(n=0) | closes_its_input() | add(n=0)).stream(stats=True)
    async with run as items:
        assert [x async for x in items] == [0, 1, 2, 3, 4, -1]
    assert [s.items_out for s in run.stats().stages] == [5, 5, 6, 6]

    run = (count_up() | add(n=0)).stream(stats=True)
    async with run as items:
        async for x in items:
            if x == 9:
                break
    assert [s.items_out for s in run.stats().stages] == [10, 10]


async def test_stats_inputs_counted(speedups: str) -> None:
    async def agen() -> AsyncIterator[int]:
        for i in range(7):
            yield i

    for data in (range(7), [0, 1, 2, 3, 4, 5, 6], (0, 1, 2, 3, 4, 5, 6), iter(range(7)), agen()):
        run = add(n=0).stream(data, stats=True)
        async with run as items:
            assert [x async for x in items] == list(range(7))
        assert [s.items_out for s in run.stats().stages] == [7, 7], data


def test_sampler_adds_time_to_the_innermost_stage_frame() -> None:
    import sys

    from talkpipe_async._core._sampler import Sampler
    from talkpipe_async._core._stats import StageStats

    outer, inner = StageStats("outer"), StageStats("inner")
    frames: dict[Any, StageStats] = {}
    sampler = Sampler(frames)

    def inner_gen() -> Iterator[None]:
        sampler.sample(sys._current_frames(), 0.5)  # taken while both generators run, this one innermost
        del frames[inner_gen_obj.gi_frame]
        sampler.sample(sys._current_frames(), 0.25)
        yield

    def outer_gen() -> Iterator[None]:
        yield from inner_gen_obj

    inner_gen_obj = inner_gen()
    outer_gen_obj = outer_gen()
    frames.update({outer_gen_obj.gi_frame: outer, inner_gen_obj.gi_frame: inner})
    next(outer_gen_obj)
    assert (inner.sampled_s, outer.sampled_s) == (0.5, 0.25)


def burn(seconds: float) -> None:
    """Keep the CPU busy (real work for the sampler to see; not a wait)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def test_stats_sample_each_stages_own_running_time(speedups: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from talkpipe_async._core import _sampler

    monkeypatch.setattr(_sampler, "INTERVAL", 0.005)  # many samples in a short test

    @segment
    async def busy(items: AsyncIterator[int]) -> AsyncIterator[int]:
        async for x in items:
            burn(0.04)
            yield x

    @segment
    def busy_in_thread(items: Iterable[int]) -> Iterator[int]:
        for x in items:
            burn(0.04)
            yield x

    run = (busy() | add(n=0) | busy_in_thread(blocking=True) | add(n=0)).stream(range(5), stats=True)
    async with run as items:
        assert [x async for x in items] == list(range(5))
    snap = run.stats()
    by = [s.time_s for s in snap.stages]
    assert [s.name for s in snap.stages] == ["input", "busy", "add", "busy_in_thread", "add"]
    # each busy stage ran about 0.2 s; the sampler (every 5 ms here) sees most of it, the trivial stages next to nothing
    assert by[1] > 0.1 and by[3] > 0.1, snap.format()
    assert by[0] + by[2] + by[4] < 0.05, snap.format()
    assert not [t for t in threading.enumerate() if t.name == "talkpipe stats sampler"], "stopped with the run"


def test_stats_on_sync_prefix_in_loop() -> None:
    @source
    def numbers() -> Iterator[int]:
        yield from range(4)

    async def main() -> Any:
        run = (numbers() | sync_double() | add(n=0)).stream(stats=True)
        async with run as items:
            assert [x async for x in items] == [0, 2, 4, 6]
        return run.stats()

    snap = anyio.run(main)
    assert [(s.name, s.items_out) for s in snap.stages] == [("numbers", 4), ("sync_double", 4), ("add", 4)]


async def test_metadata_passes_a_sync_filter_that_drops_everything() -> None:
    @source
    def forever() -> Iterator[Any]:
        i = 0
        while True:
            if i % 5 == 0:
                yield Flush(n=i)
            yield i
            i += 1

    @segment
    def drop_everything(items: Iterable[Any]) -> Iterator[Any]:
        for _ in items:
            if False:
                yield _

    log: list[Any] = []
    with anyio.fail_after(5):
        await (forever() | sync_double() | drop_everything() | flush_recorder(log=log, stop=3)).collect()
    assert [e for e in log if e[0] == "got"] == [("got", "flush0"), ("got", "flush5"), ("got", "flush10")]
