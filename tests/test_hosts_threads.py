"""Thread stages as a sync host sees them: the latency promise and Ctrl-C.

Latency: an item a worker thread has produced is the consumer's as soon as it
asks for it, even while the worker is blocked inside the sync code (no wait
for the next item or a timer).  Exact signals only: threading events and
fail_after guards that turn a hang into a failure, never timed asserts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any

import anyio
import pytest

from talkpipe_async import segment, source

pytestmark = pytest.mark.anyio


async def _until_set(event: threading.Event) -> None:
    """The consumer is busy in an await until *event* (set by a worker thread) is set."""
    with anyio.fail_after(10):
        while not event.is_set():
            await anyio.sleep(0.001)  # polls a signal; the promise under test does not depend on it


async def test_a_lone_item_from_a_blocked_source_reaches_a_consumer_that_was_busy() -> None:
    blocked = threading.Event()
    release = threading.Event()

    @source(blocking=True)
    def slow() -> Iterator[int]:
        yield 1
        yield 2
        blocked.set()
        release.wait(30)  # a blocking read that returns much later
        yield 3

    async with slow().stream() as items:
        try:
            it = items.__aiter__()
            assert await it.__anext__() == 1
            await _until_set(blocked)  # busy in an await while the worker produced 2 and blocked
            with anyio.fail_after(10):
                assert await it.__anext__() == 2  # not held back until 3 arrives
            release.set()
            assert [x async for x in it] == [3]
        finally:
            release.set()  # the worker must not outlive a failed assertion


async def test_a_lone_item_from_a_blocked_segment_reaches_the_consumer() -> None:
    blocked = threading.Event()
    release = threading.Event()

    @segment
    def slow_tail(items: Iterable[int]) -> Iterator[int]:
        for x in items:
            yield x
            if x == 2:
                blocked.set()
                release.wait(30)  # blocking work after yielding

    @source
    async def numbers() -> Any:
        for i in range(4):
            yield i

    async with (numbers() | slow_tail()).stream() as items:
        try:
            it = items.__aiter__()
            assert await it.__anext__() == 0
            await _until_set(blocked)
            with anyio.fail_after(10):
                assert [await it.__anext__() for _ in range(2)] == [1, 2]
            release.set()
            assert [x async for x in it] == [3]
        finally:
            release.set()
