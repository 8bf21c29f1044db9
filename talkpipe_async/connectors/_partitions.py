"""Partitioning by key: which partition a key goes to, and which worker owns which partition.

A sink given ``key=`` sends each item to partition ``crc32(key bytes) %
partitions`` (stable across processes and machines, unlike Python's salted
``hash()``).  A partitioned source owns a partition through a lease at the
broker: a record naming the owner that expires unless the owner renews it.
Every worker also renews a membership record; the live members, sorted by
name, share the partitions (partition ``i`` belongs to member ``i % m``).  A
worker that owns a partition meant for another finishes what it holds of it,
then releases the lease; a worker acquires a free partition meant for it and
first takes over the entries left pending in it (in order), then reads new
ones.  One partition is read by one worker at a time, strictly in order.
A worker whose stream has ended (stopped, or idle) drops its membership at
once, so the others count it out and wait for its partitions, and releases
each partition as soon as nothing of it is in progress.
"""

from __future__ import annotations

import logging
import zlib
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import anyio

__all__ = ["Coordinator", "KeyOf", "LeaseTable", "Partition", "assign", "key_function", "partition_for"]

logger = logging.getLogger("talkpipe_async.connectors")

KeyOf = str | Callable[[Any], Any]
"""A field name of the item (a dict) or a function of the item that returns its key."""


def key_bytes(key: Any) -> bytes:
    """The bytes hashed for *key*: bytes as they are, text as UTF-8, anything else as ``str(key)``."""
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    return str(key).encode()


def partition_for(key: Any, partitions: int) -> int:
    """The partition of *key*: ``zlib.crc32(key bytes) % partitions`` (the same in every process)."""
    return zlib.crc32(key_bytes(key)) % partitions


def key_function(key: KeyOf) -> Callable[[Any], Any]:
    """A function item -> key: *key* itself when callable, otherwise ``item[key]``."""
    if callable(key):
        return key
    field = key

    def by_field(item: Any) -> Any:
        return item[field]

    return by_field


def check_partitions(partitions: int) -> None:
    """Refuse a partition count below 1."""
    if partitions < 1:
        raise ValueError("partitions must be at least 1")


def assign(members: Iterable[str], partitions: int, me: str) -> set[int]:
    """The partitions meant for *me*: partition ``i`` goes to the ``i % m``-th live member by name."""
    ordered = sorted(set(members))
    if me not in ordered:
        ordered = sorted([*ordered, me])
    m = len(ordered)
    mine = ordered.index(me)
    return {i for i in range(partitions) if i % m == mine}


class LeaseTable(ABC):
    """Ownership records at the broker: a membership record per worker and a lease per partition."""

    @abstractmethod
    async def heartbeat(self, owned: list[int], member: bool = True) -> tuple[list[str], set[int]]:
        """Renew the leases of *owned* (and this worker's membership unless *member* is False); return (live
        members, leases still mine)."""

    @abstractmethod
    async def acquire(self, partition: int) -> bool:
        """Take the lease of *partition* if no one holds it; True when taken."""

    @abstractmethod
    async def release(self, partition: int) -> None:
        """Drop the lease of *partition* if this worker holds it."""

    @abstractmethod
    async def leave(self) -> None:
        """Drop the membership record (the others rebalance at once)."""


@dataclass
class Partition:
    """What a worker knows about one partition it owns."""

    backlog: bool = True
    """Entries left pending in it (by an earlier owner, or nacked) are taken over before new ones are read."""
    releasing: bool = False
    """Meant for another worker now: nothing more is read; released once nothing of it is in progress."""
    paused_until: float = 0.0
    """Nothing of it is read before then (a nacked entry's ``delay``; JetStream: redeliveries falling due)."""


