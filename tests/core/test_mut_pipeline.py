"""The pipeline object and one run of it (``talkpipe_async._core._pipeline``, ``_pipeline_run``).

Pinned from what a user relies on: how ``|`` builds a pipeline (flattened, fused neighbours, the refusals and their
texts), how each way of consuming it behaves (``stream()``, ``collect()``, ``as_function()``, ``iter_sync()`` and the
blocking delegates, with their defaults), and what a run reports (``stats()``, ``metadata_dropped``, the periodic and
final snapshots, the errors counted per stage) and how it closes (every stage downstream first, the run context
left, even when the run fails to start). Every pipeline is built inside its test.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import sniffio

from talkpipe_async import AbstractSegment, AbstractSource, Flush, Pipeline, PipelineRun, error_context, segment, source
from talkpipe_async._core import _sampler
from talkpipe_async._core._run import _current, current_run
from talkpipe_async.operators import map as tmap
from tests.helpers.sources import numbers

pytestmark = pytest.mark.anyio


def inc(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return 2 * x


@segment
async def add(items: AsyncIterator[int], n: int = 1) -> AsyncIterator[int]:
    async for x in items:
        yield x + n


@segment(process_metadata=True)
async def seen_by(items: AsyncIterator[Any], log: list[Any]) -> AsyncIterator[Any]:
    async for x in items:
        log.append(x)
        yield x


@segment
def sync_add(items: Iterable[int], n: int = 1) -> Iterator[int]:
    for x in items:
        yield x + n


@segment(process_metadata=True)
def sync_seen_by(items: Iterable[Any], log: list[Any]) -> Iterator[Any]:
    for x in items:
        log.append(x)
        yield x


@segment(blocking=True)
def thread_add(items: Iterable[int], n: int = 1) -> Iterator[int]:
    for x in items:
        yield x + n


@segment
def sync_closing(items: Iterable[Any], name: str, log: list[str]) -> Iterator[Any]:
    try:
        for x in items:  # noqa: UP028 - `yield from` would close the stage before it first
            yield x
    finally:
        log.append(name)


@segment
async def async_closing(items: AsyncIterator[Any], name: str, log: list[str]) -> AsyncIterator[Any]:
    try:
        async for x in items:
            yield x
    finally:
        log.append(name)


@segment
def sync_fails_on(items: Iterable[int], bad: int) -> Iterator[int]:
    for x in items:
        if x == bad:
            raise ValueError(f"bad item {x}")
        yield x


@segment
async def fails_on(items: AsyncIterator[int], bad: int) -> AsyncIterator[int]:
    async for x in items:
        if x == bad:
            raise ValueError(f"bad item {x}")
        yield x


@source
def sync_count(n: int, log: list[str] | None = None) -> Iterator[int]:
    try:
        for i in range(n):  # noqa: UP028 - kept like the stages above
            yield i
    finally:
        if log is not None:
            log.append("sync_count")


@source
def sync_count_fails(n: int) -> Iterator[int]:
    yield from range(n)
    raise ValueError("the source failed")


@source(blocking=True)
def thread_count(n: int) -> Iterator[int]:
    yield from range(n)


@source
async def count(n: int) -> AsyncIterator[int]:
    for i in range(n):
        await anyio.lowlevel.checkpoint()
        yield i


@source
async def with_metadata() -> AsyncIterator[Any]:
    yield Flush(n=0)
    yield 1
    yield Flush(n=1)
    yield 2


@segment
async def which_loop(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for _ in items:
        yield sniffio.current_async_library()


# ---- building -------------------------------------------------------------------------------------------------


def test_pipe_flattens_and_keeps_the_order_of_its_parts() -> None:
    """``a | b`` and ``Pipeline(a, b)`` hold the stages in order, nested pipelines flattened; the parts are unchanged;
    ``repr`` joins the stage labels with `` | ``."""
    a, b, c = add(n=1), sync_add(n=2), add(n=3)
    ab = a | b
    abc = ab | c
    assert abc.stages == (a, b, c)
    assert ab.stages == (a, b)
    assert isinstance(abc.stages, tuple)
    assert Pipeline(a, Pipeline(b, c)).stages == (a, b, c)
    assert repr(abc) == "add | sync_add | add"
    assert repr(Pipeline(a)) == "add"


def test_a_talkpipe_callable_before_a_pipeline_comes_first() -> None:
    """A plain callable segment on the left of ``|`` (``__ror__``) is the first stage; on the right, the last."""

    def tp(items: Iterable[int]) -> Iterator[int]:
        for x in items:
            yield x * 10

    p = tp | (add(n=1) | add(n=2))
    assert [s.label for s in p.stages] == ["tp", "add", "add"]
    q = add(n=1) | tp
    assert [s.label for s in q.stages] == ["add", "tp"]
    assert q.is_sync is False
    assert list((tp | Pipeline(sync_add(n=1))).iter_sync([1, 2])) == [11, 21]


def test_neighbouring_fusable_stages_fuse_only_with_the_stage_just_before() -> None:
    """Fusable operators next to each other become one stage (labelled ``a | b``); a stage in between keeps them
    apart, and a pipeline joined to another fuses across the join."""
    fused = tmap(inc) | tmap(double)
    assert len(fused.stages) == 1
    assert fused.stages[0].label == "map(inc) | map(double)"
    apart = tmap(inc) | add(n=0) | tmap(double)
    assert [s.label for s in apart.stages] == ["map(inc)", "add", "map(double)"]
    joined = Pipeline(tmap(inc), add(n=0)) | Pipeline(tmap(double), tmap(inc))
    assert [s.label for s in joined.stages] == ["map(inc)", "add", "map(double) | map(inc)"]
    three = Pipeline(tmap(inc), tmap(double), tmap(inc))
    assert [s.label for s in three.stages] == ["map(inc) | map(double) | map(inc)"]
    assert [s.label for s in Pipeline(sync_add(n=0), tmap(inc)).stages] == ["sync_add", "map(inc)"]


async def test_fused_and_unfused_stages_give_the_same_items() -> None:
    """Fusion changes nothing a consumer sees."""
    assert await (tmap(inc) | add(n=0) | tmap(double)).collect([1, 2]) == [4, 6]
    assert await (tmap(inc) | tmap(double)).collect([1, 2]) == [4, 6]


def test_building_refuses_a_source_after_the_start_and_an_empty_pipeline() -> None:
    """A source can only start a pipeline (the error names it and its position); a pipeline needs a stage."""
    with pytest.raises(TypeError) as info:
        add(n=1) | add(n=2) | count(3)  # type: ignore[operator]
    assert str(info.value) == "source 'count' can only start a pipeline (it is at position 2)"
    with pytest.raises(TypeError) as info:
        Pipeline(add(n=1), count(3))
    assert str(info.value) == "source 'count' can only start a pipeline (it is at position 1)"
    with pytest.raises(ValueError) as info2:
        Pipeline()
    assert str(info2.value) == "a pipeline needs at least one stage"
    assert [s.label for s in (count(3) | add(n=1)).stages] == ["count", "add"]


def test_has_source_and_is_sync() -> None:
    """``has_source`` is about the first stage; ``is_sync`` needs every stage to be sync."""
    assert Pipeline(count(1)).has_source is True
    assert Pipeline(add(n=1)).has_source is False
    assert Pipeline(sync_count(1), sync_add(n=1)).is_sync is True
    assert Pipeline(sync_count(1), add(n=1)).is_sync is False
    assert Pipeline(add(n=1), sync_add(n=1)).is_sync is False


async def test_a_bare_async_for_is_refused_with_the_way_to_do_it() -> None:
    """``async for x in pipeline`` cannot close the stages: refused, pointing at ``stream()``."""
    with pytest.raises(TypeError) as info:
        async for _ in Pipeline(count(1)):
            pass
    assert str(info.value) == (
        "a bare `async for` cannot close the pipeline's stages when the loop stops early; "
        "use `async with pipeline.stream() as items: async for x in items: ...`"
    )


# ---- stream(), collect(), as_function() --------------------------------------------------------------------


async def test_stream_refuses_an_unknown_stats_mode() -> None:
    """``stats`` is False, True or ``"timed"``; anything else is refused with its value."""
    for bad in ("yes", 1.5, None):
        with pytest.raises(ValueError) as info:
            count(1).stream(stats=bad)  # type: ignore[arg-type]
        assert str(info.value) == f"stats must be False, True or 'timed', not {bad!r}"
    assert count(1).stream(stats=1) is not None  # type: ignore[call-overload]  # 1 == True


async def test_without_stats_a_run_reports_no_stages() -> None:
    """Statistics are off by default: the snapshot has no stages, and no snapshot is emitted."""
    run = (count(3) | add(n=1)).stream()
    async with run as items:
        assert [x async for x in items] == [1, 2, 3]
    snap = run.stats()
    assert snap.stages == ()
    assert snap.running is False


@pytest.mark.parametrize("how", ["stats", "timed", "every", "on_stats"])
async def test_any_statistics_option_turns_statistics_on(how: str) -> None:
    """``stats=True``, ``stats="timed"``, ``stats_every`` or ``on_stats`` alone each count items per stage."""
    seen: list[Any] = []
    options: dict[str, dict[str, Any]] = {
        "stats": {"stats": True},
        "timed": {"stats": "timed"},
        "every": {"stats_every": 3600.0, "on_stats": seen.append},
        "on_stats": {"on_stats": seen.append},
    }
    run = (count(3) | add(n=1)).stream(**options[how])
    async with run as items:
        assert [x async for x in items] == [1, 2, 3]
    snap = run.stats()
    assert [(s.name, s.items_out) for s in snap.stages] == [("count", 3), ("add", 3)]
    if how in ("every", "on_stats"):
        assert len(seen) == 1 and seen[0].running is False
        assert [(s.name, s.items_out) for s in seen[0].stages] == [("count", 3), ("add", 3)]


async def test_stream_input_metadata_and_collect() -> None:
    """``stream(input)`` reads the input; ``metadata=True`` hands metadata to the consumer, by default it is
    dropped and counted; ``collect`` passes ``metadata`` on."""
    f0 = Flush(n=0)
    run = add(n=1).stream([f0, 1, 2], metadata=True)
    async with run as items:
        assert [x async for x in items] == [f0, 2, 3]
    assert run.metadata_dropped == 0
    run = add(n=1).stream([f0, 1, 2])
    async with run as items:
        assert [x async for x in items] == [2, 3]
    assert run.metadata_dropped == 1
    assert await Pipeline(add(n=1)).collect([f0, 1], metadata=True) == [f0, 2]
    assert await Pipeline(add(n=1)).collect([f0, 1]) == [2]
    run = Pipeline(add(n=1)).stream([f0, 1])
    async with run as items:
        assert [x async for x in items] == [2]
    assert await Pipeline(with_metadata()).collect(metadata=True) == [Flush(n=0), 1, Flush(n=1), 2]


async def test_as_function_defaults_and_options() -> None:
    """``as_function()`` takes an iterable and returns a list; ``single_in`` wraps one item, ``single_out`` returns
    the only item (any other count is an error naming it); a pipeline with a source ignores the argument."""
    p = Pipeline(add(n=1))
    f = p.as_function()
    assert await f([1, 2]) == [2, 3]
    assert await p.as_function(single_in=True)(5) == [6]
    assert await p.as_function(single_in=True, single_out=True)(5) == 6
    assert await p.as_function(single_out=True)([7]) == 8
    with pytest.raises(ValueError) as info:
        await p.as_function(single_out=True)([1, 2])
    assert str(info.value) == "expected exactly 1 output item, got 2"
    with pytest.raises(ValueError) as info:
        await p.as_function(single_out=True)([])
    assert str(info.value) == "expected exactly 1 output item, got 0"
    g = (count(2) | add(n=1)).as_function()
    assert await g() == [1, 2]
    assert await g([10]) == [1, 2]  # type: ignore[list-item]
    assert await (count(1) | add(n=1)).as_function(single_in=True, single_out=True)(99) == 1  # type: ignore[arg-type]


async def test_stream_input_checks() -> None:
    """A source takes no input and a segment needs one: both refused when the block is entered, with their texts."""
    with pytest.raises(TypeError) as info:
        async with count(1).stream([1]):  # type: ignore[list-item]
            pass
    assert str(info.value) == "this pipeline starts with a source and takes no input"
    with pytest.raises(TypeError) as info:
        async with add(n=1).stream():
            pass
    assert str(info.value) == "this pipeline starts with segment 'add': give stream() an input"
    assert _current.get() is None


# ---- iter_sync ------------------------------------------------------------------------------------------------


def test_iter_sync_runs_sync_stages_and_checks_its_input() -> None:
    """``iter_sync`` runs sync stages with no loop; it refuses an async stage (naming it), input to a source and no
    input to a segment."""
    assert list((sync_count(3) | sync_add(n=1)).iter_sync()) == [1, 2, 3]
    assert list(sync_add(n=1).iter_sync([5, 6])) == [6, 7]
    assert list((sync_add(n=1) | sync_add(n=10)).iter_sync(range(2))) == [11, 12]
    with pytest.raises(TypeError) as info:
        (sync_add(n=1) | add(n=1)).iter_sync([1])
    assert str(info.value) == "iter_sync() needs sync stages, and 'add' is async: use stream()"
    with pytest.raises(TypeError) as info:
        (add(n=1) | sync_add(n=1)).iter_sync([1])
    assert str(info.value) == "iter_sync() needs sync stages, and 'add' is async: use stream()"
    with pytest.raises(TypeError) as info:
        sync_count(1).iter_sync([1])  # type: ignore[list-item]
    assert str(info.value) == "this pipeline starts with a source and takes no input"
    with pytest.raises(TypeError) as info:
        sync_add(n=1).iter_sync()
    assert str(info.value) == "this pipeline starts with segment 'sync_add': give it input"


def test_iter_sync_metadata_from_the_input_or_the_source() -> None:
    """Metadata in the input (or from a sync source) reaches a stage that takes it and, with ``metadata=True``, the
    consumer; by default the consumer gets none of it."""
    f0 = Flush(n=0)
    log: list[Any] = []
    assert list((sync_seen_by(log=log) | sync_add(n=1)).iter_sync([f0, 1])) == [2]
    assert log == [f0, 1]
    log.clear()
    assert list((sync_add(n=1) | sync_seen_by(log=log)).iter_sync([f0, 1], metadata=True)) == [f0, 2]
    assert log == [f0, 2]
    assert list((sync_add(n=1) | sync_add(n=1)).iter_sync([f0, 1], metadata=True)) == [f0, 3]
    assert list(Pipeline(sync_add(n=1)).iter_sync([f0, 1], metadata=True)) == [f0, 2]
    assert list(Pipeline(sync_add(n=1)).iter_sync([f0, 1])) == [2]
    assert list(sync_seen_by(log=[]).iter_sync([f0, 1])) == [1]
    assert list(sync_seen_by(log=[]).iter_sync([f0, 1], metadata=True)) == [f0, 1]

    @source
    def sync_meta() -> Iterator[Any]:
        yield Flush(n=0)
        yield 1

    assert list(sync_meta().iter_sync()) == [1]
    assert list(sync_meta().iter_sync(metadata=True)) == [Flush(n=0), 1]
    log.clear()
    assert list((sync_meta() | sync_seen_by(log=log) | sync_add(n=1)).iter_sync()) == [2]
    assert log == [Flush(n=0), 1]


def test_iter_sync_closes_every_stage_downstream_first_when_left() -> None:
    """Leaving the loop early (closing the iterator) closes every stage, source included, the last stage first."""
    log: list[str] = []
    it = (sync_count(10, log=log) | sync_closing("a", log) | sync_closing("b", log)).iter_sync()
    assert next(it) == 0
    it.close()  # type: ignore[attr-defined]
    assert log == ["b", "a", "sync_count"]


def test_iter_sync_errors_name_the_stage_or_source() -> None:
    """An error raised in ``iter_sync`` names the stage that raised it, the source included."""
    with pytest.raises(ValueError) as info:
        list((sync_add(n=0) | sync_fails_on(2)).iter_sync([1, 2, 3]))
    ctx = error_context(info.value)
    assert ctx is not None and ctx.segment == "sync_fails_on"
    with pytest.raises(ValueError) as info:
        list((sync_count_fails(2) | sync_add(n=0)).iter_sync())
    ctx = error_context(info.value)
    assert ctx is not None and ctx.segment == "sync_count_fails"


# ---- the blocking delegates -------------------------------------------------------------------------------


def test_blocking_delegates_pass_their_options_on() -> None:
    """``run_blocking``, ``iter_blocking`` and ``as_function_blocking`` run on the given backend (asyncio by
    default), with metadata when asked, and ``iter_blocking``'s hand-over bounds default to 512 items a batch, 2048
    held and 5 ms."""
    f0 = Flush(n=0)
    plus = Pipeline(add(n=1))
    loop = Pipeline(which_loop())
    assert plus.run_blocking([f0, 1]) == [2]
    assert plus.run_blocking([f0, 1], metadata=True) == [f0, 2]
    assert loop.run_blocking([0]) == ["asyncio"]
    assert loop.run_blocking([0], backend="trio") == ["trio"]
    stream = plus.iter_blocking([1])
    assert (stream.backend, stream.batch, stream.buffer, stream.latency) == ("asyncio", 512, 2048, 0.005)
    with stream as items:
        assert list(items) == [2]
    stream = plus.iter_blocking([f0, 1], metadata=True, backend="trio", batch=3, buffer=7, latency=0.25)
    assert (stream.backend, stream.batch, stream.buffer, stream.latency) == ("trio", 3, 7, 0.25)
    with stream as items:
        assert list(items) == [f0, 2]
    with plus.iter_blocking([f0, 1]) as items:
        assert list(items) == [2]
    with loop.iter_blocking([1]) as items:
        assert list(items) == ["asyncio"]
    f = loop.as_function_blocking()
    assert f([0, 1]) == ["asyncio", "asyncio"]
    assert loop.as_function_blocking(backend="trio", single_in=True)(0) == ["trio"]
    assert plus.as_function_blocking(single_in=True, single_out=True)(1) == 2
    assert plus.as_function_blocking(single_out=True)([1]) == 2
    assert plus.as_function_blocking(single_in=True)(1) == [2]


# ---- a run: statistics, reports, errors -----------------------------------------------------------------------


async def test_a_run_reports_running_only_inside_the_block_and_its_elapsed_time_stops() -> None:
    """``stats()`` says running inside the block, not before or after; after the block ``elapsed_s`` is fixed."""
    run = (count(3) | add(n=1)).stream(stats=True)
    assert run.stats().running is False
    assert run.stats().stages == ()
    assert run.metadata_dropped == 0
    async with run as items:
        assert run.stats().running is True
        first = run.stats().elapsed_s
        assert first >= 0.0
        assert [x async for x in items] == [1, 2, 3]
    after = run.stats()
    assert after.running is False
    await anyio.sleep(0.02)
    assert run.stats().elapsed_s == after.elapsed_s
    assert after.elapsed_s >= first


async def test_timed_and_sampled_statistics() -> None:
    """``stats="timed"`` measures each stage's time exactly (a stage that sleeps shows it), ``stats=True``
    samples it from a thread while the run goes."""

    @segment
    async def sleepy(items: AsyncIterator[int]) -> AsyncIterator[int]:
        async for x in items:
            await anyio.sleep(0.01)
            yield x

    run = (count(3) | sleepy()).stream(stats="timed")
    async with run as items:
        assert [x async for x in items] == [0, 1, 2]
    by = {s.name: s for s in run.stats().stages}
    assert by["sleepy"].time_s >= 0.025
    before = {t.name for t in threading.enumerate()}
    run = (count(3) | sleepy()).stream(stats=True)
    async with run as items:
        during = {t.name for t in threading.enumerate()} - before
        assert [x async for x in items] == [0, 1, 2]
    assert any("sampler" in name.lower() or "stats" in name.lower() for name in during), during
    assert {t.name for t in threading.enumerate()} - before == set()
    run = (count(3) | sleepy()).stream(stats="timed")
    async with run as items:
        during = {t.name for t in threading.enumerate()} - before
        assert [x async for x in items] == [0, 1, 2]
    assert not any("sampler" in name.lower() or "stats" in name.lower() for name in during), during


async def test_a_periodic_report_goes_to_on_stats_from_a_named_task_and_once_more_at_the_end() -> None:
    """``stats_every`` calls ``on_stats`` every period from a task named "talkpipe stats reporter", and once more
    with the final snapshot after the run has closed."""
    seen: list[Any] = []
    names: list[str] = []
    got_two = anyio.Event()

    def on_stats(snap: Any) -> None:
        seen.append(snap)
        if len(seen) >= 2:
            got_two.set()

    run = (count(3) | add(n=1)).stream(stats_every=0.01, on_stats=on_stats)
    async with run as items:
        names = [str(t.name) for t in anyio.get_running_tasks()]
        with anyio.fail_after(10):
            await got_two.wait()
        assert all(s.running for s in seen)
        assert [x async for x in items] == [1, 2, 3]
        during = len(seen)
    assert "talkpipe stats reporter" in names
    assert len(seen) > during
    assert seen[-1].running is False
    assert [(s.name, s.items_out) for s in seen[-1].stages] == [("count", 3), ("add", 3)]


async def test_without_a_hook_the_snapshot_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Without ``on_stats``, each snapshot is logged at INFO on ``talkpipe_async.stats``, naming the pipeline and
    holding the formatted table; ``stats=True`` alone logs nothing."""
    caplog.set_level(logging.INFO, logger="talkpipe_async.stats")
    run = (count(2) | add(n=1)).stream(stats=True)
    async with run as items:
        assert [x async for x in items] == [1, 2]
    assert [r for r in caplog.records if r.name == "talkpipe_async.stats"] == []
    run = (count(2) | add(n=1)).stream(stats_every=3600.0)
    async with run as items:
        assert [x async for x in items] == [1, 2]
    records = [r for r in caplog.records if r.name == "talkpipe_async.stats"]
    assert len(records) == 1
    assert records[0].levelno == logging.INFO
    assert records[0].getMessage() == f"pipeline count | add\n{run.stats().format()}"


