"""How a run ends (``talkpipe_async._core._closing``): closing each stage, the cleanup deadline, the error rule.

Pinned from what a user sees: a stage's cleanup error is returned by ``close_one`` (and raised when the block
leaves), a generator another task is still running is not an error, a cleanup past the deadline is cut short and
logged with the deadline, a second failure while the run closes is logged rather than lost, and the run's
cancellation watch is a task of the run with its own name.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

from talkpipe_async import error_context, segment
from talkpipe_async._core import _closing
from talkpipe_async._core._closing import close_one
from talkpipe_async._core._run import current_run
from tests.helpers.sources import numbers

pytestmark = pytest.mark.anyio


@segment
async def passing(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for x in items:
        yield x


async def test_the_cancellation_watch_is_a_named_task_of_the_run() -> None:
    """The run watches for a cancellation from outside in a task named after it (seen in task dumps)."""
    async with (numbers() | passing()).stream() as items:
        async for _ in items:
            names = [t.name for t in anyio.get_running_tasks()]
            break
    assert "talkpipe_async cancellation watch" in names


async def test_close_one_returns_a_cleanup_error_instead_of_raising_it() -> None:
    """What a stage's ``finally`` raises while it is closed comes back from ``close_one``, async or sync, any type."""
    closed: list[str] = []

    async def agen() -> AsyncIterator[int]:
        try:
            yield 1
        finally:
            closed.append("async")
            raise RuntimeError("the async cleanup failed")

    def gen() -> Iterator[int]:
        try:
            yield 1
        finally:
            closed.append("sync")
            raise ValueError("the sync cleanup failed")

    a = agen()
    assert await a.__anext__() == 1
    err = await close_one(a)
    assert isinstance(err, RuntimeError) and str(err) == "the async cleanup failed"
    g = gen()
    assert next(g) == 1
    err = await close_one(g)
    assert isinstance(err, ValueError) and str(err) == "the sync cleanup failed"
    assert closed == ["async", "sync"]
    assert await close_one(object()) is None  # nothing to close


async def test_close_one_closes_a_sync_generator_cleanly() -> None:
    """A sync generator (an inline stage) is closed through ``close()``: its ``finally`` runs, nothing is returned."""
    closed: list[str] = []

    def gen() -> Iterator[int]:
        try:
            yield 1
        finally:
            closed.append("sync")

    g = gen()
    next(g)
    assert await close_one(g) is None
    assert closed == ["sync"]


async def test_close_one_leaves_a_generator_another_task_is_running() -> None:
    """A stage's generator suspended inside a step that another task runs cannot be closed yet: that is not an
    error (the task's own end closes it), so ``close_one`` returns None."""
    release = anyio.Event()
    started = anyio.Event()

    async def agen() -> AsyncGenerator[int, None]:
        started.set()
        await release.wait()
        yield 1

    a = agen()
    got: list[int] = []

    async def step() -> None:
        got.append(await a.__anext__())

    async with anyio.create_task_group() as tg:
        tg.start_soon(step)
        await started.wait()
        assert await close_one(a) is None
        release.set()
    assert got == [1]
    await a.aclose()


@segment
async def cleanup_never_ends(items: AsyncIterator[Any], log: list[str]) -> AsyncIterator[Any]:
    try:
        async for x in items:
            yield x
    finally:
        try:
            await anyio.sleep_forever()
        finally:
            log.append("cut short")


