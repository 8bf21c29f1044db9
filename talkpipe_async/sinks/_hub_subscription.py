"""The subscriber side of :class:`~talkpipe_async.sinks.hub.Hub`: its buffer, counters and error.

A :class:`Subscription` is one subscriber's bounded buffer.  Only the hub's
own task puts items into it (in publish order); only the subscriber takes
them out, so each subscriber sees an in-order subsequence of what the hub
published, each item at most once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import anyio

from .._core._counters import Counters
from .._core._errors import TalkpipeAsyncError
from .._core._metadata import Metadata

if TYPE_CHECKING:
    from .hub import Hub

T = TypeVar("T")

__all__ = ["HubStats", "SlowPolicy", "SubscriberDisconnected", "SubscriberStats", "Subscription"]

SlowPolicy = Literal["block", "drop_oldest", "disconnect"]
"""What a hub does when a subscriber's buffer is full: wait for it, drop its oldest item, or disconnect it."""

POLICIES = ("block", "drop_oldest", "disconnect")


class SubscriberDisconnected(TalkpipeAsyncError):
    """A hub ended a subscriber's iteration: it was too slow (``reason="slow"``) or the hub closed (``"closed"``).

    ``subscriber``: its name; ``delivered``: items its iteration returned
    before the end; ``discarded``: items that were in its buffer and that it
    will not get (its buffer is freed at once).
    """

    def __init__(self, subscriber: str, reason: Literal["slow", "closed"], *, buffer: int, delivered: int,
                 discarded: int) -> None:
        if reason == "slow":
            why = f"too slow: its buffer of {buffer} items was full (policy 'disconnect')"
        else:
            why = "the hub closed"
        super().__init__(
            f"subscriber {subscriber!r} disconnected: {why}; {delivered} items delivered, {discarded} discarded"
        )
        self.subscriber = subscriber
        self.reason = reason
        self.buffer = buffer
        self.delivered = delivered
        self.discarded = discarded


@dataclass(slots=True)
class SubscriberStats(Counters):
    """One subscriber's counters (``as_dict()`` adds ``queued``, the items in its buffer now).

    ``received``: items the hub put into its buffer (replayed ones
    included); ``replayed``: of those, items from the replay history;
    ``delivered``: items its iteration returned; ``dropped``: items the
    ``drop_oldest`` policy discarded; ``discarded``: items still in its buffer
    when it left or was disconnected; ``high_water``: the fullest its buffer
    has been.  Always ``received == delivered + dropped + discarded + queued``.
    ``state``: ``"active"``, ``"ended"`` (the upstream ended), ``"failed"``
    (the upstream failed), ``"disconnected"``, or ``"left"``; ``reason``: why
    it was disconnected (``"slow"``, ``"closed"``), else None.
    """

    name: str = ""
    policy: str = "block"
    buffer: int = 0
    received: int = 0
    replayed: int = 0
    delivered: int = 0
    dropped: int = 0
    discarded: int = 0
    high_water: int = 0
    state: str = "active"
    reason: str | None = None

    @property
    def queued(self) -> int:
        """Items in the buffer now."""
        return self.received - self.delivered - self.dropped - self.discarded

    def as_dict(self) -> dict[str, Any]:
        """The counters as a plain ``dict``, with ``queued``."""
        out = Counters.as_dict(self)
        out["queued"] = self.queued
        return out


@dataclass(slots=True)
class HubStats(Counters):
    """A hub's counters, over its whole life (every upstream run, every subscriber).

    ``published``: items taken from the upstream and offered to the
    subscribers (metadata included); ``subscribers``: subscribers attached
    now; ``peak_subscribers``: the most at once; ``joined``, ``left``,
    ``disconnected``: subscribers that joined, left while attached, and
    were disconnected (slow, or the hub closed); ``delivered``, ``dropped``: summed over every
    subscriber; ``high_water``: the fullest any subscriber's buffer has been;
    ``blocked``: times the hub waited for a full ``block`` subscriber;
    ``upstream_runs``: times the upstream was started; ``upstream_running``:
    whether it runs now (a level, 0 or 1); ``upstream_errors``: runs that
    ended with an error; ``last_error``: the latest one's repr.
    """

    published: int = 0
    subscribers: int = 0
    peak_subscribers: int = 0
    joined: int = 0
    left: int = 0
    disconnected: int = 0
    delivered: int = 0
    dropped: int = 0
    high_water: int = 0
    blocked: int = 0
    upstream_runs: int = 0
    upstream_running: int = 0
    upstream_errors: int = 0
    last_error: str | None = None