async def test_a_failing_final_hook_is_raised_unless_the_run_was_cancelled(caplog: pytest.LogCaptureFixture) -> None:
    """An ``on_stats`` hook that fails on the final snapshot raises from the block; when the run was cancelled
    from outside, the cancellation goes on and the failure is logged instead."""

    def bad(snap: Any) -> None:
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        async with (count(2) | add(n=1)).stream(on_stats=bad) as items:
            assert [x async for x in items] == [1, 2]
    caplog.set_level(logging.ERROR, logger="talkpipe_async.stats")
    with anyio.CancelScope() as scope:
        async with (count(2) | add(n=1)).stream(on_stats=bad) as items:
            async for _ in items:
                scope.cancel()
                await anyio.lowlevel.checkpoint()
    assert scope.cancelled_caught
    msgs = [r.getMessage() for r in caplog.records if r.name == "talkpipe_async.stats"]
    assert msgs == ["the on_stats hook failed on the final snapshot of a cancelled run"]


async def test_errors_are_counted_once_for_the_stage_that_raised() -> None:
    """A stage's error leaving the block is named with the stage and counted once for it in the statistics; the
    consumer's own error is no stage's; an error of a thread stage is counted for it too."""
    run = (count(5) | fails_on(2) | add(n=0)).stream(stats=True)
    with pytest.raises(ValueError) as info:
        async with run as items:
            async for _ in items:
                pass
    ctx = error_context(info.value)
    assert ctx is not None and ctx.segment == "fails_on"
    assert {s.name: s.errors for s in run.stats().stages} == {"count": 0, "fails_on": 1, "add": 0}

    run = (count(5) | add(n=0)).stream(stats=True)
    with pytest.raises(KeyError):
        async with run as items:
            async for _ in items:
                raise KeyError("the consumer's")
    assert {s.name: s.errors for s in run.stats().stages} == {"count": 0, "add": 0}

    @segment(blocking=True)
    def thread_fails(items: Iterable[int]) -> Iterator[int]:
        for x in items:
            if x == 1:
                raise ValueError("thread stage failed")
            yield x

    run = (count(5) | thread_fails() | add(n=0)).stream(stats=True)
    with pytest.raises(ValueError) as info:
        async with run as items:
            async for _ in items:
                pass
    ctx = error_context(info.value)
    assert ctx is not None and ctx.segment == "thread_fails"
    assert {s.name: s.errors for s in run.stats().stages} == {"count": 0, "thread_fails": 1, "add": 0}


