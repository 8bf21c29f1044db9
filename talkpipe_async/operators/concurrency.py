"""Concurrency operators: concurrent map, thread map, bounded prefetch.

Every operator here reads its upstream in ONE long-lived feeder task started
with ``current_run().start_soon``, so a source's own timeouts and context
variables keep working (no upstream step runs in a fresh task).  Work on items
runs in at most ``limit`` long-lived worker tasks (no task per item).  Errors
keep their type and arrive in stream order; closing or cancelling the run
cancels every worker and the feeder before ``stream()`` returns.

These segments set ``process_metadata=True`` and pass metadata through
themselves (see each class for where metadata goes).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, Generic, TypeVar

import anyio
import anyio.to_thread

from .._core._channel import Channel
from .._core._closing import CLEANUP_TIMEOUT
from .._core._errors import attach_context
from .._core._fields import extract_field
from .._core._metadata import Metadata
from .._core._run import current_run
from .._core._segment import AbstractSegment, PassThrough
from .._core._stop import Stoppable
from ._shared import produce_into

__all__ = ["buffer", "concurrent_map", "thread_map"]

T = TypeVar("T")
U = TypeVar("U")


def blame(exc: BaseException, stage: str, item: Any) -> None:
    """Record on *exc* that stage *stage* failed on *item* (see ``attach_context``)."""
    attach_context(exc, stage, item)


class TaskScopes:
    """The tasks one operator started in the run, so it can stop them all.

    Stopping a task interrupts it once; the ``finally`` blocks of the stages
    it was running then run shielded, within the cleanup deadline, so they
    can await (see ``current_run().start_soon``).
    """

    def __init__(self) -> None:
        self.handles: list[Stoppable] = []
        self.cancelled = False

    def start(self, func: Callable[..., Awaitable[Any]], *args: Any, name: str) -> None:
        """Start ``func(*args)`` as a task of the run (not at all once :meth:`cancel` was called)."""
        if not self.cancelled:
            self.handles.append(current_run().start_soon(func, *args, name=name))  # type: ignore[arg-type]

    def cancel(self) -> None:
        """Stop every task started here."""
        self.cancelled = True
        for handle in self.handles:
            handle.stop(CLEANUP_TIMEOUT)


class _Slot:
    """One item's result: filled in by a worker, read by the consumer."""

    __slots__ = ("done", "key", "ok", "value")

    def __init__(self, done: bool = False, value: Any = None) -> None:
        self.done = done
        self.ok = True
        self.value = value
        self.key: Any = None


KeyFunc = Callable[[Any], Any]


def key_function(key: str | KeyFunc) -> KeyFunc:
    """A callable on the item: *key* itself, or reading the dotted field *key* (``"_"``: the item)."""
    if isinstance(key, str):
        path = key
        return lambda item: extract_field(item, path)
    if not callable(key):
        raise TypeError(f"key must be a callable or a field name, not {key!r}")
    return key


class ResultWindow:
    """The consumer side of a pool of workers: results leave in the order of ``out``.

    ``out`` holds entries with a ``done`` flag: every entry in input order
    (ordered: the reorder window, whose head may still be running), or only
    finished ones (unordered).  Workers set ``done`` and call
    :meth:`wake_consumer`; the feeder sets ``ended`` (and ``end_error``)
    when the upstream is over.
    """

    out: deque[Any]
    consumer: anyio.Event | None
    ended: bool
    end_error: BaseException | None
    busy: int

    def wake_consumer(self) -> None:
        if self.consumer is not None:
            self.consumer.set()

    def finished(self) -> bool:
        """Nothing more can come: the upstream ended and every entry has left."""
        return self.ended and not self.out and not self.busy

    async def next_done(self) -> Any:
        """The next finished entry, in order; ``None`` at the end (or the upstream's error)."""
        out = self.out
        while True:
            if out and out[0].done:
                return out.popleft()
            if self.finished():
                if self.end_error is not None:
                    error, self.end_error = self.end_error, None
                    raise error
                return None
            self.consumer = anyio.Event()
            try:
                await self.consumer.wait()
            finally:
                self.consumer = None


