"""Combine operators: merge, zip, chain, fork (broadcast / round-robin) with fan-in.

Sources and pipelines given to ``merge``, ``zip_streams`` and ``chain`` each
run with their own ``stream()`` inside one producer task of the current run;
the upstream of a segment form (``merge_with`` ...) is read by one long-lived
feeder task.  Producers hand items to the consumer through bounded lanes, one
per input, so the consumer can take from them fairly; an input's error travels
in its lane after the items sent before it and keeps its type.  Closing or
cancelling the run stops every producer and branch before ``stream()``
returns.
"""

from __future__ import annotations

import copy as _copy
import logging
import reprlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

import anyio
import anyio.lowlevel

from .._core._channel import Channel, ChannelClosed
from .._core._counters import Counters
from .._core._metadata import Metadata
from .._core._pipeline import Pipeline
from .._core._segment import AbstractSegment, AbstractSource, PassThrough
from ._lanes import Inbox
from ._shared import produce_into
from .concurrency import TaskScopes

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

logger = logging.getLogger("talkpipe_async.operators.combine")
_repr = reprlib.Repr()

DEFAULT_LANE = 64
_Upstream = AsyncIterator[Any] | None


def as_source_pipeline(obj: Any) -> Pipeline[Any, Any]:
    """A pipeline that starts with a source, from a source or such a pipeline."""
    if isinstance(obj, AbstractSource):
        return Pipeline(obj)
    if isinstance(obj, Pipeline) and obj.has_source:
        return obj
    raise TypeError(f"expected a source or a pipeline that starts with a source, got {obj!r}")


def as_branch(obj: Any) -> Pipeline[Any, Any]:
    """A pipeline that starts with a segment (a fork branch)."""
    if isinstance(obj, Pipeline):
        pipeline = obj
    else:
        pipeline = Pipeline(obj)
    if pipeline.has_source:
        raise TypeError(f"a branch must start with a segment, not a source: {pipeline!r}")
    return pipeline


class _Lane:
    """One producer's bounded queue inside :class:`FanIn`."""

    __slots__ = ("closed", "error", "items", "space")

    def __init__(self) -> None:
        self.items: deque[Any] = deque()
        self.closed = False
        self.error: BaseException | None = None
        self.space: anyio.Event | None = None


class FanIn:
    """Bounded lanes, one per producer, read by one consumer.

    Each lane holds at most ``capacity`` items; a producer waits while its
    lane is full.  ``close(i, error)`` ends lane ``i``; the consumer sees the
    error after the lane's items.  ``abort()`` (consumer gone) makes waiting
    and later ``put`` calls raise :class:`ChannelClosed`.
    """

    def __init__(self, lanes: int, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.lanes = [_Lane() for _ in range(lanes)]
        self.aborted = False
        self._data: anyio.Event | None = None

    async def put(self, i: int, item: Any) -> None:
        """Add *item* to lane *i*, waiting while it is full."""
        lane = self.lanes[i]
        while len(lane.items) >= self.capacity and not self.aborted:
            lane.space = anyio.Event()
            await lane.space.wait()
        if self.aborted:
            raise ChannelClosed("the consumer of this fan-in has gone")
        lane.items.append(item)
        if self._data is not None:
            self._data.set()

    def close(self, i: int, error: BaseException | None = None) -> None:
        """End lane *i* (the consumer raises *error*, if any, after its items)."""
        lane = self.lanes[i]
        lane.closed = True
        lane.error = error
        if self._data is not None:
            self._data.set()

    def abort(self) -> None:
        """The consumer is gone: wake every producer with ChannelClosed."""
        self.aborted = True
        for lane in self.lanes:
            lane.items.clear()
            if lane.space is not None:
                lane.space.set()

    def take(self, i: int) -> Any:
        """Pop the first item of lane *i* (it must have one)."""
        lane = self.lanes[i]
        item = lane.items.popleft()
        if lane.space is not None:
            lane.space.set()
        return item

    async def wait(self) -> None:
        """Wait until some producer adds an item or closes a lane."""
        self._data = anyio.Event()
        try:
            await self._data.wait()
        finally:
            self._data = None

    async def fair(self) -> AsyncGenerator[Any, None]:
        """Items from every lane, one per non-empty lane per round, until all end."""
        lanes = self.lanes
        active = list(range(len(lanes)))
        while active:
            progressed = False
            for i in tuple(active):
                lane = lanes[i]
                if lane.items:
                    progressed = True
                    yield self.take(i)
                elif lane.closed:
                    active.remove(i)
                    progressed = True
                    if lane.error is not None:
                        error, lane.error = lane.error, None
                        raise error
            if not progressed:
                await self.wait()


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
            for lane in lanes:
                if lane.closed and not lane.items:
                    if lane.error is not None:
                        raise lane.error
                    return
            await fan.wait()
    finally:
        fan.abort()
        tasks.cancel()


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


# --------------------------------------------------------------------- fork


@dataclass
class ForkStats(Counters):
    """Counters of a fork (accumulated over all its runs): per branch, items delivered and dropped.

    ``dropped[i]`` counts items the ``drop_oldest`` policy discarded because
    branch ``i`` was too slow; ``delivered[i]`` counts items handed to branch
    ``i``.
    """

    delivered: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)


