"""The machinery of ``group_by`` and ``partition``: sub-pipelines fed from bounded inputs into one output.

:class:`Lanes` holds a run's sub-pipelines: each runs with its own
``stream()`` over an :class:`Inbox` in a task of the run and puts what it
yields into the shared :class:`Output`, which the stage's generator reads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any

import anyio

from .._core._channel import ChannelClosed
from .._core._closing import CLEANUP_TIMEOUT
from .._core._errors import add_note, attach_context
from .._core._metadata import Metadata
from .._core._pipeline import Pipeline
from .._core._run import current_run
from .._core._stop import Stoppable

if TYPE_CHECKING:
    from .keyed import KeyedStats

__all__ = ["Broadcast", "Group", "Inbox", "Lanes", "Output"]


class Inbox:
    """A sub-pipeline's bounded input; the sub-pipeline iterates it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: deque[Any] = deque()
        self.ended = False
        self.gone = False  # the sub-pipeline stopped reading
        self.data: anyio.Event | None = None
        self.space: anyio.Event | None = None

    async def put(self, item: Any) -> bool:
        """Queue *item*, waiting while the inbox is full; False if the sub-pipeline stopped reading."""
        while len(self.items) >= self.capacity and not self.gone:
            self.space = anyio.Event()
            await self.space.wait()
        if self.gone:
            return False
        self.items.append(item)
        if self.data is not None:
            self.data.set()
        return True

    def end(self) -> None:
        """No more input: the sub-pipeline sees the end of its stream after the queued items."""
        self.ended = True
        if self.data is not None:
            self.data.set()

    def leave(self) -> int:
        """The sub-pipeline stopped reading: wake a waiting ``put``; return how many data items it left unread."""
        self.gone = True
        unread = sum(not isinstance(item, Metadata) for item in self.items)
        self.items.clear()
        if self.space is not None:
            self.space.set()
        return unread

    def __aiter__(self) -> Inbox:
        return self

    async def __anext__(self) -> Any:
        items = self.items
        while not items:
            if self.ended:
                raise StopAsyncIteration
            self.data = anyio.Event()
            try:
                await self.data.wait()
            finally:
                self.data = None
        item = items.popleft()
        if self.space is not None:
            self.space.set()
        return item


class Output:
    """The stage's bounded output, shared by every sub-pipeline, read by the stage's generator.

    Producers that find it full wait in line, and the consumer wakes only as
    many as it has made room for: with hundreds of sub-pipelines waiting, a
    taken batch does not wake them all to find the room gone again.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: deque[Any] = deque()
        self.waiters: deque[anyio.Event] = deque()
        self.reserved = 0  # room promised to woken producers that have not put yet
        self.ended = False
        self.error: BaseException | None = None
        self.aborted = False
        self.data: anyio.Event | None = None

    async def put(self, item: Any) -> None:
        """Add *item*, waiting in line while the output is full; ``ChannelClosed`` once the consumer is gone."""
        if not self.aborted and (self.waiters or len(self.items) + self.reserved >= self.capacity):
            event = anyio.Event()
            self.waiters.append(event)
            try:
                await event.wait()
            except BaseException:
                if event.is_set():
                    self.reserved -= 1
                    self.wake_producers()
                else:
                    self.waiters.remove(event)
                raise
            self.reserved -= 1
        if self.aborted:
            raise ChannelClosed("the consumer of this stage has gone")
        self.items.append(item)
        if self.data is not None:
            self.data.set()

    def wake_producers(self) -> None:
        while self.waiters and len(self.items) + self.reserved < self.capacity:
            self.reserved += 1
            self.waiters.popleft().set()

    def close(self, error: BaseException | None = None) -> None:
        """No more items; the consumer raises *error* (if any) after the items before it."""
        self.ended = True
        self.error = error
        if self.data is not None:
            self.data.set()

    def abort(self) -> None:
        """The consumer is gone: every waiting and later ``put`` raises ``ChannelClosed``."""
        self.aborted = True
        self.items.clear()
        waiters, self.waiters = self.waiters, deque()
        self.reserved += len(waiters)
        for event in waiters:
            event.set()

    async def get_batch(self) -> list[Any]:
        """Every item there is (at least one); ``anyio.EndOfStream`` at the end."""
        while not self.items:
            if self.ended:
                if self.error is not None:
                    error, self.error = self.error, None
                    raise error
                raise anyio.EndOfStream
            self.data = anyio.Event()
            try:
                await self.data.wait()
            finally:
                self.data = None
        batch = list(self.items)
        self.items.clear()
        self.wake_producers()
        return batch


class Broadcast:
    """Metadata sent to every live receiver (a fork's branches, a partition's lanes), one record per time it is
    sent (the same object may be in flight twice): it leaves once every receiver has passed it on."""

    __slots__ = ("item", "left", "waiting")

    def __init__(self, item: Any, receivers: int) -> None:
        self.item = item
        self.waiting = receivers
        self.left = anyio.Event()  # set once it has left (receivers that wait behind it go on)

    def passed_by_one(self) -> bool:
        """One receiver passed it on: True when that was the last one."""
        self.waiting -= 1
        return self.waiting == 0


class Group:
    """One key's sub-pipeline: its input, its task, when it last got an item."""

    __slots__ = ("done", "handle", "inbox", "key", "last_used", "putting")

    def __init__(self, key: Any, capacity: int, now: float) -> None:
        self.key = key
        self.inbox = Inbox(capacity)
        self.done = anyio.Event()
        self.handle: Stoppable | None = None
        self.last_used = now
        self.putting = False  # the feeder waits for room in this group's inbox