async def test_a_cleanup_error_raised_when_the_block_leaves_is_counted_for_its_stage() -> None:
    """A stage whose ``finally`` fails while the run closes: the block raises that error, named and counted."""

    @segment
    async def bad_cleanup(items: AsyncIterator[int]) -> AsyncIterator[int]:
        try:
            async for x in items:
                yield x
        finally:
            raise OSError("cleanup failed")

    run = (count(5) | bad_cleanup() | add(n=0)).stream(stats=True)
    with pytest.raises(OSError) as info:
        async with run as items:
            async for _ in items:
                break
    ctx = error_context(info.value)
    assert ctx is not None and ctx.segment == "bad_cleanup"
    assert {s.name: s.errors for s in run.stats().stages} == {"count": 0, "bad_cleanup": 1, "add": 0}


async def test_a_cancellation_is_not_counted_as_a_stage_error() -> None:
    """A run cancelled from outside counts no error."""
    run = (count(100) | add(n=0)).stream(stats=True)
    with anyio.CancelScope() as scope:
        async with run as items:
            async for _ in items:
                scope.cancel()
                await anyio.lowlevel.checkpoint()
    assert scope.cancelled_caught
    assert {s.name: s.errors for s in run.stats().stages} == {"count": 0, "add": 0}


# ---- a run: closing -----------------------------------------------------------------------------------------


