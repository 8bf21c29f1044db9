"""Keyed operators: a sub-pipeline per key (``group_by``) or per hash lane (``partition``).

One feeder task reads the upstream and routes each item to the bounded
input of its group's sub-pipeline; every sub-pipeline runs with its own
``stream()`` in a task of the run and puts what it yields into one bounded
output channel that the stage's own generator reads.  So the items of one
key keep their order through their sub-pipeline; the outputs of different
keys interleave as the sub-pipelines produce them.  Closing, cancelling or
failing the run stops the feeder and every sub-pipeline (their ``finally``
blocks run) before ``stream()`` returns.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import anyio

from .._core._channel import ChannelClosed
from .._core._counters import Counters
from .._core._errors import attach_context
from .._core._metadata import Metadata
from .._core._pipeline import Pipeline
from .._core._segment import AbstractSegment
from ._lanes import Broadcast, Group, Lanes
from .combine import as_branch
from .concurrency import key_function

__all__ = ["KeyedStats", "group_by", "partition", "stable_hash"]

T = TypeVar("T")
U = TypeVar("U")

DEFAULT_OUT = 256

Branch = AbstractSegment[Any, Any] | Pipeline[Any, Any]
SegmentFactory = Branch | Callable[[Any], Branch]


def stable_hash(key: Any) -> int:
    """A hash of *key* that is the same in every process and on every run (CRC-32).

    ``str``, ``bytes``, ``int`` and tuples of these hash by content; other
    keys hash by their ``repr``, which must then not depend on the process
    (no ``<object at 0x...>``).  Python's ``hash()`` of a string is salted
    per process, so it cannot route keys the same way in two workers.
    """
    return zlib.crc32(_key_bytes(key))


def _key_bytes(key: Any) -> bytes:
    if isinstance(key, bytes):
        return b"b" + key
    if isinstance(key, str):
        return b"s" + key.encode("utf-8", "surrogatepass")
    if isinstance(key, bool) or not isinstance(key, (int, tuple)):
        return b"r" + repr(key).encode("utf-8", "surrogatepass")
    if isinstance(key, int):
        return b"i" + str(key).encode()
    return b"t(" + b",".join(_key_bytes(part) for part in key) + b")"


@dataclass
class KeyedStats(Counters):
    """Counters of a ``group_by`` or ``partition`` stage (accumulated over all its runs).

    ``opened``: sub-pipelines started; ``live``: running now; ``evicted_lru``:
    groups closed to make room under ``max_keys``; ``evicted_idle``: groups
    closed after ``idle_timeout``; ``flushes``: metadata items that closed
    every group; ``dropped``: items routed to a sub-pipeline that stopped
    reading before it took them (it ended early, e.g. with ``take``).
    """

    opened: int = 0
    live: int = 0
    evicted_lru: int = 0
    evicted_idle: int = 0
    flushes: int = 0
    dropped: int = 0


class _GroupRun(Lanes):
    """Per-run state of a :class:`group_by`."""

    def __init__(self, stage: group_by[Any, Any], stats: KeyedStats) -> None:
        super().__init__(stage.label, stage.pipeline_for, stage.buffer, stage.out_buffer, stats)
        self.key = stage.key
        self.max_keys = stage.max_keys
        self.idle_timeout = stage.idle_timeout
        self.groups: OrderedDict[Any, Group] = OrderedDict()  # least recently used first
        self.idled: dict[Any, Group] = {}  # groups closed after idle_timeout, still finishing, by key
        self.opened: anyio.Event | None = None

    async def feed(self, items: AsyncIterator[Any]) -> None:
        """The feeder task: the only reader of the upstream."""
        error: BaseException | None = None
        try:
            async for item in items:
                if isinstance(item, Metadata):
                    await self.close_all()
                    self.stats.flushes += 1
                    await self.emit(item)
                    continue
                try:
                    k = self.key(item)
                    group = self.groups.get(k)
                except Exception as exc:
                    attach_context(exc, self.label, item)
                    raise
                if group is None:
                    group = await self.open_key(k)
                else:
                    self.groups.move_to_end(k)
                await self.route(group, item)
                group.last_used = anyio.current_time()
        except ChannelClosed:
            return
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:  # raised after every group has been closed and flushed
            error = exc
        try:
            await self.close_all()
        except ChannelClosed:
            return
        if error is not None:
            self.fail(error)
        else:
            self.out.close()

    async def open_key(self, k: Any) -> Group:
        """A new group for key *k*, evicting the least recently used one if ``max_keys`` are live.

        A group of *k* closed after ``idle_timeout`` may still be working on
        its last item: the new one opens once it has finished, so the key's
        outputs keep their order.
        """
        idled = self.idled.pop(k, None)
        if idled is not None:
            await idled.done.wait()
        while len(self.groups) >= self.max_keys:
            _, oldest = self.groups.popitem(last=False)
            oldest.inbox.end()
            self.stats.evicted_lru += 1
        await self.wait_running(self.max_keys - 1)  # evicted groups finish flushing first
        if self.failed:
            raise ChannelClosed("the stage has failed")
        group = Group(k, self.buffer, anyio.current_time())
        self.groups[k] = group
        self.open(group)
        if self.opened is not None:
            self.opened.set()
        return group

    async def close_all(self) -> None:
        """End every group's input and wait until every sub-pipeline has finished (flushed)."""
        for group in self.groups.values():
            group.inbox.end()
        self.groups.clear()
        await self.wait_running(0)
        if self.failed:
            raise ChannelClosed("the stage has failed")

    async def sweep(self) -> None:
        """The idle sweeper task: closes groups that got no item for ``idle_timeout`` seconds."""
        assert self.idle_timeout is not None
        while True:
            if not self.groups:
                self.opened = anyio.Event()
                await self.opened.wait()
                self.opened = None
                continue
            k, group = next(iter(self.groups.items()))
            now = anyio.current_time()
            due = group.last_used + self.idle_timeout
            if now < due:
                await anyio.sleep(due - now)
            elif group.putting or group.inbox.items:
                group.last_used = now  # still busy with input: not idle
                self.groups.move_to_end(k)
            else:
                del self.groups[k]
                group.inbox.end()
                self.stats.evicted_idle += 1
                if not group.done.is_set():
                    self.idled[k] = group

    def finished(self, group: Group) -> None:
        """Forget a group closed after ``idle_timeout`` once it has finished (nothing to wait for any more)."""
        if self.idled.get(group.key) is group:
            del self.idled[group.key]


