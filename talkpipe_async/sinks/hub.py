"""A live fan-out hub: one upstream pipeline, many subscribers that join and leave at any time.

::

    hub = Hub(ticker() | enrich(), buffer=64, policy="drop_oldest", replay=10)
    async with hub:                                   # the hub's task lives here (e.g. an app's lifespan)
        async with hub.subscribe() as items:          # from any task, at any time
            async for item in items:
                ...

One task of the hub pulls the upstream (a source, or a pipeline that starts
with one) and puts each item into the bounded buffer of every subscriber;
each subscriber reads its own buffer.  A full buffer is handled by the
subscriber's policy: ``"block"`` (the hub waits: backpressure to the
upstream), ``"drop_oldest"`` (counted), or ``"disconnect"`` (the subscriber's
iteration raises :class:`SubscriberDisconnected`).  See docs/hub.md.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

import anyio
import anyio.abc
import anyio.lowlevel

from .._core._metadata import Metadata
from .._core._pipeline import Pipeline
from .._core._segment import AbstractSource
from ..operators.combine import as_source_pipeline
from ._hub_subscription import (
    POLICIES,
    HubStats,
    SlowPolicy,
    SubscriberDisconnected,
    SubscriberStats,
    Subscription,
)

if TYPE_CHECKING:
    from typing_extensions import Never

T = TypeVar("T")

__all__ = [
    "Hub",
    "HubSource",
    "HubStats",
    "SlowPolicy",
    "SubscriberDisconnected",
    "SubscriberStats",
    "Subscription",
]

logger = logging.getLogger("talkpipe_async.sinks.hub")

#: items between two scheduling points of the hub's task when nothing else makes it wait
_YIELD_EVERY = 64


class Hub(Generic[T]):
    """One upstream, many subscribers: a live feed served to clients that come and go.

    ``buffer``: items each subscriber's buffer holds; ``policy``: what a full
    buffer means (``"block"``, ``"drop_oldest"``, ``"disconnect"``);
    ``replay``: the last N data items kept for subscribers that join later
    (each gets them first); all three can be overridden per subscriber.

    The hub's task lives in ``async with hub:`` (or ``await hub.run()`` in a
    task group of yours, e.g. an application's lifespan).  With
    ``keep_running=False`` (default) the upstream starts when the first
    subscriber joins and stops as soon as the last one leaves (and starts
    again, afresh, with the next one); with ``keep_running=True`` it starts
    with the hub and runs until it ends or the hub closes, subscribers or not.

    The upstream's end ends every subscriber's iteration (after its buffer);
    its error is raised to every subscriber (the same exception object); with
    ``keep_running=True`` it is also raised by ``run()`` or on leaving
    ``async with hub:``.  Closing the hub ends every subscriber at once with
    :class:`SubscriberDisconnected` (``reason="closed"``; the items left in its
    buffer are discarded and counted).  Metadata items
    (``Flush`` ...) go to every subscriber that asked for metadata and count
    against its buffer like data.  Every subscriber gets the same item object:
    treat items as read-only.  ``stats`` is a :class:`HubStats`.
    """

    def __init__(
        self,
        upstream: AbstractSource[T] | Pipeline[Never, T],
        *,
        buffer: int = 16,
        policy: SlowPolicy = "block",
        replay: int = 0,
        keep_running: bool = False,
        name: str | None = None,
        stats: HubStats | None = None,
    ) -> None:
        _check(buffer, policy, replay)
        self.upstream = as_source_pipeline(upstream)
        self.buffer = buffer
        self.policy: SlowPolicy = policy
        self.replay = replay
        self.keep_running = keep_running
        self.name = name or "hub"
        self.stats = stats if stats is not None else HubStats()
        #: the upstream's error that ended a ``keep_running`` hub (raised by ``run()`` / on leaving the block)
        self.error: BaseException | None = None
        self._history: deque[Any] = deque(maxlen=replay)
        self._subs: dict[int, Subscription[Any]] = {}
        self._numbers = itertools.count(1)
        self._hosted = False
        self._finished = False  # a keep_running upstream ended: later subscribers get the replay, then the end
        self._scope: anyio.CancelScope | None = None  # the running upstream's
        self._demand: anyio.Event | None = None
        self._changed: anyio.Event | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._warned_drop = False

    def __repr__(self) -> str:
        return f"<Hub {self.name!r} of {self.upstream!r}>"

    # ---------------------------------------------------------------- hosting

    async def __aenter__(self) -> Hub[T]:
        if self._hosted:
            raise RuntimeError(f"{self!r} is already running")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        try:
            await tg.start(self._host, name=f"talkpipe hub {self.name}")
        except BaseException as exc:
            tg.cancel_scope.cancel()
            await tg.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        tg, self._tg = self._tg, None
        assert tg is not None
        tg.cancel_scope.cancel()
        await tg.__aexit__(None, None, None)
        if exc is None and self.error is not None:
            raise self.error

    async def _host(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            await self.run(task_status=task_status)
        except Exception as exc:  # kept in self.error, raised on leaving the block
            self.error = exc

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Host the hub in this task: until cancelled, or (``keep_running``) until the upstream ends.

        ``tg.start_soon(hub.run)`` or ``await tg.start(hub.run)`` (which
        returns once subscribers can join).  With ``keep_running=True`` the
        upstream's error is raised here.  When it returns, the hub is closed:
        subscribers still attached end with :class:`SubscriberDisconnected`.
        """
        if self._hosted:
            raise RuntimeError(f"{self!r} is already running")
        self._hosted, self._finished, self.error = True, False, None
        task_status.started()
        try:
            if self.keep_running:
                error = await self._run_upstream()
                self._finished = True
                if error is not None:
                    self.error = error
                    raise error
            else:
                while True:
                    await self._wait_demand()
                    await self._run_upstream()
        finally:
            self._hosted = False
            self._close_all()

    async def _wait_demand(self) -> None:
        while not self._subs:
            self._demand = anyio.Event()
            try:
                await self._demand.wait()
            finally:
                self._demand = None

    async def _run_upstream(self) -> BaseException | None:
        """One run of the upstream; return its error (None when it ended or was stopped)."""
        stats = self.stats
        scope = self._scope = anyio.CancelScope()
        stats.upstream_runs += 1
        stats.upstream_running = 1
        self._notify()
        error: BaseException | None = None
        ended = False
        try:
            with scope:
                async with self.upstream.stream(metadata=True) as items:
                    async for item in items:
                        if scope.cancel_called:  # stopping (the last subscriber left): publish nothing more
                            await anyio.lowlevel.checkpoint()  # where the stop lands, even if the upstream never waits
                        else:
                            await self._publish(item)
                ended = True
        except Exception as exc:  # every subscriber gets it
            error = exc
            stats.upstream_errors += 1
            stats.last_error = repr(exc)
            logger.warning("%r: the upstream failed: %r", self, exc)
        finally:
            self._scope = None
            stats.upstream_running = 0
            self._notify()
        if ended or error is not None:
            self._end_all(error)
        return error

    # ---------------------------------------------------------------- publishing

    async def _publish(self, item: Any) -> None:
        self.stats.published += 1
        meta = isinstance(item, Metadata)
        if not meta and self.replay:
            self._history.append(item)
        full: list[Subscription[Any]] | None = None
        for sub in self._subs.values():  # no await in this loop: nobody joins or leaves half-way
            if meta and not sub.metadata:
                continue
            if sub.full():
                if full is None:
                    full = []
                full.append(sub)
            else:
                sub.put(item)
        if full is not None:
            await anyio.lowlevel.checkpoint()  # one chance for full subscribers to catch up before the policy
            await self._place(item, full)
        self._notify()
        if not self.stats.published % _YIELD_EVERY:
            await anyio.lowlevel.checkpoint()  # an upstream that never waits must not hold the loop

    async def _place(self, item: Any, waiting: list[Subscription[Any]]) -> None:
        """Put *item* into the subscribers whose buffers were full, applying each one's policy, in order.

        A run is stopped half-way only when its last subscriber has left, so
        nothing here is left for the next run.
        """
        for sub in waiting:
            if not sub._done:
                if sub.full() and sub.policy == "block":
                    self.stats.blocked += 1
                    self._notify()
                    await sub.wait_room()
                if sub._done:
                    pass
                elif not sub.full():
                    sub.put(item)
                elif sub.policy == "drop_oldest":
                    self._drop(sub)
                    sub.put(item)
                else:
                    self._disconnect(sub)

    def _drop(self, sub: Subscription[Any]) -> None:
        sub.drop_oldest()
        if not self._warned_drop:
            self._warned_drop = True
            logger.warning("%r: subscriber %r is too slow; dropping its oldest items (counted in its stats and "
                           "HubStats.dropped; this is logged once per hub)", self, sub.name)

    def _disconnect(self, sub: Subscription[Any]) -> None:
        stats = sub.stats
        error = SubscriberDisconnected(sub.name, "slow", buffer=sub.capacity, delivered=stats.delivered,
                                       discarded=stats.queued)
        stats.reason = "slow"
        self._detach(sub)
        self.stats.disconnected += 1
        sub.finish("disconnected", error, free=True)
        logger.info("%r: %s", self, error)

    # ---------------------------------------------------------------- subscribers

    @overload
    def subscribe(
        self, *, name: str | None = ..., buffer: int | None = ..., policy: SlowPolicy | None = ...,
        replay: int | None = ..., metadata: Literal[False] = ..., stats: SubscriberStats | None = ...,
    ) -> _Subscribe[T]: ...
    @overload
    def subscribe(
        self, *, name: str | None = ..., buffer: int | None = ..., policy: SlowPolicy | None = ...,
        replay: int | None = ..., metadata: bool, stats: SubscriberStats | None = ...,
    ) -> _Subscribe[T | Metadata]: ...
    def subscribe(
        self,
        *,
        name: str | None = None,
        buffer: int | None = None,
        policy: SlowPolicy | None = None,
        replay: int | None = None,
        metadata: bool = False,
        stats: SubscriberStats | None = None,
    ) -> _Subscribe[Any]:
        """Join: ``async with hub.subscribe() as items: async for item in items``.

        ``buffer``, ``policy`` and ``replay`` default to the hub's.  The
        subscriber gets the last ``replay`` data items first, then every item
        published after it joined (minus what its policy drops); metadata only
        with ``metadata=True`` (like ``stream()``).  Leaving the block (end,
        ``break``, error, cancellation) frees its buffer at once.  ``stats``:
        a :class:`SubscriberStats` to count into (else a new one, at
        ``items.stats``).
        """
        buffer = self.buffer if buffer is None else buffer
        policy = self.policy if policy is None else policy
        replay = self.replay if replay is None else replay
        _check(buffer, policy, replay)
        if replay > self.replay:
            raise ValueError(f"replay={replay} is more than the hub keeps (replay={self.replay})")
        name = name or f"{self.name}-subscriber-{next(self._numbers)}"
        return _Subscribe(self, name, buffer, policy, replay, metadata, stats or SubscriberStats())

    def source(
        self,
        *,
        name: str | None = None,
        buffer: int | None = None,
        policy: SlowPolicy | None = None,
        replay: int | None = None,
        stats: SubscriberStats | None = None,
    ) -> HubSource[T]:
        """A source stage that subscribes when its pipeline runs: ``streaming_response(hub.source(), format="sse")``.

        Each run is one subscriber (options as :meth:`subscribe`; metadata
        flows into the pipeline), which leaves when the run ends.
        """
        options = {"name": name, "buffer": buffer, "policy": policy, "replay": replay, "stats": stats}
        return HubSource(self, options)

    def _join(self, sub: Subscription[Any], replay: int) -> None:
        if not self._hosted and not self._finished:
            raise RuntimeError(
                f"{self!r} is not running: open it with `async with hub:` or run `hub.run()` in a task group"
            )
        if replay:
            for item in list(self._history)[-replay:]:
                sub.put(item)
            sub.stats.replayed += min(replay, len(self._history))
        stats = self.stats
        stats.joined += 1
        if self._finished:  # a keep_running upstream ended: the replay, then the end
            sub.finish("failed" if self.error is not None else "ended", self.error)
            self._notify()
            return
        self._subs[id(sub)] = sub
        stats.subscribers = len(self._subs)
        stats.peak_subscribers = max(stats.peak_subscribers, stats.subscribers)
        if self._demand is not None:
            self._demand.set()
        self._notify()

    def _detach(self, sub: Subscription[Any]) -> bool:
        if self._subs.pop(id(sub), None) is None:
            return False
        self.stats.subscribers = len(self._subs)
        if not self._subs and not self.keep_running and self._scope is not None:
            self._scope.cancel()  # the last one left: stop the upstream
        self._notify()
        return True

    def _leave(self, sub: Subscription[Any]) -> None:
        if self._detach(sub):
            self.stats.left += 1
        sub.leave()

    def _end_all(self, error: BaseException | None) -> None:
        subs = list(self._subs.values())
        self._subs.clear()
        self.stats.subscribers = 0
        for sub in subs:
            sub.finish("failed" if error is not None else "ended", error)
        self._notify()

    def _close_all(self) -> None:
        subs = list(self._subs.values())
        self._subs.clear()
        stats = self.stats
        stats.subscribers = 0
        for sub in subs:
            sub.stats.reason = "closed"
            error = SubscriberDisconnected(sub.name, "closed", buffer=sub.capacity, delivered=sub.stats.delivered,
                                           discarded=sub.stats.queued)
            stats.disconnected += 1
            sub.finish("disconnected", error, free=True)
        self._notify()

    def subscriber_stats(self) -> list[SubscriberStats]:
        """The counters of the subscribers attached now."""
        return [sub.stats for sub in self._subs.values()]

    # ---------------------------------------------------------------- waiting on the hub

    def _notify(self) -> None:
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set()

    async def wait_until(self, predicate: Callable[[HubStats], bool]) -> None:
        """Wait until ``predicate(hub.stats)`` holds (checked after each join, leave, item and upstream change).

        ``await hub.wait_until(lambda s: s.subscribers == 3)``; ``lambda s:
        not s.upstream_running`` waits until the upstream has stopped and its
        stages have closed.
        """
        while not predicate(self.stats):
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()


