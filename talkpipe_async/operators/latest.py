"""Operators driven by another stream or by the latest value.

take_until, sample, switch_map, with_latest_from, combine_latest.

The other stream runs with its own ``stream()`` in a task of the run,
started when this stage starts; this stage never yields inside that task's
scope.  Closing or cancelling the run stops the task.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

import anyio

from .._core._channel import Channel, ChannelClosed
from .._core._closing import CLEANUP_TIMEOUT
from .._core._errors import attach_context
from .._core._metadata import Flush, Metadata
from .._core._pipeline import Pipeline
from .._core._segment import AbstractSegment, AbstractSource, PassThrough
from ._clock import ReadAhead
from .combine import DEFAULT_LANE, FanIn, as_source_pipeline, produced
from .concurrency import TaskScopes
from .select import until

__all__ = ["combine_latest", "sample", "switch_map", "take_until", "with_latest_from"]

T = TypeVar("T")
U = TypeVar("U")
B = TypeVar("B")
C = TypeVar("C")

if TYPE_CHECKING:
    from typing_extensions import Never


class _Signal:
    """The first item (or the error) of the other stream, seen by a watcher task."""

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.error: BaseException | None = None

    async def watch(self, pipeline: Pipeline[Any, Any]) -> None:
        try:
            async with pipeline.stream() as items:
                async for _ in items:
                    break
                else:
                    return  # the other stream ended without an item: nothing stops this one
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:  # raised in the consumer, after the items before it
            self.error = exc
        self.event.set()


class take_until(PassThrough[T]):
    """Yield the items until *other* (a source or pipeline) emits its first item, then end.

    ::

        ticks() | take_until(timer(60.0))       # one minute of ticks
        events() | take_until(shutdown_signal())

    *other* starts when this stage starts, in a task of the run, and is
    closed as soon as it has emitted (or when this stream ends first).  If
    *other* ends without an item, this stream goes on; if it fails, this
    stream ends with that error.  The upstream is read by one task of the
    run, running ahead of the item the consumer holds by at most
    ``2 * read_ahead`` items, as ``until(event)`` does (items read but not
    yet yielded when *other* emits are left out).  Metadata passes through
    in order.
    """

    def __init__(
        self, other: AbstractSource[Any] | Pipeline[Any, Any], *, read_ahead: int = 1, name: str | None = None
    ) -> None:
        super().__init__(process_metadata=True)
        self.other = as_source_pipeline(other)
        if read_ahead < 1:
            raise ValueError(f"take_until: read_ahead must be at least 1, not {read_ahead!r}")
        self.read_ahead = read_ahead
        self.name = name or "take_until"

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """Yield the items until the other stream emits."""
        signal = _Signal()
        tasks = TaskScopes()
        tasks.start(signal.watch, self.other, name=f"talkpipe_async watcher of {self.label}")
        inner: until[T] = until(signal.event, read_ahead=self.read_ahead, name=self.label)
        try:
            async with aclosing(inner.transform(items)) as steps:  # type: ignore[type-var]
                async for x in steps:
                    yield x
        finally:
            tasks.cancel()
        if signal.error is not None:
            raise signal.error


class _Nothing:
    """Marks "no item waiting" (never an item)."""


_NOTHING: Any = _Nothing()


class sample(PassThrough[T]):
    """Every *seconds*, yield the latest item if one arrived since the last tick.

    Ticks follow a fixed grid from when the stage starts (ticks missed while
    the consumer was slow are skipped, not bursted).  A tick with no new
    item yields nothing.  An item replaced by a newer one before a tick is
    left out by design, counted in ``dropped`` (over every run of this
    instance).  At the end of the stream, and on a :class:`Flush`, the
    waiting item is yielded at once, so the last value is never lost::

        sensor() | sample(1.0)   # at most one reading a second, always the newest

    Holds one item.  The upstream is read by one task of the run, running
    ahead of the item the consumer holds by at most 512 items (256 waiting,
    and a batch of up to 256 being looked through); metadata passes through
    in order.
    """

    def __init__(self, seconds: float, *, name: str | None = None) -> None:
        super().__init__(process_metadata=True)
        if not seconds > 0:
            raise ValueError(f"sample: seconds must be positive, not {seconds!r}")
        self.seconds = seconds
        self.dropped = 0
        self.name = name or "sample"

    async def transform(self, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Yield the newest item at each tick."""
        seconds = self.seconds
        now = anyio.current_time
        feed = ReadAhead(items, 256, name=self.label)
        tick = now() + seconds
        latest: Any = _NOTHING
        try:
            while True:
                t = now()
                if t >= tick:
                    while tick <= t:
                        tick += seconds
                    if latest is not _NOTHING:
                        x, latest = latest, _NOTHING
                        yield x
                    continue
                try:
                    got = await feed.get(256, tick)
                except anyio.EndOfStream:
                    break
                for x in got:
                    if isinstance(x, Metadata):
                        if isinstance(x, Flush) and latest is not _NOTHING:
                            held, latest = latest, _NOTHING
                            yield held
                        yield x
                        continue
                    if latest is not _NOTHING:
                        self.dropped += 1
                    latest = x
            if latest is not _NOTHING:
                yield latest
        finally:
            feed.close()


