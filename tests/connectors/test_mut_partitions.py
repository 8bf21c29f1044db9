"""Partitioning by key and the lease coordinator (``talkpipe_async.connectors._partitions``), without a broker.

The key hash and the share of each worker are pure functions; the :class:`Coordinator` is driven over a lease
table kept in memory that several workers share (the broker's side: a lease per partition, a membership record per
worker), on virtual clocks.  What is pinned: which partition a key goes to, which partitions a worker is meant to
own, the order of what a round does at the broker (leave, heartbeat, releases, acquisitions), the counters, the
partitions told to the owner after every round, what may be read, when work is still on its way, and the log lines
an operator reads.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any

import anyio
import pytest

from talkpipe_async.connectors._partitions import (
    Coordinator,
    LeaseTable,
    Partition,
    assign,
    check_partitions,
    key_bytes,
    key_function,
    partition_for,
)
from talkpipe_async.testing import virtual_backend

pytestmark = pytest.mark.anyio

LOGGER = "talkpipe_async.connectors"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """The coordinator is plain anyio: both virtual clocks."""
    return virtual_backend(request.param)


# ----------------------------------------------------------------------------------------------- keys and shares


def test_key_bytes_of_bytes_text_and_other_values() -> None:
    """Bytes are hashed as they are (even when not UTF-8), text as UTF-8, anything else as its ``str``."""
    assert key_bytes(b"\xff\x00k") == b"\xff\x00k"
    assert key_bytes("clé") == "clé".encode()
    assert key_bytes(42) == b"42"
    assert key_bytes(None) == b"None"
    assert partition_for(b"\xff\x00k", 7) == zlib.crc32(b"\xff\x00k") % 7
    assert partition_for("clé-9", 13) == zlib.crc32("clé-9".encode()) % 13
    assert partition_for(("a", 1), 6) == zlib.crc32(b"('a', 1)") % 6


def test_every_key_goes_to_a_partition_in_range_the_same_as_crc32() -> None:
    """``crc32 % partitions`` over many keys and counts: always in ``range(partitions)``, one partition for one."""
    for n in (1, 2, 3, 8, 31):
        got = [partition_for(f"user-{i}", n) for i in range(200)]
        assert got == [zlib.crc32(f"user-{i}".encode()) % n for i in range(200)]
        assert set(got) == set(range(n))
    assert {partition_for(k, 1) for k in ("a", b"b", 3)} == {0}


def test_key_function_reads_a_field_or_calls_the_function() -> None:
    """A field name reads ``item[field]``; a callable is the key function itself."""
    by_field = key_function("k")
    assert by_field({"k": "v", "x": 1}) == "v"
    with pytest.raises(KeyError):
        by_field({"x": 1})

    def of(item: Any) -> Any:
        return item["x"] * 2

    assert key_function(of) is of


def test_partition_count_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match=r"^partitions must be at least 1$"):
        check_partitions(0)
    with pytest.raises(ValueError, match=r"^partitions must be at least 1$"):
        check_partitions(-3)
    check_partitions(1)
    check_partitions(2)


def test_assign_gives_partition_i_to_the_i_mod_m_th_member_by_name() -> None:
    """Members are sorted by name, duplicates counted once; a worker not (yet) among the members counts itself."""
    assert assign(["b", "a"], 5, "a") == {0, 2, 4}
    assert assign(["b", "a"], 5, "b") == {1, 3}
    assert assign(["c", "a", "b", "a", "c"], 7, "b") == {1, 4}  # duplicates do not shift the shares
    assert assign(["c", "a", "b", "a", "c"], 7, "c") == {2, 5}
    assert assign([], 3, "a") == {0, 1, 2}
    assert assign(["b", "c"], 6, "a") == {0, 3}  # "a" not listed yet: it sorts first among a, b, c
    assert assign(["a", "b"], 6, "c") == {2, 5}
    assert assign(["a", "b", "c"], 2, "c") == set()  # more members than partitions
    assert assign(["a"], 1, "a") == {0}
    shares = [assign(["w1", "w2", "w3"], 10, me) for me in ("w1", "w2", "w3")]
    assert set().union(*shares) == set(range(10)) and sum(map(len, shares)) == 10


def test_a_new_partition_has_a_backlog_and_is_neither_releasing_nor_paused() -> None:
    part = Partition()
    assert (part.backlog, part.releasing, part.paused_until) == (True, False, 0.0)


# ------------------------------------------------------------------------------------- an in-memory lease table


class Broker:
    """The broker's side shared by the workers: who holds each lease, who is a member, and a log of the calls."""

    def __init__(self) -> None:
        self.holders: dict[int, str] = {}
        self.members: set[str] = set()
        self.log: list[str] = []