class _MapRun(ResultWindow):
    """Per-run state of a concurrent map (see :class:`concurrent_map`)."""

    def __init__(
        self,
        fn: Callable[[Any], Awaitable[Any]],
        limit: int,
        window: int,
        ordered: bool,
        label: str,
        key: KeyFunc | None = None,
    ):
        self.fn = fn
        self.limit = limit
        self.window = window
        self.ordered = ordered
        self.label = label
        self.tasks = TaskScopes()
        self.inq: deque[tuple[_Slot, Any]] = deque()  # dispatched, waiting for a worker
        self.out: deque[_Slot] = deque()  # ordered: every slot in input order; unordered: done slots
        self.held = 0  # taken from upstream, not yet handed downstream (<= window)
        self.busy = 0  # data items dispatched and not finished
        self.workers = 0
        self.idle: list[anyio.Event] = []
        self.consumer: anyio.Event | None = None
        self.feeder: anyio.Event | None = None
        self.ended = False
        self.stopping = False
        self.end_error: BaseException | None = None
        self.high_water = 0
        self.key = key
        # keyed: the keys with an item running, each with its later items waiting their turn (arrival order)
        self.queued: dict[Any, deque[tuple[_Slot, Any]]] = {}

    def stop(self) -> None:
        """The consumer is gone: wake the feeder and idle workers so they return, and stop the tasks."""
        self.stopping = True
        self.inq.clear()
        self.queued.clear()
        self.wake_feeder()
        for event in self.idle:
            event.set()
        self.tasks.cancel()

    def wake_feeder(self) -> None:
        if self.feeder is not None:
            self.feeder.set()

    async def feed(self, items: AsyncIterator[Any]) -> None:
        """The feeder task: the only reader of the upstream."""
        try:
            iterator = items.__aiter__()
            while True:
                while self.held >= self.window:  # wait for room before reading the next item
                    self.feeder = anyio.Event()
                    await self.feeder.wait()
                    self.feeder = None
                    if self.stopping:
                        return
                try:
                    item = await iterator.__anext__()
                except StopAsyncIteration:
                    break
                self.held += 1
                if self.held > self.high_water:
                    self.high_water = self.held
                if isinstance(item, Metadata):
                    if not self.ordered:  # a barrier: everything read before it is delivered first
                        while self.busy:
                            self.feeder = anyio.Event()
                            await self.feeder.wait()
                            self.feeder = None
                    self.out.append(_Slot(True, item))
                    self.wake_consumer()
                    continue
                slot = _Slot()
                if self.ordered:
                    self.out.append(slot)
                self.busy += 1
                if self.key is not None and not self.admit(slot, item):
                    continue  # its key is busy: it runs when the earlier items of its key are done
                self.inq.append((slot, item))
                if self.idle:
                    self.idle.pop().set()
                elif self.workers < self.limit:
                    self.workers += 1
                    self.tasks.start(self.work, name=f"talkpipe worker for {self.label}")
        except anyio.get_cancelled_exc_class():
            raise
        except Exception as exc:  # delivered after the items before it
            self.end_error = exc
        except BaseException as exc:
            # KeyboardInterrupt or SystemExit landed in the upstream's code: the run stops now, not after the items
            # in flight (a call in a thread may block for long); no new item starts.
            self.end_error = exc
            self.inq.clear()  # before the idle workers are woken: they find nothing to start
            self.queued.clear()
            self._end()
            raise
        self._end()

    def _end(self) -> None:
        self.ended = True
        for event in self.idle:
            event.set()
        self.wake_consumer()

    def admit(self, slot: _Slot, item: Any) -> bool:
        """Keyed: True if *item* may run now; else it waits behind the earlier items of its key.

        A key function that fails fails the item (its error takes the item's place).
        """
        try:
            k = self.key(item)  # type: ignore[misc]
            waiting = self.queued.get(k)
        except Exception as exc:
            blame(exc, self.label, item)
            self.finish(slot, False, exc)
            return False
        slot.key = k
        if waiting is None:
            self.queued[k] = deque()
            return True
        waiting.append((slot, item))
        return False

    def next_of_key(self, slot: _Slot) -> None:
        """Keyed: *slot* is done; the next item of its key (if any) becomes ready to run."""
        waiting = self.queued[slot.key]
        if waiting:
            self.inq.append(waiting.popleft())
        else:
            del self.queued[slot.key]

    def finish(self, slot: _Slot, ok: bool, value: Any) -> None:
        """Record *slot*'s result and hand it towards the consumer."""
        slot.ok = ok
        slot.value = value
        slot.done = True
        self.busy -= 1
        if self.ordered:
            if self.out[0] is slot:
                self.wake_consumer()
        else:
            self.out.append(slot)
            self.wake_consumer()
            if not self.busy:
                self.wake_feeder()

    async def work(self) -> None:
        """A worker task: applies the function to dispatched items until the end."""
        fn = self.fn
        inq = self.inq
        out = self.out
        ordered = self.ordered
        keyed = self.key is not None
        while True:
            while inq:
                slot, item = inq.popleft()
                try:
                    slot.value = await fn(item)
                except Exception as exc:
                    blame(exc, self.label, item)
                    slot.ok = False
                    slot.value = exc
                slot.done = True
                self.busy -= 1
                if keyed and not self.stopping:
                    self.next_of_key(slot)
                if ordered:
                    if out[0] is slot:
                        self.wake_consumer()
                else:
                    out.append(slot)
                    self.wake_consumer()
                    if not self.busy:
                        self.wake_feeder()
            if self.ended or self.stopping:
                return
            event = anyio.Event()
            self.idle.append(event)
            await event.wait()

    async def results(self) -> AsyncGenerator[Any, None]:
        """The consumer side, in the stage's own generator."""
        while (slot := await self.next_done()) is not None:
            self.held -= 1
            if self.feeder is not None:
                self.feeder.set()
            if not slot.ok:
                raise slot.value
            yield slot.value


