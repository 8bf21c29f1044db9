"""The read side of a Redis Streams consumer: one session per run of a ``redis_stream_messages``.

Every command goes through an :class:`OutageGuard`: through a broker outage
the session keeps its consumer name (its pending entries stay its own),
retries with backoff within ``outage_budget``, and after the outage reads
its own pending list again (entries whose delivery was lost on the broken
connection).  Redelivered entries are taken over one at a time
(``XAUTOCLAIM ... COUNT 1``), so only the entry actually handed downstream
has its delivery count raised.  When the run ends, the entries the session
still owns are made claimable at once (``XCLAIM ... IDLE <large> JUSTID``,
which does not raise their delivery count).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import anyio

from ._base import AckToken, BrokerSession, ConnectorStats, Message
from ._outage import OutageGuard, stage_call_timeout

if TYPE_CHECKING:
    from .redis import redis_stream_messages

__all__ = ["HAND_BACK_IDLE_MS", "RedisSession", "RedisToken"]

logger = logging.getLogger("talkpipe_async.connectors")

HAND_BACK_IDLE_MS = 10**9
"""Idle time given to handed-back entries: far above any ``claim_idle``, so any consumer's next scan takes them."""
Poison = dict[str, tuple[dict[Any, Any], str, int]]


class RedisToken(AckToken):
    """Acknowledgement token of one Redis Streams delivery."""

    __slots__ = ("_session",)

    def __init__(self, session: RedisSession, id: str, deliveries: int, suspect: bool = False) -> None:
        # AckToken.__init__, written out: one token per message
        self.id = id
        self.deliveries = deliveries
        self.settled = False
        self.suspect = suspect
        self._tracker = None
        self._session = session

    async def ack(self) -> None:
        """Queue an ``XACK`` (sent in a batch, see the module doc)."""
        pending = self.ack_nowait()
        if pending is not None:
            await pending

    def ack_nowait(self) -> Awaitable[None] | None:
        """Settle and queue the ``XACK``; the flush to await when ``ack_batch`` ids are waiting."""
        if self.settled:
            return None
        # AckToken._settle and RedisSession.queue_ack written out: this runs once per message
        self.settled = True
        tracker = self._tracker
        if tracker is not None:
            held = tracker.held
            held.pop(self.id, None)
            if not held and tracker._drained is not None:
                tracker._drained.set()
        session = self._session
        if session.failure is not None:
            raise session.failure
        acks = session.acks
        acks.append(self.id)
        waiting = len(acks)
        if waiting >= session.ack_batch:
            return session.flush_acks()
        if waiting == 1:
            session.ack_waiting.set()
        return None

    async def nak(self, delay: float | None = None) -> None:
        """Make the message claimable again after about *delay* seconds (default: at once).

        Redis has no negative acknowledgement: the message stays pending and
        its idle time is set (``XCLAIM ... IDLE ... JUSTID``) so that the next
        ``XAUTOCLAIM`` by any consumer of the group takes it.
        """
        if self._settle():
            await self._session.nak(self.id, delay or 0.0)

    async def term(self, reason: str) -> None:
        """Copy the message to the dead-letter stream with *reason*, then ``XACK`` it."""
        if self._settle():
            await self._session.dead_letter_ids([self.id], reason, self.deliveries)

    async def touch(self) -> None:
        """Reset the idle time (``XCLAIM ... JUSTID`` to this consumer) so no one reclaims it yet."""
        if not self.settled:
            await self._session.touch(self.id)


