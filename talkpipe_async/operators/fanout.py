"""Fan-out operators: ``fork`` (broadcast or round-robin), ``broadcast`` and ``split``.

One feeder task reads the upstream into a bounded input queue per branch;
each branch runs with its own ``stream()`` in a task of the run, and the
branches' outputs come back through a fair :class:`~._fanin.FanIn`, as
``merge`` does.  Closing or cancelling the run stops the feeder and every
branch before ``stream()`` returns.
"""

from __future__ import annotations

import copy as _copy
import logging
import reprlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import anyio
import anyio.lowlevel

from .._core._channel import ChannelClosed
from .._core._counters import Counters
from .._core._metadata import Metadata
from .._core._pipeline import Pipeline
from .._core._segment import AbstractSegment
from ._fanin import FanIn, as_branch
from ._lanes import Broadcast, Inbox
from .concurrency import TaskScopes

T = TypeVar("T")
U = TypeVar("U")

__all__ = ["ForkStats", "broadcast", "fork", "split"]

# fork belongs to the combine family in the docs; its warnings keep going to that family's logger
logger = logging.getLogger("talkpipe_async.operators.combine")
_repr = reprlib.Repr()


@dataclass
class ForkStats(Counters):
    """Counters of a fork (accumulated over all its runs): per branch, items delivered and dropped.

    ``dropped[i]`` counts items the ``drop_oldest`` policy discarded because
    branch ``i`` was too slow; ``delivered[i]`` counts items handed to branch
    ``i``.
    """

    delivered: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)


class _BranchInput(Inbox):
    """A branch's bounded input queue (an :class:`Inbox` with fork's slow-branch policy and counters)."""

    def __init__(self, index: int, capacity: int, drop_oldest: bool, stats: ForkStats, label: str) -> None:
        super().__init__(capacity)
        self.index = index
        self.drop_oldest = drop_oldest
        self.stats = stats
        self.label = label
        self.owed: list[Broadcast] = []  # metadata handed to the branch and not yet passed on by it

    async def put(self, item: Any) -> bool:
        """Queue *item* for the branch, applying the slow-branch policy; False if the branch stopped reading."""
        items = self.items
        if self.drop_oldest and len(items) >= self.capacity:
            await anyio.lowlevel.checkpoint()  # one chance for the branch to catch up before a drop
        while len(items) >= self.capacity and not self.gone:
            if self.drop_oldest and not isinstance(item, Metadata) and self._drop():
                break
            self.space = anyio.Event()
            await self.space.wait()
        if self.gone:
            return False
        items.append(item)
        self.stats.delivered[self.index] += 1
        if self.data is not None:
            self.data.set()
        return True

    def put_metadata(self, sent: Broadcast) -> None:
        """Queue broadcast metadata at once (it never waits for room nor is dropped) and owe it downstream."""
        self.items.append(sent.item)
        self.owed.append(sent)
        if self.data is not None:
            self.data.set()

    def settle(self, item: Any) -> Broadcast | None:
        """The branch passed metadata *item* on: the broadcast it settles (the oldest owed one of that object), or
        None for metadata the branch made itself."""
        for k, owed in enumerate(self.owed):
            if owed.item is item:
                del self.owed[k]
                return owed
        return None

    def _drop(self) -> bool:
        for k, old in enumerate(self.items):
            if not isinstance(old, Metadata):
                del self.items[k]
                dropped = self.stats.dropped
                dropped[self.index] += 1
                if dropped[self.index] == 1:
                    logger.warning(
                        "%s: branch %d is too slow; dropping its oldest item %s (counted in ForkStats.dropped)",
                        self.label,
                        self.index,
                        _repr.repr(old),
                    )
                return True
        return False


CopyPolicy = Literal["none", "shallow", "deep"]