class Coordinator:
    """Keeps this worker's share of the partitions: renews, acquires and releases leases (see the module doc).

    ``take_over``: a partition just acquired starts with a backlog (pending
    entries to take over before new ones); False when the broker redelivers
    them first by itself (JetStream).
    """

    def __init__(self, table: LeaseTable, partitions: int, me: str, label: str, interval: float,
                 on_change: Callable[[list[int]], None] | None = None, take_over: bool = True,
                 on_acquired: Callable[[int, Partition], Awaitable[None]] | None = None) -> None:
        self.table = table
        self.on_acquired = on_acquired
        self.take_over = take_over
        self.on_change = on_change
        self.partitions = partitions
        self.me = me
        self.label = label
        self.interval = interval
        self.owned: dict[int, Partition] = {}
        self.next_round = 0.0
        self.lock = anyio.Lock()
        self.acquired = 0
        self.released = 0
        self.lost = 0
        self.members: list[str] = []
        self.wanted: set[int] = set()
        self.retiring = False
        self.left = False

    def readable(self) -> list[int]:
        """Owned partitions from which new entries may be read (no backlog, not being released, not paused)."""
        now = anyio.current_time()
        return [p for p, part in self.owned.items()
                if not part.backlog and not part.releasing and part.paused_until <= now]

    async def step(self, busy: Callable[[int], bool],
                   before_release: Callable[[list[int]], Awaitable[None]]) -> None:
        """One round: heartbeat and renew, drop lost leases, release what is meant for others, acquire the rest.

        ``busy(p)``: something of partition *p* is still in progress here;
        ``before_release(partitions)``: awaited before their leases are
        dropped (sends the pending acknowledgements, lets go of the reads).
        """
        async with self.lock:
            self.next_round = anyio.current_time() + self.interval
            if self.retiring and not self.left:
                await self.table.leave()
                self.left = True
                logger.info("%s: reads no more: left the members, releasing each partition once done", self.label)
            members, still = await self.table.heartbeat(sorted(self.owned), member=not self.retiring)
            for p in [p for p in self.owned if p not in still]:
                del self.owned[p]
                self.lost += 1
                logger.warning("%s: lost the lease of partition %d (not renewed in time)", self.label, p)
            if sorted(members) != self.members:
                self.members = sorted(members)
                logger.info("%s: members now %s", self.label, ", ".join(self.members))
            wanted = self.wanted = set() if self.retiring else assign(members, self.partitions, self.me)
            for p, part in self.owned.items():
                part.releasing = p not in wanted
            done = [p for p, part in self.owned.items() if part.releasing and not busy(p)]
            if done:
                await before_release(done)
                for p in done:
                    await self.table.release(p)
                    del self.owned[p]
                    self.released += 1
                    logger.info("%s: released partition %d", self.label, p)
            for p in sorted(wanted - set(self.owned)):
                if await self.table.acquire(p):
                    part = self.owned[p] = Partition(backlog=self.take_over)
                    if self.on_acquired is not None:
                        await self.on_acquired(p, part)
                    self.acquired += 1
                    logger.info("%s: acquired partition %d", self.label, p)
            self.changed()

    def retire(self) -> None:
        """This worker reads no more: from the next round it is no member, and releases what it is done with."""
        self.retiring = True

    def awaiting(self) -> bool:
        """Work meant for this worker is on its way: a partition it should own is held by another (finishing
        it, or dead until its lease lapses), or one it owns waits for a backlog or redeliveries falling due."""
        if self.retiring:
            return False
        if self.wanted - set(self.owned):
            return True
        now = anyio.current_time()
        return any(part.backlog or part.paused_until > now for part in self.owned.values())

    def changed(self) -> None:
        """Tell the owner which partitions are held now."""
        if self.on_change is not None:
            self.on_change(sorted(self.owned))

    async def leave(self, before_release: Callable[[list[int]], Awaitable[None]], within: float) -> None:
        """Release every lease and the membership (the run is ending).

        The close that calls this has a deadline, so the leases the others
        wait for go first: *before_release* (sending the last
        acknowledgements) gets at most *within* seconds; past that the
        partitions are released anyway (what was not acknowledged is
        delivered again, as it would be once the lease lapsed), then the
        membership is dropped, and last any lease not recorded as owned.
        """
        async with self.lock:
            owned = sorted(self.owned)
            with anyio.move_on_after(within) as scope:
                await before_release(owned)
            if scope.cancelled_caught:
                logger.warning("%s: the last acknowledgements were not confirmed within %.1f s; releasing the "
                               "partitions anyway (what they covered may be delivered again)", self.label, within)
            for p in owned:
                await self.table.release(p)
                del self.owned[p]
                self.released += 1
                self.changed()
            if not self.left:
                await self.table.leave()
                self.left = True
            # A round cancelled while its acquire was on the wire may hold a lease it never recorded.  A release
            # deletes a lease only if it is this worker's.
            for p in range(self.partitions):
                if p not in owned:
                    await self.table.release(p)
            logger.info("%s: left (partitions released, membership dropped)", self.label)
