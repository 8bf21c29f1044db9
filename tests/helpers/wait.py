"""Waiting for a condition, bounded: the suite's one set of polling helpers.

A test waits on an event the code exposes wherever there is one; these poll
only what no event can signal across a boundary (a file another process
writes, a counter in a broker, ``/proc``).  Each wait is bounded and says
what it waited for when it gives up.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import anyio.lowlevel

__all__ = ["until", "wait_until", "wait_until_sync"]


async def wait_until(
    cond: Callable[[], bool], timeout: float = 4.0, what: str = "the condition", *, interval: float = 0.002
) -> None:
    """Poll *cond* in the event loop every *interval* seconds; ``TimeoutError`` after *timeout* seconds."""
    try:
        with anyio.fail_after(timeout):
            while not cond():
                await anyio.sleep(interval)
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout} s waiting for {what}") from None


def wait_until_sync(
    cond: Callable[[], bool], deadline: float, what: str = "the condition", *, interval: float = 0.005
) -> None:
    """Poll *cond* from a thread or a plain function until the ``time.monotonic()`` *deadline*, then fail."""
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


async def until(cond: Callable[[], bool], rounds: int = 2000) -> None:
    """Let other tasks run until *cond* holds: bounded in scheduler rounds, not in time."""
    for _ in range(rounds):
        if cond():
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("condition not reached")
