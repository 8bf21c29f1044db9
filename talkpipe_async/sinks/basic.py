"""Basic sinks: collect, count, reduce (functions) and print, log, callback, stream, queue (segments).

Function sinks run a pipeline to the end and return a value::

    items = await collect(src() | parse())
    n = await count(src() | parse())
    total = await reduce(src() | amounts(), operator.add, 0)

Segment sinks end a pipeline (they yield nothing, unless ``passthrough=True``
makes them yield every item on after handling it)::

    await count(src() | parse() | callback(store))
    async with background(feed | handle() | to_stream(send)) as run: ...

Sink segments never see metadata (it goes past them).
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import aclosing
from typing import IO, Any, Generic, Protocol, TypeVar, cast

from anyio.streams.memory import MemoryObjectSendStream

from .._aio import QUEUE_END, require_asyncio
from .._core._pipeline import Pipeline
from .._core._segment import AbstractSegment, AbstractSource, PassThrough

__all__ = ["callback", "collect", "count", "log_items", "print_items", "reduce", "to_queue", "to_stream"]

T = TypeVar("T")
A = TypeVar("A")
T_contra = TypeVar("T_contra", contravariant=True)

Input = Iterable[Any] | AsyncIterable[Any] | None
# What the sink functions run: a pipeline, a source or a segment that yields T.
Runnable = Pipeline[Any, T] | AbstractSource[T] | AbstractSegment[Any, T]


def _pipeline(obj: Any) -> Pipeline[Any, Any]:
    return obj if isinstance(obj, Pipeline) else Pipeline(obj)


async def collect(pipeline: Runnable[T], input: Input = None) -> list[T]:
    """Run *pipeline* (a pipeline, source or segment) and return its items as a list.

    Memory: the whole output.  For an endless stream use a segment sink.
    """
    return await _pipeline(pipeline).collect(input)


async def count(pipeline: Runnable[Any], input: Input = None) -> int:
    """Run *pipeline* to the end and return how many items came out (constant memory)."""
    n = 0
    async with _pipeline(pipeline).stream(input) as items:
        async for _ in items:
            n += 1
    return n


async def reduce(
    pipeline: Runnable[T], fn: Callable[[A, T], A | Awaitable[A]], initial: A, input: Input = None
) -> A:
    """Fold the output of *pipeline* with ``fn(acc, item)`` (sync or async) from *initial*."""
    acc = initial
    is_async = inspect.iscoroutinefunction(fn)
    async with _pipeline(pipeline).stream(input) as items:
        async for item in items:
            acc = await fn(acc, item) if is_async else fn(acc, item)  # type: ignore[misc,assignment]
    return acc


class _Sink(PassThrough[T], Generic[T]):
    """Base of the segment sinks: ``handle`` each item, optionally pass it on."""

    def __init__(self, passthrough: bool, name: str) -> None:
        super().__init__()
        self.passthrough = passthrough
        self.name = name

    async def handle(self, item: T) -> None:
        """Deliver one item."""
        raise NotImplementedError

    async def finish(self) -> None:
        """Called once when the input ends normally."""

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """Handle every item; yield it on when ``passthrough``."""
        handle = self.handle
        passthrough = self.passthrough
        async for item in items:
            await handle(item)
            if passthrough:
                yield item
        await self.finish()


class print_items(_Sink[T], Generic[T]):
    """Print each item (``print(prefix + str(item))``) to ``file`` (default stdout).

    ::

        pipeline = src() | print_items(prefix="> ", passthrough=True) | more()

    The write happens in the event loop (stdout is assumed fast; for a slow
    terminal or pipe use ``to_stdout`` from ``talkpipe_async.sinks``).
    """

    def __init__(
        self, *, prefix: str = "", file: IO[str] | None = None, passthrough: bool = False, name: str | None = None
    ) -> None:
        super().__init__(passthrough, name or "print_items")
        self.prefix = prefix
        self.file = file

    async def handle(self, item: T) -> None:
        """Print one item."""
        print(f"{self.prefix}{item}", file=self.file if self.file is not None else sys.stdout)


class log_items(_Sink[T], Generic[T]):
    """Log each item with ``logger.log(level, fmt, item)``.

    ::

        pipeline = src() | log_items(logging.getLogger("events"), level=logging.DEBUG)
    """

    def __init__(
        self,
        logger: logging.Logger | None = None,
        *,
        level: int = logging.INFO,
        fmt: str = "%s",
        passthrough: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(passthrough, name or "log_items")
        self.logger = logger or logging.getLogger("talkpipe_async.sinks")
        self.level = level
        self.fmt = fmt

    async def handle(self, item: T) -> None:
        """Log one item."""
        self.logger.log(self.level, self.fmt, item)


class callback(_Sink[T], Generic[T]):
    """Call ``fn(item)`` for each item; ``fn`` may be ``def`` or ``async def`` (awaited).

    ::

        pipeline = src() | callback(store.save)

    An exception from ``fn`` propagates (wrap with ``on_error`` to skip or
    dead-letter instead).  An async ``fn`` sets the pace (one call at a time).
    """

    def __init__(self, fn: Callable[[T], Any], *, passthrough: bool = False, name: str | None = None) -> None:
        super().__init__(passthrough, name or f"callback({getattr(fn, '__name__', type(fn).__name__)})")
        self.fn = fn
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004
        )

    async def handle(self, item: T) -> None:
        """Call the function on one item."""
        if self.is_async:
            await self.fn(item)
        else:
            result = self.fn(item)
            if inspect.isawaitable(result):
                await result


class to_stream(_Sink[T], Generic[T]):
    """Send each item into an anyio memory send stream (waits while it is full).

    ::

        send, receive = anyio.create_memory_object_stream[dict](100)
        async with background(src() | to_stream(send)):
            async with receive:
                async for item in receive: ...

    Bound: the stream's buffer size; a full stream slows the pipeline, it
    never drops.  With ``close=True`` (default) the send stream is closed when
    the pipeline ends, normally or not, so the receiver sees the end of the
    stream (the pipeline's own error goes to whoever runs it).  A closed
    receiver raises ``anyio.BrokenResourceError`` in the pipeline.
    """

    def __init__(
        self,
        stream: MemoryObjectSendStream[T],
        *,
        close: bool = True,
        passthrough: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(passthrough, name or "to_stream")
        self.send_stream = stream
        self.close_stream = close

    async def handle(self, item: T) -> None:
        """Send one item."""
        await self.send_stream.send(item)

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """Send every item; close the stream at the end if asked."""
        try:
            async with aclosing(cast("AsyncGenerator[T, None]", super().transform(items))) as steps:
                async for item in steps:
                    yield item
        finally:
            if self.close_stream:
                self.send_stream.close()


class SupportsPut(Protocol[T_contra]):
    """What :class:`to_queue` puts into: an ``asyncio.Queue`` of the items, or any queue with ``async put(item)``.

    Contravariant: an ``asyncio.Queue[object]`` takes ``str`` items; an
    ``asyncio.Queue[int]`` does not.
    """

    def put(self, item: T_contra, /) -> Awaitable[object]:
        """Put one item, waiting while the queue is full."""
        ...


class to_queue(_Sink[T], Generic[T]):
    """Put each item into an ``asyncio.Queue`` (asyncio only; waits while it is full).

    ::

        queue: asyncio.Queue = asyncio.Queue(100)
        ... src() | to_queue(queue) ...
        while (item := await queue.get()) is not QUEUE_END: ...

    When the input ends normally, ``end`` (default :data:`QUEUE_END`) is put
    so the reader knows; pass ``end=None`` to put nothing (``None`` is never
    used as a marker).  Bound: the queue's ``maxsize``.
    """

    def __init__(
        self, queue: SupportsPut[T], *, end: Any = QUEUE_END, passthrough: bool = False, name: str | None = None
    ) -> None:
        super().__init__(passthrough, name or "to_queue")
        self.queue = queue
        self.end = end

    async def handle(self, item: T) -> None:
        """Put one item."""
        await self.queue.put(item)

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """Put every item, then the end marker."""
        require_asyncio(self.label, "an asyncio.Queue", "to_stream() with anyio.create_memory_object_stream()")
        async with aclosing(cast("AsyncGenerator[T, None]", super().transform(items))) as steps:
            async for item in steps:
                yield item

    async def finish(self) -> None:
        """Put the end marker."""
        if self.end is not None:
            await self.queue.put(self.end)
