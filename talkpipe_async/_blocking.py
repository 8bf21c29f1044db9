"""Run any pipeline from sync code: ``run_blocking``, ``iter_blocking``, ``as_function_blocking``.

The async side runs on one shared private event-loop thread per backend (an
task group on an event loop, see :mod:`talkpipe_async._loops`), created on first
use, reused by every call from every thread, stopped at interpreter exit, and
started afresh in a forked child.

Each run is a *driver* task on that loop.  It consumes the pipeline with
``async with pipeline.stream(...)`` and *pumps* the items into a batch list
that it hands, whole, to a queue shared with the sync consumer:

* a batch is handed over when it holds ``batch`` items, when it has waited
  ``latency`` seconds, or at once when the consumer is idle (the consumer asks
  the loop for what it holds whenever it runs out), so the pump drains what
  is ready and a lone item from a slow source never waits for a batch to
  fill;
* the queue holds at most ``buffer`` items (handed over or pending): the
  pump then stops pulling the pipeline until the consumer takes a batch, so
  a stalled consumer stops the pipeline after at most
  ``buffer + batch - 1`` items beyond the one it is processing
  (:attr:`BlockingStream.max_ahead`);
* one lock acquisition and at most one cross-thread wake-up happen per
  batch, never per item.

Leaving the ``with`` block (normally, by ``break``, or by an exception such as
``KeyboardInterrupt``) stops the driver and waits until the run has closed
every stage before it returns.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from itertools import chain
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
import anyio.from_thread

from . import _loops
from ._core._errors import TalkpipeAsyncError
from ._core._pipeline import BLOCKING_BATCH, BLOCKING_BUFFER, BLOCKING_LATENCY
from ._loops import BACKENDS, LOOP_THREAD_PREFIX, loop_thread, shutdown
from ._loops import get_loop as _get_loop
from ._loops import on_loop_thread as _on_loop_thread

if TYPE_CHECKING:
    from ._core._pipeline import Pipeline

U = TypeVar("U")

__all__ = [
    "BACKENDS",
    "LOOP_THREAD_PREFIX",
    "DEFAULT_BATCH",
    "DEFAULT_BUFFER",
    "DEFAULT_LATENCY",
    "BlockingStream",
    "EventLoopRunningError",
    "as_function_blocking",
    "iter_blocking",
    "loop_thread",
    "run_blocking",
    "shutdown",
]

DEFAULT_BATCH = BLOCKING_BATCH
DEFAULT_BUFFER = BLOCKING_BUFFER
DEFAULT_LATENCY = BLOCKING_LATENCY
# The pump looks at the clock once per this many items of a filling batch (a power of 2).
TIME_CHECK_EVERY = 32
# How long a second Ctrl-C during closing still waits for the run to end.
CLOSE_GRACE = 10.0
# How soon the main thread sees a signal (Ctrl-C) that the kernel handed to another thread: Python runs handlers in
# the main thread only, and a main thread blocked in a lock wait is not woken by a signal delivered elsewhere.
SIGNAL_CHECK = 0.1


class EventLoopRunningError(RuntimeError, TalkpipeAsyncError):
    """A blocking call was made from one of the wrapper's own loop threads.

    Waiting there would deadlock (the run needs that loop); this happens when a
    sync stage running inline on the loop thread makes a nested blocking call.
    Use ``await pipeline.collect()`` or ``async with pipeline.stream() as
    items`` instead.  A thread running an event loop of its own (a notebook
    kernel, an application) may block: the run goes on the wrapper's loop
    thread, and only that caller's loop waits.
    """


class _End(Exception):
    """Internal: the consumer has taken every item."""


# ---------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------


class BlockingStream(Generic[U]):
    """One run of a pipeline consumed from sync code; a context manager.

    ``with pipeline.iter_blocking() as items: for x in items: ...``.  Items
    arrive in order; an exception from any stage is raised by the ``for``
    loop after the items that preceded it, with its original type and its
    ``talkpipe_context``.  Leaving the block closes the pipeline (every
    stage's ``finally`` has run) before the next statement.  An error that
    the consumer did not see (raised while closing, or after it stopped
    reading) is raised by the ``with`` statement unless another exception is
    already leaving it.

    ``batch``: most items per hand-over; ``buffer``: most items held for the
    consumer; ``latency``: most seconds an item waits in a batch that is
    filling while the consumer is busy (an idle consumer gets it at once).
    """

    def __init__(
        self,
        pipeline: Pipeline[Any, U],
        input: Iterable[Any] | None = None,
        *,
        metadata: bool = False,
        backend: str = "asyncio",
        batch: int = DEFAULT_BATCH,
        buffer: int = DEFAULT_BUFFER,
        latency: float = DEFAULT_LATENCY,
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        if buffer < batch:
            raise ValueError("buffer must be at least batch")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        self._pipeline = pipeline
        self._input = input
        self._metadata = metadata
        self.backend = backend
        self.batch = batch
        self.buffer = buffer
        self.latency = latency
        # Shared between the consumer thread and the loop, under _cond.
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[list[Any]] = deque()
        self._queued = 0
        self._sleeping = False
        self._finished = False
        self._error: BaseException | None = None
        self._room_wanted = False
        self._stop = False
        self._done = threading.Event()
        # Loop side only.
        self._pending: list[Any] = []
        self._limit = batch
        self._wanted = False
        self._first_at = 0.0
        self._scope: anyio.CancelScope | None = None
        self._room: anyio.Event | None = None
        # Consumer side only.
        self._state = "new"
        self._generation = _loops.generation
        self._call_soon: Callable[..., Any] | None = None
        self._loop: _loops.LoopThread | None = None

    @property
    def blocked(self) -> bool:
        """True while the pipeline is stopped because the consumer has not taken its items.

        It turns False as soon as the consumer takes a batch.
        """
        with self._cond:
            return self._room_wanted

    @property
    def max_ahead(self) -> int:
        """Most items the pipeline yields beyond the one the consumer is processing.

        ``buffer`` items held for the consumer plus the rest of the batch it
        is working through.  Stages with buffers of their own (thread stages,
        read-ahead operators) add theirs upstream.
        """
        return self.buffer + self.batch - 1

    # -- consumer side ------------------------------------------------------

    def __enter__(self) -> Iterator[U]:
        if self._state != "new":
            raise RuntimeError("a BlockingStream can be entered only once; call iter_blocking() again")
        if _on_loop_thread():
            raise EventLoopRunningError(
                "a blocking pipeline call was made from the talkpipe-async loop thread itself (a sync stage "
                "running inline?); it would wait for its own loop. Use `await pipeline.collect()` or "
                "`async with pipeline.stream() as items: async for x in items: ...` instead."
            )
        loop = self._loop = _get_loop(self.backend)
        self._generation = _loops.generation
        self._call_soon = loop.call_soon
        try:
            loop.start(self, self._drive, f"talkpipe blocking run of {self._pipeline!r}")
        except RuntimeError:
            self._state = "closed"
            raise
        self._state = "open"
        return chain.from_iterable(self._batches())  # no Python frame per item

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        error = self.close()
        if error is not None and exc is None:
            raise error

    def close(self) -> BaseException | None:
        """Stop the run and wait until every stage is closed.

        Returns the error the consumer has not seen, if any (``__exit__``
        raises it).  Safe to call more than once.
        """
        if self._state != "open":
            return None
        self._state = "closed"
        if self._generation != _loops.generation:  # the parent's run, inherited by fork(): never call its loop
            return None
        with self._cond:
            self._stop = True
            finished = self._finished
        if not finished:
            self._poke(self._on_close)
        if _on_loop_thread():  # e.g. the garbage collector ran us on the loop thread: never block it
            return None
        try:
            every = _signal_check()
            while not self._done.wait(every):
                pass  # woken to run a pending signal handler
        except BaseException:  # e.g. a second Ctrl-C: still let the run end, within a bound
            self._done.wait(CLOSE_GRACE)
            raise
        with self._cond:
            self._queue.clear()
            self._queued = 0
            error, self._error = self._error, None
        return error

    def _batches(self) -> Iterator[list[U]]:
        take = self._take
        try:
            while True:
                try:
                    yield take()
                except _End:
                    return
        finally:
            self.close()

    def _take(self) -> list[Any]:
        if self._generation != _loops.generation:
            raise RuntimeError("this run was started by the parent process before fork(); start a new one here")
        cond = self._cond
        with cond:
            while not self._queue:
                if self._finished:
                    error, self._error = self._error, None
                    if error is not None:
                        raise error
                    raise _End
                self._sleeping = True
                try:
                    if self._poke(self._on_want):
                        every = _signal_check()
                        while not cond.wait(every) and not (self._queue or self._finished):
                            pass  # woken to run a pending signal handler (raises KeyboardInterrupt)
                finally:
                    self._sleeping = False
            batch = self._queue.popleft()
            self._queued -= len(batch)
            room, self._room_wanted = self._room_wanted, False
        if room:
            self._poke(self._on_room)
        return batch

    def _poke(self, callback: Callable[[], None]) -> bool:
        """Run *callback* on the loop soon, without waiting; False if the loop is gone."""
        assert self._call_soon is not None
        try:
            self._call_soon(callback)
        except Exception:  # the loop has stopped (shutdown or interpreter exit)
            with self._cond:
                if not self._finished:
                    self._finished = True
                    self._error = RuntimeError("the talkpipe-async loop thread has stopped")
            self._done.set()
            return False
        return True

    def loop_gone(self) -> None:
        """The loop thread ended before this run did (it never started, or was cut off)."""
        self._finish(RuntimeError("the talkpipe-async loop thread stopped before this run ended"))

    # -- loop side ----------------------------------------------------------

    async def _drive(self) -> None:
        error: BaseException | None = None
        try:
            if self._stop:
                return
            with anyio.CancelScope() as scope:
                self._scope = scope
                async with self._pipeline.stream(self._input, metadata=self._metadata) as items:
                    await self._pump(items)
        except anyio.get_cancelled_exc_class():
            error = RuntimeError("the talkpipe-async loop thread was shut down while this run was going")
            raise
        except BaseException as exc:  # handed to the consumer, after the items before it
            error = exc
        finally:
            self._scope = None
            self._finish(error)

    def _finish(self, error: BaseException | None) -> None:
        with self._cond:
            if not self._finished:
                if self._pending and not self._stop:
                    self._queue.append(self._pending)
                    self._queued += len(self._pending)
                self._pending = []
                self._finished = True
                self._error = error
            self._cond.notify_all()
        self._done.set()
        if self._loop is not None:
            self._loop.finished(self)

    async def _pump(self, items: AsyncIterator[Any]) -> None:
        clock = time.monotonic
        latency = self.latency
        async for item in items:
            pending = self._pending
            pending.append(item)
            n = len(pending)
            if n < self._limit and not self._wanted:
                if n == 1:
                    self._first_at = clock()
                    continue
                if n & (TIME_CHECK_EVERY - 1) or clock() - self._first_at < latency:
                    continue
            self._flush_now()
            if self._limit <= 0 and not await self._wait_room():
                return
            if self._stop:
                return

    def _flush_now(self) -> None:
        """Hand the pending batch to the consumer (loop thread)."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        self._wanted = False
        with self._cond:
            self._queue.append(pending)
            self._queued += len(pending)
            self._limit = min(self.batch, self.buffer - self._queued)
            if self._sleeping:
                self._cond.notify()

    async def _wait_room(self) -> bool:
        """Wait until the consumer has taken a batch; False if the run is stopping."""
        while True:
            event = self._room = anyio.Event()
            with self._cond:
                room = self.buffer - self._queued
                if room > 0 or self._stop:
                    self._limit = min(self.batch, room)
                    self._room = None
                    return not self._stop
                self._room_wanted = True
            try:
                await event.wait()
            finally:
                self._room = None

    def _on_want(self) -> None:
        """The consumer has run out (loop thread): hand over what is pending, or the next item."""
        if self._pending:
            self._flush_now()
        else:
            self._wanted = True

    def _on_room(self) -> None:
        if self._room is not None:
            self._room.set()

    def _on_close(self) -> None:
        if self._room is not None:  # the pump is waiting for the consumer: end it gently
            self._room.set()
        elif self._scope is not None:  # the pump is waiting for the pipeline: cancel it
            self._scope.cancel()
        # otherwise the driver has not started yet and sees _stop


def _signal_check() -> float | None:
    """How long one wait of the caller's thread may block: in slices in the main thread (see SIGNAL_CHECK)."""
    return SIGNAL_CHECK if threading.current_thread() is threading.main_thread() else None


# ---------------------------------------------------------------------------
# The public functions (Pipeline's methods delegate here)
# ---------------------------------------------------------------------------


def iter_blocking(
    pipeline: Pipeline[Any, U],
    input: Iterable[Any] | None = None,
    *,
    metadata: bool = False,
    backend: str = "asyncio",
    batch: int = DEFAULT_BATCH,
    buffer: int = DEFAULT_BUFFER,
    latency: float = DEFAULT_LATENCY,
) -> BlockingStream[U]:
    """Stream a pipeline's items into sync code: ``with iter_blocking(p) as items: for x in items``.

    See :class:`BlockingStream` for the guarantees and the buffer bounds.
    *input* (for a pipeline that starts with a segment) is iterated on the
    loop thread: it must not block.
    """
    return BlockingStream(
        pipeline, input, metadata=metadata, backend=backend, batch=batch, buffer=buffer, latency=latency
    )


def run_blocking(
    pipeline: Pipeline[Any, U],
    input: Iterable[Any] | None = None,
    *,
    metadata: bool = False,
    backend: str = "asyncio",
) -> list[U]:
    """Run a pipeline to the end from sync code and return its items as a list."""
    with BlockingStream(pipeline, input, metadata=metadata, backend=backend) as items:
        return list(items)


def as_function_blocking(
    pipeline: Pipeline[Any, Any],
    *,
    single_in: bool = False,
    single_out: bool = False,
    backend: str = "asyncio",
) -> Callable[..., Any]:
    """A sync callable that runs the pipeline once per call (blocking ``as_function``).

    ``single_in``: the argument is one item rather than an iterable.
    ``single_out``: return the only output item (``ValueError`` unless there
    is exactly one) rather than a list.
    """

    def call(item: Any = None) -> Any:
        given = None if pipeline.has_source else ([item] if single_in else item)
        results = run_blocking(pipeline, given, backend=backend)
        if not single_out:
            return results
        if len(results) != 1:
            raise ValueError(f"expected exactly 1 output item, got {len(results)}")
        return results[0]

    return call
