"""Sequence operators: pairwise, starmap, take_last, skip_last, timestamp, time_interval.

``starmap`` is a fusable per-item step like ``map``.  ``take_last`` and
``skip_last`` hold at most *n* items.  ``timestamp`` and ``time_interval``
read the event loop's clock (``anyio.current_time()``), so they follow
trio's ``MockClock`` in tests.  Metadata goes past all of them at once, in
stream order relative to the items they yield (an item ``take_last`` or
``skip_last`` still holds comes out after metadata that arrived later).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

import anyio

from .._core._segment import AbstractSegment, PassThrough
from .transform import _fn_name, _Fusable, is_async_callable

__all__ = [
    "TimeInterval",
    "Timestamped",
    "pairwise",
    "skip_last",
    "starmap",
    "take_last",
    "time_interval",
    "timestamp",
]

T = TypeVar("T")
U = TypeVar("U")


def _at_least(name: str, n: int, low: int) -> None:
    if n < low:
        raise ValueError(f"{name}: n must be at least {low}, not {n!r}")


class pairwise(AbstractSegment[T, tuple[T, T]]):
    """Yield each item with the one before it: ``(x0, x1), (x1, x2), ...`` (as :func:`itertools.pairwise`).

    ::

        await pairwise().collect([1, 2, 3])   # [(1, 2), (2, 3)]

    Holds one item.  A stream of fewer than two items yields nothing.
    """

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__()
        self.name = name or "pairwise"

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[tuple[T, T]]:
        """Yield consecutive pairs."""
        it = items.__aiter__()
        try:
            prev = await it.__anext__()
        except StopAsyncIteration:
            return
        async for x in it:
            yield (prev, x)
            prev = x


class starmap(_Fusable[Any, U]):
    """Call ``fn(*item)`` for each item (a tuple or other iterable); *fn* may be ``async def``.

    ::

        await starmap(pow).collect([(2, 3), (3, 2)])   # [8, 9]

    Holds nothing.  Fuses with neighbouring map/filter stages like ``map``.
    """

    @overload
    def __init__(self, fn: Callable[..., Awaitable[U]], *, name: str | None = None) -> None: ...
    @overload
    def __init__(self, fn: Callable[..., U], *, name: str | None = None) -> None: ...
    def __init__(self, fn: Callable[..., Any], *, name: str | None = None) -> None:
        label = f"starmap({_fn_name(fn)})"
        if is_async_callable(fn):

            async def acall(args: Any) -> Any:
                return await fn(*args)

            super().__init__((("amap", acall, label),), name)
        else:

            def call(args: Any) -> Any:
                return fn(*args)

            super().__init__((("map", call, label),), name)


class take_last(PassThrough[T]):
    """Yield the last *n* items, once the stream has ended.

    ::

        await take_last(2).collect(range(5))   # [3, 4]

    Holds at most *n* items.  On an endless stream it yields nothing.
    """

    def __init__(self, n: int, *, name: str | None = None) -> None:
        super().__init__()
        _at_least("take_last", n, 0)
        self.n = n
        self.name = name or "take_last"

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """Keep the last n items; yield them at the end."""
        kept: deque[T] = deque(maxlen=self.n)
        async for x in items:
            kept.append(x)
        for x in kept:
            yield x


class skip_last(PassThrough[T]):
    """Yield every item except the last *n* (each item goes out once *n* newer ones arrived).

    ::

        await skip_last(2).collect(range(5))   # [0, 1, 2]

    Holds at most *n* items.
    """

    def __init__(self, n: int, *, name: str | None = None) -> None:
        super().__init__()
        _at_least("skip_last", n, 0)
        self.n = n
        self.name = name or "skip_last"

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """Yield the items that have n newer ones behind them."""
        n = self.n
        held: deque[T] = deque()
        async for x in items:
            held.append(x)
            if len(held) > n:
                yield held.popleft()


@dataclass(frozen=True)
class Timestamped(Generic[T]):
    """An item and the event loop time (``anyio.current_time()``) when it reached :class:`timestamp`."""

    value: T
    time: float


@dataclass(frozen=True)
class TimeInterval(Generic[T]):
    """An item and the seconds since the previous one reached :class:`time_interval`."""

    value: T
    interval: float


class timestamp(AbstractSegment[T, Timestamped[T]]):
    """Wrap each item as ``Timestamped(value, time)`` with the event loop's clock at its arrival.

    ::

        async for t in (src() | timestamp()).stream(): print(t.time, t.value)

    The clock is ``anyio.current_time()``: monotonic, in seconds, with an
    arbitrary origin (compare times with each other, not with wall time).
    """

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__()
        self.name = name or "timestamp"

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[Timestamped[T]]:
        """Yield the stamped items."""
        now = anyio.current_time
        async for x in items:
            yield Timestamped(x, now())


class time_interval(AbstractSegment[T, TimeInterval[T]]):
    """Wrap each item as ``TimeInterval(value, interval)``: the seconds since the previous item.

    The first item's interval counts from when the stage started reading
    (the first pull of the pipeline)::

        await (interval(0.5, count=2) | time_interval()).collect()   # intervals 0.5, 0.5
    """

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__()
        self.name = name or "time_interval"

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[TimeInterval[T]]:
        """Yield each item with the time since the previous one."""
        now = anyio.current_time
        last = now()
        async for x in items:
            t = now()
            yield TimeInterval(x, t - last)
            last = t
