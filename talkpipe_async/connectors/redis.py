"""Redis Streams: a consumer-group source and a batched XADD sink.

``RedisStreamSource`` reads through a consumer group with ``XREADGROUP
COUNT batch BLOCK ms``, one batch at a time as the pipeline pulls.
Acknowledgements (``XACK``) are buffered and sent in one command: when
``ack_batch`` are waiting, before the next read, every ``ack_interval``
seconds, and when the run ends.  Messages another consumer left pending for
``claim_idle`` seconds (it died, or is stuck) are taken over with
``XAUTOCLAIM``; a message delivered more than ``max_deliveries`` times, or
whose payload the decoder rejects, goes to the dead-letter stream (with the
reason) and is acknowledged, so it never stops the group.

Needs ``pip install "talkpipe-async[redis]"`` and the asyncio backend.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Callable
from typing import Any

import anyio

from ._base import (
    AckToken,
    BatchWriter,
    BrokerSession,
    BrokerSink,
    BrokerSource,
    BrokerUnavailable,
    ConnectorStats,
    Message,
    import_client,
)

__all__ = [
    "RedisStreamSink", "RedisStreamSource", "RedisToken", "connect_redis", "default_consumer_name", "ensure_group",
]


def default_consumer_name() -> str:
    """``host-pid-random``: unique per process, readable in ``XINFO CONSUMERS``."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _json_decode(raw: bytes) -> Any:
    return json.loads(raw)


def _json_encode(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


async def connect_redis(url: str, *, retries: int = 3, connect_timeout: float = 2.0,
                        **options: Any) -> Any:
    """A ``redis.asyncio.Redis`` client for *url*, checked with ``PING``.

    Connection errors are retried ``retries`` times with exponential backoff
    (by the client, for every command); if the server is still unreachable,
    :class:`BrokerUnavailable` names the URL and the attempts.
    """
    redis = import_client("redis", "redis")
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff

    client = redis.asyncio.Redis.from_url(
        url,
        socket_connect_timeout=connect_timeout,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries),
        retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
        **options,
    )
    try:
        await client.ping()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as err:
        await client.aclose()
        raise BrokerUnavailable(f"redis at {url} is unreachable after {retries + 1} attempts: {err}") from err
    except BaseException:
        await client.aclose()
        raise
    return client


class RedisToken(AckToken):
    """Acknowledgement token of one Redis Streams delivery."""

    __slots__ = ("_session",)

    def __init__(self, session: _RedisSession, id: str, deliveries: int) -> None:
        super().__init__(id, deliveries)
        self._session = session

    async def ack(self) -> None:
        """Queue an ``XACK`` (sent in a batch, see the module doc)."""
        if self.settled:
            return
        self.settled = True
        await self._session.queue_ack(self.id)

    async def nak(self, delay: float | None = None) -> None:
        """Make the message claimable again after about *delay* seconds (default: at once).

        Redis has no negative acknowledgement: the message stays pending and
        its idle time is set (``XCLAIM ... IDLE ... JUSTID``) so that the next
        ``XAUTOCLAIM`` by any consumer of the group takes it.
        """
        if self.settled:
            return
        self.settled = True
        await self._session.nak(self.id, delay or 0.0)

    async def term(self, reason: str) -> None:
        """Copy the message to the dead-letter stream with *reason*, then ``XACK`` it."""
        if self.settled:
            return
        self.settled = True
        await self._session.dead_letter_ids([self.id], reason, self.deliveries)

    async def touch(self) -> None:
        """Reset the idle time (``XCLAIM ... JUSTID`` to this consumer) so no one reclaims it yet."""
        if not self.settled:
            await self._session.touch(self.id)