class Subscription(Generic[T]):
    """One subscriber of a hub: ``async for item in subscription`` (see :meth:`Hub.subscribe`).

    ``stats`` (:class:`SubscriberStats`) counts what it received, got, and
    lost.  Iteration ends when the upstream ends, raises the upstream's error
    when it fails, and raises :class:`SubscriberDisconnected` when the hub
    disconnects it or closes (at once: its buffer is freed); the end and the
    upstream's error come after the items already in its buffer.
    """

    __slots__ = ("_data", "_done", "_error", "_error_tb", "_hub", "_items", "_space",
                 "capacity", "metadata", "name", "policy", "stats")

    def __init__(self, hub: Hub[Any], name: str, capacity: int, policy: SlowPolicy, metadata: bool,
                 stats: SubscriberStats) -> None:
        self._hub = hub
        self.name = name
        self.capacity = capacity
        self.policy = policy
        self.metadata = metadata
        self.stats = stats
        stats.name, stats.policy, stats.buffer = name, policy, capacity
        self._items: deque[Any] = deque()
        self._done = False  # no more items will be put (ended, failed, disconnected or left)
        self._error: BaseException | None = None
        self._error_tb: TracebackType | None = None
        self._data: anyio.Event | None = None  # set when items arrive or the subscription ends
        self._space: anyio.Event | None = None  # set when the subscriber takes an item or leaves

    def __repr__(self) -> str:
        return f"<Subscription {self.name!r} {self.stats.state}>"

    # ------------------------------------------------------------ hub side (only the hub's task calls these)

    def put(self, item: Any) -> None:
        """Append *item* (there is room, or the caller made some)."""
        items = self._items
        items.append(item)
        self.stats.received += 1
        level = len(items)
        if level > self.stats.high_water:
            self.stats.high_water = level
            hub_stats = self._hub.stats
            if level > hub_stats.high_water:
                hub_stats.high_water = level
        if self._data is not None:
            self._data.set()

    def full(self) -> bool:
        """True when the buffer holds ``capacity`` items."""
        return len(self._items) >= self.capacity

    def drop_oldest(self) -> Any:
        """Discard the oldest data item (the oldest metadata if it holds nothing else); return it."""
        items = self._items
        for k, old in enumerate(items):
            if not isinstance(old, Metadata):
                del items[k]
                break
        else:
            old = items.popleft()
        self.stats.dropped += 1
        self._hub.stats.dropped += 1
        return old

    async def wait_room(self) -> None:
        """Wait until the subscriber took an item or is done."""
        while len(self._items) >= self.capacity and not self._done:
            self._space = anyio.Event()
            try:
                await self._space.wait()
            finally:
                self._space = None

    def finish(self, state: str, error: BaseException | None = None, *, free: bool = False) -> None:
        """No more items: end the iteration (with *error*, after the buffer unless *free*)."""
        if self._done:
            return
        self._done = True
        self._error = error
        self._error_tb = None if error is None else error.__traceback__
        self.stats.state = state
        if free:
            self._discard()
        if self._data is not None:
            self._data.set()
        if self._space is not None:
            self._space.set()

    def _discard(self) -> None:
        self.stats.discarded += len(self._items)
        self._items.clear()

    def leave(self) -> None:
        """The subscriber left its block: free the buffer at once."""
        self.finish("left")
        self._discard()

    # ------------------------------------------------------------ subscriber side

    def __aiter__(self) -> Subscription[T]:
        return self

    async def __anext__(self) -> T:
        items = self._items
        while not items:
            if self._done:
                error = self._error
                if error is None:
                    raise StopAsyncIteration
                raise error.with_traceback(self._error_tb)  # the same object for every subscriber: no growing traceback
            self._data = anyio.Event()
            try:
                await self._data.wait()
            finally:
                self._data = None
        item = items.popleft()
        self.stats.delivered += 1
        self._hub.stats.delivered += 1
        if self._space is not None:
            self._space.set()
        return item  # type: ignore[no-any-return]