class group_by(AbstractSegment[T, U], Generic[T, U]):
    """Run each key's items through a sub-pipeline of their own, and merge the outputs.

    ::

        # per user: batches of 10, flushed when the user has been quiet for 30 s
        pipeline = events() | group_by("user", batch(10), idle_timeout=30)

    ``key`` is a callable on the item or a dotted field name.
    ``segment_factory`` is a segment or a pipeline that starts with a segment
    (it runs afresh for every key), or a callable ``f(key)`` that returns
    one.  Each key's sub-pipeline keeps its own state (a batch, a running
    total) for as long as its group is live.

    Closing a group ends its sub-pipeline's input: the sub-pipeline sees the
    end of its stream, flushes what it holds (a partial batch is yielded) and
    ends; its state is dropped.  An item of that key arriving later opens a
    fresh group.  Groups close:

    - when a new key arrives while ``max_keys`` groups are live: the least
      recently used group (the one whose last item is oldest) is closed, and
      the new group opens once it has finished flushing (counted in
      ``stats.evicted_lru``); so at most ``max_keys`` sub-pipelines run;
    - after ``idle_timeout`` seconds without an item for the key (and nothing
      left in its input), if given (``stats.evicted_idle``); an item of that
      key arriving while the closed group still works on its last items
      opens the new group once the old one has finished (the upstream is not
      read meanwhile), so the key's outputs keep their order;
    - on metadata (a ``Flush``) and at the end of the stream: every group
      closes, and the metadata (or the end) comes after all their outputs.

    Order: the outputs of one key come in the order its sub-pipeline yields
    them; outputs of different keys interleave in the order the
    sub-pipelines produce them (not defined beyond that).  Metadata is a
    barrier: every output of items read before it comes before it.

    Bounds: each group's input holds at most ``buffer`` items (when it is
    full the feeder waits: a slow key holds back the others once its input
    is full) and ``out_buffer`` outputs wait for the consumer (sub-pipelines
    that find it full wait in line).

    Errors: a sub-pipeline's error ends the stage, with a note naming the
    key; an error of the key function or of the upstream is raised after
    every group has closed and flushed.  Items routed to a sub-pipeline that
    stopped reading early are counted in ``stats.dropped``.  ``stats`` (a
    :class:`KeyedStats`: the one given, else the stage's own) counts over all
    its runs; ``last_stats`` is the same object.
    """

    def __init__(
        self,
        key: str | Callable[[T], Any],
        segment_factory: SegmentFactory,
        *,
        max_keys: int = 1024,
        idle_timeout: float | None = None,
        buffer: int = 16,
        out_buffer: int = DEFAULT_OUT,
        stats: KeyedStats | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(process_metadata=True)
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        if idle_timeout is not None and not idle_timeout > 0:
            raise ValueError("idle_timeout must be positive")
        if buffer < 1 or out_buffer < 1:
            raise ValueError("buffer and out_buffer must be at least 1")
        self.key = key_function(key)
        self.pipeline_for = _factory(segment_factory)
        self.max_keys = max_keys
        self.idle_timeout = idle_timeout
        self.buffer = buffer
        self.out_buffer = out_buffer
        self.stats = stats if stats is not None else KeyedStats()
        self.last_stats: KeyedStats | None = None
        self.name = name or "group_by"

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[U]:
        """Route items to their key's sub-pipeline; yield the merged outputs."""
        stats = _fresh(self.stats)
        self.last_stats = stats
        state = _GroupRun(self, stats)
        state.start(state.feed, items, name=f"talkpipe feeder for {self.label}")
        if self.idle_timeout is not None:
            state.start(state.sweep, name=f"talkpipe idle sweeper for {self.label}")
        try:
            async with aclosing(state.results()) as outputs:
                async for item in outputs:
                    yield item
        finally:
            state.stop()


class _PartitionRun(Lanes):
    """Per-run state of a :class:`partition`."""

    def __init__(self, stage: partition[Any, Any], stats: KeyedStats) -> None:
        super().__init__(stage.label, stage.pipeline_for, stage.buffer, stage.out_buffer, stats)
        self.key = stage.key
        self.lanes = [Group(i, stage.buffer, 0.0) for i in range(stage.n)]
        self.owed: list[list[Broadcast]] = [[] for _ in self.lanes]  # per lane: broadcasts it has not passed on

    async def feed(self, items: AsyncIterator[Any]) -> None:
        """The feeder task: the only reader of the upstream."""
        error: BaseException | None = None
        n = len(self.lanes)
        try:
            async for item in items:
                if isinstance(item, Metadata):
                    await self.broadcast(item)
                    continue
                try:
                    lane = self.lanes[stable_hash(self.key(item)) % n]
                except Exception as exc:
                    attach_context(exc, self.label, item)
                    raise
                await self.route(lane, item)
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:  # raised after every lane has finished
            error = exc
        for lane in self.lanes:
            lane.inbox.end()
        await self.wait_running(0)
        if error is not None:
            self.fail(error)
        elif not self.failed:
            self.out.close()

    async def broadcast(self, item: Metadata) -> None:
        """Metadata goes to every live lane; it leaves once every one of them has passed it on."""
        live = [i for i, lane in enumerate(self.lanes) if not lane.inbox.gone]
        if not live:
            await self.emit(item)
            return
        entry = Broadcast(item, len(live))
        for i in live:  # no await in this loop: every lane gets it, none can leave half-way
            inbox = self.lanes[i].inbox
            inbox.items.append(item)
            self.owed[i].append(entry)
            if inbox.data is not None:
                inbox.data.set()

    async def deliver(self, group: Group, item: Any) -> None:
        if isinstance(item, Metadata):
            owed = self.owed[group.key]
            for k, entry in enumerate(owed):
                if entry.item is item:
                    del owed[k]
                    await self.settle(entry)
                    return
        await self.emit(item)

    async def settle(self, entry: Broadcast) -> None:
        """One lane passed a broadcast's metadata on: the last one sends it on; the others wait until it has left.

        So a lane's outputs after a metadata item never overtake it.
        """
        if not entry.passed_by_one():
            await entry.left.wait()
            return
        try:
            await self.emit(entry.item)
        finally:
            entry.left.set()

    async def ended(self, group: Group) -> None:
        self.stats.dropped += group.inbox.leave()  # no metadata reaches it from now on
        owed, self.owed[group.key] = self.owed[group.key], []
        for entry in owed:  # metadata the lane received but never passed on: released by its end
            if entry.waiting > 1:
                entry.waiting -= 1  # an ended lane does not wait for the others
            else:
                await self.settle(entry)


class partition(AbstractSegment[T, U], Generic[T, U]):
    """Run items through ``n`` lanes (sub-pipelines) chosen by a stable hash of their key; merge the outputs.

    ::

        # 4 lanes; all the items of one account go through the same lane, in order
        pipeline = payments() | partition("account", 4, concurrent_map(settle, limit=1))

    ``key`` is a callable on the item or a dotted field name; an item goes to
    lane ``stable_hash(key) % n`` (CRC-32 of the key, the same in every
    process: see :func:`stable_hash`), so a key always meets the same lane
    and its items keep their order through it.  ``segment_factory`` is a
    segment or a pipeline that starts with a segment (it runs afresh for each
    lane), or a callable ``f(lane_index)`` that returns one.  The ``n``
    sub-pipelines start with the run and live until the end of the stream.

    Order: per key (and per lane), as the lane's sub-pipeline yields; across
    lanes, in the order the lanes produce.  Metadata goes to every lane and
    leaves the stage once every lane has passed it on (so a ``Flush`` that
    makes each lane flush comes after their flushed output, and before any
    output of the items after it); a lane that ends without passing it on
    releases it when it ends.

    Bounds: each lane's input holds at most ``buffer`` items (when the lane
    of the next item is full the feeder waits) and ``out_buffer`` outputs
    wait for the consumer.  Errors: a lane's error ends the stage, with a note
    naming the lane; an error of the key function or of the upstream is
    raised after every lane has finished.  Items routed to a lane that
    stopped reading early are counted in ``stats.dropped``.
    """

    def __init__(
        self,
        key: str | Callable[[T], Any],
        n: int,
        segment_factory: SegmentFactory,
        *,
        buffer: int = 16,
        out_buffer: int = DEFAULT_OUT,
        stats: KeyedStats | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(process_metadata=True)
        if n < 1:
            raise ValueError("n must be at least 1")
        if buffer < 1 or out_buffer < 1:
            raise ValueError("buffer and out_buffer must be at least 1")
        self.key = key_function(key)
        self.n = n
        self.pipeline_for = _factory(segment_factory)
        self.buffer = buffer
        self.out_buffer = out_buffer
        self.stats = stats if stats is not None else KeyedStats()
        self.last_stats: KeyedStats | None = None
        self.name = name or f"partition({n})"

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[U]:
        """Route items to their lane; yield the merged outputs of the lanes."""
        stats = _fresh(self.stats)
        self.last_stats = stats
        state = _PartitionRun(self, stats)
        for lane in state.lanes:
            state.open(lane)
        state.start(state.feed, items, name=f"talkpipe feeder for {self.label}")
        try:
            async with aclosing(state.results()) as outputs:
                async for item in outputs:
                    yield item
        finally:
            state.stop()


def _fresh(stats: KeyedStats | None) -> KeyedStats:
    return KeyedStats() if stats is None else stats  # the same object: its counters go on from the last run


def _factory(segment_factory: SegmentFactory) -> Callable[[Any], Pipeline[Any, Any]]:
    """A function from key to sub-pipeline, from a segment/pipeline or a factory of them."""
    if isinstance(segment_factory, (AbstractSegment, Pipeline)):
        fixed = as_branch(segment_factory)
        return lambda _key: fixed
    if not callable(segment_factory):
        raise TypeError(f"segment_factory must be a segment, a pipeline or a callable, not {segment_factory!r}")
    factory = segment_factory

    def make(key: Any) -> Pipeline[Any, Any]:
        return as_branch(factory(key))

    return make