class _Subscribe(Generic[T]):
    """``async with hub.subscribe() as items``: join on entry, leave on exit."""

    def __init__(self, hub: Hub[Any], name: str, buffer: int, policy: SlowPolicy, replay: int, metadata: bool,
                 stats: SubscriberStats) -> None:
        self._hub = hub
        self._replay = replay
        self._sub: Subscription[T] = Subscription(hub, name, buffer, policy, metadata, stats)

    async def __aenter__(self) -> Subscription[T]:
        self._hub._join(self._sub, self._replay)
        return self._sub

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._hub._leave(self._sub)


class HubSource(AbstractSource[T], Generic[T]):
    """A source that yields one subscriber's items of a :class:`Hub` (see :meth:`Hub.source`)."""

    def __init__(self, hub: Hub[T], options: dict[str, Any]) -> None:
        super().__init__()
        self.hub = hub
        self.options = options
        self.name = f"{hub.name}.source"

    async def generate(self) -> AsyncIterator[Any]:
        """Subscribe, yield the subscriber's items (metadata too), leave when the run ends."""
        async with self.hub.subscribe(metadata=True, **self.options) as items:
            async for item in items:
                yield item


def _check(buffer: int, policy: str, replay: int) -> None:
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r} (one of {', '.join(POLICIES)})")
    if buffer < 1:
        raise ValueError("buffer must be at least 1")
    if replay < 0 or replay > buffer:
        raise ValueError(f"replay must be between 0 and buffer ({buffer}), not {replay}")
