"""The read side of a partitioned Redis Streams consumer (``redis_stream_messages(..., partitions=n)``).

Partition ``i`` of stream ``s`` is the stream ``s:i``; the consumer group
exists on each.  Leases are plain keys, ``s:<group>:lease:<i>`` = the
owner's consumer name with a TTL (``SET NX PX`` to acquire, a script that
renews or deletes only its own), and the members are a sorted set
``s:<group>:members`` scored by expiry (server time).  A partition just
acquired is taken over first: its oldest pending entry (of any consumer) is
claimed with ``XCLAIM`` one at a time and handed downstream alone, until
nothing is left pending, then new entries are read with ``XREADGROUP ...
>``, from all readable partitions in one command.  Message ids are
``"<partition>:<entry id>"`` (entry ids repeat across partitions).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio

from .._core._closing import _groups, _unwrap
from ._base import CLOSE_TIMEOUT, AckToken, BrokerSession, ConnectorStats, Message
from ._outage import OutageGuard, stage_call_timeout
from ._partitions import Coordinator, LeaseTable

if TYPE_CHECKING:
    from .redis import redis_stream_messages

__all__ = ["PartitionToken", "RedisLeases", "RedisPartitionSession"]

logger = logging.getLogger("talkpipe_async.connectors")

HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
if ARGV[3] == '1' then redis.call('ZADD', KEYS[1], now + ttl, ARGV[1]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local mine = {}
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ttl)
    mine[#mine + 1] = i - 2
  end
end
return {redis.call('ZRANGE', KEYS[1], 0, -1), mine}
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisLeases(LeaseTable):
    """Leases and membership as Redis keys (see the module doc)."""

    def __init__(self, session: RedisPartitionSession, ttl: float) -> None:
        self.session = session
        self.client = session.client
        self.guard = session.guard
        self.me = session.consumer
        self.ttl_ms = max(1, int(ttl * 1000))
        base = f"{session.stream}:{session.group}"
        self.members = f"{base}:members"
        self.leases = [f"{base}:lease:{i}" for i in range(session.partitions)]
        self._heartbeat = self.client.register_script(HEARTBEAT)
        self._release = self.client.register_script(RELEASE)

    async def heartbeat(self, owned: list[int], member: bool = True) -> tuple[list[str], set[int]]:
        keys = [self.members, *(self.leases[p] for p in owned)]
        members, mine = await self.guard.call("lease heartbeat", self._heartbeat, keys=keys,
                                              args=[self.me, self.ttl_ms, "1" if member else "0"])
        return [m.decode() if isinstance(m, bytes) else m for m in members], {owned[int(i)] for i in mine}

    async def acquire(self, partition: int) -> bool:
        return bool(await self.guard.call("lease acquire", self.client.set, self.leases[partition], self.me,
                                          nx=True, px=self.ttl_ms))

    async def release(self, partition: int) -> None:
        await self.guard.call("lease release", self._release, keys=[self.leases[partition]], args=[self.me])

    async def leave(self) -> None:
        await self.guard.call("leave", self.client.zrem, self.members, self.me)


class PartitionToken(AckToken):
    """Acknowledgement token of one delivery from one partition."""

    __slots__ = ("_session", "entry", "partition")

    def __init__(self, session: RedisPartitionSession, partition: int, entry: str, deliveries: int,
                 suspect: bool) -> None:
        super().__init__(f"{partition}:{entry}", deliveries, suspect)
        self._session = session
        self.partition = partition
        self.entry = entry

    async def ack(self) -> None:
        """Queue an ``XACK`` on the entry's partition (sent in a batch)."""
        if self._settle():
            await self._session.queue_ack(self.partition, self.entry)

    async def nak(self, delay: float | None = None) -> None:
        """Hand the entry again, before new entries of its partition, after about *delay* seconds."""
        if self._settle():
            self._session.nak(self.partition, delay or 0.0)

    async def term(self, reason: str) -> None:
        """Copy the entry to the dead-letter stream with *reason*, then ``XACK`` it."""
        if self._settle():
            session = self._session
            found = await session.guard.call("XRANGE", session.client.xrange, session.streams[self.partition],
                                             min=self.entry, max=self.entry, count=1)
            await session.dead_letter(self.partition, {self.entry: (found[0][1] if found else {}, reason,
                                                                    self.deliveries)})

    async def touch(self) -> None:
        """Reset the entry's idle time (``XCLAIM ... JUSTID`` to this consumer)."""
        if not self.settled:
            session = self._session
            await session.guard.call("XCLAIM (touch)", session.client.xclaim, session.streams[self.partition],
                                     session.group, session.consumer, 0, [self.entry], justid=True)


