"""Metadata plumbing: how control items go past segments that do not want them.

A segment that does not process metadata gets its input through a *strip*
layer.  When metadata reaches a strip layer and some stage further down wants
it, the layer awaits ``_Bypass(item)``: the awaitable travels up through the
suspended frames of every segment in between (they are all awaiting their
input) until an :class:`Intercept` (the input of the next metadata-aware stage,
or the consumer's outlet) catches it, returns the metadata as its own next
item and keeps the suspended chain to resume later.  No segment in between
runs, buffers or yields; the metadata arrives the moment a segment asks for the
input after it.  All this costs nothing when no metadata flows, and nothing is
installed where no stage downstream can receive metadata (there it is dropped
and counted).
"""

from __future__ import annotations

import sys
import types
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator
from typing import Any

from . import _batch_items
from ._metadata import Metadata

__all__ = ["Intercept", "MetaCounter", "make_intercept", "run_sync", "strip_async", "strip_sync", "sync_to_async"]


class MetaCounter:
    """Counts metadata items dropped because no stage downstream wanted them."""

    __slots__ = ("dropped",)

    def __init__(self) -> None:
        self.dropped = 0


class _Bypass:
    """Awaiting this hands ``item`` to the nearest :class:`Intercept` above."""

    __slots__ = ("item",)

    def __init__(self, item: Metadata) -> None:
        self.item = item

    def __await__(self) -> Generator[Any, Any, None]:
        yield self


def strip_async(items: AsyncIterator[Any], bypass: bool, counter: MetaCounter) -> AsyncIterator[Any]:
    """The data items of *items*; metadata bypassed (or dropped and counted): the C step when the extension is on."""
    if _batch_items.SPEEDUPS:
        return _FastStrip(items, Metadata, _Bypass if bypass else None, counter)
    return _strip_async(items, bypass, counter)


async def _strip_async(items: AsyncIterator[Any], bypass: bool, counter: MetaCounter) -> AsyncIterator[Any]:
    async for item in items:
        if isinstance(item, Metadata):
            if bypass:
                await _Bypass(item)
            else:
                counter.dropped += 1
        else:
            yield item


async def sync_to_async(items: Iterable[Any], strip: bool, bypass: bool, counter: MetaCounter) -> AsyncIterator[Any]:
    """Feed a sync iterable into async stages, stripping metadata if asked."""
    if not strip:
        for item in items:
            yield item
        return
    for item in items:
        if isinstance(item, Metadata):
            if bypass:
                await _Bypass(item)
            else:
                counter.dropped += 1
        else:
            yield item


def strip_sync(items: Iterable[Any], pending: list[Any] | None, counter: MetaCounter) -> Iterator[Any]:
    """Sync strip layer: metadata goes to *pending* (or is dropped and counted); in C when the extension is on."""
    if _batch_items.SPEEDUPS:
        return _batch_items._speedups.StripIter(items, Metadata, pending, counter)  # type: ignore[no-any-return]
    return _strip_sync(items, pending, counter)


def _strip_sync(items: Iterable[Any], pending: list[Any] | None, counter: MetaCounter) -> Iterator[Any]:
    for item in items:
        if isinstance(item, Metadata):
            if pending is not None:
                pending.append(item)
            else:
                counter.dropped += 1
        else:
            yield item


def run_sync(
    chain: Iterator[Any], on_error: Callable[[BaseException], Any], on_close: Callable[[], Any]
) -> Iterator[Any]:
    """The items of a sync chain; *on_error* sees what the chain raises; *on_close* runs once at the end.

    The end is the chain's end, an error, ``close()``, or the iterator being
    dropped (a ``break``).  In C when the extension is on, before Python 3.13:
    no generator resume per item.  From 3.13 the interpreter runs a ``for``
    over a generator, and a ``yield from`` a generator, without a C call
    (specialised), which a C iterator in between would lose: there the
    generator is the faster one.  (3.12 specialises them too, but there the
    C step still measures faster: about 1.10x plain generators against
    1.18x for the generator, in the sync form's benchmark.)
    """
    if _batch_items.SPEEDUPS and sys.version_info < (3, 13):
        return _batch_items._speedups.SyncRun(chain, on_error, on_close)  # type: ignore[no-any-return]
    return _run_sync(chain, on_error, on_close)


