"""The run's error rule: a run never reports success, and never turns a task's error into a cancellation.

A task of the run (here: the acknowledgement task of a stage, the way the
broker connectors run one) fails.  Leaving the ``stream()`` block raises that
error, with its type and the name of the task, even when a cancellation from
outside is on its way out at the same moment (the documented pattern: the
pipeline runs in a task group that a signal handler cancels).  A cancellation
from outside with no failure still goes on as a cancellation.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

from talkpipe_async import error_context, segment, source
from talkpipe_async._core._run import current_run
from tests.helpers.sources import numbers

pytestmark = pytest.mark.anyio


async def ack_fails_when(fail: anyio.Event) -> None:
    await fail.wait()
    raise ConnectionError("the acknowledgement failed")


async def ack_fails_when_stopped(started: anyio.Event | None = None) -> None:
    try:
        if started is not None:
            started.set()
        await anyio.sleep_forever()
    finally:
        await anyio.sleep(0)  # a last acknowledgement on the way out ...
        raise ConnectionError("the last acknowledgement failed")  # ... which fails


@segment
async def acking(items: AsyncIterator[Any], ack: Any, *args: Any) -> AsyncIterator[Any]:
    """Starts a background task of the run, then passes items through."""
    current_run().start_soon(ack, *args, name="acking: ack task")
    async for x in items:
        yield x


async def run_in_task_group(pipeline: Any, at_third: Any) -> BaseException | None:
    """Consume in a task group; at the third item call ``at_third(tg)``; return what left the block."""
    left: list[BaseException] = []

    async def consume(tg: Any) -> None:
        try:
            async with pipeline.stream() as items:
                n = 0
                async for _ in items:
                    n += 1
                    if n == 3:
                        at_third(tg)
        except BaseException as exc:
            left.append(exc)
            raise

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume, tg)
    except BaseExceptionGroup:
        pass
    return left[0] if left else None


def assert_ack_failure(exc: BaseException | None, message: str) -> None:
    assert isinstance(exc, ConnectionError), f"expected the task's ConnectionError, got {exc!r}"
    assert message in str(exc)
    ctx = error_context(exc)
    assert ctx is not None and ctx.segment == "acking: ack task"


@pytest.mark.parametrize("order", ["fail_then_cancel", "cancel_then_fail"])
async def test_task_failure_wins_over_a_cancellation_in_flight(order: str) -> None:
    fail = anyio.Event()

    def at_third(tg: Any) -> None:
        if order == "fail_then_cancel":
            fail.set()
            tg.cancel_scope.cancel()
        else:
            tg.cancel_scope.cancel()
            fail.set()

    exc = await run_in_task_group(numbers() | acking(ack_fails_when, fail), at_third)
    assert_ack_failure(exc, "the acknowledgement failed")


async def test_task_failure_during_the_stop_of_a_cancelled_run() -> None:
    exc = await run_in_task_group(numbers() | acking(ack_fails_when_stopped), lambda tg: tg.cancel_scope.cancel())
    assert_ack_failure(exc, "the last acknowledgement failed")


async def test_task_failure_interrupts_a_waiting_consumer() -> None:
    fail = anyio.Event()
    with pytest.raises(ConnectionError) as info:
        async with (numbers() | acking(ack_fails_when, fail)).stream() as items:
            async for x in items:
                if x == 2:
                    fail.set()
                    await anyio.sleep_forever()  # the consumer's own wait: the failure ends it
    assert_ack_failure(info.value, "the acknowledgement failed")


async def test_task_failure_after_a_normal_end_is_raised() -> None:
    @source
    async def three() -> AsyncIterator[int]:
        for i in range(3):
            yield i

    started = anyio.Event()
    with pytest.raises(ConnectionError) as info:
        async with (three() | acking(ack_fails_when_stopped, started)).stream() as items:
            assert [x async for x in items] == [0, 1, 2]
            await started.wait()  # the block ends normally; the task fails while the run stops it
    assert_ack_failure(info.value, "the last acknowledgement failed")


async def test_outside_cancellation_without_failure_stays_a_cancellation() -> None:
    fail = anyio.Event()  # never set
    exc = await run_in_task_group(numbers() | acking(ack_fails_when, fail), lambda tg: tg.cancel_scope.cancel())
    assert isinstance(exc, anyio.get_cancelled_exc_class()), f"expected a cancellation, got {exc!r}"


async def test_consumer_error_is_not_replaced_by_a_task_failure() -> None:
    fail = anyio.Event()
    with pytest.raises(KeyError, match="consumer"):
        async with (numbers() | acking(ack_fails_when, fail)).stream() as items:
            async for x in items:
                if x == 2:
                    fail.set()
                    raise KeyError("the consumer failed")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_process_ends_with_the_error_not_exit_status_0(backend: str) -> None:
    # The production shape: anyio.run(main) where main runs the pipeline in a task group that is cancelled
    # (as a SIGTERM handler would) while the acknowledgement task fails.  The process must not exit with 0.
    script = textwrap.dedent(
        f"""
        import anyio
        from tests.core.test_run_errors import numbers, acking, ack_fails_when

        async def main():
            fail = anyio.Event()
            async with anyio.create_task_group() as tg:
                async def consume():
                    async with (numbers() | acking(ack_fails_when, fail)).stream() as items:
                        async for x in items:
                            if x == 3:
                                fail.set()
                                tg.cancel_scope.cancel()
                tg.start_soon(consume)

        anyio.run(main, backend={backend!r})
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0, done.stderr
    assert "ConnectionError: the acknowledgement failed" in done.stderr


@source
async def cpu_numbers(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


@segment
async def plus_one(items: AsyncIterator[int]) -> AsyncIterator[int]:
    async for x in items:
        yield x + 1


async def test_a_waiting_plain_chain_is_cancelled_from_outside_and_every_finally_runs(anyio_backend: Any) -> None:
    closed: list[str] = []

    @source
    async def waits() -> AsyncIterator[int]:
        try:
            yield 1
            await anyio.sleep_forever()
        finally:
            await anyio.sleep(0)  # awaits on the way out run to their end
            closed.append("source")

    got: list[int] = []
    with anyio.move_on_after(0.05) as scope:
        async with (waits() | plus_one()).stream() as items:
            async for x in items:
                got.append(x)
    assert scope.cancelled_caught
    assert got == [2]
    assert closed == ["source"]


def test_a_task_cancel_on_plain_asyncio_closes_the_chain_and_the_loop_reports_nothing() -> None:
    # asyncio.run + task.cancel(), no anyio runner: the cancellation reaches the stages, every finally runs, and
    # nothing of the run fails in a loop callback (such an error would only be logged by the loop).
    import asyncio

    closed: list[str] = []
    reported: list[dict[str, Any]] = []

    @source
    async def endless() -> AsyncIterator[int]:
        i = 0
        try:
            while True:
                yield i
                i += 1
                await asyncio.sleep(0)
        finally:
            await asyncio.sleep(0)
            closed.append("source")

    async def consume(started: asyncio.Event) -> None:
        async with (endless() | plus_one()).stream() as items:
            async for _ in items:
                started.set()
                await asyncio.sleep(0)

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: reported.append(context))
        started = asyncio.Event()
        task = asyncio.ensure_future(consume(started))
        await asyncio.wait_for(started.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)

    asyncio.run(main())
    assert closed == ["source"]
    assert reported == []