class RedisSession(BrokerSession):
    """One consumer of the group for one run (see the module doc)."""

    def __init__(self, source: redis_stream_messages, client: Any, consumer: str,
                 transient: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.src = source
        self.client = client
        self.stats: ConnectorStats = source.stats
        self.stream = source.stream_name
        self.group = source.group
        self.consumer = consumer
        self.acks: list[str] = []
        self.ack_batch = source.ack_batch
        self.returned: set[str] = set()  # ids handed back (counted once)
        self.ack_waiting = anyio.Event()
        self.next_claim = 0.0
        # entries already pending for this consumer name (a restarted instance with a fixed name) come first
        self.own_cursor: Any = "0-0"
        self.own_suspect = True
        self.guard = OutageGuard(source.label, f"redis at {source.url}", source.outage_budget, transient,
                                 call_timeout=stage_call_timeout(source.timeout), on_outage=self._outage_started)

    def _outage_started(self) -> None:
        self.stats.outages += 1
        # a read cut by the outage may have delivered entries this consumer never saw: read its own list again
        self.own_cursor = "0-0"
        self.own_suspect = False

    async def flush_acks(self) -> None:
        if not self.acks:
            return
        ids, self.acks = self.acks, []
        self.stats.acked += len(ids)
        try:
            await self.guard.call("XACK", self.client.xack, self.stream, self.group, *ids)
        except BaseException:
            # cancelled (the run is closing) or failed: keep them for the final flush; XACK is idempotent
            self.acks[:0] = ids
            self.stats.acked -= len(ids)
            raise

    async def nak(self, id: str, delay: float) -> None:
        self.stats.nacked += 1
        idle_ms = max(0, int((self.src.claim_idle - delay) * 1000))
        await self.guard.call("XCLAIM (nak)", self.client.xclaim, self.stream, self.group, self.consumer, 0, [id],
                              idle=idle_ms, justid=True)
        self.next_claim = 0.0

    async def touch(self, id: str) -> None:
        await self.guard.call("XCLAIM (touch)", self.client.xclaim, self.stream, self.group, self.consumer, 0,
                              [id], justid=True)

    async def hand_back(self, tokens: list[AckToken]) -> None:
        """Make *tokens*' entries claimable by any consumer at once, without raising their delivery counts."""
        ids = [t.id for t in tokens if t._settle()]
        await self._hand_back_ids(ids)

    async def _hand_back_ids(self, ids: list[Any]) -> None:
        returned = self.returned
        ids = [i for i in ids if (i.decode() if isinstance(i, bytes) else i) not in returned]
        if not ids:
            return
        returned.update(i.decode() if isinstance(i, bytes) else i for i in ids)
        await self.guard.call("XCLAIM (hand back)", self.client.xclaim, self.stream, self.group, self.consumer, 0,
                              ids, idle=HAND_BACK_IDLE_MS, justid=True)
        self.stats.handed_back += len(ids)

    async def dead_letter_ids(self, ids: list[str], reason: str, deliveries: int) -> None:
        """Copy each entry to the dead-letter stream, then acknowledge it, in one transaction."""
        entries = {}
        for id in ids:
            found = await self.guard.call("XRANGE", self.client.xrange, self.stream, min=id, max=id, count=1)
            entries[id] = found[0][1] if found else {}
        await self.dead_letter({id: (fields, reason, deliveries) for id, fields in entries.items()})

    async def dead_letter(self, items: Poison) -> None:
        if not items:
            return
        src = self.src

        async def move() -> Any:
            pipe = self.client.pipeline(transaction=True)
            for id, (fields, reason, deliveries) in items.items():
                entry = dict(fields)
                entry.update({"dlq_stream": self.stream, "dlq_group": self.group, "dlq_id": id,
                              "dlq_reason": reason, "dlq_deliveries": deliveries})
                pipe.xadd(src.dead_letter, entry, maxlen=src.dead_letter_maxlen, approximate=True)
            pipe.xack(self.stream, self.group, *items)
            return await pipe.execute()

        await self.guard.call("dead-letter XADD+XACK", move)
        self.stats.dead_lettered += len(items)
        for id, (_, reason, _) in items.items():
            logger.warning("%s: entry %s moved to %s: %s", src.label, id, src.dead_letter, reason)

    def decode(self, entries: list[Any], deliveries: dict[Any, int], poison: Poison,
               suspect: bool = False) -> list[Message[Any]]:
        out: list[Message[Any]] = []
        src = self.src
        decode = src.decode
        key = src.field_key
        max_deliveries = src.max_deliveries
        stats = self.stats
        if not deliveries and not suspect and key is not None:
            fast = self._decode_fresh(entries, poison)
            if fast is not None:
                return fast
        for raw_id, fields in entries:
            id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
            count = deliveries.get(raw_id, 1)
            if not fields:  # deleted from the stream while pending (redis-py gives {}): nothing to deliver
                poison[id] = ({}, "entry deleted from the stream", count)
                continue
            if count > max_deliveries:
                poison[id] = (fields, f"delivered {count} times (max_deliveries={max_deliveries})", count)
                continue
            if key is None:
                data: Any = fields
            else:
                try:
                    raw = fields[key]
                    data = raw if decode is None else decode(raw)
                except Exception as exc:
                    stats.malformed += 1
                    poison[id] = (fields, f"malformed payload: {type(exc).__name__}: {exc}", count)
                    continue
            if count > 1:
                stats.redelivered += 1
            out.append(Message(data, RedisToken(self, id, count, suspect)))
        stats.delivered += len(out)
        return out

    def _decode_fresh(self, entries: list[Any], poison: Poison) -> list[Message[Any]] | None:
        """``decode`` for a fresh read (first deliveries); None when an entry needs the full path."""
        decode = self.src.decode
        key = self.src.field_key
        token, message = RedisToken, Message
        try:
            if entries and type(entries[0][0]) is not bytes:  # a client decoding responses: ids are text
                out = [message(f[key] if decode is None else decode(f[key]), token(self, str(i), 1))
                       for i, f in entries]
            elif decode is None:
                out = [message(f[key], token(self, i.decode(), 1)) for i, f in entries]
            else:  # one comprehension per read: this runs once per message
                out = [message(decode(f[key]), token(self, i.decode(), 1)) for i, f in entries]
        except Exception:  # a malformed or missing payload: the full path dead-letters it with its reason
            return None
        self.stats.delivered += len(out)
        return out

    async def _counts(self, entries: list[Any]) -> dict[Any, int]:
        async def query() -> Any:
            pipe = self.client.pipeline(transaction=False)
            for raw_id, _ in entries:
                pipe.xpending_range(self.stream, self.group, min=raw_id, max=raw_id, count=1)
            return await pipe.execute()

        rows_per_entry = await self.guard.call("XPENDING", query)
        return {raw_id: int(rows[0]["times_delivered"]) if rows else 2
                for (raw_id, _), rows in zip(entries, rows_per_entry, strict=True)}

    async def _claim_one(self) -> list[Message[Any]]:
        """Take over one entry left idle by another consumer (dead, stuck or stopped), if any.

        ``XPENDING ... IDLE`` finds the oldest entry idle for ``claim_idle``
        (with its delivery count); ``XCLAIM`` with the same minimum idle time
        takes it unless another consumer was faster.
        """
        src = self.src
        idle_ms = int(src.claim_idle * 1000)
        self.stats.claims += 1
        rows = await self.guard.call("XPENDING (idle)", self.client.xpending_range, self.stream, self.group,
                                     min="-", max="+", count=1, idle=idle_ms)
        if not rows:
            self.next_claim = anyio.current_time() + src.claim_interval
            return []
        raw_id = rows[0]["message_id"]
        entries = await self.guard.call("XCLAIM", self.client.xclaim, self.stream, self.group, self.consumer,
                                        idle_ms, [raw_id])
        if not entries:  # another consumer took it first, or it was deleted from the stream
            return []
        poison: Poison = {}
        counts = {entry[0]: int(rows[0]["times_delivered"]) + 1 for entry in entries}
        messages = self.decode(entries, counts, poison, suspect=True)
        await self.dead_letter(poison)
        return messages

    async def _read_own(self, count: int) -> list[Message[Any]]:
        """Entries pending for this consumer name that it does not hold (delivered on a lost connection)."""
        suspect = self.own_suspect
        response = await self.guard.call(
            "XREADGROUP (own pending)", self.client.xreadgroup, self.group, self.consumer,
            {self.stream: self.own_cursor}, count=1 if suspect else count)
        entries = response[0][1] if response else []
        if not entries:
            self.own_cursor = None
            return []
        self.own_cursor = entries[-1][0]
        held = self.held
        fresh = [(i, f) for i, f in entries if (i.decode() if isinstance(i, bytes) else i) not in held]
        if not fresh:
            return []
        poison: Poison = {}
        messages = self.decode(fresh, await self._counts(fresh), poison, suspect=suspect)
        await self.dead_letter(poison)
        return messages

    async def read(self, count: int, wait: float) -> list[Message[Any]]:
        await self.flush_acks()
        if self.own_cursor is not None:
            own = await self._read_own(count)
            if own or self.own_cursor is not None:
                return own
        if anyio.current_time() >= self.next_claim:
            claimed = await self._claim_one()
            if claimed:
                return claimed
        self.stats.reads += 1
        block = max(1, int(wait * 1000))
        response = await self.guard.call("XREADGROUP", self.client.xreadgroup, self.group, self.consumer,
                                         {self.stream: ">"}, count=count, block=block, deadline_extra=wait)
        if not response:
            return []
        poison: Poison = {}
        messages = self.decode(response[0][1], {}, poison)
        if poison:
            await self.dead_letter(poison)
        return messages

    async def background(self) -> None:
        interval = self.src.ack_interval
        try:
            while True:
                await self.ack_waiting.wait()
                self.ack_waiting = anyio.Event()
                await anyio.sleep(interval)
                await self.flush_acks()
        except Exception as exc:  # handed to the read loop and the next ack, which raise it
            self.failure = exc
        await anyio.sleep_forever()

    async def aclose(self) -> None:
        try:
            await self.flush_acks()
            for token in self.leftovers():
                token._settle()
            rows = await self.guard.call(
                "XPENDING (own)", self.client.xpending_range, self.stream, self.group, min="-", max="+",
                count=10_000, consumername=self.consumer)
            await self._hand_back_ids([row["message_id"] for row in rows])
        except Exception as exc:  # the run's own error (if any) is what the caller sees
            logger.warning("%s: could not send the last acknowledgements or hand back pending entries (%s: %s); "
                           "they are redelivered after claim_idle", self.src.label, type(exc).__name__, exc)
        finally:
            await self.client.aclose()