class Table(LeaseTable):
    """One worker's view of the :class:`Broker`."""

    def __init__(self, broker: Broker, me: str) -> None:
        self.broker = broker
        self.me = me

    async def heartbeat(self, owned: list[int], member: bool = True) -> tuple[list[str], set[int]]:
        self.broker.log.append(f"{self.me} heartbeat {owned}{'' if member else ' not a member'}")
        if member:
            self.broker.members.add(self.me)
        return sorted(self.broker.members), {p for p in owned if self.broker.holders.get(p) == self.me}

    async def acquire(self, partition: int) -> bool:
        self.broker.log.append(f"{self.me} acquire {partition}")
        return self.broker.holders.setdefault(partition, self.me) == self.me

    async def release(self, partition: int) -> None:
        self.broker.log.append(f"{self.me} release {partition}")
        if self.broker.holders.get(partition) == self.me:
            del self.broker.holders[partition]

    async def leave(self) -> None:
        self.broker.log.append(f"{self.me} leave")
        self.broker.members.discard(self.me)


class Worker:
    """A coordinator over the shared broker, recording what it is told and what it releases."""

    def __init__(self, broker: Broker, me: str, partitions: int, **kwargs: Any) -> None:
        self.told: list[list[int]] = []
        self.flushed: list[list[int]] = []
        self.busy: set[int] = set()
        self.c = Coordinator(Table(broker, me), partitions, me, f"src-{me}", 2.0, on_change=self.told.append,
                             **kwargs)

    async def before_release(self, partitions: list[int]) -> None:
        self.flushed.append(list(partitions))

    async def step(self) -> None:
        await self.c.step(lambda p: p in self.busy, self.before_release)


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


# ------------------------------------------------------------------------------------------------ the coordinator


async def test_a_new_coordinator_owns_nothing_and_has_counted_nothing() -> None:
    broker = Broker()
    c = Worker(broker, "a", 3).c
    assert (c.owned, c.acquired, c.released, c.lost) == ({}, 0, 0, 0)
    assert (c.members, c.wanted, c.retiring, c.left, c.next_round) == ([], set(), False, False, 0.0)
    assert (c.partitions, c.me, c.label, c.interval, c.take_over) == (3, "a", "src-a", 2.0, True)
    assert c.readable() == [] and not c.awaiting()
    assert broker.log == []


async def test_a_lone_worker_acquires_every_partition_in_order(caplog: pytest.LogCaptureFixture) -> None:
    """One round: heartbeat, then each free partition acquired in ascending order, each with a backlog to take
    over first (nothing readable yet), the owner told once, and the next round due one interval later."""
    caplog.set_level(logging.INFO, LOGGER)
    broker = Broker()
    a = Worker(broker, "a", 3)
    await anyio.sleep(5.0)
    start = anyio.current_time()
    await a.step()
    assert broker.log == ["a heartbeat []", "a acquire 0", "a acquire 1", "a acquire 2"]
    assert sorted(a.c.owned) == [0, 1, 2] and broker.holders == {0: "a", 1: "a", 2: "a"}
    assert all(part == Partition(backlog=True, releasing=False, paused_until=0.0) for part in a.c.owned.values())
    assert a.told == [[0, 1, 2]] and a.flushed == []
    assert (a.c.acquired, a.c.released, a.c.lost) == (3, 0, 0)
    assert a.c.members == ["a"] and a.c.wanted == {0, 1, 2}
    assert a.c.next_round == start + 2.0
    assert a.c.readable() == [] and a.c.awaiting()  # the backlogs are work on its way
    assert messages(caplog) == ["src-a: members now a", "src-a: acquired partition 0", "src-a: acquired partition 1",
                                "src-a: acquired partition 2"]
    assert all(r.levelno == logging.INFO for r in caplog.records)

    caplog.clear()
    broker.log.clear()
    await a.step()  # nothing changed: renew only, tell the owner again, log nothing
    assert broker.log == ["a heartbeat [0, 1, 2]"]
    assert a.told == [[0, 1, 2], [0, 1, 2]] and a.c.acquired == 3
    assert messages(caplog) == []


async def test_take_over_false_starts_readable_and_on_acquired_sees_each_partition() -> None:
    """With ``take_over=False`` (the broker redelivers pending entries itself) a partition just acquired has no
    backlog and is readable at once; ``on_acquired`` is awaited with each partition and its record, in order."""
    broker = Broker()
    seen: list[tuple[int, Partition]] = []

    async def on_acquired(p: int, part: Partition) -> None:
        seen.append((p, part))
        part.paused_until = anyio.current_time() + 1.0 if p == 1 else 0.0

    a = Worker(broker, "a", 3, take_over=False, on_acquired=on_acquired)
    await a.step()
    assert [p for p, _ in seen] == [0, 1, 2]
    assert all(a.c.owned[p] is part for p, part in seen)
    assert not any(part.backlog for part in a.c.owned.values())
    assert a.c.readable() == [0, 2]  # 1 is paused for a second
    assert a.c.awaiting()  # ... and that is work on its way
    await anyio.sleep(1.0)
    assert a.c.readable() == [0, 1, 2] and not a.c.awaiting()  # paused until exactly now: readable


