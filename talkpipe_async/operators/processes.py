"""Process map: a sync function applied to items in a pool of worker processes.

For CPU-bound work that threads cannot speed up (the GIL).  Items cross the
process boundary in batches (one pickle round trip per batch, not per item).
The upstream is read in one long-lived feeder task, as in the other
concurrency operators; ``2 * workers`` long-lived dispatcher tasks each send
one batch at a time to a :class:`concurrent.futures.ProcessPoolExecutor` and
wait for its result in a worker thread (``anyio.to_thread``), so the event
loop never blocks on the pool.  Closing, cancelling or failing the run
terminates and joins the worker processes before ``stream()`` returns.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import traceback
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import aclosing, nullcontext
from multiprocessing.context import BaseContext
from typing import Any, Generic, TypeVar

import anyio
import anyio.to_thread

from .._core._closing import CLEANUP_TIMEOUT
from .._core._errors import add_note, attach_context
from .._core._metadata import Metadata
from .._core._segment import AbstractSegment
from .concurrency import ResultWindow, TaskScopes

__all__ = ["process_map"]

T = TypeVar("T")
U = TypeVar("U")

DEFAULT_BATCH = 16


def _run_batch(fn: Callable[[Any], Any], items: list[Any]) -> tuple[list[Any], BaseException | None, str]:
    """In a worker process: ``fn`` over *items*, stopping at the first error.

    Returns the results before the error, the error (``None`` if all went
    well) and the worker's traceback text.  An error that cannot be pickled
    is replaced by a ``RuntimeError`` carrying its type and message.
    """
    results: list[Any] = []
    for item in items:
        try:
            results.append(fn(item))
        except Exception as exc:
            text = traceback.format_exc()
            try:
                pickle.dumps(exc)
            except Exception:
                exc = RuntimeError(f"{type(exc).__qualname__}: {exc} (the error could not be pickled)")
            return results, exc, text
    return results, None, ""


def _own_copy(exc: Exception) -> Exception:
    """A fresh error of the same type for one batch (the pool sets ONE broken-pool error on every future)."""
    try:
        fresh = type(exc)(*exc.args)
    except Exception:  # a constructor with other arguments: keep the shared one
        return exc
    fresh.__cause__ = exc
    return fresh


def _culprit(items: list[Any]) -> Any:
    """The first item of a failed batch that cannot be pickled, else its first item."""
    for item in items:
        try:
            pickle.dumps(item)
        except Exception:
            return item
    return items[0]


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class _Batch:
    """Items sent to a worker process together, and what came back."""

    __slots__ = ("done", "error", "items", "values")

    def __init__(self, items: list[Any], done: bool = False, values: list[Any] | None = None) -> None:
        self.items = items
        self.done = done
        self.values: list[Any] = values if values is not None else []
        self.error: BaseException | None = None


class _PoolRun(ResultWindow):
    """Per-run state of a :class:`process_map`."""

    def __init__(self, stage: process_map[Any, Any]) -> None:
        self.fn = stage.fn
        self.batch_size = stage.batch_size
        self.max_pending = stage.max_pending
        self.ordered = stage.ordered
        self.label = stage.label
        self.pool = ProcessPoolExecutor(stage.workers, mp_context=stage.context())
        self.limiter = anyio.CapacityLimiter(2 * stage.workers)
        self.tasks = TaskScopes()
        self.inq: deque[Any] = deque()  # read from upstream, not yet sent to a worker
        self.out: deque[_Batch] = deque()  # ordered: every batch in input order; unordered: done batches
        self.held = 0  # read from upstream, not yet handed downstream (<= max_pending)
        self.busy = 0  # batches sent to a worker, not back yet
        self.waiting: list[anyio.Event] = []  # dispatchers waiting for input or for a barrier
        self.consumer: anyio.Event | None = None
        self.feeder: anyio.Event | None = None
        self.ended = False
        self.stopping = False
        self.end_error: BaseException | None = None

    def start(self, items: AsyncIterator[Any], dispatchers: int) -> None:
        self.tasks.start(self.feed, items, name=f"talkpipe feeder for {self.label}")
        for _ in range(dispatchers):
            self.tasks.start(self.dispatch, name=f"talkpipe dispatcher for {self.label}")

    def stop(self) -> None:
        """The consumer is gone: terminate and join the worker processes, then stop the tasks."""
        self.stopping = True
        self.inq.clear()
        self.wake_dispatchers()
        self.wake(self.feeder)
        procs = list((getattr(self.pool, "_processes", None) or {}).values())
        manager = getattr(self.pool, "_executor_manager_thread", None)  # shutdown() forgets it
        self.pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:  # a worker busy with a long call is not waited for
            proc.terminate()
        for proc in procs:
            proc.join(CLEANUP_TIMEOUT)
            if proc.is_alive():
                proc.kill()
                proc.join()
        if manager is not None:  # it notices the dead workers at once and fails the futures still out
            manager.join(CLEANUP_TIMEOUT)
            if not manager.is_alive():
                _forget_wakeup(manager)
        self.tasks.cancel()

    @staticmethod
    def wake(event: anyio.Event | None) -> None:
        if event is not None:
            event.set()

    def wake_dispatchers(self) -> None:
        waiting, self.waiting = self.waiting, []
        for event in waiting:
            event.set()

    async def feed(self, items: AsyncIterator[Any]) -> None:
        """The feeder task: the only reader of the upstream."""
        try:
            iterator = items.__aiter__()
            while True:
                while self.held >= self.max_pending:
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
                self.inq.append(item)
                self.wake_dispatchers()
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:  # delivered after the items read before it
            self.end_error = exc
        self.ended = True
        self.wake_dispatchers()
        self.wake(self.consumer)

    def take(self) -> _Batch | None:
        """The next batch to send, or ``None`` when the next item was metadata (delivered here)."""
        inq = self.inq
        if isinstance(inq[0], Metadata):
            batch = _Batch([], False, [inq.popleft()])
            if self.ordered:
                self.out.append(batch)
            self.deliver(batch)
            return None
        items: list[Any] = []
        while inq and len(items) < self.batch_size and not isinstance(inq[0], Metadata):
            items.append(inq.popleft())
        batch = _Batch(items)
        if self.ordered:
            self.out.append(batch)
        self.busy += 1
        return batch

    def deliver(self, batch: _Batch) -> None:
        batch.done = True
        if not self.ordered:
            self.out.append(batch)
        self.wake(self.consumer)

    async def dispatch(self) -> None:
        """A dispatcher task: sends one batch at a time to the pool and waits for its result."""
        from .._core._wakeup import signal_wakeup  # loaded with the first process_map run

        with signal_wakeup():  # Ctrl-C wakes the loop even if the kernel hands it to the waiting thread
            await self._dispatch()

    async def _dispatch(self) -> None:
        while not self.stopping:
            if not self.inq:
                if self.ended:
                    return
                await self.idle()
                continue
            if not self.ordered and self.busy and isinstance(self.inq[0], Metadata):
                await self.idle()  # unordered, metadata is a barrier: woken when a batch comes back
                continue
            batch = self.take()
            if batch is None:
                continue
            try:
                future = self.pool.submit(_run_batch, self.fn, batch.items)
                values, error, text = await anyio.to_thread.run_sync(future.result, limiter=self.limiter)
                if error is not None:
                    add_note(error, f"traceback in the worker process:\n{text.rstrip()}")
                    attach_context(error, self.label, batch.items[len(values)])
            except Exception as exc:  # the pool broke or the batch could not be sent
                if self.stopping:
                    return
                values, error = [], _own_copy(exc)
                attach_context(error, self.label, _culprit(batch.items))
                add_note(error, f"talkpipe_async: the batch held {len(batch.items)} items")
            batch.values, batch.error = values, error
            self.busy -= 1
            self.deliver(batch)
            self.wake_dispatchers()

    async def idle(self) -> None:
        event = anyio.Event()
        self.waiting.append(event)
        await event.wait()

    def finished(self) -> bool:
        return super().finished() and not self.inq

    async def results(self) -> AsyncGenerator[Any, None]:
        """The consumer side, in the stage's own generator."""
        while (batch := await self.next_done()) is not None:
            for value in batch.values:
                self.held -= 1
                self.wake(self.feeder)
                yield value
            if batch.error is not None:
                self.held -= 1
                error, batch.error = batch.error, None
                raise error


