"""Inner-stream operators: ``merge_map`` (inner streams at once) and ``concat_map`` (one after another).

For each item, ``fn(item)`` makes an inner stream.  One feeder task reads the
upstream and starts up to ``limit`` inner streams, each in a task of the run
that pours it into a bounded lane of its own; the stage's generator reads the
lanes: the head lane to its end before the next (``concat_map``), or every
lane fairly (``merge_map``).  The plain ``flat_map`` expands each item in the
stage's own task, one item at a time; these two are for inner streams that
wait (requests, pages, subscriptions).
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, Generic, TypeVar

import anyio

from .._core._channel import ChannelClosed
from .._core._closing import CLEANUP_TIMEOUT
from .._core._errors import attach_context
from .._core._metadata import Metadata
from .._core._pipeline import Pipeline
from .._core._segment import AbstractSegment, AbstractSource
from .combine import as_source_pipeline
from .concurrency import TaskScopes

__all__ = ["concat_map", "merge_map"]

T = TypeVar("T")
U = TypeVar("U")


class _Lane:
    """One inner stream's bounded output (or one metadata item, already complete)."""

    __slots__ = ("closed", "error", "items", "meta", "space")

    def __init__(self, meta: bool = False) -> None:
        self.items: deque[Any] = deque()
        self.meta = meta  # holds one upstream metadata item
        self.closed = meta
        self.error: BaseException | None = None
        self.space: anyio.Event | None = None


async def _open(made: Any) -> Any:
    """*made* as something to iterate: an awaited value is awaited first."""
    if inspect.isawaitable(made):
        made = await made
    return made


class _InnerRun:
    """Per-run state of :class:`merge_map` and :class:`concat_map`."""

    def __init__(self, fn: Callable[[Any], Any], limit: int, buffer: int, ordered: bool, label: str) -> None:
        self.fn = fn
        self.limit = limit
        self.buffer = buffer
        self.ordered = ordered
        self.label = label
        self.tasks = TaskScopes()
        self.lanes: deque[_Lane] = deque()  # in upstream order; metadata lanes among them
        self.running = 0  # inner streams not yet ended
        self.ended = False
        self.end_error: BaseException | None = None
        self.aborted = False
        self.consumer: anyio.Event | None = None
        self.feeder: anyio.Event | None = None

    def wake_consumer(self) -> None:
        if self.consumer is not None:
            self.consumer.set()

    def stop(self) -> None:
        """The consumer is gone: wake every waiting task so it returns, and stop the tasks."""
        self.aborted = True
        for lane in self.lanes:
            lane.items.clear()
            if lane.space is not None:
                lane.space.set()
        if self.feeder is not None:
            self.feeder.set()
        self.tasks.cancel()

    async def feed(self, items: AsyncIterator[Any]) -> None:
        """The feeder task: the only reader of the upstream."""
        try:
            async for item in items:
                if isinstance(item, Metadata):
                    lane = _Lane(meta=True)
                    lane.items.append(item)
                    self.lanes.append(lane)
                    self.wake_consumer()
                    continue
                while self.running >= self.limit and not self.aborted:
                    self.feeder = anyio.Event()
                    await self.feeder.wait()
                    self.feeder = None
                if self.aborted:
                    return
                lane = _Lane()
                self.lanes.append(lane)
                self.running += 1
                self.tasks.start(self.pour, lane, item, name=f"talkpipe inner stream of {self.label}")
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:  # raised after the inner streams started before it
            self.end_error = exc
        self.ended = True
        self.wake_consumer()

    async def pour(self, lane: _Lane, item: Any) -> None:
        """An inner-stream task: run ``fn(item)`` into *lane*."""
        try:
            made = await _open(self.fn(item))
            if isinstance(made, (AbstractSource, Pipeline)):
                async with as_source_pipeline(made).stream() as ys:
                    async for y in ys:
                        await self.put(lane, y)
            elif isinstance(made, AsyncIterable):
                iterator = made.__aiter__()
                try:
                    async for y in iterator:
                        await self.put(lane, y)
                finally:
                    close = getattr(iterator, "aclose", None)
                    if close is not None:  # its finally blocks may await, even when the run is stopping
                        with anyio.move_on_after(CLEANUP_TIMEOUT, shield=True):
                            await close()
            else:
                for y in made:
                    await self.put(lane, y)
        except ChannelClosed:
            return
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:  # travels in the lane, after the items before it
            attach_context(exc, self.label, item)
            lane.error = exc
        finally:
            lane.closed = True
            self.running -= 1
            if self.feeder is not None:
                self.feeder.set()
            self.wake_consumer()

    async def put(self, lane: _Lane, y: Any) -> None:
        while len(lane.items) >= self.buffer and not self.aborted:
            lane.space = anyio.Event()
            await lane.space.wait()
        if self.aborted:
            raise ChannelClosed("the consumer of this stage has gone")
        lane.items.append(y)
        self.wake_consumer()

    def take(self, lane: _Lane) -> Any:
        y = lane.items.popleft()
        if lane.space is not None:
            lane.space.set()
        return y

    def readable(self) -> list[_Lane]:
        """The lanes the consumer may read now: the head lane (ordered), or every lane up to the first metadata."""
        lanes = self.lanes
        if not lanes:
            return []
        if self.ordered or lanes[0].meta:
            return [lanes[0]]
        ready = []
        for lane in lanes:
            if lane.meta:
                break
            ready.append(lane)
        return ready

    async def results(self) -> AsyncGenerator[Any, None]:
        """The consumer side, in the stage's own generator."""
        while True:
            progressed = False
            for lane in self.readable():
                if lane.items:
                    progressed = True
                    yield self.take(lane)
                elif lane.closed:
                    progressed = True
                    self.lanes.remove(lane)
                    if lane.error is not None:
                        error, lane.error = lane.error, None
                        raise error
            if progressed:
                continue
            if self.ended and not self.lanes:
                if self.end_error is not None:
                    error, self.end_error = self.end_error, None
                    raise error
                return
            self.consumer = anyio.Event()
            try:
                await self.consumer.wait()
            finally:
                self.consumer = None


