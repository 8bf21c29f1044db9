"""Sync generators run in worker threads, fed and drained in batches.

A thread stage has three parts, all owned by the run's task group:

* a feeder task that pulls the async upstream and puts items into the
  *inbox* channel (bounded: the upstream runs ahead by at most ``batch``
  items);
* a worker thread that runs the sync generator over an iterator that takes
  whole batches from the inbox, and hands its output back in batches to the
  *outbox* channel (bounded too, so a slow consumer stops the worker);
* the stage's async output, an async generator in the consumer's task that
  takes batches from the outbox.

The worker sends what it holds before it waits for more input, as soon as
the consumer is idle, and at least every ``latency`` seconds, so a lone item
never waits for a batch to fill.  Exceptions travel in order through the
channels with their original type; nothing is swallowed in the thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:  # loaded by the first thread stage (_run_worker): most programs never start one
    import anyio.from_thread
    import anyio.to_thread

from ._channel import Channel, ChannelClosed
from ._metadata import Metadata
from ._metadata_path import MetaCounter
from ._thread_errors import ThreadWatch

__all__ = ["ThreadStage"]

DEFAULT_BATCH = 256
DEFAULT_LATENCY = 0.005


class _Outbox:
    """The worker's side of the output channel: batches with a latency bound.

    The pending batch is shared with the consumer under a lock: a consumer
    that finds the channel empty takes what is pending itself (``take``), so an
    item never waits for the worker's next item while the worker is blocked
    inside the sync code; if nothing is pending it leaves a wish (``wanted``)
    that makes the worker hand over its next item at once.
    """

    def __init__(self, channel: Channel, batch: int, latency: float) -> None:
        self.channel = channel
        self.batch = batch
        self.latency = latency
        self.pending: list[Any] = []
        self.first_at = 0.0
        self.wanted = False
        self.lock = threading.Lock()
        self.token: Any = None  # the loop's token: threads the sync code starts reach the loop with it

    def add(self, item: Any) -> None:
        with self.lock:
            pending = self.pending
            if not pending:
                self.first_at = time.monotonic()
            pending.append(item)
            if (
                len(pending) < self.batch
                and not self.wanted
                and time.monotonic() - self.first_at < self.latency
            ):
                return
            self.pending, self.wanted = [], False
        anyio.from_thread.run(self.channel.put_batch, pending, token=self.token)

    def flush(self) -> None:
        with self.lock:
            batch, self.pending = self.pending, []
        if batch:  # handed over in order: the worker adds nothing new until this put has returned
            anyio.from_thread.run(self.channel.put_batch, batch, token=self.token)

    def take(self) -> list[Any]:
        """Consumer side (the loop): what is pending now, or a wish for the next item."""
        with self.lock:
            batch, self.pending = self.pending, []
            self.wanted = not batch
        return batch


class ThreadStage:
    """Run a sync source or segment in a worker thread (see module docs)."""

    def __init__(
        self,
        label: str,
        make: Callable[[Iterable[Any] | None], Iterator[Any]],
        upstream: AsyncIterator[Any] | None,
        *,
        pass_metadata: bool,
        forward_metadata: bool,
        counter: MetaCounter,
        on_frame: Callable[[Any], None],
        batch: int = DEFAULT_BATCH,
        latency: float | None = None,
    ) -> None:
        self.label = label
        self._make = make
        self._upstream = upstream
        self._pass_metadata = pass_metadata
        self._forward_metadata = forward_metadata
        self._counter = counter
        self._on_frame = on_frame
        self._batch = batch
        self.inbox = Channel(batch) if upstream is not None else None
        self.outbox = Channel(2 * batch)
        # The default is read when the stage is made, not when the module is: a test may set it.
        self._out = _Outbox(self.outbox, batch, DEFAULT_LATENCY if latency is None else latency)
        # Set when the run closes (interrupted, cancelled, consumer gone): no new item enters the worker.
        self._stopped = False

    def start(self, tg: Any) -> None:
        """Start the feeder task (for a segment) and the worker thread (``tg``: the run, or a task group)."""
        if self._upstream is not None:
            tg.start_soon(self._feed, name=f"talkpipe feeder for {self.label}")
        tg.start_soon(self._run_worker, name=f"talkpipe worker for {self.label}")

    def buffer_fill(self) -> tuple[int, int]:
        """Items held between the upstream and the consumer, and the bound on them."""
        inbox = len(self.inbox) if self.inbox is not None else 0
        capacity = (self.inbox.capacity if self.inbox is not None else 0) + self.outbox.capacity
        return inbox + len(self.outbox), capacity

    def abort(self) -> None:
        """Wake and stop the feeder and the worker (the run is closing)."""
        self._stopped = True
        if self.inbox is not None:
            self.inbox.abort()
        self.outbox.abort()

    async def _feed(self) -> None:
        assert self.inbox is not None and self._upstream is not None
        inbox = self.inbox
        try:
            async for item in self._upstream:
                await inbox.put(item)
        except ChannelClosed:
            return
        except anyio.get_cancelled_exc_class():
            self._stopped = True  # the worker takes no new item once the run is cancelled
            inbox.close()
            raise
        except Exception as exc:  # handed to the worker, in order
            inbox.close(exc)
        except BaseException as exc:
            # KeyboardInterrupt or SystemExit landed in the upstream's code on the loop's thread: the run stops now,
            # not once the worker has finished an item that may block for long, and no new item enters the worker.
            self._stopped = True
            inbox.close(exc)
            raise
        else:
            inbox.close()

    async def _run_worker(self) -> None:
        import anyio.from_thread  # the worker thread uses it
        import anyio.lowlevel
        import anyio.to_thread

        from ._wakeup import signal_wakeup  # loaded with the first thread stage

        self._out.token = anyio.lowlevel.current_token()
        with signal_wakeup():  # Ctrl-C wakes the loop even if the kernel hands it to the worker
            await anyio.to_thread.run_sync(self._watched_work)

    def _inputs(self, out: _Outbox) -> Iterator[Any]:
        assert self.inbox is not None
        inbox = self.inbox
        while True:
            out.flush()
            try:
                batch = anyio.from_thread.run(inbox.get_batch, self._batch, token=out.token)
            except anyio.EndOfStream:
                return
            for item in batch:
                if not self._pass_metadata and isinstance(item, Metadata):
                    if self._forward_metadata:
                        out.add(item)
                        out.flush()
                    else:
                        self._counter.dropped += 1
                else:
                    if self._stopped:
                        raise ChannelClosed(f"{self.label}: the run is closing; no new item enters the stage")
                    yield item

    def _watched_work(self) -> None:
        watch = ThreadWatch(self._thread_failed)
        try:
            self._work(watch)
        finally:
            watch.close()

    def _thread_failed(self, exc: BaseException) -> None:
        """A thread the sync code started died: the consumer raises its error."""
        try:
            anyio.from_thread.run_sync(self.outbox.close, exc, token=self._out.token)
        except BaseException:  # the loop is gone: the worker raises it when it ends
            pass

    def _work(self, watch: ThreadWatch) -> None:
        out = self._out
        gen = None
        error: BaseException | None = None
        try:
            gen = self._make(self._inputs(out) if self.inbox is not None else None)
            self._on_frame(gen)
            for item in gen:
                out.add(item)
                if self._stopped:  # a source produces no new item once the run is closing
                    raise ChannelClosed(f"{self.label}: the run is closing")
        except ChannelClosed:
            return
        except BaseException as exc:  # travels to the consumer, in order
            error = exc
        finally:
            if gen is not None and hasattr(gen, "close"):
                gen.close()
        error = error or watch.error
        try:
            out.flush()
            anyio.from_thread.run_sync(self.outbox.close, error)
        except BaseException:  # the consumer is gone: the run is closing
            if error is not None and not isinstance(error, ChannelClosed):
                raise error from None

    async def output(self) -> AsyncIterator[Any]:
        """The stage's items, in the consumer's task."""
        outbox = self.outbox
        take = self._out.take
        try:
            while True:
                if not len(outbox):
                    batch = take()  # the worker may be blocked with items in hand
                    if batch:
                        for item in batch:
                            yield item
                        continue
                try:
                    batch = await outbox.get_batch(1 << 30)
                except anyio.EndOfStream:
                    return
                for item in batch:
                    yield item
        finally:
            self.abort()