class process_map(AbstractSegment[T, U], Generic[T, U]):
    """Apply a sync, CPU-bound function to items in a pool of worker processes.

    ::

        def crunch(n: int) -> int: ...   # a module-level function (it is pickled)

        pipeline = numbers() | process_map(crunch, workers=4)                 # input order
        pipeline = numbers() | process_map(crunch, workers=4, ordered=False)  # completion order

    Each run starts its own :class:`concurrent.futures.ProcessPoolExecutor`
    of ``workers`` processes (default: the CPUs this process may use) with
    the start method ``mp_context`` (``"spawn"``, ``"forkserver"``,
    ``"fork"``, a multiprocessing context, or ``None`` for Python's default).
    ``fn`` and the items must be picklable: ``fn`` a module-level function
    (checked when the stage is built: a ``TypeError`` names the stage).
    Python's default start method on Linux before 3.14 is ``"fork"``, which
    forks a process that has threads (the event loop's worker threads); if
    ``fn`` or a library it uses may deadlock after a fork, pass
    ``mp_context="forkserver"`` or ``"spawn"``.

    Batches: items go to the workers in batches of up to ``batch_size``,
    made of what has been read and not sent yet (a slow upstream sends small
    batches, so a lone item never waits for a batch to fill).  Up to
    ``2 * workers`` batches are out at once, so each worker has its next
    batch queued.

    Bound: at most ``max_pending`` items (default ``2 * workers *
    batch_size``) are held by the stage at any time: read from the upstream
    and not yet handed to the consumer (waiting to be sent, in a worker,
    waiting for an earlier batch when ``ordered``, or ready).  When the
    consumer has received ``k`` items, the upstream has produced at most
    ``k - 1 + max_pending`` (the item just handed over was one of those
    held), and at most ``k + max_pending`` while the consumer waits for item
    ``k + 1``.  Metadata counts as an item; ordered, it keeps its
    position; unordered, it is a barrier (it leaves after every item read
    before it).

    Errors: an exception raised by ``fn`` reaches the consumer in the item's
    position (ordered) or when its batch returns (unordered), with its own
    type, a note naming this stage and the item, and a note with the
    traceback text from the worker process.  The results of the items of its
    batch before it are delivered first.  A worker process that dies raises
    ``BrokenProcessPool`` naming the first item of its batch; an item that
    cannot be pickled raises the pickling error naming that item.  An upstream
    error arrives after the items read before it.

    Cleanup: when the run ends, is cancelled or fails, the worker processes
    are terminated (a call in progress is interrupted) and joined before
    ``stream()`` returns; no worker process outlives the run.
    """

    def __init__(
        self,
        fn: Callable[[T], U],
        *,
        workers: int | None = None,
        ordered: bool = True,
        batch_size: int = DEFAULT_BATCH,
        max_pending: int | None = None,
        mp_context: str | BaseContext | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(process_metadata=True)
        workers = _default_workers() if workers is None else workers
        if workers < 1:
            raise ValueError("workers must be at least 1")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        max_pending = 2 * workers * batch_size if max_pending is None else max_pending
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.fn = fn
        self.workers = workers
        self.ordered = ordered
        self.batch_size = batch_size
        self.max_pending = max_pending
        self.mp_context = mp_context
        self.context()  # an unknown start method fails here, not in the middle of a run
        self.name = name or f"process_map({getattr(fn, '__qualname__', type(fn).__name__)})"
        try:
            pickle.dumps(fn)
        except Exception as exc:
            raise TypeError(
                f"{self.name}: the function must be picklable (a module-level function, not a lambda or a "
                f"nested function) to be sent to worker processes: {exc}"
            ) from exc

    def context(self) -> BaseContext | None:
        """The multiprocessing context the pool starts its workers with."""
        if isinstance(self.mp_context, str):
            return multiprocessing.get_context(self.mp_context)
        return self.mp_context

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[U]:
        """Yield ``fn(item)`` for every item (see the class docs for order)."""
        state = _PoolRun(self)
        try:
            state.start(items, 2 * self.workers)
            async with aclosing(state.results()) as steps:
                async for value in steps:
                    yield value
        finally:
            state.stop()


def _forget_wakeup(manager: object) -> None:
    """Drop a finished pool's entry from concurrent.futures' exit hook.

    At interpreter exit that hook wakes every pool it still lists; for a pool whose workers were terminated, the
    wake-up pipe may be closing in another thread at that moment, which prints "Exception ignored ... Bad file
    descriptor".  The pool is finished, so there is nothing left to wake.
    """
    from concurrent.futures import process

    wakeups = getattr(process, "_threads_wakeups", None)
    if wakeups is not None:
        with getattr(process, "_global_shutdown_lock", nullcontext()):
            wakeups.pop(manager, None)