class fork(AbstractSegment[T, U], Generic[T, U]):
    """Send each item to several branches and merge the branches' outputs.

    ::

        pipeline = events() | fork(
            to_db(),                                 # each branch is a segment or a
            enrich() | to_search_index(),            # pipeline that starts with a segment
            buffer=32, policy="drop_oldest",
        ) | report()

    ``mode="broadcast"`` (default) gives every item to every branch;
    ``mode="round_robin"`` (see :class:`split`) gives each item to the next
    branch in turn.  Each branch runs with its own ``stream()`` in a task of
    the run; one feeder task reads the upstream.  The branches' outputs are
    merged fairly (as :class:`merge`), so their order across branches is not
    defined.

    Bounds: each branch's input queue holds at most ``buffer`` items, and each
    branch's output lane at most ``buffer`` items.  When a branch's input is
    full, ``policy="block"`` makes the feeder wait (the slowest branch sets
    the pace); ``policy="drop_oldest"`` discards that branch's oldest queued
    data item instead (after letting the branch run once), counts it in
    ``ForkStats.dropped`` and logs a warning the first time.  Metadata is
    never dropped.

    Copies: with ``copy="shallow"`` (default) or ``"deep"``, the first branch
    that takes an item gets the object itself and every other branch a
    ``copy.copy`` / ``copy.deepcopy`` of it, so a branch that mutates its item
    cannot change what another branch sees.  ``copy="none"`` hands every
    branch the same object: only for immutable items or read-only branches.

    Metadata goes to every branch (uncopied, queued at once: it does not count
    against ``buffer`` and is never dropped); an upstream metadata item leaves
    the fork once every branch that received it has passed it on (so a
    downstream Flush comes after the branches' own flushed output).  A branch
    that ends before passing on metadata it received releases it when it
    ends.  Metadata a branch creates passes through.

    Errors: a branch's error is raised downstream (with its type) and ends
    the fork; an upstream error is raised after every branch has finished the
    items it received.  A branch that ends early simply stops receiving
    items.  ``stats`` (a :class:`ForkStats`: the one given, else the fork's
    own) counts over all its runs; ``last_stats`` is the same object.
    """

    def __init__(
        self,
        *branches: AbstractSegment[T, U] | Pipeline[T, U],
        mode: Literal["broadcast", "round_robin"] = "broadcast",
        buffer: int = 16,
        policy: Literal["block", "drop_oldest"] = "block",
        copy: CopyPolicy = "shallow",
        stats: ForkStats | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(process_metadata=True)
        if not branches:
            raise ValueError("fork needs at least one branch")
        if mode not in ("broadcast", "round_robin"):
            raise ValueError(f"unknown mode {mode!r}")
        if policy not in ("block", "drop_oldest"):
            raise ValueError(f"unknown policy {policy!r}")
        if copy not in ("none", "shallow", "deep"):
            raise ValueError(f"unknown copy policy {copy!r}")
        if buffer < 1:
            raise ValueError("buffer must be at least 1")
        self.branches = [as_branch(b) for b in branches]
        self.mode = mode
        self.buffer = buffer
        self.policy = policy
        self.copy = copy
        self.stats = stats if stats is not None else ForkStats()
        self.last_stats: ForkStats | None = None
        self.name = name or ("fork" if mode == "broadcast" else "split")

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[U]:
        """Feed the branches and yield their merged outputs."""
        n = len(self.branches)
        stats = self.last_stats = self._run_stats()
        inputs = [_BranchInput(i, self.buffer, self.policy == "drop_oldest", stats, self.label) for i in range(n)]
        fan = FanIn(n, self.buffer)
        upstream_error: list[BaseException] = []
        tasks = TaskScopes()
        tasks.start(self._feed, items, inputs, upstream_error, name=f"talkpipe feeder for {self.label}")
        for i, branch in enumerate(self.branches):
            tasks.start(_run_branch, branch, inputs[i], fan, i, name=f"talkpipe branch {i} of {self.label}")
        try:
            async with aclosing(fan.fair()) as steps:
                async for item in steps:
                    if isinstance(item, Broadcast):
                        if not item.passed_by_one():
                            continue
                        item = item.item
                    yield item
            if upstream_error:
                raise upstream_error[0]
        finally:
            fan.abort()
            for branch_input in inputs:
                branch_input.leave()
            tasks.cancel()

    def _run_stats(self) -> ForkStats:
        """The counters of this run: a fresh ForkStats gets one slot per branch; a used one keeps counting."""
        n = len(self.branches)
        stats = self.stats if self.stats is not None else ForkStats()
        if len(stats.delivered) != n or len(stats.dropped) != n:
            stats.delivered, stats.dropped = [0] * n, [0] * n
        return stats

    def _copier(self) -> Callable[[Any], Any]:
        if self.copy == "shallow":
            return _copy.copy
        if self.copy == "deep":
            return _copy.deepcopy
        return lambda x: x

    async def _feed(
        self,
        items: AsyncIterator[Any],
        inputs: list[_BranchInput],
        upstream_error: list[BaseException],
    ) -> None:
        """Feeder task: metadata to every live branch, each data item as the mode says; then end every input.

        An upstream error is kept for the fork to raise once the branches
        have finished the items they received.
        """
        deliver = self._deliverer(inputs)
        try:
            async for item in items:
                live = [q for q in inputs if not q.gone]
                if not live:
                    break
                if isinstance(item, Metadata):
                    sent = Broadcast(item, len(live))
                    for q in live:  # no await in this loop: no branch can leave half-way
                        q.put_metadata(sent)
                else:
                    await deliver(item, live)
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:  # raised by the fork after the branches finish
            upstream_error.append(exc)
        for q in inputs:
            q.end()

    def _deliverer(self, inputs: list[_BranchInput]) -> Callable[[Any, list[_BranchInput]], Awaitable[None]]:
        """How the feeder hands a data item on: ``deliver(item, live_inputs)`` for this fork's mode."""
        if self.mode == "broadcast":
            copier = self._copier()

            async def to_every_branch(item: Any, live: list[_BranchInput]) -> None:
                """The item itself to the first live branch, a copy (per ``copy``) to each other one."""
                first = True
                for q in live:
                    await q.put(item if first else copier(item))
                    first = False

            return to_every_branch

        n = len(inputs)
        turn = 0

        async def to_next_branch(item: Any, live: list[_BranchInput]) -> None:
            """The item to the next branch in turn that is still reading."""
            nonlocal turn
            for _ in range(n):
                q = inputs[turn]
                turn = (turn + 1) % n
                if not q.gone:
                    await q.put(item)
                    break

        return to_next_branch


async def _run_branch(branch: Pipeline[Any, Any], inbox: _BranchInput, fan: FanIn, i: int) -> None:
    """Branch task: run *branch* over its input queue into output lane *i*."""
    try:
        async with branch.stream(inbox, metadata=True) as outputs:
            async for item in outputs:
                if isinstance(item, Metadata):
                    item = inbox.settle(item) or item
                await fan.put(i, item)
        inbox.leave()
        owed, inbox.owed = inbox.owed, []
        for sent in owed:  # metadata the branch received but never passed on
            await fan.put(i, sent)
    except ChannelClosed:
        return
    except anyio.get_cancelled_exc_class():
        raise
    except BaseException as exc:
        fan.close(i, exc)
        return
    finally:
        inbox.leave()
    fan.close(i)


def broadcast(*branches: AbstractSegment[T, U] | Pipeline[T, U], **options: Any) -> fork[T, U]:
    """``fork(*branches, mode="broadcast", ...)``: every item to every branch."""
    return fork(*branches, mode="broadcast", **options)


def split(*branches: AbstractSegment[T, U] | Pipeline[T, U], **options: Any) -> fork[T, U]:
    """``fork(*branches, mode="round_robin", ...)``: each item to the next branch in turn.

    ::

        pipeline = jobs() | split(worker(), worker(), worker()) | results()
    """
    return fork(*branches, mode="round_robin", **options)
