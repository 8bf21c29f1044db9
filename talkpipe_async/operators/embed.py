"""Embedding: feed a pipeline from the application, run it in the background.

* :class:`from_stream`: a source reading an anyio memory receive stream.
* :class:`from_queue`: a source reading an ``asyncio.Queue`` (asyncio only),
  ended by the :data:`QUEUE_END` marker (never ``None``).
* :class:`Feed`: a source with a push handle: ``await feed.push(item)`` waits
  while the pipeline is behind (bounded, never dropping), ``feed.close()``.
* :class:`background`: run a pipeline as a task of the application, with a
  clean stop: ``async with background(p) as run: ... await run.stop(drain=True)``.
"""

from __future__ import annotations

import inspect
import logging
import reprlib
import sys
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterable
from contextlib import aclosing
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._aio import QUEUE_END, BackendNotSupported, require_asyncio
from .._core._channel import Channel
from .._core._errors import TalkpipeAsyncError
from .._core._metadata import Metadata
from .._core._pipeline import Pipeline
from .._core._segment import AbstractSegment, AbstractSource
from .concurrency import TaskScopes

__all__ = [
    "QUEUE_END",
    "BackendNotSupported",
    "BackgroundRun",
    "DrainTimeout",
    "Feed",
    "FeedClosed",
    "background",
    "from_queue",
    "from_stream",
]

T = TypeVar("T")

logger = logging.getLogger("talkpipe_async.operators.embed")
_repr = reprlib.Repr()


class FeedClosed(TalkpipeAsyncError):
    """``push`` on a :class:`Feed` that was closed, or whose pipeline has stopped."""


class DrainTimeout(TalkpipeAsyncError):
    """``stop(drain=True, grace=...)`` ran out of time and the run was cancelled.

    Counted in input items (see :class:`BackgroundRun`): ``accepted``, items
    the run accepted (a :class:`Feed`: pushes that returned); ``delivered``,
    of those, the items that reached the end of the pipeline before the
    cancel; ``not_delivered`` (``accepted - delivered``), every other one:
    never taken by the pipeline, or inside a stage (held in a batch, in
    flight in a concurrent or thread stage, in a sink that had not finished
    with it).  ``entered`` is how many the pipeline took; the
    ``not_entered`` (``accepted - entered``) it never took are given back
    in order in ``items``.  Whether the effect of an item that was inside
    a stage happened is the stage's to tell (a sink's acknowledgements, an
    idempotent write).
    """

    def __init__(self, label: str, grace: float, accepted: int, entered: int, delivered: int, items: list[Any]) -> None:
        self.accepted = accepted
        self.entered = entered
        self.delivered = delivered
        self.items = items
        self.not_entered = len(items)
        self.not_delivered = accepted - delivered
        super().__init__(
            f"{label}: the drain did not finish within {grace} s; {self.not_delivered} of {accepted} accepted "
            f"items not delivered ({self.not_entered} never entered the pipeline, kept in .items; "
            f"{self.not_delivered - self.not_entered} were inside its stages and were cancelled with it)"
        )


async def _drain_receive(stream: MemoryObjectReceiveStream[Any]) -> AsyncGenerator[Any, None]:
    receive_nowait = stream.receive_nowait
    while True:
        try:
            item = receive_nowait()
        except anyio.WouldBlock:
            try:
                item = await stream.receive()
            except anyio.EndOfStream:
                return
        except anyio.EndOfStream:
            return
        yield item


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class from_stream(AbstractSource[T], Generic[T]):
    """A source that yields what the application sends into an anyio memory stream.

    ::

        send, receive = anyio.create_memory_object_stream[dict](100)
        pipeline = from_stream(receive) | handle()
        # elsewhere: await send.send(event); ... send.close()  -> the stream ends

    Bound: the memory stream's own buffer size (``send`` waits when it is
    full, so the application feels the pipeline's pace).  The stream ends
    when every send stream is closed.  With ``close=True`` (default) the
    receive stream is closed when the source ends (normally, early or by
    error), so a sender that is still sending gets ``BrokenResourceError``
    instead of waiting forever.  A receive stream can be read by one run.
    """

    def __init__(self, stream: MemoryObjectReceiveStream[T], *, close: bool = True, name: str | None = None) -> None:
        super().__init__()
        self.receive = stream
        self.close_stream = close
        self.name = name or "from_stream"

    async def generate(self) -> AsyncIterator[T]:
        """Yield the received items until the stream ends."""
        try:
            async with aclosing(_drain_receive(self.receive)) as steps:
                async for item in steps:
                    yield item
        finally:
            if self.close_stream:
                self.receive.close()


