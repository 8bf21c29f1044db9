"""Small sources: just, empty, never, throw, repeat, from_iterable.

Building blocks for tests, defaults and combinators (``catch`` falling back
to ``just(default)``, ``merge`` with ``never()`` to keep a stream open).
Each is an ordinary source: nothing happens until the pipeline is pulled,
and every run starts afresh (except ``from_iterable`` over a one-shot
iterator, which a second run finds exhausted).

The endless ones (``repeat`` without ``times``, ``from_iterable`` over an
endless sync iterator) give the event loop a turn every
:data:`CHECKPOINT_EVERY` items, so a downstream that drops every item still
lets the run be cancelled.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Generic, NoReturn, TypeVar, overload

import anyio
import anyio.lowlevel

from .._core._metadata import Metadata
from .._core._segment import AbstractSource

__all__ = ["CHECKPOINT_EVERY", "empty", "from_iterable", "just", "never", "repeat", "throw"]

T = TypeVar("T")

CHECKPOINT_EVERY = 256
"""How many items an endless in-memory source yields between two turns it gives the event loop."""


class just(AbstractSource[T], Generic[T]):
    """A source of exactly the given items, in order, then the end.

    ::

        await (just(1, 2, 3) | map(str)).collect()   # ["1", "2", "3"]

    Holds the items given (a reference to each, not a copy).
    """

    def __init__(self, *items: T, name: str | None = None) -> None:
        super().__init__(emits_metadata=any(isinstance(x, Metadata) for x in items))
        self.items = items
        self.name = name or "just"

    async def generate(self) -> AsyncIterator[T]:
        """Yield the items."""
        for x in self.items:
            yield x


class empty(AbstractSource[NoReturn]):
    """A source that ends at once, with no items.

    ::

        await empty().collect()   # []
    """

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(emits_metadata=False)
        self.name = name or "empty"

    async def generate(self) -> AsyncIterator[NoReturn]:
        """End without yielding."""
        return
        yield  # pragma: no cover - makes this an async generator


class never(AbstractSource[NoReturn]):
    """A source that yields nothing and never ends (until the run is cancelled or closed).

    ::

        with anyio.move_on_after(1):
            await never().collect()   # waits the whole second

    Holds nothing; waiting costs no CPU.
    """

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(emits_metadata=False)
        self.name = name or "never"

    async def generate(self) -> AsyncIterator[NoReturn]:
        """Wait forever."""
        await anyio.sleep_forever()
        return  # pragma: no cover - never reached
        yield  # pragma: no cover - makes this an async generator


class throw(AbstractSource[NoReturn]):
    """A source that raises *error* when first pulled, with no items before it.

    *error* is an exception class (a new instance per run) or an instance
    (raised as it is on every run).  The runner adds the stage context as
    for any source error::

        await throw(ValueError("bad")).collect()   # raises ValueError("bad")
    """

    def __init__(self, error: BaseException | type[BaseException], *, name: str | None = None) -> None:
        super().__init__(emits_metadata=False)
        if not (isinstance(error, BaseException) or (isinstance(error, type) and issubclass(error, BaseException))):
            raise TypeError(f"throw: expected an exception or exception class, got {error!r}")
        self.error = error
        self.name = name or "throw"

    async def generate(self) -> AsyncIterator[NoReturn]:
        """Raise the error."""
        raise self.error() if isinstance(self.error, type) else self.error
        yield  # pragma: no cover - makes this an async generator


class repeat(AbstractSource[T], Generic[T]):
    """A source of *item* again and again: *times* times, or without end when *times* is ``None``.

    ::

        await repeat("x", 3).collect()            # ["x", "x", "x"]
        await (repeat(0) | take(2)).collect()     # [0, 0]

    The same object each time (not a copy).  Holds one item.
    """

    def __init__(self, item: T, times: int | None = None, *, name: str | None = None) -> None:
        super().__init__(emits_metadata=isinstance(item, Metadata))
        if times is not None and times < 0:
            raise ValueError(f"repeat: times must not be negative, not {times!r}")
        self.item = item
        self.times = times
        self.name = name or "repeat"

    async def generate(self) -> AsyncIterator[T]:
        """Yield the item the given number of times."""
        item, times = self.item, self.times
        if times is not None:
            for _ in range(times):
                yield item
            return
        while True:
            for _ in range(CHECKPOINT_EVERY):
                yield item
            await anyio.lowlevel.checkpoint()


class from_iterable(AbstractSource[T], Generic[T]):
    """A source of the items of a sync or async iterable.

    ::

        await from_iterable(range(3)).collect()   # [0, 1, 2]

    A sync iterable is read in the event loop (it must not block; use
    ``read_lines``-style sources or ``thread_map`` for blocking reads); an
    async iterable is read in the run's task, and the async iterator this
    source obtained is closed (``aclose``) when the run ends or stops early.
    An iterable that can be iterated again (a list, a range) gives the same
    items on every run; a one-shot iterator or generator only on the first.
    """

    @overload
    def __init__(self, iterable: AsyncIterable[T], *, name: str | None = None) -> None: ...
    @overload
    def __init__(self, iterable: Iterable[T], *, name: str | None = None) -> None: ...
    def __init__(self, iterable: Iterable[T] | AsyncIterable[T], *, name: str | None = None) -> None:
        super().__init__()
        if not isinstance(iterable, (Iterable, AsyncIterable)):
            raise TypeError(f"from_iterable: expected an iterable or async iterable, got {iterable!r}")
        self.iterable = iterable
        self.name = name or "from_iterable"

    async def generate(self) -> AsyncIterator[T]:
        """Yield the items of the iterable."""
        source = self.iterable
        if isinstance(source, AsyncIterable):
            it = source.__aiter__()
            try:
                async for x in it:
                    yield x
            finally:
                close = getattr(it, "aclose", None)
                if close is not None:
                    await close()
            return
        n = 0
        for x in source:
            yield x
            n += 1
            if n == CHECKPOINT_EVERY:
                n = 0
                await anyio.lowlevel.checkpoint()
