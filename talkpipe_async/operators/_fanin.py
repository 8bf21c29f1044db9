"""Fan-in shared by the combine and fan-out families: bounded lanes read fairly by one consumer.

``merge``, ``zip_streams`` and ``fork`` hand items from their producer tasks
to the consumer through a :class:`FanIn`; the helpers here also turn what a
user passes in (a source, a segment, a pipeline) into the pipeline each
family runs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator
from typing import Any

import anyio

from .._core._channel import ChannelClosed
from .._core._pipeline import Pipeline
from .._core._segment import AbstractSource

__all__ = ["DEFAULT_LANE", "FanIn", "as_branch", "as_source_pipeline"]

DEFAULT_LANE = 64


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