class _Inner:
    """One inner stream of a switch_map run: its cancel scope and when it has finished."""

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()


class switch_map(AbstractSegment[T, U]):
    """For each item, run the stream ``fn(item)``; a new item cancels the stream still running.

    ``fn`` returns a source or pipeline, an async iterable (an async
    generator) or an iterable, or is ``async def`` returning one of these::

        queries() | switch_map(lambda q: search(q))   # only the newest query's results keep coming

    Only one inner stream runs at a time: on a new item the running one is
    cancelled and has finished (its ``finally`` blocks run) before the next
    starts, and none of its items comes out after the switch.  When the
    upstream ends, the last inner stream runs to its end.  An error of
    ``fn`` or of an inner stream ends the stream with that error (naming
    this stage and the item); so does an upstream error.  The upstream and
    the inner streams run in one producer task of the run; ``capacity``
    items wait between it and this stage.  Metadata of the upstream passes
    through in order; an inner stream's metadata is not passed on.
    """

    @overload
    def __init__(
        self, fn: Callable[[T], AbstractSource[U]], *, capacity: int = DEFAULT_LANE, name: str | None = None
    ) -> None: ...
    @overload
    def __init__(
        self, fn: Callable[[T], Pipeline[Any, U]], *, capacity: int = DEFAULT_LANE, name: str | None = None
    ) -> None: ...
    @overload
    def __init__(
        self, fn: Callable[[T], AsyncIterable[U]], *, capacity: int = DEFAULT_LANE, name: str | None = None
    ) -> None: ...
    @overload
    def __init__(
        self, fn: Callable[[T], Awaitable[Iterable[U]]], *, capacity: int = DEFAULT_LANE, name: str | None = None
    ) -> None: ...
    @overload
    def __init__(
        self, fn: Callable[[T], Iterable[U]], *, capacity: int = DEFAULT_LANE, name: str | None = None
    ) -> None: ...
    def __init__(self, fn: Callable[[T], Any], *, capacity: int = DEFAULT_LANE, name: str | None = None) -> None:
        super().__init__(process_metadata=True)
        if capacity < 1:
            raise ValueError(f"switch_map: capacity must be at least 1, not {capacity!r}")
        self.fn = fn
        self.capacity = capacity
        self.name = name or f"switch_map({getattr(fn, '__name__', type(fn).__name__)})"

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[U]:
        """Yield the items of the newest inner stream."""
        async with aclosing(produced(self.label, self.capacity, self._switch, items)) as steps:
            async for x in steps:
                yield x

    async def _switch(self, channel: Channel, items: AsyncIterator[Any]) -> None:
        failed: list[BaseException] = []
        async with anyio.create_task_group() as group:
            current: _Inner | None = None
            try:
                async for x in items:
                    if isinstance(x, Metadata):
                        await channel.put(x)
                        continue
                    if current is not None:
                        current.scope.cancel()
                        await current.done.wait()
                        if failed:
                            break
                    current = _Inner()
                    group.start_soon(self._inner, channel, x, current, failed, group.cancel_scope)
            except Exception as exc:  # raised after the task group, keeping its type
                failed.append(exc)
                group.cancel_scope.cancel()
        if failed:
            raise failed[0]

    async def _inner(
        self, channel: Channel, item: Any, inner: _Inner, failed: list[BaseException], group: anyio.CancelScope
    ) -> None:
        try:
            with inner.scope:
                made = self.fn(item)
                if inspect.isawaitable(made):
                    made = await made
                await self._pour(channel, made, inner.scope)
        except Exception as exc:  # ChannelClosed too: the consumer is gone, the producer ends
            if not isinstance(exc, ChannelClosed):
                attach_context(exc, self.label, item)
            failed.append(exc)
            group.cancel()
        finally:
            inner.done.set()

    @staticmethod
    async def _pour(channel: Channel, made: Any, scope: anyio.CancelScope) -> None:
        if isinstance(made, (AbstractSource, Pipeline)):
            async with as_source_pipeline(made).stream() as ys:
                async for y in ys:
                    if scope.cancel_called:  # switched while this item was on its way
                        return
                    await channel.put(y)
        elif isinstance(made, AsyncIterable):
            it = made.__aiter__()
            try:
                async for y in it:
                    if scope.cancel_called:
                        return
                    await channel.put(y)
            finally:
                close = getattr(it, "aclose", None)
                if close is not None:  # its finally blocks may await, even when switched away
                    with anyio.move_on_after(CLEANUP_TIMEOUT, shield=True):
                        await close()
        else:
            for y in made:
                if scope.cancel_called:
                    return
                await channel.put(y)


