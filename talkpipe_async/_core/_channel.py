"""A bounded in-loop channel that moves items in batches between tasks.

Both ends live on the event loop; a worker thread reaches them through
``anyio.from_thread.run``.  Producers wait while the channel holds
``capacity`` items; the consumer takes everything available (up to a limit)
in one call, so a crossing costs one wake-up per batch, not per item.  Errors
travel in order: ``close(error)`` makes the consumer raise that exception
after the items sent before it.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import anyio

from ._errors import TalkpipeAsyncError

__all__ = ["Channel", "ChannelClosed"]


class ChannelClosed(TalkpipeAsyncError):
    """Raised to a producer whose consumer went away (the run is ending)."""


class Channel:
    """Bounded multi-producer, single-consumer channel of items."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._items: deque[Any] = deque()
        self._data = anyio.Event()
        self._space = anyio.Event()
        self._ended = False
        self._error: BaseException | None = None
        self._aborted = False
        self.consumer_waiting = False
        self.high_water = 0
        self.blocked_puts = 0
        self._blocked: anyio.Event | None = None

    def __len__(self) -> int:
        return len(self._items)

    def _wake_consumer(self) -> None:
        if self.consumer_waiting:
            self._data.set()

    async def _wait_space(self) -> None:
        while len(self._items) >= self.capacity and not self._aborted:
            self.blocked_puts += 1
            if self._blocked is not None:
                self._blocked.set()
            event = self._space
            await event.wait()
        if self._aborted:
            raise ChannelClosed("the consumer of this channel has gone")

    async def put(self, item: Any) -> None:
        """Add one item, waiting while the channel is full."""
        if len(self._items) >= self.capacity or self._aborted:
            await self._wait_space()
        self._items.append(item)
        if len(self._items) > self.high_water:
            self.high_water = len(self._items)
        self._wake_consumer()

    async def put_batch(self, items: list[Any]) -> None:
        """Add a batch of items, waiting first until the channel has room."""
        if len(self._items) >= self.capacity or self._aborted:
            await self._wait_space()
        self._items.extend(items)
        if len(self._items) > self.high_water:
            self.high_water = len(self._items)
        self._wake_consumer()

    async def wait_blocked_put(self) -> None:
        """Wait until a producer has waited for room (``blocked_puts`` > 0): the channel was full."""
        while not self.blocked_puts:
            self._blocked = anyio.Event()
            await self._blocked.wait()

    def close(self, error: BaseException | None = None) -> None:
        """End the stream; the consumer raises *error* (if any) after the items."""
        self._ended = True
        self._error = error
        self._data.set()

    def abort(self) -> None:
        """The consumer is gone: wake waiting producers with ChannelClosed."""
        self._aborted = True
        self._items.clear()
        self._space.set()
        self._data.set()

    async def get_batch(self, limit: int) -> list[Any]:
        """Return 1 to *limit* items; raise ``anyio.EndOfStream`` at the end."""
        while not self._items:
            if self._aborted:
                raise ChannelClosed("the channel was closed by its consumer")
            if self._ended:
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
                raise anyio.EndOfStream
            self._data = anyio.Event()
            self.consumer_waiting = True
            try:
                await self._data.wait()
            finally:
                self.consumer_waiting = False
        items = self._items
        if len(items) <= limit:
            batch = list(items)
            items.clear()
        else:
            batch = [items.popleft() for _ in range(limit)]
        self._space.set()
        self._space = anyio.Event()
        return batch
