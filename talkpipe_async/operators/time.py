"""Time operators: throttle / rate_limit, debounce, delay, timeout, deadline; interval and timer sources.

All of them read the clock with ``anyio.current_time()`` (the event loop's
monotonic clock), so they work the same on asyncio and trio, and under
trio's ``MockClock`` in tests.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Hashable
from typing import Any, Literal, TypeVar

import anyio

from .._core._errors import TalkpipeAsyncError
from .._core._metadata import Flush, Metadata
from .._core._segment import AbstractSource, PassThrough
from ._clock import ReadAhead

__all__ = [
    "StageTimeout",
    "deadline",
    "debounce",
    "delay",
    "interval",
    "rate_limit",
    "throttle",
    "timeout",
    "timer",
]

T = TypeVar("T")


def _positive(name: str, value: float, what: str) -> None:
    if not value > 0:
        raise ValueError(f"{name}: {what} must be positive, not {value!r}")


class StageTimeout(TimeoutError, TalkpipeAsyncError):
    """A :class:`timeout` or :class:`deadline` stage ran out of time; ``stage`` names it."""

    def __init__(self, message: str, stage: str, seconds: float) -> None:
        super().__init__(message)
        self.stage = stage
        self.seconds = seconds


# The shortest sleep throttle takes: about one tick of the event loops' timers.  At rates where one slot is
# shorter, a sleep covers several slots and the items whose slots passed meanwhile go together.
_MIN_SLEEP = 0.001
# How far behind its slots a throttle may fall (beyond what its own sleeps overslept) and still make the time up:
# a pipeline's own hiccups and a millisecond clock (uvloop's) are not a pause of the upstream.
_SLACK = 0.002


class throttle(PassThrough[T]):
    """Let *rate* items per second through on average, with bursts of up to *burst* (a token bucket).

    The bucket starts full and refills at ``rate`` tokens per second up to
    ``burst``; an item takes one token and waits for it when the bucket is
    empty (the upstream is not read meanwhile: backpressure, nothing
    dropped)::

        throttle(10, burst=5)   # 10 items/s on average, 5 at once after a pause

    Each item gets a slot on a fixed grid of ``1/rate`` seconds (the
    generic cell rate algorithm), so time a sleep oversleeps is made up by
    the next items and the average rate holds, up to 100,000 items/s and
    beyond.  No item goes before its slot; at rates where one slot is
    shorter than the event loop's timer tick (about 1 ms) the items whose
    slots passed during one sleep go together.  A pause of the upstream
    never earns more than ``burst`` items.

    Holds nothing.  Metadata goes past without taking tokens.  ``rate_limit``
    is an alias.
    """

    def __init__(self, rate: float, burst: int = 1, *, name: str | None = None) -> None:
        super().__init__()
        _positive("throttle", rate, "rate")
        if burst < 1:
            raise ValueError(f"throttle: burst must be at least 1, not {burst!r}")
        self.rate = rate
        self.burst = burst
        self.name = name or "throttle"

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """Yield each item at its slot, or at once when its slot has passed."""
        step = 1.0 / self.rate
        allowance = (self.burst - 1) * step  # how far ahead of its slot an item may go: the burst
        rounding = step * 1e-9  # slots are sums of floats: a slot this close to now is now
        now, sleep = anyio.current_time, anyio.sleep
        free = -math.inf  # the next free slot; slots are 1/rate apart on a fixed grid
        owed = 0.0  # how late the last sleep woke: the next items make it up instead of losing it
        async for x in items:
            t = now()
            if t - free > owed + _SLACK:  # the upstream paused (or this is the first item): the bucket is full
                free, owed = t, 0.0
            go = free - allowance
            free += step
            if go - t > rounding:
                await sleep(max(go - t, _MIN_SLEEP))
                owed = max(now() - go, 0.0)
            yield x


rate_limit = throttle


class _All:
    """The one key of a debounce without ``key`` (never an item)."""


_ALL = _All()


class debounce(PassThrough[T]):
    """Yield an item only once *seconds* pass with no newer item (per key when *key* is given).

    A burst of items becomes its last item, emitted ``seconds`` after the
    burst ends.  With ``key``, each key is debounced on its own and items
    come out in the order their quiet periods end.  At the end of the stream
    (and on a :class:`Flush`) the items still waiting are emitted at once::

        debounce(0.3)                              # typing -> the final text
        debounce(1.0, key=lambda e: e["sensor"])   # latest reading per sensor

    Buffers: one waiting item per key, at most ``max_keys`` keys (when a new
    key would exceed it, the oldest waiting item is emitted early, never
    dropped).  The upstream is read by one task of the run, running ahead
    by at most 256 items; other metadata passes through in order.
    """

    def __init__(
        self,
        seconds: float,
        *,
        key: Callable[[T], Hashable] | None = None,
        max_keys: int = 10_000,
        name: str | None = None,
    ) -> None:
        super().__init__(process_metadata=True)
        _positive("debounce", seconds, "seconds")
        if max_keys < 1:
            raise ValueError("debounce: max_keys must be at least 1")
        self.seconds = seconds
        self.key = key
        self.max_keys = max_keys
        self.name = name or "debounce"

    async def transform(self, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Yield the items that stayed the latest for their quiet period."""
        seconds, key, max_keys = self.seconds, self.key, self.max_keys
        now = anyio.current_time
        feed = ReadAhead(items, 256, name=self.label)
        # key -> (due time, item); insertion order is due order (re-inserted on update)
        waiting: dict[Any, tuple[float, Any]] = {}
        try:
            while True:
                t = now()
                while waiting:
                    first = next(iter(waiting))
                    due, x = waiting[first]
                    if due > t:
                        break
                    del waiting[first]
                    yield x
                    t = now()
                try:
                    got = await feed.get(256, next(iter(waiting.values()))[0] if waiting else None)
                except anyio.EndOfStream:
                    break
                t = now()
                for x in got:
                    if isinstance(x, Metadata):
                        if isinstance(x, Flush):
                            while waiting:
                                yield waiting.pop(next(iter(waiting)))[1]
                        yield x
                        continue
                    k = key(x) if key is not None else _ALL
                    waiting.pop(k, None)
                    waiting[k] = (t + seconds, x)
                    if len(waiting) > max_keys:
                        yield waiting.pop(next(iter(waiting)))[1]
            while waiting:
                yield waiting.pop(next(iter(waiting)))[1]
        finally:
            feed.close()