class _RedisSession(BrokerSession):
    def __init__(self, source: RedisStreamSource, client: Any) -> None:
        self.src = source
        self.client = client
        self.stats: ConnectorStats = source.stats
        self.stream = source.stream_name
        self.group = source.group
        self.consumer = source.consumer or default_consumer_name()
        self.acks: list[str] = []
        self.ack_waiting = anyio.Event()
        self.next_claim = 0.0
        self.cursor: Any = "0-0"

    async def queue_ack(self, id: str) -> None:
        acks = self.acks
        acks.append(id)
        self.stats.acked += 1
        if len(acks) >= self.src.ack_batch:
            await self.flush_acks()
        elif len(acks) == 1:
            self.ack_waiting.set()

    async def flush_acks(self) -> None:
        if not self.acks:
            return
        ids, self.acks = self.acks, []
        await self.client.xack(self.stream, self.group, *ids)

    async def nak(self, id: str, delay: float) -> None:
        self.stats.naked += 1
        idle_ms = max(0, int((self.src.claim_idle - delay) * 1000))
        await self.client.xclaim(self.stream, self.group, self.consumer, 0, [id], idle=idle_ms, justid=True)
        self.next_claim = 0.0
        self.cursor = "0-0"

    async def touch(self, id: str) -> None:
        await self.client.xclaim(self.stream, self.group, self.consumer, 0, [id], justid=True)

    async def dead_letter_ids(self, ids: list[str], reason: str, deliveries: int) -> None:
        """Copy each entry to the dead-letter stream, then acknowledge it, in one transaction."""
        if not ids:
            return
        entries = {}
        for id in ids:
            found = await self.client.xrange(self.stream, min=id, max=id, count=1)
            entries[id] = found[0][1] if found else {}
        await self._dead_letter({id: (fields, reason, deliveries) for id, fields in entries.items()})

    async def _dead_letter(self, items: dict[str, tuple[dict[Any, Any], str, int]]) -> None:
        if not items:
            return
        pipe = self.client.pipeline(transaction=True)
        for id, (fields, reason, deliveries) in items.items():
            entry = dict(fields)
            entry.update({"dlq_stream": self.stream, "dlq_group": self.group, "dlq_id": id,
                          "dlq_reason": reason, "dlq_deliveries": deliveries})
            pipe.xadd(self.src.dead_letter, entry, maxlen=self.src.dead_letter_maxlen, approximate=True)
        pipe.xack(self.stream, self.group, *items)
        await pipe.execute()
        self.stats.dead_lettered += len(items)

    def _decode(self, entries: list[Any], deliveries: dict[Any, int],
                poison: dict[str, tuple[dict[Any, Any], str, int]]) -> list[Message[Any]]:
        out: list[Message[Any]] = []
        decode = self.src.decode
        key = self.src.field_key
        max_deliveries = self.src.max_deliveries
        stats = self.stats
        for raw_id, fields in entries:
            id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
            count = deliveries.get(raw_id, 1)
            if fields is None:  # deleted from the stream while pending: nothing to deliver
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
            out.append(Message(data, RedisToken(self, id, count)))
        stats.delivered += len(out)
        return out

    async def _claim(self, count: int) -> list[Message[Any]]:
        self.stats.claims += 1
        result = await self.client.xautoclaim(
            self.stream, self.group, self.consumer, int(self.src.claim_idle * 1000), start_id=self.cursor, count=count
        )
        cursor, entries = result[0], result[1]
        if cursor in (b"0-0", "0-0"):
            self.next_claim = anyio.current_time() + self.src.claim_interval
            self.cursor = "0-0"
        else:
            self.cursor = cursor
        if not entries:
            return []
        pipe = self.client.pipeline(transaction=False)
        for raw_id, _ in entries:
            pipe.xpending_range(self.stream, self.group, min=raw_id, max=raw_id, count=1)
        deliveries: dict[Any, int] = {}
        for (raw_id, _), rows in zip(entries, await pipe.execute(), strict=True):
            deliveries[raw_id] = int(rows[0]["times_delivered"]) if rows else 2
        poison: dict[str, tuple[dict[Any, Any], str, int]] = {}
        messages = self._decode(entries, deliveries, poison)
        await self._dead_letter(poison)
        return messages

    async def read(self, count: int, wait: float) -> list[Message[Any]]:
        await self.flush_acks()
        if anyio.current_time() >= self.next_claim:
            claimed = await self._claim(count)
            if claimed:
                return claimed
        self.stats.reads += 1
        block = max(1, int(wait * 1000))
        response = await self.client.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=count,
                                                block=block)
        if not response:
            return []
        entries = response[0][1]
        poison: dict[str, tuple[dict[Any, Any], str, int]] = {}
        messages = self._decode(entries, {}, poison)
        if poison:
            await self._dead_letter(poison)
        return messages

    async def background(self) -> None:
        interval = self.src.ack_interval
        while True:
            await self.ack_waiting.wait()
            self.ack_waiting = anyio.Event()
            await anyio.sleep(interval)
            await self.flush_acks()

    async def aclose(self) -> None:
        try:
            await self.flush_acks()
        finally:
            await self.client.aclose()