class _Latest:
    """The latest item of each other stream, kept by one watcher task per stream."""

    def __init__(self, n: int) -> None:
        self.values: list[Any] = [_NOTHING] * n
        self.missing = n
        self.failed = anyio.Event()
        self.error: BaseException | None = None

    async def watch(self, i: int, pipeline: Pipeline[Any, Any]) -> None:
        try:
            async with pipeline.stream() as items:
                async for x in items:
                    if self.values[i] is _NOTHING:
                        self.missing -= 1
                    self.values[i] = x
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:
            self.error = exc
            self.failed.set()


class with_latest_from(AbstractSegment[T, U], Generic[T, U]):
    """Pair each item with the latest item of each other stream: ``(item, latest1, latest2, ...)``.

    ::

        trades() | with_latest_from(exchange_rates())   # each trade with the rate in force

    The others start with this stage, each read by a task of the run, and
    are closed when this stream ends.  Items that come before every other
    stream has emitted are left out, counted in ``skipped`` (over every run
    of this instance).  An other stream that ends keeps its last item; one
    that fails ends this stream with its error, even while the upstream is
    waiting.  The upstream is read by one task of the run, running ahead by
    one item.  Holds one item per other stream; metadata passes through in
    order.
    """

    @overload
    def __init__(
        self: with_latest_from[T, tuple[T, B]], b: AbstractSource[B] | Pipeline[Never, B], /, *, name: str | None = ...
    ) -> None: ...
    @overload
    def __init__(
        self: with_latest_from[T, tuple[T, B, C]],
        b: AbstractSource[B] | Pipeline[Never, B],
        c: AbstractSource[C] | Pipeline[Never, C],
        /,
        *,
        name: str | None = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: with_latest_from[Any, tuple[Any, ...]],
        *others: AbstractSource[Any] | Pipeline[Any, Any],
        name: str | None = ...,
    ) -> None: ...
    def __init__(self, *others: AbstractSource[Any] | Pipeline[Any, Any], name: str | None = None) -> None:
        super().__init__(process_metadata=True)
        if not others:
            raise TypeError("with_latest_from: give at least one other stream")
        self.others = [as_source_pipeline(o) for o in others]
        self.skipped = 0
        self.name = name or "with_latest_from"

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[Any]:
        """Yield each item with the others' latest items (metadata passes)."""
        latest = _Latest(len(self.others))
        tasks = TaskScopes()
        for i, other in enumerate(self.others):
            tasks.start(latest.watch, i, other, name=f"talkpipe_async watcher {i} of {self.label}")
        inner: until[Any] = until(latest.failed, name=self.label)
        try:
            async with aclosing(inner.transform(items)) as steps:  # type: ignore[type-var]
                async for x in steps:
                    if isinstance(x, Metadata):
                        yield x
                    elif latest.missing:
                        self.skipped += 1
                    else:
                        yield (x, *latest.values)
        finally:
            tasks.cancel()
        if latest.error is not None:
            raise latest.error