async def test_readable_excludes_backlog_releasing_and_paused_partitions() -> None:
    broker = Broker()
    a = Worker(broker, "a", 4)
    await a.step()
    for part in a.c.owned.values():
        part.backlog = False
    assert a.c.readable() == [0, 1, 2, 3] and not a.c.awaiting()
    now = anyio.current_time()
    a.c.owned[0].backlog = True
    a.c.owned[1].releasing = True
    a.c.owned[2].paused_until = now + 0.5
    a.c.owned[3].paused_until = now
    assert a.c.readable() == [3]
    assert a.c.awaiting()
    a.c.owned[0].backlog = False
    assert a.c.awaiting()  # partition 2 is still paused
    a.c.owned[2].paused_until = now
    assert not a.c.awaiting()


async def test_a_second_worker_waits_for_its_share_which_is_handed_over_once_done(
        caplog: pytest.LogCaptureFixture) -> None:
    """A worker that joins is meant for partitions 1 and 3 but another holds them: it acquires nothing and awaits
    them.  The holder marks them releasing (nothing more read), releases the one not busy after sending its
    acknowledgements, keeps the busy one until it is done, and the newcomer then acquires each."""
    caplog.set_level(logging.INFO, LOGGER)
    broker = Broker()
    a, b = Worker(broker, "a", 4), Worker(broker, "b", 4)
    await a.step()
    for part in a.c.owned.values():
        part.backlog = False
    caplog.clear()
    broker.log.clear()

    await b.step()
    assert broker.log == ["b heartbeat []", "b acquire 1", "b acquire 3"]
    assert b.c.owned == {} and b.c.acquired == 0 and b.told == [[]]
    assert b.c.wanted == {1, 3} and b.c.awaiting() and b.c.readable() == []
    assert messages(caplog) == ["src-b: members now a, b"]

    caplog.clear()
    broker.log.clear()
    a.busy = {3}
    await a.step()
    assert broker.log == ["a heartbeat [0, 1, 2, 3]", "a release 1"]
    assert a.flushed == [[1]]
    assert sorted(a.c.owned) == [0, 2, 3] and a.c.owned[3].releasing
    assert not a.c.owned[0].releasing and not a.c.owned[2].releasing
    assert a.c.readable() == [0, 2] and a.c.released == 1 and a.told[-1] == [0, 2, 3]
    assert messages(caplog) == ["src-a: members now a, b", "src-a: released partition 1"]

    broker.log.clear()
    await b.step()
    assert broker.log == ["b heartbeat []", "b acquire 1", "b acquire 3"]
    assert sorted(b.c.owned) == [1] and b.c.awaiting()

    broker.log.clear()
    a.busy = set()
    await a.step()
    assert broker.log == ["a heartbeat [0, 2, 3]", "a release 3"]
    assert a.flushed == [[1], [3]] and a.c.released == 2 and a.told[-1] == [0, 2]
    await b.step()
    assert sorted(b.c.owned) == [1, 3] and b.c.acquired == 2 and b.told[-1] == [1, 3]


async def test_several_partitions_done_at_once_are_flushed_together_then_released_in_order() -> None:
    broker = Broker()
    a = Worker(broker, "a", 6)
    await a.step()
    broker.members.add("b")
    broker.log.clear()
    await a.step()
    assert a.flushed == [[1, 3, 5]]
    assert broker.log == ["a heartbeat [0, 1, 2, 3, 4, 5]", "a release 1", "a release 3", "a release 5"]
    assert a.c.released == 3 and a.told[-1] == [0, 2, 4]


async def test_the_heartbeat_names_the_owned_partitions_in_order() -> None:
    """Partitions acquired in later rounds are renewed as one sorted list, whatever order they came in."""
    broker = Broker()
    broker.holders[1] = "x"
    a = Worker(broker, "a", 3)
    await a.step()  # 0 and 2
    del broker.holders[1]
    await a.step()  # 1 later
    broker.log.clear()
    await a.step()
    assert broker.log == ["a heartbeat [0, 1, 2]"]