class RedisPartitionSession(BrokerSession):
    """One partitioned consumer for one run (see the module doc)."""

    def __init__(self, source: redis_stream_messages, client: Any, consumer: str,
                 transient: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        assert source.partitions is not None
        self.src = source
        self.client = client
        self.stats: ConnectorStats = source.stats
        self.stream = source.stream_name
        self.group = source.group
        self.consumer = consumer
        self.partitions = source.partitions
        self.streams = [f"{self.stream}:{i}" for i in range(self.partitions)]
        self.acks: dict[int, list[str]] = {}
        self.ack_count = 0
        self.ack_waiting = anyio.Event()
        self.guard = OutageGuard(source.label, f"redis at {source.url}", source.outage_budget, transient,
                                 call_timeout=stage_call_timeout(source.timeout), on_outage=self._outage_started)
        self.coordinator = Coordinator(RedisLeases(self, source.lease_ttl), self.partitions, consumer,
                                       source.label, source.lease_ttl / 3, on_change=self._owned)

    def _owned(self, partitions: list[int]) -> None:
        self.src.owned_partitions = partitions

    def _outage_started(self) -> None:
        self.stats.outages += 1

    async def queue_ack(self, partition: int, entry: str) -> None:
        if self.failure is not None:
            raise self.failure
        self.acks.setdefault(partition, []).append(entry)
        self.ack_count += 1
        if self.ack_count >= self.src.ack_batch:
            await self.flush_acks()
        elif self.ack_count == 1:
            self.ack_waiting.set()

    async def flush_acks(self) -> None:
        if not self.ack_count:
            return
        acks, self.acks, count, self.ack_count = self.acks, {}, self.ack_count, 0

        async def send() -> Any:
            pipe = self.client.pipeline(transaction=False)
            for p, ids in acks.items():
                pipe.xack(self.streams[p], self.group, *ids)
            return await pipe.execute()

        try:
            await self.guard.call("XACK", send)
        except BaseException:  # kept for the final flush; XACK is idempotent
            for p, ids in acks.items():
                self.acks.setdefault(p, [])[:0] = ids
            self.ack_count += count
            raise
        self.stats.acked += count

    async def before_release(self, partitions: list[int]) -> None:
        """Send the acknowledgements still buffered before any lease is dropped."""
        await self.flush_acks()

    def nak(self, partition: int, delay: float) -> None:
        self.stats.nacked += 1
        part = self.coordinator.owned.get(partition)
        if part is not None:
            part.backlog = True
            part.paused_until = anyio.current_time() + delay

    def retire(self) -> None:
        """Leave the members at the next lease round; release each partition once nothing of it is in progress."""
        self.coordinator.retire()

    def expecting(self) -> bool:
        """A partition meant for this worker is still being handed over, or waits for entries falling due."""
        return self.coordinator.awaiting()

    def busy(self, partition: int) -> bool:
        """Something of *partition* is handed downstream or waiting to be, and not settled."""
        for token in self.held.values():
            if isinstance(token, PartitionToken) and token.partition == partition and not token.settled:
                return True
        return any(isinstance(m.token, PartitionToken) and m.token.partition == partition and not m.token.settled
                   for m in self.unyielded)

    async def start(self) -> None:
        """Create the group on every partition and take this worker's first share."""
        redis = __import__("redis")
        for name in self.streams:
            try:
                await self.client.xgroup_create(name, self.group, id=self.src.start_id, mkstream=True)
            except redis.exceptions.ResponseError as err:
                if "BUSYGROUP" not in str(err):
                    raise
        await self.coordinator.step(self.busy, self.before_release)

    async def dead_letter(self, partition: int, items: dict[str, tuple[Any, str, int]]) -> None:
        src = self.src
        stream = self.streams[partition]

        async def move() -> Any:
            pipe = self.client.pipeline(transaction=True)
            for id, (fields, reason, deliveries) in items.items():
                entry = dict(fields)
                entry.update({"dlq_stream": stream, "dlq_group": self.group, "dlq_id": id, "dlq_reason": reason,
                              "dlq_deliveries": deliveries})
                pipe.xadd(src.dead_letter, entry, maxlen=src.dead_letter_maxlen, approximate=True)
            pipe.xack(stream, self.group, *items)
            return await pipe.execute()

        await self.guard.call("dead-letter XADD+XACK", move)
        self.stats.dead_lettered += len(items)
        for id, (_, reason, _) in items.items():
            logger.warning("%s: entry %s of %s moved to %s: %s", src.label, id, stream, src.dead_letter, reason)

    def _message(self, partition: int, raw_id: Any, fields: Any, count: int,
                 poison: dict[str, tuple[Any, str, int]]) -> Message[Any] | None:
        src = self.src
        entry = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
        if fields is None:
            poison[entry] = ({}, "entry deleted from the stream", count)
            return None
        if count > src.max_deliveries:
            poison[entry] = (fields, f"delivered {count} times (max_deliveries={src.max_deliveries})", count)
            return None
        data: Any = fields
        if src.field_key is not None:
            try:
                raw = fields[src.field_key]
                data = raw if src.decode is None else src.decode(raw)
            except Exception as exc:
                self.stats.malformed += 1
                poison[entry] = (fields, f"malformed payload: {type(exc).__name__}: {exc}", count)
                return None
        if count > 1:
            self.stats.redelivered += 1
        self.stats.delivered += 1
        return Message(data, PartitionToken(self, partition, entry, count, count > 1))

    async def _take_over_one(self, partition: int) -> list[Message[Any]] | None:
        """Claim the oldest entry pending in *partition* that is not in progress here; None when none is left."""
        stream = self.streams[partition]
        self.stats.claims += 1
        rows = await self.guard.call("XPENDING", self.client.xpending_range, stream, self.group, min="-", max="+",
                                     count=len(self.held) + 1)
        row = next((r for r in rows if f"{partition}:{r['message_id'].decode()}" not in self.held), None)
        if row is None:
            return None
        entries = await self.guard.call("XCLAIM", self.client.xclaim, stream, self.group, self.consumer, 0,
                                        [row["message_id"]])
        poison: dict[str, tuple[Any, str, int]] = {}
        count = int(row["times_delivered"]) + 1
        out = [m for raw_id, fields in entries
               if (m := self._message(partition, raw_id, fields, count, poison)) is not None]
        if poison:
            await self.dead_letter(partition, poison)
        if not entries:  # deleted from the stream: XCLAIM dropped it from the pending list
            return []
        return out

    async def _backlog(self) -> list[Message[Any]] | None:
        now = anyio.current_time()
        for p, part in list(self.coordinator.owned.items()):
            if not part.backlog or part.releasing or now < part.paused_until:
                continue
            claimed = await self._take_over_one(p)
            if claimed is None:
                part.backlog = False
                continue
            return claimed
        return None

    async def read(self, count: int, wait: float) -> list[Message[Any]]:
        await self.flush_acks()
        coordinator = self.coordinator
        if anyio.current_time() >= coordinator.next_round:
            await coordinator.step(self.busy, self.before_release)
        async with coordinator.lock:  # a partition is not released while a read of it is under way
            claimed = await self._backlog()
            if claimed is not None:
                self.unyielded = claimed
                return claimed
            readable = coordinator.readable()
            waiting = any(part.backlog for part in coordinator.owned.values())
            block = min(wait, coordinator.interval, 0.05 if waiting else wait)
            if not readable:
                await anyio.sleep(block)
                return []
            self.stats.reads += 1
            response = await self.guard.call(
                "XREADGROUP", self.client.xreadgroup, self.group, self.consumer,
                {self.streams[p]: ">" for p in readable}, count=max(1, count // len(readable)),
                block=max(1, int(block * 1000)),
                deadline_extra=block)
            out: list[Message[Any]] = []
            index = {name.encode(): p for p, name in enumerate(self.streams)}
            for name, entries in response or []:
                p = index[name if isinstance(name, bytes) else name.encode()]
                poison: dict[str, tuple[Any, str, int]] = {}
                out += [m for raw_id, fields in entries if (m := self._message(p, raw_id, fields, 1, poison))]
                if poison:
                    await self.dead_letter(p, poison)
            self.unyielded = out
            return out

    async def background(self) -> None:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._ack_timer)
                tg.start_soon(self._lease_loop)
        except Exception as exc:  # handed to the read loop and the next ack, which raise it
            # The task group wraps the failing task's error; keep the error itself, with its own type, so that a
            # stage acknowledging a message can catch ``BrokerUnavailable`` (the plain session's errors are bare).
            self.failure = (_unwrap(exc) or exc) if isinstance(exc, _groups()) else exc
            await anyio.sleep_forever()  # the session stays open until the run ends and closes it
        # Both tasks loop until cancelled, so the group ends quietly only when it took the run's stop as its own
        # (anyio on Python 3.10): return, and the run closes the session now rather than at its cleanup deadline.

    async def _ack_timer(self) -> None:
        while True:
            await self.ack_waiting.wait()
            self.ack_waiting = anyio.Event()
            await anyio.sleep(self.src.ack_interval)
            await self.flush_acks()

    async def _lease_loop(self) -> None:
        coordinator = self.coordinator
        while True:
            await anyio.sleep(max(0.0, coordinator.next_round - anyio.current_time()))
            if anyio.current_time() >= coordinator.next_round:
                await coordinator.step(self.busy, self.before_release)

    async def hand_back(self, tokens: list[AckToken]) -> None:
        """Leave the entries pending: whoever owns their partition next takes them over first, in order."""
        for token in tokens:
            if token._settle():
                self.stats.handed_back += 1

    async def aclose(self) -> None:
        try:
            for token in self.leftovers():
                if token._settle():
                    self.stats.handed_back += 1
            await self.coordinator.leave(self.before_release, CLOSE_TIMEOUT / 2)
        except Exception as exc:  # the run's own error (if any) is what the caller sees
            logger.warning("%s: could not send the last acknowledgements or release the partitions (%s: %s); "
                           "the leases lapse after lease_ttl", self.src.label, type(exc).__name__, exc)
        finally:
            await self.client.aclose()