class RedisStreamSource(BrokerSource):
    """Read *stream* through consumer group *group*; yield :class:`Message` items.

    Parameters:

    * ``url``: ``redis://host:port/db``; ``consumer``: this instance's name
      in the group (default ``host-pid-random``).
    * ``batch``: ``XREADGROUP COUNT`` (also the ``XAUTOCLAIM COUNT``); at most
      one batch is held by the source.  ``block``: seconds one read waits.
    * ``field``: the entry field holding the payload (None: the whole field
      dict is the payload); ``decode``: bytes -> payload (default
      ``json.loads``; None: raw bytes).  A payload that fails to decode is
      dead-lettered.
    * ``claim_idle``: seconds a pending message must sit unacknowledged
      before any consumer may take it over; ``claim_interval``: seconds
      between reclaim scans (default ``claim_idle / 2``); a scan that finds
      messages is continued on the next read until it has covered the
      whole pending list.
    * ``max_deliveries``: a message delivered more often than this goes to
      ``dead_letter`` (default ``"<stream>:dead"``), with the reason.
    * ``ack_batch`` / ``ack_interval``: acknowledgements are sent in one
      ``XACK`` per ``ack_batch`` ids or after ``ack_interval`` seconds.
    * ``create_group``: create the group (and stream) at ``start_id`` when
      missing (``"0"``: from the beginning; ``"$"``: only new entries).
    * ``idle_exit``: end the stream after this many seconds without a
      message (None: run until cancelled).
    * ``retries`` / ``timeout``: bounded connection retries (see
      :func:`connect_redis`).
    """

    def __init__(
        self,
        stream: str,
        group: str,
        *,
        url: str = "redis://127.0.0.1:6379/0",
        consumer: str | None = None,
        batch: int = 100,
        block: float = 1.0,
        field: str | None = "data",
        decode: Callable[[bytes], Any] | None = _json_decode,
        claim_idle: float = 30.0,
        claim_interval: float | None = None,
        max_deliveries: int = 5,
        dead_letter: str | None = None,
        dead_letter_maxlen: int | None = None,
        ack_batch: int | None = None,
        ack_interval: float = 0.05,
        create_group: bool = True,
        start_id: str = "0",
        idle_exit: float | None = None,
        retries: int = 3,
        timeout: float = 2.0,
        name: str | None = None,
    ) -> None:
        super().__init__(batch=batch, idle_exit=idle_exit, wait=block, name=name or f"redis:{stream}")
        self.stream_name = stream
        self.group = group
        self.url = url
        self.consumer = consumer
        self.field = field
        self.field_key = field.encode() if field is not None else None
        self.decode = decode
        self.claim_idle = claim_idle
        self.claim_interval = claim_interval if claim_interval is not None else max(claim_idle / 2, 0.05)
        self.max_deliveries = max_deliveries
        self.dead_letter = dead_letter or f"{stream}:dead"
        self.dead_letter_maxlen = dead_letter_maxlen
        self.ack_batch = ack_batch or batch
        self.ack_interval = ack_interval
        self.create_group = create_group
        self.start_id = start_id
        self.retries = retries
        self.timeout = timeout

    async def _open(self) -> BrokerSession:
        client = await connect_redis(self.url, retries=self.retries, connect_timeout=self.timeout)
        try:
            if self.create_group:
                await ensure_group(client, self.stream_name, self.group, self.start_id)
        except BaseException:
            await client.aclose()
            raise
        return _RedisSession(self, client)


async def ensure_group(client: Any, stream: str, group: str, start_id: str = "0") -> None:
    """Create consumer group *group* on *stream* (and the stream) unless it exists."""
    redis = import_client("redis", "redis")
    try:
        await client.xgroup_create(stream, group, id=start_id, mkstream=True)
    except redis.exceptions.ResponseError as err:
        if "BUSYGROUP" not in str(err):
            raise


class _RedisWriter(BatchWriter):
    def __init__(self, sink: RedisStreamSink, client: Any) -> None:
        self.sink = sink
        self.client = client

    async def write(self, payloads: list[Any]) -> None:
        sink = self.sink
        pipe = self.client.pipeline(transaction=False)
        for payload in payloads:
            fields = payload if sink.field is None else {sink.field: payload}
            pipe.xadd(sink.stream_name, fields, maxlen=sink.maxlen, approximate=sink.approximate)
        await pipe.execute()

    async def aclose(self) -> None:
        await self.client.aclose()


class RedisStreamSink(BrokerSink):
    """``XADD`` each item to *stream*, in pipelined batches; yield the items once written.

    The payload is ``encode(item)`` (a message's ``.data``), stored in
    ``field`` (None: the encoded value must be a field dict).  ``maxlen``
    caps the stream (``approximate=True``: ``MAXLEN ~``, cheaper).  Place
    ``ack()`` after the sink to acknowledge the source's messages once their
    results are written.
    """

    def __init__(
        self,
        stream: str,
        *,
        url: str = "redis://127.0.0.1:6379/0",
        batch: int = 100,
        field: str | None = "data",
        encode: Callable[[Any], Any] = _json_encode,
        maxlen: int | None = None,
        approximate: bool = True,
        retries: int = 3,
        timeout: float = 2.0,
        name: str | None = None,
    ) -> None:
        super().__init__(batch=batch, encode=encode, name=name or f"redis-sink:{stream}")
        self.stream_name = stream
        self.url = url
        self.field = field
        self.maxlen = maxlen
        self.approximate = approximate
        self.retries = retries
        self.timeout = timeout

    async def _open_writer(self) -> BatchWriter:
        client = await connect_redis(self.url, retries=self.retries, connect_timeout=self.timeout)
        return _RedisWriter(self, client)