async def test_leaving_closes_every_stage_downstream_first_and_leaves_the_run() -> None:
    """``break`` closes every stage, the last first, before the next statement; the run context is gone after."""
    log: list[str] = []
    pipeline = count(100) | async_closing("a", log) | async_closing("b", log) | async_closing("c", log)
    async with pipeline.stream() as items:
        async for _ in items:
            assert _current.get() is not None
            break
    assert log == ["c", "b", "a"]
    assert _current.get() is None
    log.clear()
    pipeline = sync_count(100, log) | sync_closing("a", log) | sync_closing("b", log) | async_closing("c", log)
    async with pipeline.stream() as items:
        async for _ in items:
            break
    assert log == ["c", "b", "a", "sync_count"]


async def test_a_run_that_fails_to_start_closes_what_it_started() -> None:
    """When a run fails while it starts, the error is raised from ``async with`` and no run is left current."""
    with pytest.raises(TypeError):
        async with (count(2) | add(n=1)).stream([1]):  # type: ignore[list-item]
            pass
    assert _current.get() is None
    run = add(n=1).stream()
    with pytest.raises(TypeError):
        async with run:
            pass
    assert run.stats().running is False


# ---- a run: the shapes of the chain ---------------------------------------------------------------------------


async def test_sources_sync_inline_sync_in_a_thread_and_async() -> None:
    """A sync source runs inline, a blocking one in a thread, an async one as is; all give their items."""
    assert await (sync_count(3) | add(n=1)).collect() == [1, 2, 3]
    assert await Pipeline(sync_count(3)).collect() == [0, 1, 2]
    assert await (thread_count(3) | add(n=1)).collect() == [1, 2, 3]
    assert await Pipeline(thread_count(3)).collect() == [0, 1, 2]
    assert await (count(3) | sync_add(n=1)).collect() == [1, 2, 3]
    assert await (count(3) | thread_add(n=1) | sync_add(n=1)).collect() == [2, 3, 4]