class from_queue(AbstractSource[T], Generic[T]):
    """A source that yields the items of an ``asyncio.Queue`` (asyncio only).

    ::

        queue: asyncio.Queue = asyncio.Queue(maxsize=100)
        pipeline = from_queue(queue) | handle()
        # elsewhere: await queue.put(x); ...; await queue.put(QUEUE_END)

    The stream ends when ``end`` (default :data:`QUEUE_END`; compared by
    identity, never ``None``) is taken, or when the queue is shut down
    (Python 3.13+).  Each item taken is marked ``task_done()``.  Bound: the
    queue's own ``maxsize``.  On trio this raises ``RuntimeError`` at the
    start of the run: use :class:`from_stream` with an anyio memory stream.
    """

    def __init__(self, queue: Any, *, end: Any = QUEUE_END, name: str | None = None) -> None:
        super().__init__()
        if end is None:
            raise ValueError("None is an ordinary item; choose another end marker (default QUEUE_END)")
        self.queue = queue
        self.end = end
        self.name = name or "from_queue"

    async def generate(self) -> AsyncIterator[T]:
        """Yield queue items until the end marker."""
        import asyncio

        require_asyncio(self.label, "an asyncio.Queue", "from_stream() with anyio.create_memory_object_stream()")

        queue = self.queue
        end = self.end
        shutdown: tuple[type[BaseException], ...] = ()
        if sys.version_info >= (3, 13):
            shutdown = (asyncio.QueueShutDown,)
        while True:
            try:
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    item = await queue.get()
            except shutdown:
                return
            queue.task_done()
            if item is end:
                return
            yield item


class Feed(AbstractSource[T], Generic[T]):
    """A source the application pushes into while the pipeline runs.

    ::

        feed: Feed[str] = Feed(maxsize=100)
        async with background(feed | handle()) as run:
            for line in lines:
                await feed.push(line)      # waits while the pipeline is behind
            feed.close()                   # the pipeline ends after these items
            await run.wait()

    Bound: at most ``maxsize`` pushed items wait for the pipeline (``0``:
    each ``push`` waits until the pipeline takes the item).  ``push`` never
    drops: it waits; ``push_nowait`` raises ``anyio.WouldBlock`` when full.
    ``fail(exc)`` ends the stream with an error raised in the pipeline after
    the items pushed before it.  After ``close()``, or once the pipeline has
    stopped reading, ``push`` raises :class:`FeedClosed`.  A Feed serves one
    run (a second run raises ``RuntimeError``).

    ``accepted`` counts the items whose push returned, ``entered`` the items the
    pipeline took.  If the run ends before taking every accepted item (it was
    cancelled, or stopped reading), the rest are in ``unread``, in order;
    a push still waiting then is accepted into ``unread`` too, never lost
    without a count.
    """

    def __init__(self, maxsize: int = 64, *, name: str | None = None) -> None:
        super().__init__()
        if maxsize < 0:
            raise ValueError("maxsize must be at least 0")
        self.maxsize = maxsize
        send, receive = anyio.create_memory_object_stream[Any](maxsize)
        self._send: MemoryObjectSendStream[Any] = send
        self._receive: MemoryObjectReceiveStream[Any] = receive
        self._used = False
        self.accepted = 0
        self.entered = 0
        self.unread: list[Any] = []
        self.name = name or "Feed"

    async def push(self, item: T) -> None:
        """Hand *item* to the pipeline, waiting while ``maxsize`` items are queued."""
        try:
            await self._send.send(item)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            raise FeedClosed(f"{self.label}: closed or its pipeline stopped; {_repr.repr(item)} not pushed") from exc
        self.accepted += 1

    def push_nowait(self, item: T) -> None:
        """Hand *item* over now, or raise ``anyio.WouldBlock`` (the item is not taken)."""
        try:
            self._send.send_nowait(item)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            raise FeedClosed(f"{self.label}: closed or its pipeline stopped; {_repr.repr(item)} not pushed") from exc
        self.accepted += 1

    async def push_many(self, items: Iterable[T]) -> None:
        """Push each item in turn (waiting as needed)."""
        for item in items:
            await self.push(item)

    def close(self) -> None:
        """Stop accepting (later pushes raise :class:`FeedClosed`); the stream ends after the accepted items."""
        self._send.close()

    async def fail(self, error: BaseException) -> None:
        """End the stream with *error*, raised in the pipeline after earlier items."""
        await self._send.send(_Failure(error))
        self._send.close()

    @property
    def queued(self) -> int:
        """Items pushed and not yet taken by the pipeline."""
        return self._send.statistics().current_buffer_used

    async def generate(self) -> AsyncIterator[T]:
        """Yield the pushed items until ``close()``."""
        if self._used:
            raise RuntimeError(f"{self.label} serves one run only")
        self._used = True
        try:
            async with aclosing(_drain_receive(self._receive)) as steps:
                async for item in steps:
                    if type(item) is _Failure:
                        raise item.error
                    self.entered += 1
                    yield item
        finally:
            self._keep_unread()
            self._receive.close()

    def _keep_unread(self) -> None:
        """Move what is still queued (and pushes still waiting) into ``unread``, before the stream closes."""
        receive_nowait = self._receive.receive_nowait
        while True:
            try:
                item = receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return
            if type(item) is not _Failure:
                self.unread.append(item)


