"""Combine operators: merge, zip, chain; fork (broadcast / round-robin) lives in :mod:`.fanout`.

Sources and pipelines given to ``merge``, ``zip_streams`` and ``chain`` each
run with their own ``stream()`` inside one producer task of the current run;
the upstream of a segment form (``merge_with`` ...) is read by one long-lived
feeder task.  Producers hand items to the consumer through bounded lanes, one
per input, so the consumer can take from them fairly; an input's error travels
in its lane after the items sent before it and keeps its type.  Closing or
cancelling the run stops every producer and branch before ``stream()``
returns.

The fork family is re-exported here, so ``talkpipe_async.operators.combine``
still offers every name it always did.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

import anyio

from .._core._channel import Channel, ChannelClosed
from .._core._metadata import Metadata
from .._core._pipeline import Pipeline
from .._core._segment import AbstractSegment, AbstractSource, PassThrough

# the fan-in pieces, offered here too: latest, keyed, recover and errors take them from this module
from ._fanin import DEFAULT_LANE as DEFAULT_LANE
from ._fanin import FanIn as FanIn
from ._fanin import as_branch as as_branch
from ._fanin import as_source_pipeline as as_source_pipeline
from ._shared import produce_into
from .concurrency import TaskScopes
from .fanout import ForkStats, broadcast, fork, split

if TYPE_CHECKING:
    from typing_extensions import Never

T = TypeVar("T")
U = TypeVar("U")
A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")
D = TypeVar("D")

__all__ = [
    "ForkStats",
    "broadcast",
    "chain",
    "chain_with",
    "concat",
    "fork",
    "merge",
    "merge_with",
    "split",
    "zip_streams",
    "zip_with",
]

_Upstream = AsyncIterator[Any] | None


async def _into_lane(fan: FanIn, i: int, fill: Callable[[], Awaitable[None]]) -> None:
    """Run ``fill()``, which puts items into lane *i*, then end the lane.

    An error ends the lane with that error (raised after the lane's items);
    ``ChannelClosed`` (the consumer is gone) just returns; cancellation
    propagates.
    """
    try:
        await fill()
    except ChannelClosed:
        return
    except anyio.get_cancelled_exc_class():
        raise
    except BaseException as exc:  # travels in the lane, after its items
        fan.close(i, exc)
        return
    fan.close(i)


async def _pump_pipeline(fan: FanIn, i: int, pipeline: Pipeline[Any, Any]) -> None:
    """Producer task: run *pipeline* and put its items (metadata too) into lane *i*."""

    async def fill() -> None:
        async with pipeline.stream(metadata=True) as items:
            async for item in items:
                await fan.put(i, item)

    await _into_lane(fan, i, fill)


async def _pump_upstream(fan: FanIn, i: int, items: AsyncIterator[Any]) -> None:
    """Feeder task: read a segment's upstream into lane *i*."""

    async def fill() -> None:
        async for item in items:
            await fan.put(i, item)

    await _into_lane(fan, i, fill)


def _start_pumps(fan: FanIn, tasks: TaskScopes, label: str, upstream: _Upstream, pipes: list[Any]) -> None:
    offset = 0
    if upstream is not None:
        tasks.start(_pump_upstream, fan, 0, upstream, name=f"talkpipe feeder for {label}")
        offset = 1
    for k, pipeline in enumerate(pipes):
        tasks.start(_pump_pipeline, fan, k + offset, pipeline, name=f"talkpipe producer {k} of {label}")


async def _merged(label: str, capacity: int, upstream: _Upstream, pipes: list[Any]) -> AsyncGenerator[Any, None]:
    fan = FanIn(len(pipes) + (upstream is not None), capacity)
    tasks = TaskScopes()
    _start_pumps(fan, tasks, label, upstream, pipes)
    try:
        async with aclosing(fan.fair()) as steps:
            async for item in steps:
                yield item
    finally:
        fan.abort()
        tasks.cancel()


class merge(AbstractSource[T], Generic[T]):
    """Fair fan-in of several sources or source pipelines, as one source.

    ::

        pipeline = merge(tail("a.log"), tail("b.log"), ticker | label("tick")) | parse()

    Each input runs with its own ``stream()`` in a producer task; the output
    takes one item from each input that has one, in turn, so a fast input
    cannot starve a slow one.  Bound: each input's lane holds at most
    ``capacity`` items (then that producer waits).  Metadata from the inputs
    passes through.  The merge ends when every input has ended; an input's
    error is raised (with its type) after that input's earlier items, and
    stops the other inputs.
    """

    def __init__(
        self,
        *sources: AbstractSource[T] | Pipeline[Never, T],
        capacity: int = DEFAULT_LANE,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.sources = [as_source_pipeline(s) for s in sources]
        self.capacity = capacity
        self.name = name or "merge"

    async def generate(self) -> AsyncIterator[T]:
        """Yield the items of every input, interleaved fairly."""
        async with aclosing(_merged(self.label, self.capacity, None, self.sources)) as steps:
            async for item in steps:
                yield item


class merge_with(PassThrough[T], Generic[T]):
    """Segment form of :class:`merge`: the upstream is one more input.

    ::

        pipeline = events() | merge_with(heartbeats()) | handle()

    Same fairness, bounds and errors as :class:`merge`; the upstream is read
    by one feeder task.  Metadata passes through.
    """

    def __init__(
        self,
        *others: AbstractSource[T] | Pipeline[Never, T],
        capacity: int = DEFAULT_LANE,
        name: str | None = None,
    ) -> None:
        super().__init__(process_metadata=True)
        self.others = [as_source_pipeline(s) for s in others]
        self.capacity = capacity
        self.name = name or "merge_with"

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """Yield the upstream's items and the others', interleaved fairly."""
        async with aclosing(_merged(self.label, self.capacity, items, self.others)) as steps:
            async for item in steps:
                yield item


async def _zipped(label: str, capacity: int, upstream: _Upstream, pipes: list[Any]) -> AsyncGenerator[Any, None]:
    fan = FanIn(len(pipes) + (upstream is not None), capacity)
    tasks = TaskScopes()
    _start_pumps(fan, tasks, label, upstream, pipes)
    lanes = fan.lanes
    n = len(lanes)
    try:
        while True:
            for i in range(n):  # metadata at the head of a lane goes straight through
                lane = lanes[i]
                while lane.items and isinstance(lane.items[0], Metadata):
                    yield fan.take(i)
            if all(lane.items for lane in lanes):
                yield tuple(fan.take(i) for i in range(n))
                continue
            if _zip_ended(lanes):
                return
            await fan.wait()
    finally:
        fan.abort()
        tasks.cancel()


def _zip_ended(lanes: list[Any]) -> bool:
    """True when an input has ended with no item left to pair: the zip ends (with that input's error, if any)."""
    for lane in lanes:
        if lane.closed and not lane.items:
            if lane.error is not None:
                raise lane.error
            return True
    return False


class zip_streams(AbstractSource[T], Generic[T]):
    """Pair up the items of several sources: ``(a0, b0), (a1, b1), ...``.

    ::

        pipeline = zip_streams(prices(), volumes()) | compute()

    Ends when the shortest input ends (the others are then stopped; their
    unpaired items are discarded, like :func:`zip`).  Bound: ``capacity``
    items per input lane.  Metadata from any input is passed through as soon
    as it reaches the head of its lane.  An input's error is raised when the
    zip needs that input's next item.
    """

    @overload
    def __init__(
        self: zip_streams[tuple[A, B]],
        a: AbstractSource[A] | Pipeline[Never, A],
        b: AbstractSource[B] | Pipeline[Never, B],
        /,
        *,
        capacity: int = ...,
        name: str | None = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: zip_streams[tuple[A, B, C]],
        a: AbstractSource[A] | Pipeline[Never, A],
        b: AbstractSource[B] | Pipeline[Never, B],
        c: AbstractSource[C] | Pipeline[Never, C],
        /,
        *,
        capacity: int = ...,
        name: str | None = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: zip_streams[tuple[A, B, C, D]],
        a: AbstractSource[A] | Pipeline[Never, A],
        b: AbstractSource[B] | Pipeline[Never, B],
        c: AbstractSource[C] | Pipeline[Never, C],
        d: AbstractSource[D] | Pipeline[Never, D],
        /,
        *,
        capacity: int = ...,
        name: str | None = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: zip_streams[tuple[Any, ...]], *sources: Any, capacity: int = ..., name: str | None = ...
    ) -> None: ...
    def __init__(self, *sources: Any, capacity: int = DEFAULT_LANE, name: str | None = None) -> None:
        super().__init__()
        if not sources:
            raise ValueError("zip_streams needs at least one input")
        self.sources = [as_source_pipeline(s) for s in sources]
        self.capacity = capacity
        self.name = name or "zip_streams"

    async def generate(self) -> AsyncIterator[T]:
        """Yield one tuple per position."""
        async with aclosing(_zipped(self.label, self.capacity, None, self.sources)) as steps:
            async for item in steps:
                yield item


class zip_with(AbstractSegment[T, U], Generic[T, U]):
    """Segment form of :class:`zip_streams`: ``(upstream_item, other_item, ...)``.

    ::

        pipeline = questions() | zip_with(answers()) | grade()
    """

    @overload
    def __init__(
        self: zip_with[T, tuple[T, B]],
        b: AbstractSource[B] | Pipeline[Never, B],
        /,
        *,
        capacity: int = ...,
        name: str | None = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: zip_with[T, tuple[T, B, C]],
        b: AbstractSource[B] | Pipeline[Never, B],
        c: AbstractSource[C] | Pipeline[Never, C],
        /,
        *,
        capacity: int = ...,
        name: str | None = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: zip_with[Any, tuple[Any, ...]], *others: Any, capacity: int = ..., name: str | None = ...
    ) -> None: ...
    def __init__(self, *others: Any, capacity: int = DEFAULT_LANE, name: str | None = None) -> None:
        super().__init__(process_metadata=True)
        self.others = [as_source_pipeline(s) for s in others]
        self.capacity = capacity
        self.name = name or "zip_with"

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[U]:
        """Yield tuples of the upstream item and the others' items."""
        async with aclosing(_zipped(self.label, self.capacity, items, self.others)) as steps:
            async for item in steps:
                yield item


async def _sequence(channel: Channel, upstream: AsyncIterator[Any] | None, pipes: list[Pipeline[Any, Any]]) -> None:
    """Producer task of :class:`chain`: one input after the other into *channel*."""
    if upstream is not None:
        async for item in upstream:
            await channel.put(item)
    for pipeline in pipes:
        async with pipeline.stream(metadata=True) as items:
            async for item in items:
                await channel.put(item)


async def produced(
    label: str, capacity: int, produce: Callable[..., Awaitable[None]], *args: Any
) -> AsyncGenerator[Any, None]:
    """Yield what ``produce(channel, *args)`` puts into a channel of *capacity*, run as a producer task.

    The channel ends as :func:`produce_into` says; closing this generator
    aborts the channel and cancels the producer.  Use it under ``aclosing``.
    """
    channel = Channel(capacity)
    tasks = TaskScopes()
    tasks.start(produce_into, channel, produce, *args, name=f"talkpipe producer of {label}")
    try:
        while True:
            try:
                batch = await channel.get_batch(capacity)
            except anyio.EndOfStream:
                return
            for item in batch:
                yield item
    finally:
        channel.abort()
        tasks.cancel()


class chain(AbstractSource[T], Generic[T]):
    """All items of the first input, then of the second, and so on (``concat``).

    ::

        pipeline = chain(read_jsonl("old.jsonl"), live_feed()) | process()

    Each input runs with its own ``stream()``, one after the other, in one
    producer task; the next one starts only when the previous one has ended.
    Bound: ``capacity`` items wait between the producer and the consumer.
    Metadata passes through.  An input's error ends the chain after the items
    before it.
    """

    def __init__(
        self,
        *sources: AbstractSource[T] | Pipeline[Never, T],
        capacity: int = DEFAULT_LANE,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.sources = [as_source_pipeline(s) for s in sources]
        self.capacity = capacity
        self.name = name or "chain"

    async def generate(self) -> AsyncIterator[T]:
        """Yield every input's items in turn."""
        async with aclosing(produced(self.label, self.capacity, _sequence, None, self.sources)) as steps:
            async for item in steps:
                yield item


concat = chain


class chain_with(PassThrough[T], Generic[T]):
    """Segment form of :class:`chain`: the upstream's items, then the others'.

    ::

        pipeline = backlog() | chain_with(live()) | process()
    """

    def __init__(
        self,
        *others: AbstractSource[T] | Pipeline[Never, T],
        capacity: int = DEFAULT_LANE,
        name: str | None = None,
    ) -> None:
        super().__init__(process_metadata=True)
        self.others = [as_source_pipeline(s) for s in others]
        self.capacity = capacity
        self.name = name or "chain_with"

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """Yield the upstream's items, then each other input's items."""
        async with aclosing(produced(self.label, self.capacity, _sequence, items, self.others)) as steps:
            async for item in steps:
                yield item
