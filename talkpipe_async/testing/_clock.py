"""Virtual time for tests: an asyncio event loop whose clock jumps, and trio's autojumping MockClock.

Every timed operator reads the loop's clock (``anyio.current_time()``) and
waits on the loop's timers (``anyio.sleep``, cancel-scope deadlines), so a
loop whose ``time()`` is virtual runs them unchanged.  When no task can run
and no I/O is ready, :class:`VirtualClockLoop` moves its clock straight to
the next timer instead of sleeping: an hour of ``batch(timeout=...)`` takes
as long as its items take to compute.  On trio the same is
``MockClock(autojump_threshold=0)``.

As with trio's MockClock, the clock does not wait for worker threads: a
stage that hands work to a thread while a timer is pending sees that timer
fire at once.  Time-based tests should keep their stages on the loop.
"""

from __future__ import annotations

import asyncio
import math
import selectors
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import anyio
import sniffio

__all__ = ["VirtualClockLoop", "VirtualClockPolicy", "clock_is_virtual", "in_virtual_time", "virtual_backend"]

T = TypeVar("T")


class _JumpingSelector(selectors.BaseSelector):
    """The loop's selector, except that a wait for a timer with nothing ready moves the clock instead."""

    def __init__(self, inner: selectors.BaseSelector, loop: VirtualClockLoop) -> None:
        self._inner = inner
        self._loop = loop

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        # timeout None: no timer at all, so only I/O (or another thread) can wake the loop: wait for real.
        # timeout 0: something is ready to run.  Otherwise poll once and, when nothing is ready, jump.
        if timeout is None or timeout <= 0:
            return self._inner.select(timeout)
        events = self._inner.select(0)
        if not events:
            self._loop._jump_to_next_timer()
        return events

    def close(self) -> None:
        self._inner.close()

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.get_key(fileobj)

    def get_map(self) -> Any:
        return self._inner.get_map()


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An asyncio selector event loop on a virtual clock that starts at *start* and jumps to the next timer.

    ``loop.time()`` (and so ``anyio.current_time()``) is virtual: it moves
    only when every task waits and no I/O is ready, and then straight to the
    earliest timer.  Real I/O (sockets on 127.0.0.1, pipes) still works; a
    wait with no timer at all blocks for real.  Use it as anyio's
    ``loop_factory`` (:func:`virtual_backend`), with ``asyncio.Runner``, or
    through :class:`VirtualClockPolicy` under pytest-asyncio.
    """

    def __init__(self, selector: selectors.BaseSelector | None = None, *, start: float = 0.0) -> None:
        super().__init__(selector)
        self._virtual_now = float(start)
        self._selector: selectors.BaseSelector = _JumpingSelector(self._selector, self)

    def time(self) -> float:
        """The virtual time in seconds."""
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by *seconds* (timers now due run on the next loop iteration)."""
        if seconds < 0:
            raise ValueError(f"time cannot go back (advance({seconds!r}))")
        self._virtual_now += seconds

    def _jump_to_next_timer(self) -> None:
        scheduled: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        if scheduled:
            self._virtual_now = max(self._virtual_now, scheduled[0].when())


class VirtualClockPolicy(asyncio.DefaultEventLoopPolicy):
    """An event loop policy whose new loops are :class:`VirtualClockLoop`: pytest-asyncio's ``event_loop_policy``."""

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        """A new :class:`VirtualClockLoop`."""
        return VirtualClockLoop()


def virtual_backend(name: str = "asyncio") -> tuple[str, dict[str, Any]]:
    """An ``anyio_backend`` value (name, options) whose clock is virtual; a fresh clock on each call.

    ``("asyncio", {"loop_factory": VirtualClockLoop})`` or
    ``("trio", {"clock": MockClock(autojump_threshold=0)})``.
    """
    if name == "asyncio":
        return "asyncio", {"loop_factory": VirtualClockLoop}
    if name == "trio":
        from trio.testing import MockClock

        return "trio", {"clock": MockClock(autojump_threshold=0)}
    raise ValueError(f"virtual time runs on 'asyncio' or 'trio', not {name!r}")


def clock_is_virtual() -> bool:
    """True inside a loop whose clock jumps: a :class:`VirtualClockLoop`, or trio with an autojumping MockClock."""
    library = sniffio.current_async_library()
    if library == "trio":
        import trio
        from trio.testing import MockClock

        clock = trio.lowlevel.current_clock()
        return isinstance(clock, MockClock) and not math.isinf(clock.autojump_threshold)
    return isinstance(asyncio.get_running_loop(), VirtualClockLoop)


async def in_virtual_time(func: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Await ``func(*args)`` in virtual time, whatever the clock of the calling test.

    Inside a virtual clock already, it is awaited here.  Otherwise it runs
    on a fresh virtual-clock loop of the same kind (asyncio or trio) in a
    worker thread, and this call waits for it: so a test under
    pytest-asyncio or anyio's plugin with a real clock can still check timed
    behaviour in virtual time.  Objects bound to the calling loop (events,
    streams) cannot cross into that other loop.
    """
    if clock_is_virtual():
        return await func(*args)
    library = sniffio.current_async_library()
    backend, options = virtual_backend("trio" if library == "trio" else "asyncio")
    call = partial(anyio.run, func, *args, backend=backend, backend_options=options)
    result: T = await anyio.to_thread.run_sync(call)
    return result