class delay(PassThrough[T]):
    """Shift the stream in time: each item comes out *seconds* after it arrived.

    Items keep their order and spacing (metadata too, delayed alike).  The
    upstream is read by one task of the run; at most ``max_pending`` items
    wait at a time (when full, the upstream waits: nothing is dropped)::

        delay(0.5)

    Buffers: at most ``max_pending`` items with their arrival times.
    """

    def __init__(self, seconds: float, *, max_pending: int = 1000, name: str | None = None) -> None:
        super().__init__(process_metadata=True)
        if seconds < 0:
            raise ValueError(f"delay: seconds must not be negative, not {seconds!r}")
        if max_pending < 1:
            raise ValueError("delay: max_pending must be at least 1")
        self.seconds = seconds
        self.max_pending = max_pending
        self.name = name or "delay"

    async def transform(self, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Yield each item once its delay has passed."""
        seconds = self.seconds
        now = anyio.current_time
        feed = ReadAhead(items, self.max_pending, name=self.label, stamp=True)
        try:
            while True:
                try:
                    got = await feed.get(self.max_pending)
                except anyio.EndOfStream:
                    return
                for arrived, x in got:
                    due = arrived + seconds
                    if due > now():
                        await anyio.sleep_until(due)
                    yield x
        finally:
            feed.close()


class timeout(PassThrough[T]):
    """Raise :class:`StageTimeout` when the upstream takes more than *seconds* for an item.

    ``first`` sets a different limit for the first item (a connection, a
    warm-up); by default it is ``seconds`` too.  The waiting upstream step
    is cancelled when the limit passes::

        tail_socket() | timeout(30.0, first=5.0)

    The error names this stage (``name=`` gives it a clearer one).  Holds
    nothing; metadata passes through.
    """

    def __init__(self, seconds: float, *, first: float | None = None, name: str | None = None) -> None:
        _positive("timeout", seconds, "seconds")
        if first is not None:
            _positive("timeout", first, "first")
        super().__init__(process_metadata=True)
        self.name = name or "timeout"
        self.seconds = seconds
        self.first = first

    async def transform(self, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Yield the items while each comes in time."""
        first = self.first if self.first is not None else self.seconds
        it = items.__aiter__()
        step = it.__anext__
        now = anyio.current_time
        seconds = self.seconds
        limit = first
        count = 0
        while True:
            with anyio.CancelScope(deadline=now() + limit) as scope:
                try:
                    x = await step()
                except StopAsyncIteration:
                    return
            if scope.cancelled_caught:
                which = "the first item" if not count else f"the item after item #{count}"
                raise StageTimeout(f"{self.label}: no item within {limit} s (waiting for {which})", self.label, limit)
            if not isinstance(x, Metadata):
                count += 1
                limit = seconds
            yield x


class deadline(PassThrough[T]):
    """End the whole stream *seconds* after it starts.

    ``on_expire="raise"`` (default) raises :class:`StageTimeout` naming this
    stage; ``"stop"`` ends the stream quietly (a time-boxed run).  A waiting
    upstream step is cancelled when the deadline passes::

        live_feed() | deadline(60, on_expire="stop")   # one minute of data

    Holds nothing; metadata passes through.
    """

    def __init__(
        self, seconds: float, *, on_expire: Literal["raise", "stop"] = "raise", name: str | None = None
    ) -> None:
        super().__init__(process_metadata=True)
        _positive("deadline", seconds, "seconds")
        if on_expire not in ("raise", "stop"):
            raise ValueError(f"deadline: on_expire must be 'raise' or 'stop', not {on_expire!r}")
        self.name = name or "deadline"
        self.seconds = seconds
        self.on_expire = on_expire

    async def transform(self, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Yield the items until the deadline."""
        it = items.__aiter__()
        step = it.__anext__
        now = anyio.current_time
        end = now() + self.seconds
        count = 0
        while True:
            expired = now() >= end
            if not expired:
                with anyio.CancelScope(deadline=end) as scope:
                    try:
                        x = await step()
                    except StopAsyncIteration:
                        return
                expired = scope.cancelled_caught
            if expired:
                if self.on_expire == "stop":
                    return
                message = f"{self.label}: stream not finished within {self.seconds} s ({count} items)"
                raise StageTimeout(message, self.label, self.seconds)
            if not isinstance(x, Metadata):
                count += 1
            yield x


class interval(AbstractSource[int]):
    """A source of ticks ``0, 1, 2, ...``, one every *seconds* (the first after *first*, default *seconds*).

    Ticks follow a fixed grid from the start; when the consumer falls behind
    by more than a tick, the grid moves on instead of bursting.  ``count``
    ends the stream after that many ticks::

        interval(1.0) | map(lambda i: poll())   # poll once a second
    """

    def __init__(
        self, seconds: float, *, first: float | None = None, count: int | None = None, name: str | None = None
    ) -> None:
        super().__init__(emits_metadata=False)
        _positive("interval", seconds, "seconds")
        if first is not None and first < 0:
            raise ValueError("interval: first must not be negative")
        self.seconds = seconds
        self.first = seconds if first is None else first
        self.count = count
        self.name = name or "interval"

    async def generate(self) -> AsyncIterator[int]:
        """Yield the tick numbers on time."""
        seconds, count = self.seconds, self.count
        now = anyio.current_time
        due = now() + self.first
        i = 0
        while count is None or i < count:
            await anyio.sleep_until(due)
            yield i
            i += 1
            due += seconds
            t = now()
            if due < t - seconds:
                due = t
        return


class timer(interval):
    """A source that yields ``0`` after *delay* seconds, then ``1, 2, ...`` every *period* if given.

    ::

        timer(5.0)          # one tick after 5 s
        timer(0.0, 1.0)     # at once, then every second
    """

    def __init__(self, delay: float, period: float | None = None, *, name: str | None = None) -> None:
        if delay < 0:
            raise ValueError("timer: delay must not be negative")
        every = period if period is not None else 1.0
        super().__init__(every, first=delay, count=None if period else 1, name=name or "timer")