async def test_inputs_sync_async_and_metadata_aware_stages() -> None:
    """An async iterable or a plain one as input; metadata goes to the stages that take it, wherever they are."""

    async def agen() -> AsyncIterator[Any]:
        for x in (Flush(n=0), 1, 2):
            yield x

    log: list[Any] = []
    assert await (add(n=1) | seen_by(log=log)).collect(agen()) == [2, 3]
    assert log == [Flush(n=0), 2, 3]
    log.clear()
    assert await (seen_by(log=log) | add(n=1)).collect(agen(), metadata=True) == [Flush(n=0), 2, 3]
    assert log == [Flush(n=0), 1, 2]
    log.clear()
    assert await (sync_add(n=1) | seen_by(log=log)).collect([Flush(n=0), 1]) == [2]
    assert log == [Flush(n=0), 2]


async def test_statistics_of_a_thread_stage_show_its_buffer() -> None:
    """A stage run in a thread reports its buffer's fill and capacity; inline stages report none."""
    run = (count(5) | thread_add(n=1) | add(n=0)).stream(stats=True)
    async with run as items:
        assert [x async for x in items] == [1, 2, 3, 4, 5]
    by = {s.name: s for s in run.stats().stages}
    assert by["thread_add"].buffer_capacity is not None and by["thread_add"].buffer_capacity > 0
    assert by["thread_add"].buffer_fill == 0
    assert by["add"].buffer_capacity is None
    assert [(s.name, s.items_out) for s in run.stats().stages] == [("count", 5), ("thread_add", 5), ("add", 5)]


async def test_metadata_is_counted_as_dropped_where_no_stage_takes_it() -> None:
    """Metadata that no stage downstream takes is dropped and counted, whatever the chain's shape."""
    for p in (
        Pipeline(with_metadata()),
        with_metadata() | add(n=0),
        with_metadata() | sync_add(n=0),
        with_metadata() | thread_add(n=0),
        with_metadata() | seen_by(log=[]),
    ):
        run = p.stream()
        async with run as items:
            assert [x async for x in items] == [1, 2]
        assert run.metadata_dropped == 2, repr(p)
        assert run.stats().metadata_dropped == 2, repr(p)


async def test_a_run_made_by_hand_has_statistics_off_by_default() -> None:
    """``PipelineRun(pipeline, input, metadata)`` is a run without statistics, reports or hook."""
    run: PipelineRun[Any] = PipelineRun(count(2) | add(n=1), None, False)
    async with run as items:
        assert [x async for x in items] == [1, 2]
    assert run.stats().stages == ()
    run = PipelineRun(Pipeline(add(n=1)), [Flush(n=0), 1], True)
    async with run as items:
        assert [x async for x in items] == [Flush(n=0), 2]


async def test_sampled_statistics_measure_a_stage_that_keeps_the_loop_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``stats=True`` a stage's own running time is sampled while the run goes: a stage that keeps running
    shows a time above zero (the stage runs until the samples have credited it, or gives up after 5 s)."""
    monkeypatch.setattr(_sampler, "INTERVAL", 0.002)
    runs: list[Any] = []

    def credited() -> bool:
        return any(s.name == "busy" and s.time_s > 0 for s in runs[0].stats().stages)

    @segment
    async def busy(items: AsyncIterator[int]) -> AsyncIterator[int]:
        async for x in items:
            end = time.monotonic() + 5
            while not credited() and time.monotonic() < end:
                time.sleep(0.001)  # the stage's own work, on the loop thread
            yield x

    runs.append((count(1) | busy()).stream(stats=True))
    async with runs[0] as items:
        assert [x async for x in items] == [0]
    assert credited()


async def test_a_failing_final_hook_does_not_hide_the_error_that_ended_the_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An error leaving the block, or a run that fails to start, is raised as itself even when the ``on_stats``
    hook fails on the final snapshot; the hook's failure is logged."""

    def bad(snap: Any) -> None:
        raise RuntimeError("hook failed")

    caplog.set_level(logging.ERROR, logger="talkpipe_async.stats")
    with pytest.raises(KeyError):
        async with (count(5) | add(n=1)).stream(on_stats=bad) as items:
            async for _ in items:
                raise KeyError("the consumer's")
    with pytest.raises(TypeError, match="takes no input"):
        async with (count(5) | add(n=1)).stream([1], on_stats=bad):  # type: ignore[list-item]
            pass

    @segment
    async def bad_cleanup(items: AsyncIterator[int]) -> AsyncIterator[int]:
        try:
            async for x in items:
                yield x
        finally:
            raise OSError("cleanup failed")

    with pytest.raises(OSError, match="cleanup failed"):
        async with (count(5) | bad_cleanup()).stream(on_stats=bad) as items:
            async for _ in items:
                break
    msgs = [r.getMessage() for r in caplog.records if r.name == "talkpipe_async.stats"]
    assert len(msgs) == 3


