"""The read-ahead under the timed operators (``talkpipe_async.operators._clock``), pinned from what a user sees.

An operator that acts when no item arrives (``batch`` with a timeout, ``debounce``, ``flush_t``, ...) reads its
upstream in one task of the run: the upstream's steps run in a task named after the stage, an upstream error reaches
the consumer after the items before it, and when the operator is done early the upstream's ``finally`` may await,
but only until the run's cleanup deadline.  The tests run on virtual clocks (asyncio's VirtualClockLoop and trio's
autojumping MockClock), so a ten-second deadline passes at once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from talkpipe_async import segment, source
from talkpipe_async._core._closing import CLEANUP_TIMEOUT
from talkpipe_async.operators import batch, debounce
from talkpipe_async.testing import virtual_backend

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """The tests of this module on each virtual clock."""
    return virtual_backend(request.param)


async def test_the_upstream_runs_in_one_task_named_after_the_stage() -> None:
    """Every step of the upstream runs in the feed task, named ``talkpipe_async feed of <stage>`` (seen in task
    dumps and in the upstream's own ``current_task()``), with the default name and with a given one."""
    seen: list[str | None] = []

    @source
    async def numbers() -> AsyncIterator[int]:
        for i in range(3):
            seen.append(anyio.get_current_task().name)
            yield i

    assert await (numbers() | batch(2, timeout=1.0)).collect() == [[0, 1], [2]]
    assert set(seen) == {"talkpipe_async feed of batch"}
    seen.clear()
    assert await (numbers() | debounce(0.5, name="quiet")).collect() == [2]
    assert set(seen) == {"talkpipe_async feed of quiet"}


async def test_an_upstream_error_reaches_the_consumer_after_the_items_before_it() -> None:
    """An error raised upstream of a timed operator is raised to the consumer with its type and text, after the
    output of the items that came before it; it is never turned into a plain end of the stream."""

    class Broken(Exception):
        pass

    @source
    async def failing() -> AsyncIterator[int]:
        yield 1
        yield 2
        yield 3
        raise Broken("upstream broke after 3")

    got: list[Any] = []
    with pytest.raises(Broken, match="upstream broke after 3"):
        async with (failing() | batch(2, timeout=1.0)).stream() as items:
            async for b in items:
                got.append(b)
    assert got == [[1, 2]]

    @segment
    async def breaks(items: AsyncIterator[int]) -> AsyncIterator[int]:
        async for x in items:
            if x == 3:
                raise Broken("a stage upstream broke at 3")
            yield x

    got.clear()
    with pytest.raises(Broken, match="a stage upstream broke at 3"):
        async with (failing() | breaks() | batch(5, timeout=1.0)).stream() as items:
            async for b in items:
                got.append(b)
    assert got == []  # batch holds [1, 2]: the error comes first, nothing passes it as a partial batch


async def test_an_upstream_cleanup_that_never_ends_is_cut_at_the_cleanup_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When the operator is done early, the upstream it was reading unwinds in the feed task; a ``finally`` that
    awaits is let run, but only until the run's cleanup deadline (``CLEANUP_TIMEOUT`` after the stop), after
    which it is cancelled and the block leaves."""
    caplog.set_level(logging.ERROR, logger="talkpipe_async")
    log: list[str] = []

    @source
    async def stuck() -> AsyncIterator[int]:
        try:
            yield 1
            await anyio.sleep_forever()
        finally:
            started = anyio.current_time()
            try:
                await anyio.sleep_forever()
            finally:
                log.append(f"cut short after {anyio.current_time() - started:.0f} s")

    with anyio.fail_after(10 * CLEANUP_TIMEOUT):
        async with (stuck() | batch(5, timeout=1.0)).stream() as items:
            async for b in items:
                assert b == [1]
                break
    assert log == [f"cut short after {CLEANUP_TIMEOUT:.0f} s"]
