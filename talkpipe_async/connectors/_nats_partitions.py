"""The read side of a partitioned JetStream consumer (``jetstream_messages(..., subject=s, partitions=n)``).

A sink given ``key=`` publishes to ``<subject>.<partition>``.  Partition
``i`` is read through its own durable pull consumer ``<durable>_<i>``
(filter ``<subject>.<i>``), fetched only by the worker that holds its lease.
Leases and members are keys of the KV bucket ``<stream>_<durable>_leases``
whose entries expire after ``lease_ttl`` (``p.<i>`` = the owner's name,
taken with ``create`` and renewed with ``update`` at the last revision;
``m.<name>`` per worker), renewed every ``lease_ttl / 4``.  The partition
consumers' ``ack_wait`` is at most ``lease_ttl / 2``: when a dead owner's
lease lapses (at least ``3/4 lease_ttl`` after its death), the messages it
held are already due for redelivery, and the server hands a consumer's
redeliveries out before new messages, so a new owner sees them first, in
order.  A partition acquired while messages of it are outstanding (held by
an owner that died, or delivered to one after its last fetch) is read only
once they are due for redelivery (``ack_wait`` later).  An owner keeps the
messages it is handling from being redelivered (``+WPI`` every lease
round), and hands back what it did not handle with a ``-NAK`` the server
confirms before the lease is released.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio

from ._base import CLOSE_TIMEOUT, AckToken
from ._partitions import Coordinator, LeaseTable, Partition
from .nats import JetStreamToken, NatsLink, _JetStreamSession, _nats, confirm_sent

if TYPE_CHECKING:
    from .nats import jetstream_messages

__all__ = ["NatsLeases", "NatsPartitionSession"]

logger = logging.getLogger("talkpipe_async.connectors")

REDELIVERY_MARGIN = 0.2
"""Seconds added to ``ack_wait`` before a partition taken over with outstanding messages is read."""
PROBE = 0.02
"""Seconds one fetch waits on a partition with nothing to read before the next partition is tried."""
WRONG_LAST_SEQUENCE = (10071, 10164)
"""JetStream's error codes for a write at a revision that is no longer the key's last."""


class NatsLeases(LeaseTable):
    """Leases and membership as keys of a JetStream KV bucket (see the module doc)."""

    def __init__(self, session: NatsPartitionSession, kv: Any, bucket: str) -> None:
        self.session = session
        self.kv = kv
        self.bucket = bucket
        self.me = session.consumer
        self.errors = _nats().js.errors

    async def heartbeat(self, owned: list[int], member: bool = True) -> tuple[list[str], set[int]]:
        guard = self.session.guard
        if member:
            await guard.call("lease heartbeat", self.kv.put, f"m.{self.me}", b"1")
        info = await guard.call("members", self.session.js.stream_info, f"KV_{self.bucket}",
                                subjects_filter=f"$KV.{self.bucket}.m.>")
        prefix = f"$KV.{self.bucket}.m."
        members = [s[len(prefix):] for s in (info.state.subjects or {})]
        still: set[int] = set()
        for p in owned:
            try:
                entry = await guard.call("lease get", self.kv.get, f"p.{p}")
                if entry.value == self.me.encode():
                    await guard.call("lease renew", self.kv.update, f"p.{p}", self.me.encode(), last=entry.revision)
                    still.add(p)
            except (self.errors.KeyNotFoundError, self.errors.KeyWrongLastSequenceError):
                continue
        return members, still

    async def acquire(self, partition: int) -> bool:
        try:
            await self.session.guard.call("lease acquire", self.kv.create, f"p.{partition}", self.me.encode())
        except (self.errors.KeyWrongLastSequenceError, self.errors.KeyNotFoundError):
            # Taken by another worker, or (when the create found the key and then looked it up again) expired in
            # between: a lost race either way; the next round tries again.
            return False
        return True

    async def release(self, partition: int) -> None:
        try:
            entry = await self.session.guard.call("lease get", self.kv.get, f"p.{partition}")
            if entry.value == self.me.encode():
                await self.session.guard.call("lease release", self.kv.delete, f"p.{partition}",
                                              last=entry.revision)
        except (self.errors.KeyNotFoundError, self.errors.KeyWrongLastSequenceError):
            return
        except self.errors.APIError as exc:
            # The lease lapsed and was taken by another between the look-up and the delete: the delete at the
            # revision looked up is refused (nats-py's delete does not turn this into KeyWrongLastSequenceError).
            if exc.err_code not in WRONG_LAST_SEQUENCE:
                raise

    async def leave(self) -> None:
        # Remove the member's subject from the bucket's stream outright: a KV purge would leave a marker that
        # the others' member listing counts until it expires (lease_ttl later).
        await self.session.guard.call("leave", self.session.js.purge_stream, f"KV_{self.bucket}",
                                      subject=f"$KV.{self.bucket}.m.{self.me}")


def partition_of(token: AckToken) -> int | None:
    """The partition a JetStream token's message came from (the last token of its subject)."""
    if not isinstance(token, JetStreamToken):
        return None
    tail = token._msg.subject.rsplit(".", 1)[-1]
    return int(tail) if tail.isdigit() else None