class _BranchInput(Inbox):
    """A branch's bounded input queue (an :class:`Inbox` with fork's slow-branch policy and counters)."""

    def __init__(self, index: int, capacity: int, drop_oldest: bool, stats: ForkStats, label: str) -> None:
        super().__init__(capacity)
        self.index = index
        self.drop_oldest = drop_oldest
        self.stats = stats
        self.label = label
        self.owed: list[Any] = []  # metadata handed to the branch and not yet passed on by it

    async def put(self, item: Any) -> bool:
        """Queue *item* for the branch, applying the slow-branch policy; False if the branch stopped reading."""
        items = self.items
        if self.drop_oldest and len(items) >= self.capacity:
            await anyio.lowlevel.checkpoint()  # one chance for the branch to catch up before a drop
        while len(items) >= self.capacity and not self.gone:
            if self.drop_oldest and not isinstance(item, Metadata) and self._drop():
                break
            self.space = anyio.Event()
            await self.space.wait()
        if self.gone:
            return False
        items.append(item)
        self.stats.delivered[self.index] += 1
        if self.data is not None:
            self.data.set()
        return True

    def put_metadata(self, item: Any) -> None:
        """Queue metadata at once (it never waits for room nor is dropped) and owe it downstream."""
        self.items.append(item)
        self.owed.append(item)
        if self.data is not None:
            self.data.set()

    def settle(self, item: Any) -> None:
        """The branch passed metadata *item* on: it is no longer owed."""
        for k, owed in enumerate(self.owed):
            if owed is item:
                del self.owed[k]
                return

    def _drop(self) -> bool:
        for k, old in enumerate(self.items):
            if not isinstance(old, Metadata):
                del self.items[k]
                dropped = self.stats.dropped
                dropped[self.index] += 1
                if dropped[self.index] == 1:
                    logger.warning(
                        "%s: branch %d is too slow; dropping its oldest item %s (counted in ForkStats.dropped)",
                        self.label,
                        self.index,
                        _repr.repr(old),
                    )
                return True
        return False


CopyPolicy = Literal["none", "shallow", "deep"]


