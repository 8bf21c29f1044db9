"""Aggregates: minimum, maximum and mean of a whole stream (sinks), and their running forms (segments).

The sinks run a pipeline to the end and return one value, like ``count``
and ``reduce`` in ``talkpipe_async.sinks``::

    low = await minimum(src() | map(float))
    avg = await mean(src() | get_field("latency"))

The running forms are segments that yield the aggregate so far after each
item (``running_count`` yields 1, 2, 3, ...)::

    src() | get_field("latency") | running_mean()

All hold one accumulator (constant memory).  Ties keep the first item, as
the built-in ``min`` and ``max`` do.  Metadata goes past the segments in
order; the sinks never see it.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar, overload

from .._core._pipeline import Pipeline
from .._core._segment import AbstractSegment, AbstractSource, PassThrough

__all__ = [
    "maximum",
    "mean",
    "minimum",
    "running_count",
    "running_max",
    "running_mean",
    "running_min",
]

T = TypeVar("T")
D = TypeVar("D")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

Input = Iterable[Any] | AsyncIterable[Any] | None
Runnable = Pipeline[Any, T] | AbstractSource[T] | AbstractSegment[Any, T]
Key = Callable[[Any], Any]


class _Missing:
    """Marks "no default given" (never an item)."""


_MISSING: Any = _Missing()


def _pipeline(obj: Any) -> Pipeline[Any, Any]:
    return obj if isinstance(obj, Pipeline) else Pipeline(obj)


async def _extreme(
    what: str, pipeline: Runnable[Any], input: Input, key: Key | None, default: Any, larger: bool
) -> Any:
    best: Any = _MISSING
    best_key: Any = None
    async with _pipeline(pipeline).stream(input) as items:
        async for x in items:
            k = key(x) if key is not None else x
            if best is _MISSING or (k > best_key if larger else k < best_key):
                best, best_key = x, k
    if best is _MISSING:
        if default is _MISSING:
            raise ValueError(f"{what}: the stream had no items (pass default= for that case)")
        return default
    return best


@overload
async def minimum(pipeline: Runnable[T], input: Input = None, *, key: Key | None = None) -> T: ...
@overload
async def minimum(pipeline: Runnable[T], input: Input = None, *, key: Key | None = None, default: D) -> T | D: ...
async def minimum(
    pipeline: Runnable[Any], input: Input = None, *, key: Key | None = None, default: Any = _MISSING
) -> Any:
    """Run *pipeline* to the end and return its smallest item (by ``key(item)`` when given).

    An empty stream raises ``ValueError`` unless *default* is given.
    """
    return await _extreme("minimum", pipeline, input, key, default, larger=False)


@overload
async def maximum(pipeline: Runnable[T], input: Input = None, *, key: Key | None = None) -> T: ...
@overload
async def maximum(pipeline: Runnable[T], input: Input = None, *, key: Key | None = None, default: D) -> T | D: ...
async def maximum(
    pipeline: Runnable[Any], input: Input = None, *, key: Key | None = None, default: Any = _MISSING
) -> Any:
    """Run *pipeline* to the end and return its largest item (by ``key(item)`` when given).

    An empty stream raises ``ValueError`` unless *default* is given.
    """
    return await _extreme("maximum", pipeline, input, key, default, larger=True)


class _Divisible(Protocol[R_co]):
    """An item whose sum divided by a count gives ``R_co`` (``int`` and ``float`` give ``float``)."""

    def __truediv__(self, other: int, /) -> R_co: ...


@overload
async def mean(pipeline: Runnable[_Divisible[R]], input: Input = None) -> R: ...
@overload
async def mean(pipeline: Runnable[_Divisible[R]], input: Input = None, *, default: D) -> R | D: ...
async def mean(pipeline: Runnable[Any], input: Input = None, *, default: Any = _MISSING) -> Any:
    """Run *pipeline* to the end and return the arithmetic mean of its (numeric) items.

    The items are summed as they come (integers exactly) and divided once
    at the end: ``int`` and ``float`` items give a ``float``, ``Decimal``
    and ``Fraction`` items their own type.  An empty stream raises
    ``ValueError`` unless *default* is given.
    """
    total: Any = 0
    n = 0
    async with _pipeline(pipeline).stream(input) as items:
        async for x in items:
            total += x
            n += 1
    if not n:
        if default is _MISSING:
            raise ValueError("mean: the stream had no items (pass default= for that case)")
        return default
    return total / n


class _RunningExtreme(PassThrough[T], Generic[T]):
    larger = False

    def __init__(self, key: Key | None, name: str) -> None:
        super().__init__()
        self.key = key
        self.name = name

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """Yield the extreme so far after each item."""
        key, larger = self.key, self.larger
        best: Any = _MISSING
        best_key: Any = None
        async for x in items:
            k = key(x) if key is not None else x
            if best is _MISSING or (k > best_key if larger else k < best_key):
                best, best_key = x, k
            yield best


class running_min(_RunningExtreme[T], Generic[T]):
    """Yield the smallest item so far after each item (by ``key(item)`` when given).

    ::

        await running_min().collect([3, 1, 2])   # [3, 1, 1]
    """

    def __init__(self, key: Key | None = None, *, name: str | None = None) -> None:
        super().__init__(key, name or "running_min")


class running_max(_RunningExtreme[T], Generic[T]):
    """Yield the largest item so far after each item (by ``key(item)`` when given).

    ::

        await running_max().collect([1, 3, 2])   # [1, 3, 3]
    """

    larger = True

    def __init__(self, key: Key | None = None, *, name: str | None = None) -> None:
        super().__init__(key, name or "running_max")


class running_mean(AbstractSegment[Any, float]):
    """Yield the mean of the items so far after each (numeric) item.

    ::

        await running_mean().collect([1, 3, 8])   # [1.0, 2.0, 4.0]

    Integers are summed exactly; each mean is one division.
    """

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__()
        self.name = name or "running_mean"

    async def transform(self, items: AsyncIterator[Any]) -> AsyncIterator[float]:
        """Yield the running mean."""
        total: Any = 0
        n = 0
        async for x in items:
            total += x
            n += 1
            yield total / n


class running_count(AbstractSegment[Any, int]):
    """Yield how many items came so far: ``start + 1``, ``start + 2``, ... (one per item).

    ::

        await running_count().collect("abc")   # [1, 2, 3]

    The sink form is ``count`` in ``talkpipe_async.sinks``.
    """

    def __init__(self, *, start: int = 0, name: str | None = None) -> None:
        super().__init__()
        self.start = start
        self.name = name or "running_count"

    async def transform(self, items: AsyncIterator[Any]) -> AsyncIterator[int]:
        """Yield the count after each item."""
        n = self.start
        async for _ in items:
            n += 1
            yield n