async def test_the_consumers_error_wins_over_a_cleanup_error(caplog: pytest.LogCaptureFixture) -> None:
    """When the block raises and a stage's ``finally`` fails while the run closes, the block's error is raised
    and the stage's is logged, not lost; only the stage's error is counted for the stage (the consumer's is no
    stage's)."""

    @segment
    async def bad_cleanup(items: AsyncIterator[int]) -> AsyncIterator[int]:
        try:
            async for x in items:
                yield x
        finally:
            raise OSError("cleanup failed")

    caplog.set_level(logging.ERROR)
    run = (count(5) | bad_cleanup()).stream(stats=True)
    with pytest.raises(KeyError):
        async with run as items:
            async for _ in items:
                raise KeyError("the consumer's")
    logged = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], OSError)]
    assert len(logged) == 1
    assert {s.name: s.errors for s in run.stats().stages} == {"count": 0, "bad_cleanup": 0}


@source
async def count_fails(n: int) -> AsyncIterator[int]:
    for i in range(n):
        await anyio.lowlevel.checkpoint()
        yield i
    raise ValueError("the source failed")


@source(blocking=True)
def thread_count_fails(n: int) -> Iterator[int]:
    yield from range(n)
    raise ValueError("the source failed")


async def test_each_kind_of_head_is_counted_under_its_name() -> None:
    """The first stage of a run's statistics is the source under its label (sync inline, in a thread, or async),
    or ``input`` for the caller's input (a plain iterable or an async one); each counts what it handed on."""

    async def agen() -> AsyncIterator[int]:
        for x in (1, 2, 3):
            yield x

    cases: list[tuple[Any, Any, str]] = [
        (sync_count(3) | add(n=0), None, "sync_count"),
        (thread_count(3) | add(n=0), None, "thread_count"),
        (count(3) | add(n=0), None, "count"),
        (Pipeline(add(n=0)), [1, 2, 3], "input"),
        (Pipeline(add(n=0)), agen(), "input"),
        (Pipeline(sync_add(n=0)), [1, 2, 3], "input"),
    ]
    for pipeline, given, head in cases:
        for mode in (True, "timed"):
            if given is not None and not isinstance(given, list):
                given = agen()
            run = pipeline.stream(given, stats=mode)
            async with run as items:
                assert len([x async for x in items]) == 3
            stages = [(s.name, s.items_out) for s in run.stats().stages]
            assert stages[0] == (head, 3), (pipeline, mode)
            assert len(stages) == 2


async def test_an_error_of_any_kind_of_source_names_it_and_is_counted() -> None:
    """A source that fails (sync inline, in a thread, or async) is named in the error and counted for it."""
    for pipeline, name in (
        (sync_count_fails(2) | add(n=0), "sync_count_fails"),
        (thread_count_fails(2) | add(n=0), "thread_count_fails"),
        (count_fails(2) | add(n=0), "count_fails"),
        (sync_count_fails(2) | sync_add(n=0) | add(n=0), "sync_count_fails"),
    ):
        run = pipeline.stream(stats=True)
        got: list[int] = []
        with pytest.raises(ValueError) as info:
            async with run as items:
                async for x in items:
                    got.append(x)
        assert got == [0, 1]
        ctx = error_context(info.value)
        assert ctx is not None and ctx.segment == name
        assert {s.name: s.errors for s in run.stats().stages}[name] == 1


async def test_every_kind_of_source_is_closed_when_the_block_is_left() -> None:
    """Leaving early closes the source too, whichever way it runs."""
    log: list[str] = []

    @source
    async def closing_count() -> AsyncIterator[int]:
        try:
            for i in range(100):
                await anyio.lowlevel.checkpoint()
                yield i
        finally:
            log.append("closing_count")

    @source(blocking=True)
    def thread_closing_count() -> Iterator[int]:
        try:
            for i in range(100):  # noqa: UP028 - kept like the stages above
                yield i
        finally:
            log.append("thread_closing_count")

    for pipeline in (
        sync_count(100, log) | add(n=0),
        closing_count() | add(n=0),
        thread_closing_count() | add(n=0),
        sync_count(100, log) | sync_add(n=0) | add(n=0),
    ):
        log.clear()
        async with pipeline.stream() as items:
            async for _ in items:
                break
        assert len(log) == 1, pipeline


@segment
def sync_drop_all(items: Iterable[int], seen: list[int]) -> Iterator[int]:
    for x in items:
        seen.append(x)
        if x < 0:  # never: this stage yields nothing
            yield x


async def test_metadata_goes_past_a_sync_stage_that_never_yields_at_once() -> None:
    """A plain sync stage between metadata and a stage that wants it passes the metadata on as soon as it asks for
    the input after it, even if it never yields: the stage downstream (or the consumer) gets it long before that
    stage has read its whole input."""
    n = 200_000
    for shape in ("consumer", "stage"):
        seen: list[int] = []
        log: list[Any] = []
        pipeline = sync_drop_all(seen) if shape == "consumer" else sync_drop_all(seen) | seen_by(log=log)
        async with pipeline.stream(itertools.chain([Flush(n=0)], range(n)), metadata=True) as items:
            async for x in items:
                assert x == Flush(n=0)
                assert len(seen) < n, shape
                break
        if shape == "stage":
            assert log == [Flush(n=0)]


async def test_an_error_escaping_a_task_of_the_run_names_the_task_and_is_counted() -> None:
    """An error that escapes a task a stage started is raised when the block leaves, with its type, named by the
    task's name (no stage frame raised it: operators name their tasks after their stage) and counted under it."""

    async def helper() -> None:
        await anyio.lowlevel.checkpoint()
        raise ValueError("the helper failed")

    @segment
    async def starts_helper(items: AsyncIterator[int]) -> AsyncIterator[int]:
        current_run().start_soon(helper, name="starts_helper")
        async for x in items:
            yield x
        await anyio.sleep_forever()

    run = (count(2) | starts_helper()).stream(stats=True)
    with pytest.raises(ValueError, match="the helper failed") as info:
        async with run as items:
            async for _ in items:
                pass
    ctx = error_context(info.value)
    assert ctx is not None and ctx.segment == "starts_helper"
    assert {s.name: s.errors for s in run.stats().stages} == {"count": 0, "starts_helper": 1}


@segment
def sync_where(items: Iterable[int], threads: list[threading.Thread]) -> Iterator[int]:
    for x in items:
        threads.append(threading.current_thread())
        yield x