async def _lane(fan: FanIn, i: int, stream: Callable[[], Any]) -> None:
    """Producer task: put the items of ``stream()`` (an async iterable) into lane *i*, then end it."""
    try:
        async for x in stream():
            await fan.put(i, x)
    except ChannelClosed:
        return
    except anyio.get_cancelled_exc_class():
        raise
    except Exception as exc:  # travels in the lane, after its items
        fan.close(i, exc)
        return
    fan.close(i)


async def _pipeline_items(pipeline: Pipeline[Any, Any]) -> AsyncIterator[Any]:
    async with pipeline.stream() as items:
        async for x in items:
            yield x


class combine_latest(AbstractSegment[T, U], Generic[T, U]):
    """Whenever the upstream or any other stream emits, yield the latest item of each: ``(up, o1, o2, ...)``.

    ::

        temperature() | combine_latest(humidity(), wind())   # a full reading on every change

    Nothing is yielded until every stream has emitted once; an item replaced
    before then is left out, counted in ``skipped``.  The stream ends when
    all inputs have ended, or at once when one ends without ever emitting
    (no tuple can come any more).  An error of any input ends the stream
    with it, after the tuples before it.  Every input is read by its own
    task of the run into a lane of at most ``capacity`` items, taken in
    turn; the others are closed when this stream ends.  Holds one item per
    input.  The upstream's metadata passes through in order; the others'
    is not passed on.
    """

    @overload
    def __init__(
        self: combine_latest[T, tuple[T, B]],
        b: AbstractSource[B] | Pipeline[Never, B],
        /,
        *,
        capacity: int = ...,
        name: str | None = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: combine_latest[T, tuple[T, B, C]],
        b: AbstractSource[B] | Pipeline[Never, B],
        c: AbstractSource[C] | Pipeline[Never, C],
        /,
        *,
        capacity: int = ...,
        name: str | None = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: combine_latest[Any, tuple[Any, ...]],
        *others: AbstractSource[Any] | Pipeline[Any, Any],
        capacity: int = ...,
        name: str | None = ...,
    ) -> None: ...
    def __init__(
        self, *others: AbstractSource[Any] | Pipeline[Any, Any], capacity: int = DEFAULT_LANE, name: str | None = None
    ) -> None:
        super().__init__(process_metadata=True)
        if not others:
            raise TypeError("combine_latest: give at least one other stream")
        self.others = [as_source_pipeline(o) for o in others]
        self.capacity = capacity
        self.skipped = 0
        self.name = name or "combine_latest"

    async def transform(self, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Yield the latest items of all inputs on every change (metadata passes)."""
        n = len(self.others) + 1
        fan = FanIn(n, self.capacity)
        tasks = TaskScopes()
        tasks.start(_lane, fan, 0, lambda: items, name=f"talkpipe_async feeder of {self.label}")
        for i, other in enumerate(self.others, 1):
            label = f"talkpipe_async input {i} of {self.label}"
            tasks.start(_lane, fan, i, lambda o=other: _pipeline_items(o), name=label)
        values: list[Any] = [_NOTHING] * n
        missing = n
        active = set(range(n))
        try:
            while active:
                progressed = False
                for i in sorted(active):
                    lane = fan.lanes[i]
                    if lane.items:
                        progressed = True
                        x = fan.take(i)
                        if isinstance(x, Metadata):
                            yield x
                            continue
                        if values[i] is _NOTHING:
                            missing -= 1
                        elif missing:
                            self.skipped += 1
                        values[i] = x
                        if not missing:
                            yield tuple(values)
                    elif lane.closed:
                        progressed = True
                        active.discard(i)
                        if lane.error is not None:
                            error, lane.error = lane.error, None
                            raise error
                        if values[i] is _NOTHING:
                            return
                if not progressed:
                    await fan.wait()
        finally:
            fan.abort()
            tasks.cancel()
