"""Select operators: take / firstN, skip, every_n / everyN, take_while, drop_while, until.

They hold nothing between items (``until`` with an event: see there).
Metadata goes past them in order.  An operator that stops early (``take``,
``take_while``, ``until``) stops reading its upstream at once; the upstream
stages are closed when the run ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import anyio

from .._core._metadata import Metadata
from .._core._run import current_run
from .._core._segment import PassThrough
from ._clock import ReadAhead
from .transform import is_async_callable

__all__ = ["drop_while", "everyN", "every_n", "firstN", "skip", "take", "take_while", "until"]

T = TypeVar("T")


def _at_least(name: str, n: int, low: int) -> None:
    if n < low:
        raise ValueError(f"{name}: n must be at least {low}, not {n!r}")


class take(PassThrough[T]):
    """Yield the first *n* items, then end (without reading item n + 1).

    ::

        await take(2).collect(range(10))   # [0, 1]

    TalkPipe's ``firstN`` is an alias.
    """

    def __init__(self, n: int, *, name: str | None = None) -> None:
        super().__init__()
        _at_least("take", n, 0)
        self.n = n
        self.name = name or "take"

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """Yield at most n items."""
        left = self.n
        if left <= 0:
            return
        async for x in items:
            yield x
            left -= 1
            if not left:
                return


firstN = take


class skip(PassThrough[T]):
    """Leave out the first *n* items, yield the rest.

    ::

        await skip(8).collect(range(10))   # [8, 9]
    """

    def __init__(self, n: int, *, name: str | None = None) -> None:
        super().__init__()
        _at_least("skip", n, 0)
        self.n = n
        self.name = name or "skip"

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """Yield the items after the first n."""
        left = self.n
        async for x in items:
            if left:
                left -= 1
                continue
            yield x


class every_n(PassThrough[T]):
    """Yield every *n*-th item: the n-th, 2n-th, ... (``xs[n - 1::n]``).

    ::

        await every_n(3).collect(range(10))   # [2, 5, 8]

    TalkPipe's ``everyN`` is an alias.
    """

    def __init__(self, n: int, *, name: str | None = None) -> None:
        super().__init__()
        _at_least("every_n", n, 1)
        self.n = n
        self.name = name or "every_n"

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """Yield one item in n."""
        n = self.n
        count = 0
        async for x in items:
            count += 1
            if count == n:
                count = 0
                yield x


everyN = every_n


class take_while(PassThrough[T]):
    """Yield items while *pred* holds; end at the first item for which it does not.

    *pred* may be ``def`` or ``async def``::

        await take_while(lambda x: x < 3).collect([1, 2, 5, 1])   # [1, 2]
    """

    def __init__(self, pred: Callable[[T], Any], *, name: str | None = None) -> None:
        super().__init__()
        self.pred = pred
        self.name = name or "take_while"

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """Yield the leading items that satisfy the predicate."""
        pred = self.pred
        is_async = is_async_callable(pred)
        async for x in items:
            if not (await pred(x) if is_async else pred(x)):
                return
            yield x


class drop_while(PassThrough[T]):
    """Leave out items while *pred* holds; from the first one that fails, yield everything.

    ::

        await drop_while(lambda x: x < 3).collect([1, 2, 5, 1])   # [5, 1]
    """

    def __init__(self, pred: Callable[[T], Any], *, name: str | None = None) -> None:
        super().__init__()
        self.pred = pred
        self.name = name or "drop_while"

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """Yield the items from the first one that fails the predicate."""
        pred = self.pred
        is_async = is_async_callable(pred)
        it = items.__aiter__()
        async for x in it:
            if not (await pred(x) if is_async else pred(x)):
                yield x
                break
        async for x in it:
            yield x


class until(PassThrough[T]):
    """End the stream when *stop* says so: a predicate on the items, or an ``anyio.Event``.

    * ``until(pred)``: end at the first item for which ``pred(item)`` is true
      (that item is yielded too when ``inclusive=True``).  Holds nothing.
    * ``until(event)``: end as soon as the event is set, even while waiting
      for the upstream (items already read but not yet yielded are left
      out).  The upstream is then read by one task of the run, running ahead
      by at most ``read_ahead`` items (default 1); metadata passes through
      this operator in order.

    ::

        stop = anyio.Event()
        pipeline = ticks() | until(stop)   # stop.set() ends the stream promptly
    """

    def __init__(
        self,
        stop: Callable[[T], Any] | anyio.Event,
        *,
        inclusive: bool = False,
        read_ahead: int = 1,
        name: str | None = None,
    ) -> None:
        is_event = isinstance(stop, anyio.Event)
        super().__init__(process_metadata=is_event)
        _at_least("until", read_ahead, 1)
        self.stop = stop
        self.inclusive = inclusive
        self.read_ahead = read_ahead
        self.name = name or "until"

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """Yield items until the predicate holds or the event is set."""
        stop = self.stop
        if isinstance(stop, anyio.Event):
            async for x in self._until_event(items, stop):
                yield x
            return
        is_async = is_async_callable(stop)
        inclusive = self.inclusive
        async for x in items:
            if await stop(x) if is_async else stop(x):
                if inclusive:
                    yield x
                return
            yield x

    async def _until_event(self, items: AsyncIterator[Any], event: anyio.Event) -> AsyncIterator[Any]:
        if event.is_set():
            return
        feed = ReadAhead(items, self.read_ahead, name=self.label)
        watcher = anyio.CancelScope()

        async def watch() -> None:
            with watcher:
                await event.wait()
                feed.channel.close()

        current_run().start_soon(watch, name=f"talkpipe_async stop watch of {self.label}")
        try:
            while not event.is_set():
                try:
                    got = await feed.get(self.read_ahead)
                except anyio.EndOfStream:
                    return
                for x in got:
                    if event.is_set() and not isinstance(x, Metadata):
                        return
                    yield x
        finally:
            watcher.cancel()
            feed.close()