async def test_a_cleanup_past_the_deadline_is_cut_short_and_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A stage whose ``finally`` would await forever is cancelled at the cleanup deadline; the block still leaves
    normally, and both the stage's and the run's deadline are logged with the deadline in seconds."""
    monkeypatch.setattr(_closing, "CLEANUP_TIMEOUT", 0.2)
    log: list[str] = []
    caplog.set_level(logging.ERROR, logger="talkpipe_async")
    with anyio.fail_after(5):
        async with (numbers() | cleanup_never_ends(log=log)).stream() as items:
            async for x in items:
                if x == 2:
                    break
    assert log == ["cut short"]
    messages = [r.getMessage() for r in caplog.records if r.name == "talkpipe_async"]
    assert "a stage's cleanup was cut short: the 0 s cleanup deadline passed" in messages


async def ack_fails_when(fail: anyio.Event) -> None:
    await fail.wait()
    raise ConnectionError("the acknowledgement failed")


@segment
async def acking(items: AsyncIterator[Any], fail: anyio.Event) -> AsyncIterator[Any]:
    current_run().start_soon(ack_fails_when, fail, name="acking: ack task")
    async for x in items:
        yield x


async def ack_fails_when_stopped() -> None:
    try:
        await anyio.sleep_forever()
    finally:
        await anyio.sleep(0)  # a last acknowledgement on the way out, which fails
        raise ConnectionError("the last acknowledgement failed")


@segment
async def acking_on_the_way_out(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
    current_run().start_soon(ack_fails_when_stopped, name="acking: ack task")
    async for x in items:
        yield x


async def test_a_task_failure_behind_the_consumers_own_error_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """The consumer's exception goes on unchanged; a task's failure at the same time is logged with its traceback."""
    caplog.set_level(logging.ERROR, logger="talkpipe_async")
    with pytest.raises(KeyError, match="consumer"):
        async with (numbers() | acking_on_the_way_out()).stream() as items:
            async for x in items:
                if x == 2:
                    raise KeyError("the consumer failed")
    records = [r for r in caplog.records if r.getMessage() == "a task of the run failed too"]
    assert len(records) == 1
    assert records[0].exc_info is not None and isinstance(records[0].exc_info[1], ConnectionError)


@segment
async def cleanup_fails(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
    try:
        async for x in items:
            yield x
    finally:
        raise OSError("the stage's cleanup failed")


async def test_a_stage_failing_while_a_failed_run_closes_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A task's failure is what the block raises (it stopped the run); a stage that also fails while the run
    closes is logged with its own error, not lost and not raised instead."""
    caplog.set_level(logging.ERROR, logger="talkpipe_async")
    fail = anyio.Event()
    with pytest.raises(ConnectionError) as info:
        async with (numbers() | acking(fail) | cleanup_fails()).stream() as items:
            async for x in items:
                if x == 2:
                    fail.set()
                    await anyio.sleep_forever()
    ctx = error_context(info.value)
    assert ctx is not None and ctx.segment == "acking: ack task"
    records = [r for r in caplog.records if r.getMessage() == "a stage also failed while the run was closing"]
    assert len(records) == 1
    assert records[0].exc_info is not None and isinstance(records[0].exc_info[1], OSError)


async def test_a_stage_cleanup_error_is_raised_when_the_block_leaves(caplog: pytest.LogCaptureFixture) -> None:
    """With no task failure, the first error a stage's cleanup raised is what leaving the block raises, naming the
    stage; nothing else is logged."""
    caplog.set_level(logging.ERROR, logger="talkpipe_async")
    with pytest.raises(OSError, match="the stage's cleanup failed") as info:
        async with (numbers() | cleanup_fails()).stream() as items:
            async for x in items:
                if x == 2:
                    break
    ctx = error_context(info.value)
    assert ctx is not None and ctx.segment == "cleanup_fails"
    assert not [r for r in caplog.records if r.name == "talkpipe_async"]


def group(*errors: BaseException) -> BaseExceptionGroup[BaseException]:
    return BaseExceptionGroup("tasks", list(errors))


async def test_a_group_of_task_errors_is_unwrapped_to_what_failed() -> None:
    """What the run's task group raised: one task's error keeps its own type (also nested), several stay grouped."""
    one, nested = KeyError("one"), OSError("nested")
    assert _closing._unwrap(group(one)) is one
    assert _closing._unwrap(group(group(nested))) is nested
    two = group(one, ValueError("two"))
    assert _closing._unwrap(two) is two
    inner = group(one, nested)
    assert _closing._unwrap(group(inner)) is inner
    assert _closing._groups() is BaseExceptionGroup