class _InnerStage(AbstractSegment[T, U], Generic[T, U]):
    """What :class:`merge_map` and :class:`concat_map` share."""

    ordered = True

    def __init__(self, fn: Callable[[T], Any], limit: int, buffer: int, name: str | None, what: str) -> None:
        super().__init__(process_metadata=True)
        if limit < 1:
            raise ValueError(f"{what}: limit must be at least 1")
        if buffer < 1:
            raise ValueError(f"{what}: buffer must be at least 1")
        self.fn = fn
        self.limit = limit
        self.buffer = buffer
        self.name = name or f"{what}({getattr(fn, '__name__', type(fn).__name__)})"

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[U]:
        """Yield the items of every inner stream (see the class docs for order)."""
        state = _InnerRun(self.fn, self.limit, self.buffer, self.ordered, self.label)
        state.tasks.start(state.feed, items, name=f"talkpipe feeder for {self.label}")
        try:
            async with aclosing(state.results()) as outputs:
                async for y in outputs:
                    yield y
        finally:
            state.stop()


class merge_map(_InnerStage[T, U]):
    """For each item, run the stream ``fn(item)``; up to ``limit`` at once, their items merged.

    ::

        async def pages(url: str):        # an async generator: the pages of one listing
            ...

        pipeline = listings() | merge_map(pages, limit=8)

    ``fn`` returns a source or pipeline, an async iterable (an async
    generator) or an iterable, or is ``async def`` returning one of these.
    Each inner stream runs in a task of the run; when ``limit`` are running
    the feeder waits before reading the next item.  Items of one inner stream
    keep their order; items of different inner streams are merged fairly (one
    per stream with items ready per round), so their order across streams is
    not defined.

    Bounds: at most ``limit`` inner streams run, each with at most ``buffer``
    items waiting for the consumer (a stream whose lane is full waits).
    Metadata of the upstream is a barrier: it leaves after every item of the
    inner streams started before it, and no item of a stream started after it
    leaves before it.  An inner stream's metadata is not passed on.

    Errors: an error of ``fn`` or of an inner stream ends the stage (with a
    note naming this stage and the item) once the consumer reaches it: items
    of that stream before the error come first.  An upstream error is raised
    after the inner streams started before it have ended.
    """

    ordered = False

    def __init__(self, fn: Callable[[T], Any], limit: int = 16, *, buffer: int = 16, name: str | None = None):
        super().__init__(fn, limit, buffer, name, "merge_map")


class concat_map(_InnerStage[T, U]):
    """For each item, the stream ``fn(item)``: all its items, then those of the next item's stream.

    ::

        pipeline = listings() | concat_map(pages, limit=4)   # pages in listing order, 4 listings fetched ahead

    ``fn`` is as for :class:`merge_map`.  The output is exactly that of
    ``flat_map(fn)``: every inner stream to its end, in upstream order.  With
    ``limit`` above 1, the next ``limit - 1`` inner streams already run (in
    tasks of the run) while the head one is being read, each buffering at
    most ``buffer`` items; with ``limit=1`` one inner stream runs at a time.

    Metadata keeps its position between the inner streams.  Errors: an error
    of ``fn`` or of an inner stream is raised in its position (after the
    items of that stream before it), naming this stage and the item; an
    upstream error after every inner stream started before it.
    """

    ordered = True

    def __init__(self, fn: Callable[[T], Any], limit: int = 1, *, buffer: int = 16, name: str | None = None):
        super().__init__(fn, limit, buffer, name, "concat_map")