# ---------------------------------------------------------------- background


class _Gate(AbstractSegment[Any, Any]):
    """Inserted after a background pipeline's source: ends the stream on ``stop(drain=True)``.

    Strict pull (one feeder task asks the source for an item only when the
    pipeline asks the gate), so a drain loses nothing that the source handed
    over before the stop; an item the source hands over after the stop is
    accepted and counted in ``BackgroundRun.not_delivered``.  ``entered``
    counts the items it let in.
    """

    def __init__(self, run: BackgroundRun) -> None:
        super().__init__(process_metadata=True)
        self.run = run
        self.name = "background gate"

    async def _feed(self, items: AsyncIterator[Any], channel: Channel, credit: list[Any]) -> None:
        run = self.run
        try:
            iterator = items.__aiter__()
            while True:
                while credit[0] <= 0:
                    credit[1] = anyio.Event()
                    await credit[1].wait()
                credit[0] -= 1
                try:
                    item = await iterator.__anext__()
                except StopAsyncIteration:
                    break
                if isinstance(item, Metadata):
                    if run.gate_closed:
                        return
                elif run.gate_closed:
                    run.late += 1
                    logger.warning("%s: %s arrived after stop(drain=True); not delivered", run, _repr.repr(item))
                    return
                else:
                    run.gate_in += 1
                await channel.put(item)
        except anyio.get_cancelled_exc_class():
            channel.close()
            raise
        except BaseException as exc:
            channel.close(exc)
            return
        channel.close()

    async def transform(self, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Pass items through until the run is asked to drain."""
        channel = Channel(1)
        credit: list[Any] = [0, None]
        tasks = TaskScopes()
        tasks.start(self._feed, items, channel, credit, name="talkpipe background gate feeder")
        self.run._gates.append(channel)
        try:
            while True:
                credit[0] += 1
                if credit[1] is not None:
                    credit[1].set()
                try:
                    batch = await channel.get_batch(1)
                except anyio.EndOfStream:
                    return
                yield batch[0]
        finally:
            channel.abort()
            tasks.cancel()


class _EndTap(AbstractSegment[Any, Any]):
    """Put before a sink that hands on nothing: counts the items the sink has finished with.

    A sink asks for its next item only after it has handled the one before,
    so an item is counted when the sink asks past it (or its input ends),
    never while the sink is still writing it.
    """

    def __init__(self, run: BackgroundRun, units: Callable[[Any], int] | None) -> None:
        super().__init__()
        self.run = run
        self.units = units
        self.name = "background delivery count"

    async def transform(self, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Pass every item on; count it once the sink asks for the next."""
        run, units = self.run, self.units
        async for item in items:
            yield item
            run.delivered += 1 if units is None else units(item)


class BackgroundRun:
    """The handle of a pipeline running in the background (see :class:`background`).

    ``count``: items that came out of the pipeline; ``done``: an event set
    when the run has ended; ``error``: the exception that ended it, if any.

    Delivery is counted in input items, exactly: ``accepted`` (a
    :class:`Feed`: pushes that returned; any other source: items the run
    took from it), ``delivered`` (items that reached the end: handed to
    ``on_item`` or out of the pipeline, or finished by a sink that hands on
    nothing; each counts as ``units(item)`` input items, one by default) and
    ``not_delivered`` (``accepted - delivered``, set when the run ends).  A
    run that ends normally has finished every item it took, so then
    ``delivered`` is every item it took (those a filter dropped or a batch
    merged included) and ``not_delivered`` the accepted items it never took.
    """

    def __init__(self, label: str, feed: Feed[Any] | None = None) -> None:
        self.label = label
        self.feed = feed
        self.count = 0
        self.delivered = 0
        self.not_delivered = 0
        self.gate_in = 0
        self.late = 0
        self.error: BaseException | None = None
        self.stopping = False
        self.gate_closed = False
        self.cancelled = False
        self.done = anyio.Event()
        self._scope = anyio.CancelScope()
        self._gates: list[Channel] = []
        self._reported = False

    @property
    def accepted(self) -> int:
        """Items the run accepted: pushes that returned (a Feed), else items taken from the source."""
        feed = self.feed
        if feed is None:
            return self.gate_in + self.late
        # A push whose item the pipeline (or ``unread``) took counts before the push itself returns.
        return max(feed.accepted, feed.entered + len(feed.unread))

    @property
    def entered(self) -> int:
        """Accepted items the pipeline took (the rest are in ``feed.unread``)."""
        return self.gate_in if self.feed is None else self.feed.entered

    def _settle(self, finished: bool) -> None:
        """Fix the counts when the run ends (*finished*: it ended normally, every item it took was handled)."""
        if finished:
            self.delivered = self.entered
        self.not_delivered = self.accepted - self.delivered
        if self.not_delivered:
            logger.warning("%s: %d accepted items not delivered", self, self.not_delivered)

    def __repr__(self) -> str:
        return f"<background run of {self.label}>"

    def _raise(self) -> None:
        if self.error is not None and not self._reported:
            self._reported = True
            raise self.error

    async def wait(self) -> None:
        """Wait for the pipeline to end; raise its error (once) if it failed."""
        await self.done.wait()
        self._raise()

    def cancel(self) -> None:
        """Cancel the pipeline now (in-flight items are abandoned)."""
        self.cancelled = True
        self._scope.cancel()

    async def stop(self, drain: bool = True, grace: float | None = None) -> None:
        """Stop the pipeline and wait until it has ended.

        ``drain=True``: stop accepting, then deliver everything accepted.  A
        :class:`Feed` source is closed (later pushes raise
        :class:`FeedClosed`) and its stream ends after the items already
        pushed; any other source is no longer read, and every item it has
        already handed over goes through.  Either way the rest of the pipeline
        finishes its work (batches are flushed at the end of input, concurrent
        stages finish).  If the run has not ended after ``grace`` seconds (if
        given), it is cancelled and :class:`DrainTimeout` says how many
        accepted items were not delivered.  ``drain=False``: cancel at once.
        Raises the pipeline's error, if any.
        """
        timed_out = False
        if drain:
            self._begin_drain()
            with anyio.move_on_after(float("inf") if grace is None else grace):
                await self.done.wait()
            timed_out = not self.done.is_set()
        if not self.done.is_set():
            self.cancel()
        await self.done.wait()
        if timed_out and self.error is None:
            items = [] if self.feed is None else self.feed.unread
            raise DrainTimeout(self.label, grace or 0.0, self.accepted, self.entered, self.delivered, items)
        self._raise()

    def _begin_drain(self) -> None:
        self.stopping = True
        if self.feed is not None:
            self.feed.close()
        else:
            self.gate_closed = True
            for gate in self._gates:
                gate.close()


class background:
    """Run a pipeline as a background task of the application.

    ::

        feed = Feed[dict](maxsize=100)
        async with background(feed | enrich() | to_stream(send)) as run:
            await feed.push({"id": 1})
            ...
            await run.stop(drain=True)       # or: feed.close(); await run.wait()

    The pipeline's output items are passed to ``on_item`` (sync or async) if
    given, else discarded (end the pipeline with a sink); ``run.count``
    counts them.  Leaving the block without ``stop()``: ``on_exit="cancel"``
    (default) cancels the run, ``"drain"`` drains it, ``"wait"`` waits for it
    to end by itself.  An exception raised by the pipeline is kept in
    ``run.error`` and raised by ``wait()``/``stop()``, or on leaving the block
    if neither raised it.  When the block itself raises, the run is cancelled
    and the block's exception propagates.  Nothing of the run (tasks, threads)
    outlives the block.
    """

    def __init__(
        self,
        pipeline: Any,
        input: Iterable[Any] | AsyncIterable[Any] | None = None,
        *,
        on_item: Callable[[Any], Any] | None = None,
        on_exit: Literal["cancel", "drain", "wait"] = "cancel",
        units: Callable[[Any], int] | None = None,
    ) -> None:
        if on_exit not in ("cancel", "drain", "wait"):
            raise ValueError(f"unknown on_exit {on_exit!r}")
        self.pipeline = pipeline if isinstance(pipeline, Pipeline) else Pipeline(pipeline)
        self.input = input
        self.on_item = on_item
        self.units = units
        self.on_exit = on_exit
        self._tg: anyio.abc.TaskGroup | None = None
        self._run: BackgroundRun | None = None

    def _gated(self, run: BackgroundRun) -> tuple[Pipeline[Any, Any], bool]:
        """The pipeline with the gate after its source, and a delivery count before a sink that hands on nothing."""
        stages = list(self.pipeline.stages)
        head = [stages.pop(0)] if self.pipeline.has_source else []
        tapped = bool(stages) and getattr(stages[-1], "passthrough", None) is False
        if tapped:
            stages.insert(len(stages) - 1, _EndTap(run, self.units))
        return Pipeline(*head, _Gate(run), *stages), tapped

    async def _main(self, run: BackgroundRun) -> None:
        on_item, units = self.on_item, self.units
        pipeline, tapped = self._gated(run)
        finished = False
        try:
            with run._scope:
                async with pipeline.stream(self.input) as items:
                    async for item in items:
                        run.count += 1
                        if on_item is not None:
                            result = on_item(item)
                            if inspect.isawaitable(result):
                                await result
                        if not tapped:
                            run.delivered += 1 if units is None else units(item)
                finished = True
        except Exception as exc:  # kept for wait()/stop()/exit
            run.error = exc
        finally:
            run._settle(finished)
            run.done.set()

    async def __aenter__(self) -> BackgroundRun:
        first = self.pipeline.stages[0] if self.pipeline.has_source else None
        run = self._run = BackgroundRun(repr(self.pipeline), first if isinstance(first, Feed) else None)
        tg = self._tg = anyio.create_task_group()
        await tg.__aenter__()
        tg.start_soon(self._main, run, name=f"talkpipe background {run.label}")
        return run

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        run, tg = self._run, self._tg
        assert run is not None and tg is not None
        try:
            if exc is not None:
                run.cancel()
            elif not run.done.is_set():
                if self.on_exit == "cancel":
                    run.cancel()
                elif self.on_exit == "drain":
                    run._begin_drain()
        finally:
            await tg.__aexit__(None, None, None)
        if exc is None:
            run._raise()
