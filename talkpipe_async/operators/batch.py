"""Batch and window operators: batch by size or time, count and time windows, flush emitters.

Every operator here handles metadata itself (``process_metadata=True``): a
:class:`Flush` makes it emit what it holds, then goes on downstream; any
other metadata goes on downstream at once (ahead of items still held in an
open batch or window).  Each emitted batch is a fresh list that the operator
never touches again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import anyio

from .._core._metadata import Flush, Metadata
from .._core._segment import AbstractSegment, PassThrough
from ._clock import ReadAhead

__all__ = ["batch", "flushN", "flushT", "flush_n", "flush_t", "makeLists", "time_window", "window"]

T = TypeVar("T")


def _positive(name: str, value: float, what: str) -> None:
    if not value > 0:
        raise ValueError(f"{name}: {what} must be positive, not {value!r}")


class batch(AbstractSegment[T, list[T]]):
    """Group items into lists of *size*, or fewer when *timeout* seconds pass first.

    A batch is emitted when it holds ``size`` items, or ``timeout`` seconds
    after its first item arrived, whichever comes first; the timeout fires
    even when no new item arrives.  The last, partial batch is emitted at the
    end of the stream, and a :class:`Flush` emits the open batch at once::

        batch(100, timeout=0.5)   # lists of up to 100 items, none older than 0.5 s

    Buffers: the open batch (< ``size`` items).  With a timeout the upstream
    is read by one task of the run and runs ahead by at most ``size + 1``
    items (``size`` waiting in its channel, one in the reading task's hand).
    TalkPipe's ``makeLists`` is an alias.
    """

    def __init__(self, size: int, timeout: float | None = None, *, name: str | None = None) -> None:
        super().__init__(process_metadata=True)
        if size < 1:
            raise ValueError(f"batch: size must be at least 1, not {size!r}")
        if timeout is not None:
            _positive("batch", timeout, "timeout")
        self.size = size
        self.timeout = timeout
        self.name = name or "batch"

    async def transform(self, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Yield lists of items (and the metadata that arrives)."""
        if self.timeout is None:
            async for out in _count_batches(items, self.size):
                yield out
            return
        size, timeout = self.size, self.timeout
        now = anyio.current_time
        feed = ReadAhead(items, size, name=self.label)
        pending: list[Any] = []
        deadline = 0.0
        try:
            while True:
                if pending and now() >= deadline:
                    out, pending = pending, []
                    yield out
                try:
                    got = await feed.get(size, deadline if pending else None)
                except anyio.EndOfStream:
                    break
                for x in got:
                    if isinstance(x, Metadata):
                        if isinstance(x, Flush) and pending:
                            out, pending = pending, []
                            yield out
                        yield x
                        continue
                    if not pending:
                        deadline = now() + timeout
                    pending.append(x)
                    if len(pending) >= size:
                        out, pending = pending, []
                        yield out
            if pending:
                yield pending
        finally:
            feed.close()


makeLists = batch


async def _count_batches(items: AsyncIterator[Any], size: int) -> AsyncIterator[Any]:
    pending: list[Any] = []
    async for x in items:
        if isinstance(x, Metadata):
            if isinstance(x, Flush) and pending:
                out, pending = pending, []
                yield out
            yield x
            continue
        pending.append(x)
        if len(pending) >= size:
            out, pending = pending, []
            yield out
    if pending:
        yield pending


class window(AbstractSegment[T, list[T]]):
    """Count windows: tumbling (``step=None``) or sliding/hopping (``step`` items apart).

    * ``window(size)``: consecutive lists of ``size`` items, the last one
      partial (the same as ``batch(size)``).
    * ``window(size, step)``: after every ``step`` items, the list of the last
      ``size`` items (only full windows; ``step > size`` leaves gaps).
      ``[xs[i:i + size] for i in range(0, len(xs) - size + 1, step)]``.

    ::

        await window(3, step=1).collect([1, 2, 3, 4])   # [[1, 2, 3], [2, 3, 4]]

    A :class:`Flush` emits the open tumbling window, or clears a sliding one
    (windows start afresh).  Buffers: at most ``size`` items.
    """

    def __init__(self, size: int, step: int | None = None, *, name: str | None = None) -> None:
        super().__init__(process_metadata=True)
        if size < 1 or (step is not None and step < 1):
            raise ValueError(f"window: size and step must be at least 1, not {size!r} and {step!r}")
        self.size = size
        self.step = step
        self.name = name or "window"

    async def transform(self, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Yield the windows as lists (and the metadata that arrives)."""
        size, step = self.size, self.step
        if step is None:
            async for out in _count_batches(items, size):
                yield out
            return
        held: deque[Any] = deque(maxlen=size)
        seen = 0
        async for x in items:
            if isinstance(x, Metadata):
                if isinstance(x, Flush):
                    held.clear()
                    seen = 0
                yield x
                continue
            held.append(x)
            seen += 1
            if seen >= size and (seen - size) % step == 0:
                yield list(held)


class time_window(AbstractSegment[T, list[T]]):
    """Processing-time windows: tumbling (``every=None``) or sliding.

    * ``time_window(seconds)``: the items of each consecutive ``seconds``-long
      window, counted from the start of the stage, emitted as a list when the
      window ends (even if no item arrives then).  Empty windows are skipped
      unless ``emit_empty=True``.  A window that reaches ``max_items`` is
      emitted at once and the window goes on with a new list.
    * ``time_window(seconds, every=e)``: every ``e`` seconds, the list of
      items that arrived in the last ``seconds``.  Holding more than
      ``max_items`` raises ``BufferError`` naming the stage.

    At the end of the stream the open tumbling window is emitted; a
    :class:`Flush` emits it at once (or clears a sliding window).

    ::

        time_window(1.0)              # a list per second
        time_window(10.0, every=1.0)  # each second, the last 10 seconds

    Buffers: at most ``max_items`` items; the upstream runs ahead by at most
    ``min(max_items, 1024)`` items (read by one task of the run).
    """

    def __init__(
        self,
        seconds: float,
        every: float | None = None,
        *,
        max_items: int = 100_000,
        emit_empty: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(process_metadata=True)
        _positive("time_window", seconds, "seconds")
        if every is not None:
            _positive("time_window", every, "every")
        if max_items < 1:
            raise ValueError("time_window: max_items must be at least 1")
        self.seconds = seconds
        self.every = every
        self.max_items = max_items
        self.emit_empty = emit_empty
        self.name = name or "time_window"

    async def transform(self, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Yield the windows as lists (and the metadata that arrives)."""
        if self.every is None:
            async for out in self._tumbling(items):
                yield out
        else:
            async for out in self._sliding(items):
                yield out

    async def _tumbling(self, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        seconds, cap, emit_empty = self.seconds, self.max_items, self.emit_empty
        now = anyio.current_time
        feed = ReadAhead(items, min(cap, 1024), name=self.label)
        held: list[Any] = []
        end = now() + seconds
        try:
            while True:
                if now() >= end:
                    if held or emit_empty:
                        out, held = held, []
                        yield out
                    end += seconds
                    t = now()
                    if end <= t:  # fell behind: skip whole windows, keep the grid
                        end += ((t - end) // seconds + 1) * seconds
                    continue
                try:
                    got = await feed.get(cap, end)
                except anyio.EndOfStream:
                    break
                for x in got:
                    if isinstance(x, Metadata):
                        if isinstance(x, Flush) and held:
                            out, held = held, []
                            yield out
                        yield x
                        continue
                    held.append(x)
                    if len(held) >= cap:
                        out, held = held, []
                        yield out
            if held:
                yield held
        finally:
            feed.close()

    async def _sliding(self, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        seconds, every, cap = self.seconds, self.every, self.max_items
        assert every is not None
        now = anyio.current_time
        feed = ReadAhead(items, min(cap, 1024), name=self.label, stamp=True)
        held: deque[tuple[float, Any]] = deque()
        tick = now() + every
        try:
            while True:
                t = now()
                if t >= tick:
                    while held and held[0][0] <= t - seconds:
                        held.popleft()
                    if held or self.emit_empty:
                        yield [x for _, x in held]
                    tick += every
                    t = now()
                    if tick <= t:
                        tick += ((t - tick) // every + 1) * every
                    continue
                try:
                    got = await feed.get(1024, tick)
                except anyio.EndOfStream:
                    return
                for stamped in got:
                    x = stamped[1]
                    if isinstance(x, Metadata):
                        if isinstance(x, Flush):
                            held.clear()
                        yield x
                        continue
                    held.append(stamped)
                    if len(held) > cap:
                        raise BufferError(f"{self.label}: more than max_items={cap} items in a {seconds} s window")
        finally:
            feed.close()


class flush_n(PassThrough[T]):
    """Pass items through and emit a :class:`Flush` after every *n* data items.

    ::

        flush_n(10) | batch(1000)   # batches of at most 10 items

    Metadata passes through.  Holds nothing.  TalkPipe's ``flushN`` is an alias.
    """

    def __init__(self, n: int, *, name: str | None = None) -> None:
        super().__init__(process_metadata=True)
        if n < 1:
            raise ValueError(f"flush_n: n must be at least 1, not {n!r}")
        self.n = n
        self.name = name or "flush_n"

    async def transform(self, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Yield the items, with a Flush after every n data items."""
        n = self.n
        count = 0
        async for x in items:
            yield x
            if not isinstance(x, Metadata):
                count += 1
                if count == n:
                    count = 0
                    yield Flush()


flushN = flush_n


class flush_t(PassThrough[T]):
    """Pass items through and emit a :class:`Flush` every *seconds*, even when no item arrives.

    ::

        flush_t(1.0) | batch(10_000)   # downstream batches are at most ~1 s old

    Ticks follow a fixed grid from the start of the stage (late ticks are
    not bunched up).  The upstream is read by one task of the run and runs
    ahead by at most 256 items.  TalkPipe's ``flushT`` is an alias.
    """

    def __init__(self, seconds: float, *, name: str | None = None) -> None:
        super().__init__(process_metadata=True)
        _positive("flush_t", seconds, "seconds")
        self.seconds = seconds
        self.name = name or "flush_t"

    async def transform(self, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Yield the items, with a Flush every few seconds."""
        seconds = self.seconds
        now = anyio.current_time
        feed = ReadAhead(items, 256, name=self.label)
        tick = now() + seconds
        try:
            while True:
                t = now()
                if t >= tick:
                    yield Flush()
                    tick += seconds
                    t = now()
                    if tick <= t:
                        tick += ((t - tick) // seconds + 1) * seconds
                    continue
                try:
                    got = await feed.get(256, tick)
                except anyio.EndOfStream:
                    return
                for x in got:
                    yield x
        finally:
            feed.close()


flushT = flush_t
