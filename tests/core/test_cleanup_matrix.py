"""Cleanup that awaits: every stage's ``finally`` runs to its end, however the run is left.

A matrix of chain shapes x ways of leaving the ``stream()`` block x backends.
Every user stage (sources and segments, async and in threads, inside fork
branches and merge inputs) records that it closed only after its ``finally``
has awaited twice (a plain checkpoint and a timed sleep, which on trio has
its own cancel scope).  Each case asserts that every stage closed before the
next statement, and that the way of leaving still has its effect: the
consumer's or the stage's error surfaces with its type, an outside
cancellation still propagates (caught by its own scope, or raised).

The source produces a few items, then waits forever: when the block is left,
the tasks reading it are in the middle of a step, the case that needs the
run to stop them once and let them unwind shielded.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import anyio
import pytest

from talkpipe_async import Pipeline, error_context, segment, source
from talkpipe_async.operators import batch, buffer, concurrent_map, fork, merge, take

pytestmark = pytest.mark.anyio

ITEMS = 12  # what the source yields before it waits forever
LEAVE_AT = 3  # outputs the consumer takes before it leaves


class Log:
    """Which stages finished their ``finally``; which stage failed on purpose."""

    def __init__(self) -> None:
        self.closed: list[str] = []


@source
async def numbers(log: Log, tag: str) -> AsyncIterator[int]:
    try:
        for i in range(ITEMS):
            await anyio.lowlevel.checkpoint()
            yield i
        await anyio.sleep_forever()
    finally:
        await anyio.sleep(0)
        await anyio.sleep(0.001)
        log.closed.append(tag)


@segment
async def relay(items: AsyncIterator[Any], log: Log, tag: str) -> AsyncIterator[Any]:
    try:
        async for x in items:
            yield x
    finally:
        await anyio.sleep(0)
        await anyio.sleep(0.001)
        log.closed.append(tag)


@segment
async def fail_on(items: AsyncIterator[Any], log: Log, tag: str, at: int) -> AsyncIterator[Any]:
    try:
        n = 0
        async for x in items:
            n += 1
            if n == at:
                raise LookupError(f"{tag} failed on purpose")
            yield x
    finally:
        await anyio.sleep(0)
        await anyio.sleep(0.001)
        log.closed.append(tag)


@segment(blocking=True)
def in_thread(items: Iterable[Any], log: Log, tag: str) -> Iterator[Any]:
    try:
        yield from items
    finally:
        log.closed.append(tag)


async def slow_identity(x: Any) -> Any:
    await anyio.sleep(0)
    return x


def shape_inline(log: Log, last: Any) -> Pipeline[Any, Any]:
    return numbers(log=log, tag="src") | relay(log=log, tag="a") | last


def shape_thread(log: Log, last: Any) -> Pipeline[Any, Any]:
    return numbers(log=log, tag="src") | relay(log=log, tag="a") | in_thread(log=log, tag="s") | last


def shape_concurrent(log: Log, last: Any) -> Pipeline[Any, Any]:
    return numbers(log=log, tag="src") | relay(log=log, tag="a") | concurrent_map(slow_identity, limit=4) | last


def shape_full(log: Log, last: Any) -> Pipeline[Any, Any]:
    return (
        numbers(log=log, tag="src")
        | relay(log=log, tag="a")
        | concurrent_map(slow_identity, limit=4)
        | in_thread(log=log, tag="s")
        | buffer(8)
        | batch(2, timeout=0.5)
        | last
    )


def shape_batch(log: Log, last: Any) -> Pipeline[Any, Any]:
    return numbers(log=log, tag="src") | relay(log=log, tag="a") | batch(2, timeout=0.5) | last


def shape_fork(log: Log, last: Any) -> Pipeline[Any, Any]:
    branches = fork(relay(log=log, tag="b1"), relay(log=log, tag="b2") | in_thread(log=log, tag="s2"))
    return numbers(log=log, tag="src") | relay(log=log, tag="a") | branches | last


def shape_merge(log: Log, last: Any) -> Pipeline[Any, Any]:
    inputs = merge(numbers(log=log, tag="src1") | relay(log=log, tag="a1"), numbers(log=log, tag="src2"))
    return inputs | relay(log=log, tag="m") | last


SHAPES: dict[str, Callable[[Log, Any], Pipeline[Any, Any]]] = {
    "inline": shape_inline,
    "thread": shape_thread,
    "concurrent_map": shape_concurrent,
    "full": shape_full,
    "batch": shape_batch,
    "fork": shape_fork,
    "merge": shape_merge,
}
EXPECTED = {
    "inline": {"src", "a", "z"},
    "thread": {"src", "a", "s", "z"},
    "concurrent_map": {"src", "a", "z"},
    "full": {"src", "a", "s", "z"},
    "batch": {"src", "a", "z"},
    "fork": {"src", "a", "b1", "b2", "s2", "z"},
    "merge": {"src1", "a1", "src2", "m", "z"},
}


# ---- ways of leaving: each runs the pipeline and checks the effect it must still have ------


async def consume(p: Pipeline[Any, Any], at_leave: Callable[[], Any] | None = None) -> None:
    """Take outputs; after LEAVE_AT of them call *at_leave* (if given) and keep reading."""
    n = 0
    async with p.stream() as items:
        async for _ in items:
            n += 1
            if n == LEAVE_AT and at_leave is not None:
                at_leave()


async def leave_break(p: Pipeline[Any, Any]) -> None:
    n = 0
    async with p.stream() as items:
        async for _ in items:
            n += 1
            if n == LEAVE_AT:
                break
    assert n == LEAVE_AT


async def leave_take(p: Pipeline[Any, Any]) -> None:
    assert len(await (p | take(LEAVE_AT)).collect()) == LEAVE_AT


async def leave_consumer_error(p: Pipeline[Any, Any]) -> None:
    def fail() -> None:
        raise KeyError("the consumer failed")

    with pytest.raises(KeyError, match="consumer failed"):
        await consume(p, fail)


async def leave_move_on_after(p: Pipeline[Any, Any]) -> None:
    after = False
    with anyio.move_on_after(60) as scope:

        def expire() -> None:
            scope.deadline = anyio.current_time()  # the deadline passes now: a real deadline cancellation

        await consume(p, expire)
        after = True
    assert scope.cancelled_caught and not after


async def leave_fail_after(p: Pipeline[Any, Any]) -> None:
    with pytest.raises(TimeoutError):
        with anyio.fail_after(60) as scope:

            def expire() -> None:
                scope.deadline = anyio.current_time()

            await consume(p, expire)


async def leave_cancel_from_another_task(p: Pipeline[Any, Any]) -> None:
    reached = anyio.Event()
    after = False

    async def consumer() -> None:
        nonlocal after
        await consume(p, reached.set)
        after = True

    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer)
        await reached.wait()
        tg.cancel_scope.cancel()
    assert not after


async def leave_stage_error(p: Pipeline[Any, Any]) -> None:
    with pytest.raises(LookupError, match="failed on purpose") as info:
        await consume(p)
    ctx = error_context(info.value)
    assert ctx is not None and ctx.segment == "fail_on"


async def leave_task_cancel(p: Pipeline[Any, Any]) -> None:
    import asyncio

    reached = anyio.Event()
    task = asyncio.get_running_loop().create_task(consume(p, reached.set))
    await reached.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def leave_asyncio_timeout(p: Pipeline[Any, Any]) -> None:
    import asyncio

    if sys.version_info < (3, 11):
        pytest.skip("asyncio.timeout is Python 3.11+")
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(None) as cm:
            await consume(p, lambda: cm.reschedule(loop.time()))


async def leave_asyncio_wait_for(p: Pipeline[Any, Any]) -> None:
    import asyncio

    reached = asyncio.Event()

    async def run() -> None:
        await consume(p, reached.set)

    async def waiter() -> None:
        await asyncio.wait_for(run(), timeout=60)

    task = asyncio.get_running_loop().create_task(waiter())
    await reached.wait()
    task.cancel()  # wait_for cancels the task that runs the block, and waits for it
    with pytest.raises(asyncio.CancelledError):
        await task


async def leave_asyncio_wait_for_timeout(p: Pipeline[Any, Any]) -> None:
    import asyncio

    # The source waits forever after its items: wait_for's own timeout is what ends the block.
    with pytest.raises(asyncio.TimeoutError):  # the builtin TimeoutError from Python 3.11 on
        await asyncio.wait_for(consume(p), timeout=0.2)


async def leave_trio_cancel_scope(p: Pipeline[Any, Any]) -> None:
    import trio

    after = False
    with trio.CancelScope() as scope:
        await consume(p, scope.cancel)
        after = True
    assert scope.cancelled_caught and not after


async def leave_trio_move_on_after(p: Pipeline[Any, Any]) -> None:
    import trio

    with trio.move_on_after(60) as scope:

        def expire() -> None:
            scope.deadline = trio.current_time()

        await consume(p, expire)
    assert scope.cancelled_caught


LEAVE: dict[str, tuple[Callable[[Pipeline[Any, Any]], Any], str | None]] = {
    "break": (leave_break, None),
    "take": (leave_take, None),
    "consumer_error": (leave_consumer_error, None),
    "stage_error": (leave_stage_error, None),
    "move_on_after": (leave_move_on_after, None),
    "fail_after": (leave_fail_after, None),
    "cancel_from_task": (leave_cancel_from_another_task, None),
    "task.cancel": (leave_task_cancel, "asyncio"),
    "asyncio.timeout": (leave_asyncio_timeout, "asyncio"),
    "asyncio.wait_for": (leave_asyncio_wait_for, "asyncio"),
    "asyncio.wait_for_timeout": (leave_asyncio_wait_for_timeout, "asyncio"),
    "trio.CancelScope": (leave_trio_cancel_scope, "trio"),
    "trio.move_on_after": (leave_trio_move_on_after, "trio"),
}


@pytest.mark.parametrize("leave", list(LEAVE))
@pytest.mark.parametrize("shape", list(SHAPES))
async def test_every_finally_runs_to_its_end(shape: str, leave: str, anyio_backend: Any) -> None:
    run, only_on = LEAVE[leave]
    if only_on is not None and anyio_backend[0] != only_on:
        pytest.skip(f"{leave} is {only_on} only")
    log = Log()
    if leave == "stage_error":
        last: Any = fail_on(log=log, tag="z", at=LEAVE_AT)
    else:
        last = relay(log=log, tag="z")
    with anyio.fail_after(30):  # a hang here is a failure, not a wait
        await run(SHAPES[shape](log, last))
    assert set(log.closed) == EXPECTED[shape], f"finally blocks cut short: {set(EXPECTED[shape]) - set(log.closed)}"
    assert len(log.closed) == len(EXPECTED[shape]), f"a stage closed twice: {log.closed}"