def _run_sync(
    chain: Iterator[Any], on_error: Callable[[BaseException], Any], on_close: Callable[[], Any]
) -> Iterator[Any]:
    try:
        yield from chain
    except BaseException as exc:
        on_error(exc)
        raise
    finally:
        on_close()


def release_sync(items: Iterable[Any], pending: list[Any]) -> Iterator[Any]:
    """Emit metadata held back by :func:`strip_sync` before each output item.

    A plain generator cannot be suspended in the middle of reading its input,
    so in a chain of sync generators metadata that went past a segment comes
    out just before that segment's next output (or when it ends).
    """
    for item in items:
        if pending:
            yield from pending
            pending.clear()
        yield item
    if pending:
        yield from pending
        pending.clear()


class Intercept:
    """Async iterator that turns bypassed metadata back into stream items."""

    __slots__ = ("_anext", "_pending")

    def __init__(self, items: AsyncIterator[Any]) -> None:
        self._anext = items.__anext__
        self._pending: Any = None

    def __aiter__(self) -> Intercept:
        return self

    def __anext__(self) -> Any:  # replaced by _step below (one call less per item)
        return _step(self)

    async def aclose(self) -> None:
        """Unwind a chain left suspended by a bypass (its ``finally`` blocks run)."""
        coro, self._pending = self._pending, None
        if coro is not None:
            await _unwind(coro)


@types.coroutine
def _step(ic: Intercept) -> Generator[Any, Any, Any]:
    coro = ic._pending
    if coro is None:
        coro = ic._anext()
    else:
        ic._pending = None
    send: Any = None
    error: BaseException | None = None
    while True:
        try:
            signal = coro.send(send) if error is None else coro.throw(error)
        except StopIteration as stop:
            return stop.value
        if type(signal) is _Bypass:
            ic._pending = coro
            return signal.item
        try:
            send = yield signal
            error = None
        except BaseException as exc:  # forwarded into the chain, never swallowed
            send, error = None, exc


class _Unwind(BaseException):
    """Thrown into a chain left suspended by a bypass, to run its ``finally`` blocks."""


Intercept.__anext__ = _step  # type: ignore[assignment,method-assign]


if _batch_items._speedups is not None:

    class _FastIntercept(_batch_items._speedups.Intercept):  # type: ignore[misc]
        """:class:`Intercept` with its step in C (no generator and no ``StopIteration`` per item)."""

        def __init__(self, items: AsyncIterator[Any]) -> None:
            super().__init__(items, _Bypass)

        async def aclose(self) -> None:
            """Unwind a chain left suspended by a bypass (its ``finally`` blocks run)."""
            coro = self._take_pending()
            if coro is not None:
                await _unwind(coro)


    class _FastStrip(_batch_items._speedups.Strip):  # type: ignore[misc]
        """:func:`strip_async` in C: no generator frame and no ``StopIteration`` of its own per item."""

        async def aclose(self) -> None:
            """Nothing to close: the upstream is a stage of the run, closed on its own."""


def make_intercept(items: AsyncIterator[Any]) -> Any:
    """An :class:`Intercept` over *items*: the C one when the extension is on."""
    if _batch_items.SPEEDUPS:
        return _FastIntercept(items)
    return Intercept(items)


@types.coroutine
def _unwind(coro: Any) -> Generator[Any, Any, None]:
    error: BaseException | None = _Unwind()
    send: Any = None
    while True:
        try:
            signal = coro.send(send) if error is None else coro.throw(error)
        except (StopIteration, StopAsyncIteration, _Unwind):
            return
        if type(signal) is _Bypass:
            error = _Unwind()
            continue
        try:
            send = yield signal
            error = None
        except BaseException as exc:
            send, error = None, exc