async def test_a_lease_not_renewed_in_time_is_dropped_counted_and_warned(caplog: pytest.LogCaptureFixture) -> None:
    """A lease that lapsed and went to another is forgotten (not released, not read) with a warning; it is tried
    again in the same round since it is still meant for this worker."""
    caplog.set_level(logging.INFO, LOGGER)
    broker = Broker()
    a = Worker(broker, "a", 3)
    await a.step()
    broker.holders[2] = "z"
    broker.holders[0] = "z"
    caplog.clear()
    broker.log.clear()
    await a.step()
    assert broker.log == ["a heartbeat [0, 1, 2]", "a acquire 0", "a acquire 2"]
    assert sorted(a.c.owned) == [1] and a.c.lost == 2 and a.c.released == 0 and a.flushed == []
    assert a.told[-1] == [1] and a.c.awaiting()
    lost = [r for r in caplog.records if "lost" in r.getMessage()]
    assert [r.getMessage() for r in lost] == ["src-a: lost the lease of partition 0 (not renewed in time)",
                                              "src-a: lost the lease of partition 2 (not renewed in time)"]
    assert all(r.levelno == logging.WARNING for r in lost)


async def test_a_retiring_worker_leaves_once_and_releases_each_partition_when_done(
        caplog: pytest.LogCaptureFixture) -> None:
    """After ``retire()`` the next round first drops the membership (once), renews as no member, wants nothing,
    acquires nothing, releases what is not busy and keeps the busy ones releasing; nothing is awaited."""
    caplog.set_level(logging.INFO, LOGGER)
    broker = Broker()
    a, b = Worker(broker, "a", 4), Worker(broker, "b", 4)
    await a.step()
    await b.step()
    a.c.retire()
    assert a.c.retiring and not a.c.awaiting()
    a.busy = {2}
    caplog.clear()
    broker.log.clear()
    await a.step()
    assert broker.log == ["a leave", "a heartbeat [0, 1, 2, 3] not a member", "a release 0", "a release 1",
                          "a release 3"]
    assert a.c.left and a.c.wanted == set() and a.c.members == ["b"]
    assert sorted(a.c.owned) == [2] and a.c.owned[2].releasing and a.c.readable() == []
    assert not a.c.awaiting()
    assert messages(caplog)[:2] == ["src-a: reads no more: left the members, releasing each partition once done",
                                    "src-a: members now b"]

    broker.log.clear()
    a.busy = set()
    await a.step()
    assert broker.log == ["a heartbeat [2] not a member", "a release 2"]
    assert a.c.owned == {} and a.c.released == 4 and a.told[-1] == []

    broker.log.clear()
    await a.c.leave(a.before_release, 1.0)  # the end of the run: the membership is already gone
    assert broker.log == ["a release 0", "a release 1", "a release 2", "a release 3"]
    assert broker.holders == {}
    await b.step()
    assert sorted(b.c.owned) == [0, 1, 2, 3]


async def test_leave_releases_flushes_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """The end of a run: the acknowledgements of every owned partition are sent first (within the time given, no
    warning when they are), each lease released and counted, the owner told after each, then the membership
    dropped, then every other partition released in case its lease was taken but never recorded."""
    caplog.set_level(logging.INFO, LOGGER)
    broker = Broker()
    broker.holders[1] = "b"
    a = Worker(broker, "a", 4)
    await a.step()
    a.told.clear()
    caplog.clear()
    broker.log.clear()
    await a.c.leave(a.before_release, 0.5)
    assert a.flushed == [[0, 2, 3]]
    assert broker.log == ["a release 0", "a release 2", "a release 3", "a leave", "a release 1"]
    assert a.told == [[2, 3], [3], []] and a.c.released == 3 and a.c.owned == {}
    assert a.c.left and broker.members == set() and broker.holders == {1: "b"}
    assert messages(caplog) == ["src-a: left (partitions released, membership dropped)"]


async def test_leave_waits_for_the_acknowledgements_up_to_its_bound(caplog: pytest.LogCaptureFixture) -> None:
    """Acknowledgements that take longer than the bound are cut there, with a warning naming the bound."""
    caplog.set_level(logging.INFO, LOGGER)
    broker = Broker()
    a = Worker(broker, "a", 2)
    await a.step()
    done: list[float] = []

    async def slow(partitions: list[int]) -> None:
        await anyio.sleep(0.3)
        done.append(anyio.current_time())

    start = anyio.current_time()
    await a.c.leave(slow, 0.5)  # done within the bound: no warning
    assert done == [start + 0.3]
    assert not [m for m in messages(caplog) if "not confirmed" in m]
    assert broker.holders == {}

    b = Worker(Broker(), "b", 2)
    await b.step()
    caplog.clear()
    start = anyio.current_time()
    await b.c.leave(slow, 0.2)
    assert anyio.current_time() == pytest.approx(start + 0.2) and len(done) == 1
    warned = [r for r in caplog.records if "not confirmed" in r.getMessage()]
    assert [r.getMessage() for r in warned] == [
        "src-b: the last acknowledgements were not confirmed within 0.2 s; releasing the partitions anyway (what "
        "they covered may be delivered again)"]
    assert warned[0].levelno == logging.WARNING