class fork(AbstractSegment[T, U], Generic[T, U]):
    """Send each item to several branches and merge the branches' outputs.

    ::

        pipeline = events() | fork(
            to_db(),                                 # each branch is a segment or a
            enrich() | to_search_index(),            # pipeline that starts with a segment
            buffer=32, policy="drop_oldest",
        ) | report()

    ``mode="broadcast"`` (default) gives every item to every branch;
    ``mode="round_robin"`` (see :class:`split`) gives each item to the next
    branch in turn.  Each branch runs with its own ``stream()`` in a task of
    the run; one feeder task reads the upstream.  The branches' outputs are
    merged fairly (as :class:`merge`), so their order across branches is not
    defined.

    Bounds: each branch's input queue holds at most ``buffer`` items, and each
    branch's output lane at most ``buffer`` items.  When a branch's input is
    full, ``policy="block"`` makes the feeder wait (the slowest branch sets
    the pace); ``policy="drop_oldest"`` discards that branch's oldest queued
    data item instead (after letting the branch run once), counts it in
    ``ForkStats.dropped`` and logs a warning the first time.  Metadata is
    never dropped.

    Copies: with ``copy="shallow"`` (default) or ``"deep"``, the first branch
    that takes an item gets the object itself and every other branch a
    ``copy.copy`` / ``copy.deepcopy`` of it, so a branch that mutates its item
    cannot change what another branch sees.  ``copy="none"`` hands every
    branch the same object: only for immutable items or read-only branches.

    Metadata goes to every branch (uncopied, queued at once: it does not count
    against ``buffer`` and is never dropped); an upstream metadata item leaves
    the fork once every branch that received it has passed it on (so a
    downstream Flush comes after the branches' own flushed output).  A branch
    that ends before passing on metadata it received releases it when it
    ends.  Metadata a branch creates passes through.

    Errors: a branch's error is raised downstream (with its type) and ends
    the fork; an upstream error is raised after every branch has finished the
    items it received.  A branch that ends early simply stops receiving
    items.  ``stats`` (a :class:`ForkStats`: the one given, else the fork's
    own) counts over all its runs; ``last_stats`` is the same object.
    """

    def __init__(
        self,
        *branches: AbstractSegment[T, U] | Pipeline[T, U],
        mode: Literal["broadcast", "round_robin"] = "broadcast",
        buffer: int = 16,
        policy: Literal["block", "drop_oldest"] = "block",
        copy: CopyPolicy = "shallow",
        stats: ForkStats | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(process_metadata=True)
        if not branches:
            raise ValueError("fork needs at least one branch")
        if mode not in ("broadcast", "round_robin"):
            raise ValueError(f"unknown mode {mode!r}")
        if policy not in ("block", "drop_oldest"):
            raise ValueError(f"unknown policy {policy!r}")
        if copy not in ("none", "shallow", "deep"):
            raise ValueError(f"unknown copy policy {copy!r}")
        if buffer < 1:
            raise ValueError("buffer must be at least 1")
        self.branches = [as_branch(b) for b in branches]
        self.mode = mode
        self.buffer = buffer
        self.policy = policy
        self.copy = copy
        self.stats = stats if stats is not None else ForkStats()
        self.last_stats: ForkStats | None = None
        self.name = name or ("fork" if mode == "broadcast" else "split")

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[U]:
        """Feed the branches and yield their merged outputs."""
        n = len(self.branches)
        stats = self.stats if self.stats is not None else ForkStats()
        if len(stats.delivered) != n or len(stats.dropped) != n:  # a fresh ForkStats; a used one keeps counting
            stats.delivered, stats.dropped = [0] * n, [0] * n
        self.last_stats = stats
        inputs = [_BranchInput(i, self.buffer, self.policy == "drop_oldest", stats, self.label) for i in range(n)]
        fan = FanIn(n, self.buffer)
        pending: dict[int, list[Any]] = {}  # id(metadata) -> [metadata, branches still to pass it]
        upstream_error: list[BaseException] = []
        tasks = TaskScopes()
        tasks.start(self._feed, items, inputs, pending, upstream_error, name=f"talkpipe feeder for {self.label}")
        for i, branch in enumerate(self.branches):
            tasks.start(_run_branch, branch, inputs[i], fan, i, name=f"talkpipe branch {i} of {self.label}")
        try:
            async with aclosing(fan.fair()) as steps:
                async for item in steps:
                    if isinstance(item, Metadata):
                        entry = pending.get(id(item))
                        if entry is not None and entry[0] is item:
                            entry[1] -= 1
                            if entry[1] > 0:
                                continue
                            del pending[id(item)]
                    yield item
            if upstream_error:
                raise upstream_error[0]
        finally:
            fan.abort()
            for branch_input in inputs:
                branch_input.leave()
            tasks.cancel()

    def _copier(self) -> Callable[[Any], Any]:
        if self.copy == "shallow":
            return _copy.copy
        if self.copy == "deep":
            return _copy.deepcopy
        return lambda x: x

    async def _feed(
        self,
        items: AsyncIterator[Any],
        inputs: list[_BranchInput],
        pending: dict[int, list[Any]],
        upstream_error: list[BaseException],
    ) -> None:
        copier = self._copier()
        broadcast = self.mode == "broadcast"
        n = len(inputs)
        turn = 0
        try:
            async for item in items:
                live = [q for q in inputs if not q.gone]
                if not live:
                    break
                if isinstance(item, Metadata):
                    pending[id(item)] = [item, len(live)]
                    for q in live:  # no await in this loop: no branch can leave half-way
                        q.put_metadata(item)
                elif broadcast:
                    first = True
                    for q in live:
                        await q.put(item if first else copier(item))
                        first = False
                else:
                    for _ in range(n):
                        q = inputs[turn]
                        turn = (turn + 1) % n
                        if not q.gone:
                            await q.put(item)
                            break
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:  # raised by the fork after the branches finish
            upstream_error.append(exc)
        for q in inputs:
            q.end()


async def _run_branch(branch: Pipeline[Any, Any], inbox: _BranchInput, fan: FanIn, i: int) -> None:
    """Branch task: run *branch* over its input queue into output lane *i*."""
    try:
        async with branch.stream(inbox, metadata=True) as outputs:
            async for item in outputs:
                if isinstance(item, Metadata):
                    inbox.settle(item)
                await fan.put(i, item)
        inbox.leave()
        for item in list(inbox.owed):  # metadata the branch received but never passed on
            inbox.settle(item)
            await fan.put(i, item)
    except ChannelClosed:
        return
    except anyio.get_cancelled_exc_class():
        raise
    except BaseException as exc:
        fan.close(i, exc)
        return
    finally:
        inbox.leave()
    fan.close(i)


def broadcast(*branches: AbstractSegment[T, U] | Pipeline[T, U], **options: Any) -> fork[T, U]:
    """``fork(*branches, mode="broadcast", ...)``: every item to every branch."""
    return fork(*branches, mode="broadcast", **options)


def split(*branches: AbstractSegment[T, U] | Pipeline[T, U], **options: Any) -> fork[T, U]:
    """``fork(*branches, mode="round_robin", ...)``: each item to the next branch in turn.

    ::

        pipeline = jobs() | split(worker(), worker(), worker()) | results()
    """
    return fork(*branches, mode="round_robin", **options)