class NatsPartitionSession(_JetStreamSession):
    """One partitioned consumer for one run (see the module doc)."""

    def __init__(self, source: jetstream_messages, link: NatsLink, js: Any, consumer: str) -> None:
        super().__init__(source, link, js, None)
        assert source.partitions is not None
        self.consumer = consumer
        self.partitions = source.partitions
        self.subs: dict[int, Any] = {}
        self.keep_order = True
        self.turn = 0
        self.coordinator: Coordinator | None = None
        self.ack_wait = min(source.ack_wait, source.lease_ttl / 2)

    async def start(self) -> None:
        """Create the partition consumers and the lease bucket; take this worker's first share."""
        src = self.src
        api = _nats("nats.js.api")
        nats = _nats()
        assert src.partitions is not None and src.subject is not None
        ack_wait = self.ack_wait
        for p in range(src.partitions):
            config = api.ConsumerConfig(
                durable_name=f"{src.durable}_{p}", ack_policy=api.AckPolicy.EXPLICIT, ack_wait=ack_wait,
                max_deliver=src.max_deliveries + 1, max_ack_pending=src.max_ack_pending,
                filter_subject=f"{src.subject}.{p}")
            await self.js.add_consumer(src.stream_name, config=config)
        bucket = f"{src.stream_name}_{src.durable}_leases"
        try:
            kv = await self.js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            kv = await self.js.create_key_value(bucket=bucket, ttl=src.lease_ttl, history=1)
        self.coordinator = Coordinator(NatsLeases(self, kv, bucket), self.partitions, self.consumer, src.label,
                                       src.lease_ttl / 4, on_change=self._owned, take_over=False,
                                       on_acquired=self._acquired)
        await self.coordinator.step(self.busy, self.let_go)

    async def _acquired(self, partition: int, part: Partition) -> None:
        """Messages an earlier owner held are outstanding: read nothing until they are due for redelivery."""
        info = await self.guard.call("consumer info", self.js.consumer_info, self.src.stream_name,
                                     f"{self.src.durable}_{partition}")
        if info.num_ack_pending:
            part.paused_until = anyio.current_time() + self.ack_wait + REDELIVERY_MARGIN

    def _owned(self, partitions: list[int]) -> None:
        self.src.owned_partitions = partitions

    async def flush(self) -> None:
        """Send what the client buffered (acknowledgements) before a lease is dropped."""
        if self.nc.is_connected:
            await self.guard.call("confirming the acknowledgements", confirm_sent, self.nc, self.src.timeout)

    async def let_go(self, partitions: list[int]) -> None:
        """Before the leases of *partitions* are dropped: stop their reads, hand back what arrived late, flush.

        A fetch that timed out may leave its pull request at the server a
        little longer; messages it delivers wait in the subscription's queue.
        Unsubscribing ends such deliveries; what is queued goes back with a
        confirmed ``-NAK``, so it is redelivered before newer messages.
        """
        for p in partitions:
            sub = self.subs.pop(p, None)
            if sub is None:
                continue
            await sub.unsubscribe()
            queue = sub._sub._pending_queue
            while not queue.empty():
                msg = queue.get_nowait()
                if msg.reply and not (msg.headers or {}).get("Status"):  # a message, not a pull request's status
                    self.stats.handed_back += 1
                    await self.guard.call("-NAK", self.nc.request, msg.reply, b"-NAK", timeout=self.src.timeout)
        await self.flush()

    def retire(self) -> None:
        """Leave the members at the next lease round; release each partition once nothing of it is in progress."""
        if self.coordinator is not None:
            self.coordinator.retire()

    def expecting(self) -> bool:
        """A partition meant for this worker is still being handed over, or waits for entries falling due."""
        return self.coordinator is not None and self.coordinator.awaiting()

    def busy(self, partition: int) -> bool:
        """Something of *partition* is handed downstream or waiting to be, and not settled."""
        tokens = [*self.held.values(), *(m.token for m in self.unyielded)]
        return any(not t.settled and partition_of(t) == partition for t in tokens)

    async def _sub(self, partition: int) -> Any:
        sub = self.subs.get(partition)
        if sub is None:
            sub = await self.js.pull_subscribe_bind(f"{self.src.durable}_{partition}", stream=self.src.stream_name)
            self.subs[partition] = sub
        return sub

    async def read(self, count: int, wait: float) -> list[Any]:
        coordinator = self.coordinator
        assert coordinator is not None
        if anyio.current_time() >= coordinator.next_round:
            await coordinator.step(self.busy, self.let_go)
        async with coordinator.lock:
            readable = coordinator.readable()
            if not readable:
                await anyio.sleep(min(wait, coordinator.interval))
                return []
            self.turn += 1
            order = readable[self.turn % len(readable):] + readable[:self.turn % len(readable)]
            for p in order:
                self.sub = await self._sub(p)
                out = await super().read(count, PROBE)
                if out:
                    self.unyielded = out
                    return out
            return []

    async def background(self) -> None:
        coordinator = self.coordinator
        assert coordinator is not None
        try:
            while True:
                await anyio.sleep(max(0.0, coordinator.next_round - anyio.current_time()))
                if anyio.current_time() >= coordinator.next_round:
                    await coordinator.step(self.busy, self.let_go)
                    for token in list(self.held.values()):  # still handling: no redelivery yet
                        if not token.settled:
                            await token.touch()
        except Exception as exc:  # handed to the read loop, which raises it
            self.failure = exc
        await anyio.sleep_forever()

    async def hand_back(self, tokens: list[AckToken]) -> None:
        """``-NAK`` each and wait for the server to take it: it is redelivered before any newer message."""
        for token in tokens:
            if isinstance(token, JetStreamToken) and token._settle():
                self.stats.nacked += 1
                self.stats.handed_back += 1
                await self.guard.call("-NAK", self.nc.request, token._msg.reply, b"-NAK", timeout=self.src.timeout)

    async def aclose(self) -> None:
        try:
            await self.hand_back(self.leftovers())
            if self.coordinator is not None:
                await self.coordinator.leave(self.let_go, CLOSE_TIMEOUT / 2)
        except Exception as exc:  # the run's own error (if any) is what the caller sees
            logger.warning("%s: could not hand back messages or release the partitions (%s: %s); the leases "
                           "lapse after lease_ttl", self.src.label, type(exc).__name__, exc)
        finally:
            from .nats import close_nats

            await close_nats(self.nc)