async def test_cancellations_in_a_group_are_not_errors() -> None:
    """A group holding only cancellations is no error; beside one error, they leave that error alone."""
    caught: list[BaseException] = []
    with anyio.CancelScope() as scope:
        scope.cancel()
        try:
            await anyio.lowlevel.checkpoint()
        except anyio.get_cancelled_exc_class() as exc:
            caught.append(exc)
            raise
    cancel, one = caught[0], KeyError("one")
    assert _closing._unwrap(group(cancel)) is None
    assert _closing._unwrap(group(cancel, cancel)) is None
    assert _closing._unwrap(group(cancel, one)) is one
    assert _closing._unwrap(group(one, cancel)) is one


async def task_cleanup_never_ends(log: list[str], started: anyio.Event) -> None:
    try:
        started.set()
        await anyio.sleep_forever()
    finally:
        try:
            await anyio.sleep_forever()
        finally:
            log.append("task cut short")


@segment
async def with_endless_task(items: AsyncIterator[Any], log: list[str], started: anyio.Event) -> AsyncIterator[Any]:
    current_run().start_soon(task_cleanup_never_ends, log, started, name="endless: task")
    async for x in items:
        yield x


async def test_a_task_cleanup_past_the_deadline_is_cut_short_and_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A task of the run whose ``finally`` would await forever is stopped with the cleanup deadline as its grace:
    the block leaves once it has passed, and the run logs that its cleanup passed the deadline."""
    monkeypatch.setattr(_closing, "CLEANUP_TIMEOUT", 0.2)
    caplog.set_level(logging.ERROR, logger="talkpipe_async")
    log: list[str] = []
    started = anyio.Event()
    with anyio.fail_after(5):
        async with (numbers() | with_endless_task(log=log, started=started)).stream() as items:
            async for _ in items:
                await started.wait()
                break
    assert log == ["task cut short"]
    messages = [r.getMessage() for r in caplog.records if r.name == "talkpipe_async"]
    assert "the run's cleanup passed its 0 s deadline: cancelling what still runs" in messages


async def test_a_cancellation_that_never_reached_the_block_is_raised_when_it_leaves() -> None:
    """A scope around the run cancelled while the block did not await again: leaving the block raises that
    cancellation, so no code after the block runs as if the run had ended normally."""
    after: list[str] = []
    with anyio.fail_after(5):
        with anyio.CancelScope() as outer:
            async with (numbers() | passing()).stream() as items:
                async for x in items:
                    if x == 2:
                        outer.cancel()
                        break
            after.append("after the block")
    assert after == [] and outer.cancelled_caught


async def test_an_error_alone_logs_nothing_more(caplog: pytest.LogCaptureFixture) -> None:
    """The consumer's own error, or a task's failure, with nothing else failing: raised, and no second error logged."""
    caplog.set_level(logging.ERROR, logger="talkpipe_async")
    with pytest.raises(KeyError, match="consumer"):
        async with (numbers() | passing()).stream() as items:
            async for x in items:
                if x == 2:
                    raise KeyError("the consumer failed")
    fail = anyio.Event()
    with pytest.raises(ConnectionError):
        async with (numbers() | acking(fail)).stream() as items:
            async for x in items:
                if x == 2:
                    fail.set()
                    await anyio.sleep_forever()
    assert not [r for r in caplog.records if r.name == "talkpipe_async"]


class Abort(BaseException):
    """Not an ``Exception``: like an interrupt, not a stage's error."""


async def abort_when(fail: anyio.Event) -> None:
    await fail.wait()
    raise Abort("stop everything")


@segment
async def aborting(items: AsyncIterator[Any], fail: anyio.Event) -> AsyncIterator[Any]:
    current_run().start_soon(abort_when, fail, name="aborting: task")
    async for x in items:
        yield x


async def test_a_task_ending_with_an_interrupt_is_not_named_as_a_stage_error() -> None:
    """A task of the run that ends with a ``BaseException`` that is not an ``Exception`` (an interrupt, an exit) ends
    the run with it, unchanged: no stage is named on it."""
    fail = anyio.Event()
    with pytest.raises(Abort) as info:
        async with (numbers() | aborting(fail)).stream() as items:
            async for x in items:
                if x == 2:
                    fail.set()
                    await anyio.sleep_forever()
    assert error_context(info.value) is None