@source(emits_metadata=False)
def sync_plain_count(n: int) -> Iterator[int]:
    yield from range(n)


async def test_sync_segments_after_input_that_cannot_hold_metadata_run_inline() -> None:
    """A sync segment right after a range input, or after a sync source declared ``emits_metadata=False``, runs
    inline in the loop's thread even when a stage after it takes metadata (no metadata can reach it); after input
    that may hold metadata, it runs in a worker thread so that metadata goes past it at once."""
    loop_thread = threading.current_thread()
    threads: list[threading.Thread] = []
    assert await (sync_where(threads) | seen_by(log=[])).collect(range(3)) == [0, 1, 2]
    assert threads == [loop_thread] * 3
    threads = []
    assert await (sync_plain_count(3) | sync_where(threads) | seen_by(log=[])).collect() == [0, 1, 2]
    assert threads == [loop_thread] * 3
    threads = []
    assert await (sync_where(threads) | seen_by(log=[])).collect([0, 1, 2]) == [0, 1, 2]
    assert threads and loop_thread not in threads
    threads = []
    assert await (sync_count(3) | sync_where(threads) | seen_by(log=[])).collect() == [0, 1, 2]
    assert threads and loop_thread not in threads


class SkippingSource(AbstractSource[int]):
    """A sync source that counts the records it skipped (``skipped``): inline, or in a thread when blocking."""

    def __init__(self, blocking: bool = False) -> None:
        super().__init__(blocking=blocking)
        self.skipped = 0

    def generate(self) -> Iterator[int]:
        for i in range(6):
            if i % 2:
                self.skipped += 1
            else:
                yield i


class AsyncSkippingSource(AbstractSource[int]):
    """An async source that counts the records it skipped."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped = 0

    async def generate(self) -> AsyncIterator[int]:
        for i in range(6):
            await anyio.lowlevel.checkpoint()
            if i % 2:
                self.skipped += 1
            else:
                yield i


class SkippingSegment(AbstractSegment[int, int]):
    """A sync segment that counts the items it skipped: inline, or in a thread when blocking."""

    def __init__(self, blocking: bool = False) -> None:
        super().__init__(blocking=blocking)
        self.skipped = 0

    def transform(self, items: Iterable[int]) -> Iterator[int]:
        for i in items:
            if i % 4:
                yield i
            else:
                self.skipped += 1


class AsyncSkippingSegment(AbstractSegment[int, int]):
    """An async segment that counts the items it skipped."""

    def __init__(self) -> None:
        super().__init__()
        self.skipped = 0

    async def transform(self, items: AsyncIterator[int]) -> AsyncIterator[int]:
        async for i in items:
            if i % 4:
                yield i
            else:
                self.skipped += 1


@pytest.mark.parametrize("mode", [True, "timed"])
async def test_every_kind_of_stage_reports_its_own_skipped_counter(mode: Any) -> None:
    """A source or segment that counts what it skipped (``skipped``) has that figure in its statistics, whether it
    runs inline, in a thread or as an async generator; the input and stages without the counter report None."""
    for src in (SkippingSource(), SkippingSource(blocking=True), AsyncSkippingSource()):
        for seg_kind in ("inline", "thread", "async", "after-async"):
            seg: Any
            if seg_kind == "async":
                seg = AsyncSkippingSegment()
            else:
                seg = SkippingSegment(blocking=seg_kind == "thread")
            pipeline = src | add(n=0) | seg if seg_kind == "after-async" else src | seg
            run = pipeline.stream(stats=mode)
            async with run as items:
                assert [x async for x in items] == [2]
            skipped = {s.name: s.skipped for s in run.stats().stages}
            assert skipped[src.label] == 3, (src, seg_kind)
            assert skipped[seg.label] == 2, (src, seg_kind)
            src.skipped = 0
    run = Pipeline(SkippingSegment()).stream([0, 1, 2], stats=mode)
    async with run as items:
        assert [x async for x in items] == [1, 2]
    assert [(s.name, s.skipped) for s in run.stats().stages] == [("input", None), ("SkippingSegment", 1)]


@segment(blocking=True, process_metadata=True)
def thread_seen_by(items: Iterable[Any], log: list[Any]) -> Iterator[Any]:
    for x in items:
        log.append(x)
        yield x


@source(blocking=True)
def thread_with_metadata() -> Iterator[Any]:
    yield Flush(n=0)
    yield 1


async def test_metadata_and_stages_run_in_threads() -> None:
    """Metadata goes past a plain stage run in a thread to a later stage (or consumer) that takes it, reaches a
    thread stage that takes it, and comes out of a source run in a thread."""
    f0, f1 = Flush(n=0), Flush(n=1)
    log: list[Any] = []
    assert await (with_metadata() | thread_add(n=0) | seen_by(log=log)).collect() == [1, 2]
    assert log == [f0, 1, f1, 2]
    assert await (with_metadata() | thread_add(n=0)).collect(metadata=True) == [f0, 1, f1, 2]
    log = []
    assert await (with_metadata() | thread_seen_by(log=log) | add(n=0)).collect() == [1, 2]
    assert log == [f0, 1, f1, 2]
    log = []
    assert await (with_metadata() | add(n=0) | thread_seen_by(log=log)).collect(metadata=True) == [f0, 1, f1, 2]
    assert log == [f0, 1, f1, 2]
    assert await Pipeline(thread_with_metadata()).collect(metadata=True) == [f0, 1]
    log = []
    assert await (thread_with_metadata() | add(n=0) | seen_by(log=log)).collect() == [1]
    assert log == [f0, 1]
    run = (thread_with_metadata() | add(n=0)).stream()
    async with run as items:
        assert [x async for x in items] == [1]
    assert run.metadata_dropped == 1


async def test_stages_upstream_of_one_a_task_is_running_are_closed_too() -> None:
    """A stage that a task of the run is running when the block is left (here the task feeding a thread stage,
    waiting inside the stage) is left to that task; the stages upstream of it are still closed before the next
    statement."""
    log: list[str] = []
    waiting = anyio.Event()

    @source
    async def src() -> AsyncIterator[int]:
        try:
            for i in range(100):
                await anyio.lowlevel.checkpoint()
                yield i
        finally:
            log.append("src")

    @segment
    async def waits_after_each(items: AsyncIterator[int]) -> AsyncIterator[int]:
        try:
            async for x in items:
                yield x
                waiting.set()
                await anyio.Event().wait()  # never set: the run's end cancels it
        finally:
            log.append("waits_after_each")

    async with (src() | waits_after_each() | thread_add(n=0)).stream() as items:
        async for _ in items:
            with anyio.fail_after(10):
                await waiting.wait()
            break
    assert sorted(log) == ["src", "waits_after_each"]


@source
def sync_with_metadata() -> Iterator[Any]:
    yield Flush(n=0)
    yield 1
    yield Flush(n=1)
    yield 2


async def test_metadata_from_a_sync_head_through_every_next_stage() -> None:
    """Metadata from a sync source or from a plain input list, past the sync stages fused after it, goes to the
    stages that take it and to the consumer only when asked; plain stages never see it; what no one takes is
    dropped and counted."""
    f0, f1 = Flush(n=0), Flush(n=1)
    heads: list[tuple[Any, Any]] = [
        (lambda *ops: Pipeline(sync_with_metadata(), *ops), None),
        (lambda *ops: Pipeline(*ops), [f0, 1, f1, 2]),
    ]
    for head, given in heads:
        # only sync stages: stripped at the end unless the consumer asks for it
        for metadata in (False, True):
            run = head(sync_add(n=1)).stream(given, metadata=metadata)
            async with run as items:
                got = [x async for x in items]
            assert got == ([f0, 2, f1, 3] if metadata else [2, 3])
            assert run.metadata_dropped == (0 if metadata else 2)
        # then a plain async stage: stripped in between, sent around it to a later taker or the consumer
        for metadata in (False, True):
            run = head(sync_add(n=1), add(n=10)).stream(given, metadata=metadata)
            async with run as items:
                got = [x async for x in items]
            assert got == ([f0, 12, f1, 13] if metadata else [12, 13])
            assert run.metadata_dropped == (0 if metadata else 2)
        log: list[Any] = []
        assert await head(sync_add(n=1), add(n=10), seen_by(log=log)).collect(given) == [12, 13]
        assert log == [f0, 12, f1, 13]
        # then an async stage that takes it, then plain ones that must not see it
        log = []
        assert await head(sync_add(n=1), seen_by(log=log), add(n=10)).collect(given) == [12, 13]
        assert log == [f0, 2, f1, 3]
        assert await head(sync_add(n=1), seen_by(log=[]), add(n=10)).collect(given, metadata=True) == [
            f0,
            12,
            f1,
            13,
        ]
        # then a stage in a thread
        for metadata in (False, True):
            run = head(sync_add(n=1), thread_add(n=10)).stream(given, metadata=metadata)
            async with run as items:
                got = [x async for x in items]
            assert got == ([f0, 12, f1, 13] if metadata else [12, 13])
        log = []
        assert await head(sync_add(n=1), thread_add(n=10), seen_by(log=log)).collect(given) == [12, 13]
        assert log == [f0, 12, f1, 13]
        # a sync stage that takes it, fused last: the consumer gets it only when asked
        for metadata in (False, True):
            log = []
            run = head(sync_seen_by(log=[]), sync_seen_by(log=log)).stream(given, metadata=metadata)
            async with run as items:
                got = [x async for x in items]
            assert got == ([f0, 1, f1, 2] if metadata else [1, 2])
            assert run.metadata_dropped == (0 if metadata else 2)
            assert log == [f0, 1, f1, 2]
        # a sync stage that takes it, fused, then plain async stages
        log = []
        assert await head(sync_seen_by(log=log), add(n=1), add(n=10)).collect(given) == [12, 13]
        assert log == [f0, 1, f1, 2]


async def test_a_thread_stage_runs_in_tasks_named_after_it() -> None:
    """The tasks that feed and drain a stage run in a thread carry the stage's name (seen in task dumps)."""
    async with (numbers() | thread_add(n=0)).stream() as items:
        async for _ in items:
            names = {str(t.name) for t in anyio.get_running_tasks()}
            break
    assert {"talkpipe feeder for thread_add", "talkpipe worker for thread_add"} <= names