class concurrent_map(AbstractSegment[T, U], Generic[T, U]):
    """Apply an ``async`` function to items with up to ``limit`` calls at once.

    ::

        async def fetch(url: str) -> bytes: ...

        pipeline = urls() | concurrent_map(fetch, limit=50)                 # input order
        pipeline = urls() | concurrent_map(fetch, limit=50, ordered=False)  # completion order

    Bounds: at most ``limit`` calls run at once, in ``limit`` long-lived worker
    tasks; at most ``window`` items (default ``2 * limit``, at least
    ``limit``) are held by the stage at any time: running, finished but waiting
    for an earlier item (the reorder window, when ``ordered``), or ready for
    the consumer.  When the window is full the feeder stops reading upstream.

    Errors: the function's exception is raised to the consumer in the item's
    position (ordered) or when it happens (unordered), with its own type and a
    note naming this stage and the item.  An upstream error arrives after the
    items read before it.

    Metadata: ordered, it keeps its position; unordered, it is a barrier (it
    leaves after every item read before it, and items read after it wait
    until it has been queued).

    Keys: with ``key`` (a callable on the item, or a dotted field name),
    items of one key run one at a time, in arrival order, while items of
    different keys run concurrently (up to ``limit``).  ``ordered=True``
    still yields in global input order; ``ordered=False`` yields as calls
    finish, which keeps the input order within each key.  The items of a
    busy key wait inside the window, so one slow key holds back the others
    only once the window is full of its items (or, ordered, of items waiting
    behind its oldest one).  A failing key function fails that item.
    """

    def __init__(
        self,
        fn: Callable[[T], Awaitable[U]],
        limit: int = 16,
        *,
        ordered: bool = True,
        window: int | None = None,
        key: str | Callable[[T], Any] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(process_metadata=True)
        if limit < 1:
            raise ValueError("limit must be at least 1")
        window = 2 * limit if window is None else window
        if window < limit:
            raise ValueError(f"window ({window}) must be at least limit ({limit})")
        self.fn = fn
        self.limit = limit
        self.window = window
        self.ordered = ordered
        self.key = None if key is None else key_function(key)
        self.name = name or f"concurrent_map({getattr(fn, '__name__', type(fn).__name__)})"

    def _function(self) -> Callable[[Any], Awaitable[Any]]:
        return self.fn

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[U]:
        """Yield ``fn(item)`` for every item (see the class docs for order)."""
        state = _MapRun(self._function(), self.limit, self.window, self.ordered, self.label, self.key)
        state.tasks.start(state.feed, items, name=f"talkpipe feeder for {self.label}")
        try:
            async with aclosing(state.results()) as steps:
                async for value in steps:
                    yield value
        finally:
            state.stop()


class thread_map(concurrent_map[T, U]):
    """Apply a blocking (sync) function to items in worker threads, ``limit`` at once.

    ::

        def resize(path: str) -> bytes: ...   # CPU or blocking I/O

        pipeline = paths() | thread_map(resize, limit=4)

    Each call hops to a thread of anyio's pool through
    ``anyio.to_thread.run_sync`` with a ``CapacityLimiter(limit)`` private to
    the run (one hop per item: use it for calls that take far longer than a
    hop, ~150 µs).  Order, bounds, errors, metadata and ``key`` are those of
    :class:`concurrent_map`.  Cancelling the run waits for calls already in a
    thread to return (a thread cannot be interrupted), so no thread is left
    running the function after ``stream()`` exits.
    """

    def __init__(
        self,
        fn: Callable[[T], U],
        limit: int = 4,
        *,
        ordered: bool = True,
        window: int | None = None,
        key: str | Callable[[T], Any] | None = None,
        name: str | None = None,
    ) -> None:
        self.sync_fn = fn
        super().__init__(
            self._placeholder,
            limit,
            ordered=ordered,
            window=window,
            key=key,
            name=name or f"thread_map({getattr(fn, '__name__', type(fn).__name__)})",
        )

    async def _placeholder(self, item: T) -> U:  # pragma: no cover - replaced per run
        raise AssertionError("thread_map uses a per-run function")

    def _function(self) -> Callable[[Any], Awaitable[Any]]:
        from .._core._wakeup import signal_wakeup  # loaded with the first thread_map run

        limiter = anyio.CapacityLimiter(self.limit)
        fn = self.sync_fn
        wakeup = signal_wakeup()

        async def call(item: Any) -> Any:
            with wakeup:  # Ctrl-C wakes the loop even if the kernel hands it to this thread
                return await anyio.to_thread.run_sync(fn, item, limiter=limiter)

        return call


class buffer(PassThrough[T], Generic[T]):
    """Prefetch: let the upstream run ahead of the consumer by exactly ``n`` items.

    ::

        pipeline = slow_source() | buffer(100) | slow_consumer_stage()

    The upstream is read in one feeder task.  The exact bound: when the
    consumer has asked for ``k`` items (``k`` calls of ``__anext__``), the
    upstream has produced at most ``k + n`` items.  So ``buffer(0)`` is strict
    pull: an item is computed only once it is asked for (a plain memory stream
    of size 0 would still compute one item ahead; a credit counter enforces the
    bound here).  At most ``n + 1`` items wait in the stage.  Metadata counts
    as an item and passes through in order.  An upstream error is raised after
    the items produced before it, with its own type.
    """

    def __init__(self, n: int, *, name: str | None = None) -> None:
        super().__init__(process_metadata=True)
        if n < 0:
            raise ValueError("n must be at least 0")
        self.n = n
        self.name = name or f"buffer({n})"

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """Yield the upstream items unchanged, read ahead by at most ``n``."""
        channel = Channel(self.n + 1)
        credit = _Credit(self.n)
        tasks = TaskScopes()
        tasks.start(produce_into, channel, credit.feed, items, name=f"talkpipe feeder for {self.label}")
        local: deque[Any] = deque()
        try:
            while True:
                credit.grant()
                if not local:
                    try:
                        local.extend(await channel.get_batch(self.n + 1))
                    except anyio.EndOfStream:
                        return
                yield local.popleft()
        finally:
            channel.abort()
            credit.stop()
            tasks.cancel()


class _Credit:
    """How many items the feeder of :class:`buffer` may still pull."""

    def __init__(self, n: int) -> None:
        self.allowed = n
        self.pulled = 0
        self.waiting: anyio.Event | None = None

    def grant(self) -> None:
        self.allowed += 1
        if self.waiting is not None:
            self.waiting.set()

    def stop(self) -> None:
        """The consumer is gone: the feeder returns instead of waiting for credit."""
        self.allowed = -1
        if self.waiting is not None:
            self.waiting.set()

    async def feed(self, channel: Channel, items: AsyncIterator[Any]) -> None:
        iterator = items.__aiter__()
        while True:
            while self.pulled >= self.allowed:
                if self.allowed < 0:
                    return
                self.waiting = anyio.Event()
                await self.waiting.wait()
                self.waiting = None
            try:
                item = await iterator.__anext__()
            except StopAsyncIteration:
                break
            self.pulled += 1
            await channel.put(item)