class Lanes:
    """Per-run state shared by ``group_by`` and ``partition``: sub-pipelines into one output channel."""

    def __init__(
        self, label: str, factory: Callable[[Any], Pipeline[Any, Any]], buffer: int, out_buffer: int, stats: KeyedStats
    ):
        self.label = label
        self.factory = factory
        self.buffer = buffer
        self.stats = stats
        self.out = Output(out_buffer)
        self.handles: set[Stoppable] = set()
        self.running = 0
        self.lane_done: anyio.Event | None = None
        self.failed = False

    def start(self, func: Callable[..., Any], *args: Any, name: str) -> Stoppable:
        handle = current_run().start_soon(func, *args, name=name)
        self.handles.add(handle)
        return handle

    def stop(self) -> None:
        """The consumer is gone: abort the output, stop every task."""
        self.out.abort()
        for handle in list(self.handles):
            handle.stop(CLEANUP_TIMEOUT)

    def fail(self, exc: BaseException) -> None:
        """End the stage with *exc* (after the outputs already queued); later outputs are not delivered."""
        if not self.failed:
            self.failed = True
            self.out.close(exc)

    async def emit(self, item: Any) -> None:
        if self.failed:
            raise ChannelClosed("the stage has failed")
        await self.out.put(item)

    def open(self, group: Group) -> None:
        """Make *group*'s sub-pipeline (here, in key order) and start it in a task of the run."""
        try:
            pipeline = self.factory(group.key)
        except Exception as exc:
            attach_context(exc, self.label)
            add_note(exc, f"talkpipe_async: making the sub-pipeline of key {group.key!r} of {self.label}")
            raise
        self.running += 1
        self.stats.opened += 1
        self.stats.live += 1
        name = f"talkpipe group {group.key!r} of {self.label}"
        group.handle = self.start(self.run_group, group, pipeline, name=name)

    async def run_group(self, group: Group, pipeline: Pipeline[Any, Any]) -> None:
        """Group task: run the key's sub-pipeline over its inbox into the output channel."""
        try:
            async with pipeline.stream(group.inbox, metadata=True) as outputs:
                async for item in outputs:
                    await self.deliver(group, item)
            await self.ended(group)
        except ChannelClosed:
            return
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:  # ends the stage, after the outputs queued before it
            if isinstance(exc, Exception):  # an interrupt or an exit is no stage's failure: it leaves as it came
                attach_context(exc, self.label)
                add_note(exc, f"talkpipe_async: in the sub-pipeline of key {group.key!r} of {self.label}")
            self.fail(exc)
        finally:
            self.stats.dropped += group.inbox.leave()
            self.running -= 1
            self.stats.live -= 1
            group.done.set()
            self.finished(group)
            if group.handle is not None:
                self.handles.discard(group.handle)
            if self.lane_done is not None:
                self.lane_done.set()

    def finished(self, group: Group) -> None:
        """*group*'s task is ending (its sub-pipeline has closed); default: nothing to do."""
        return

    async def deliver(self, group: Group, item: Any) -> None:
        """Hand an output of *group*'s sub-pipeline on."""
        await self.emit(item)

    async def ended(self, group: Group) -> None:
        """*group*'s sub-pipeline has ended by itself (all its outputs delivered)."""

    async def route(self, group: Group, item: Any) -> None:
        """Queue *item* for *group* (counted as dropped if its sub-pipeline stopped reading)."""
        group.putting = True
        try:
            if not await group.inbox.put(item):
                self.stats.dropped += 1
        finally:
            group.putting = False

    async def wait_running(self, most: int) -> None:
        """Wait until at most *most* sub-pipelines are still running."""
        while self.running > most:
            self.lane_done = anyio.Event()
            await self.lane_done.wait()
            self.lane_done = None

    async def results(self) -> AsyncGenerator[Any, None]:
        """The consumer side: every output, then the end (or the error) of the stage."""
        out = self.out
        while True:
            try:
                batch = await out.get_batch()
            except anyio.EndOfStream:
                return
            for item in batch:
                yield item