async def test_sampled_statistics_measure_a_stage_run_in_a_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``stats=True`` the own running time of a stage run in a thread is sampled too (the stage runs until the
    samples have credited it, or gives up after 5 s)."""
    monkeypatch.setattr(_sampler, "INTERVAL", 0.002)
    runs: list[Any] = []

    def credited() -> bool:
        return any(s.name == "thread_busy" and s.time_s > 0 for s in runs[0].stats().stages)

    @segment(blocking=True)
    def thread_busy(items: Iterable[int]) -> Iterator[int]:
        for x in items:
            end = time.monotonic() + 5
            while not credited() and time.monotonic() < end:
                time.sleep(0.001)  # the stage's own work, in its thread
            yield x

    runs.append((count(1) | thread_busy()).stream(stats=True))
    async with runs[0] as items:
        assert [x async for x in items] == [0]
    assert credited()


async def test_which_sync_segments_after_a_sync_head_run_in_a_thread() -> None:
    """After a sync head, a plain sync segment runs inline unless metadata may reach it on its way to a later stage
    that takes it: metadata from the input, or from a sync stage before it that takes (and may make) metadata."""
    loop_thread = threading.current_thread()
    first: list[threading.Thread] = []
    second: list[threading.Thread] = []
    pipeline = sync_where(first) | sync_where(second) | seen_by(log=[])
    assert await pipeline.collect(range(2)) == [0, 1]
    assert first == second == [loop_thread] * 2
    first, second = [], []
    log: list[Any] = []
    pipeline = sync_seen_by(log=log) | sync_where(first) | seen_by(log=[])
    assert await pipeline.collect([Flush(n=0), 0, 1]) == [0, 1]
    assert first and loop_thread not in first
    first = []
    pipeline = sync_seen_by(log=log) | sync_where(first) | add(n=0)
    assert await pipeline.collect([Flush(n=0), 0, 1]) == [0, 1]
    assert first == [loop_thread] * 2


async def test_stages_are_closed_before_the_close_callbacks_and_the_tasks_stop() -> None:
    """The documented order of a run's end: the stages are closed (downstream first, inline sync stages included),
    then the ``on_close`` callbacks are called, then the run's tasks are stopped."""
    log: list[str] = []
    started = anyio.Event()

    async def task() -> None:
        try:
            started.set()
            await anyio.sleep_forever()
        finally:
            log.append("task")

    @segment
    async def hooks(items: AsyncIterator[int]) -> AsyncIterator[int]:
        run = current_run()
        run.on_close(lambda: log.append("on_close"))
        run.start_soon(task, name="hooks")
        async for x in items:
            yield x

    pipeline = sync_count(100, log) | sync_closing("s", log) | hooks() | async_closing("a", log)
    async with pipeline.stream() as items:
        async for _ in items:
            with anyio.fail_after(10):
                await started.wait()
            break
    assert log == ["a", "s", "sync_count", "on_close", "task"]