@segment
async def cancels_on_close(items: AsyncIterator[Any], scope: anyio.CancelScope) -> AsyncIterator[Any]:
    try:
        async for x in items:
            yield x
    finally:
        scope.cancel()


async def test_a_cancellation_arriving_while_the_run_closes_is_raised() -> None:
    """The block ended normally, and a scope around the run was cancelled while the run closed: leaving the block
    raises that cancellation instead of returning as if nothing happened."""
    after: list[str] = []
    with anyio.fail_after(5):
        with anyio.CancelScope() as outer:
            async with (numbers() | cancels_on_close(outer)).stream() as items:
                async for x in items:
                    if x == 2:
                        break
            after.append("after the block")
    assert after == [] and outer.cancelled_caught


async def test_a_stage_a_task_held_is_closed_even_when_another_stage_failed_to_close() -> None:
    """A stage that a feeder task was inside when the run closed (a shielded step: the stop waits for it) is closed
    once that task has stopped, before the block leaves, even though a stage downstream failed in its cleanup."""
    from talkpipe_async.operators import buffer

    entered, release = anyio.Event(), anyio.Event()
    log: list[str] = []

    @segment
    async def shielded_step(items: AsyncIterator[int]) -> AsyncIterator[int]:
        try:
            async for x in items:
                if x > 0:  # from the second item on: a step the run's stop cannot interrupt
                    entered.set()
                    with anyio.CancelScope(shield=True):
                        await release.wait()
                yield x
        finally:
            log.append("closed")

    @segment
    async def fails_to_close(items: AsyncIterator[int]) -> AsyncIterator[int]:
        try:
            async for x in items:
                yield x
        finally:
            release.set()  # the shielded step ends while the run closes
            raise ValueError("cleanup failed")

    with anyio.fail_after(5):
        with pytest.raises(ValueError, match="cleanup failed"):
            async with (numbers() | shielded_step() | buffer(1) | fails_to_close()).stream() as items:
                async for _ in items:
                    await entered.wait()  # the feeder of buffer is now inside the shielded step
                    break
        assert log == ["closed"]


@segment
async def stuck_with_endless_cleanup(items: AsyncIterator[Any], log: list[str], waiting: anyio.Event,
                                     first: bool = False) -> AsyncIterator[Any]:
    """Yields one item if *first*, then waits forever; its ``finally`` would await forever too."""
    try:
        if first:
            yield await items.__anext__()
        waiting.set()
        await anyio.sleep_forever()
        yield 0
    finally:
        try:
            await anyio.sleep_forever()
        finally:
            log.append("cut short")


async def test_a_cleanup_inside_a_block_cancelled_from_outside_is_cut_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cancelled from outside while the consumer waits on a stage, the stage's ``finally`` runs inside the block;
    one that would await forever is cut at the cleanup deadline, and the cancellation goes on."""
    monkeypatch.setattr(_closing, "CLEANUP_TIMEOUT", 0.2)
    log: list[str] = []
    waiting = anyio.Event()

    async def cancel_once_waiting(scope: anyio.CancelScope) -> None:
        await waiting.wait()
        scope.cancel()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as outside:
                tg.start_soon(cancel_once_waiting, outside)
                async with (numbers() | stuck_with_endless_cleanup(log=log, waiting=waiting)).stream() as items:
                    async for _ in items:
                        pass
    assert outside.cancelled_caught and log == ["cut short"]


async def test_a_cleanup_of_a_run_streamed_inside_a_task_of_another_run_is_cut_at_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pipeline streamed inside a task of a run (here a ``group_by`` sub-pipeline) whose stage's ``finally``
    would await forever is cut at the cleanup deadline when the outer run closes; the block leaves."""
    from talkpipe_async.operators import group_by

    monkeypatch.setattr(_closing, "CLEANUP_TIMEOUT", 0.2)
    log: list[str] = []
    waiting = anyio.Event()
    sub = stuck_with_endless_cleanup(log=log, waiting=waiting, first=True)
    with anyio.fail_after(5):
        async with (numbers() | group_by(lambda x: 0, sub)).stream() as items:
            async for _ in items:
                await waiting.wait()
                break
    assert log == ["cut short"]
