"""Redis Streams: a consumer-group source and a batched XADD sink.

``redis_stream_messages`` reads through a consumer group with ``XREADGROUP
COUNT batch BLOCK ms``, one batch at a time as the pipeline pulls.
Acknowledgements (``XACK``) are buffered and sent in one command: when
``ack_batch`` are waiting, before the next read, every ``ack_interval``
seconds, and when the run ends.  Messages another consumer left pending for
``claim_idle`` seconds (it died, or is stuck), or handed back when it
stopped, are taken over one at a time (``XPENDING ... IDLE`` then
``XCLAIM``) and handed downstream alone; a message delivered more than
``max_deliveries`` times, or whose payload the decoder rejects, goes to the
dead-letter stream (with the reason) and is acknowledged.  Every command
rides out a broker outage for ``outage_budget`` seconds (see ``_outage``).

Needs ``pip install "talkpipe-async[redis]"`` and the asyncio backend.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from .._renamed import old_name
from ._base import (
    BatchWriter,
    BrokerSession,
    BrokerSink,
    BrokerSource,
    import_client,
)
from ._outage import DEFAULT_OUTAGE_BUDGET, BrokerUnavailable, OutageGuard, stage_call_timeout
from ._partitions import KeyOf, check_partitions
from ._redis_partitions import RedisPartitionSession
from ._redis_session import RedisSession, RedisToken

__all__ = [
    "to_redis_stream", "redis_stream_messages", "RedisToken", "connect_redis", "default_consumer_name", "ensure_group",
]


def default_consumer_name() -> str:
    """``host-pid-random``: unique per process, readable in ``XINFO CONSUMERS``."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _json_encode(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def redis_transient() -> tuple[type[BaseException], ...]:
    """The redis-py errors that mean "the server is unreachable now" (refused, reset, loading, timeout)."""
    redis = import_client("redis", "redis")
    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def _reply_timeout(timeout: float, block: float = 0.0) -> float:
    """How long the client waits for one reply: past the stages' own deadline for one call.

    That deadline is :func:`stage_call_timeout`, plus the time a blocking
    read asks the server to wait.  redis-py's own default (5 s) would cut a
    healthy read that blocks longer and report it as an outage; with this
    bound the outage guard decides when a call has failed, and a command
    sent outside the guard (creating a group) still cannot hang forever.
    """
    return stage_call_timeout(timeout) + block + 1.0


async def connect_redis(url: str, *, retries: int = 3, connect_timeout: float = 2.0,
                        **options: Any) -> Any:
    """A ``redis.asyncio.Redis`` client for *url*, checked with ``PING``.

    The first connection is tried ``retries + 1`` times with exponential
    backoff; if the server is still unreachable, :class:`BrokerUnavailable`
    names the URL and the attempts.  The client itself does not retry
    commands: the stages retry through an outage within their
    ``outage_budget`` (see :class:`~talkpipe_async.connectors._outage.OutageGuard`).
    """
    redis = import_client("redis", "redis")
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    client = redis.asyncio.Redis.from_url(
        url, socket_connect_timeout=connect_timeout, retry=Retry(NoBackoff(), 0), **options,
    )
    transient: tuple[type[BaseException], ...] = (*redis_transient(), TimeoutError)
    try:
        for attempt in range(retries + 1):
            try:
                with anyio.fail_after(connect_timeout + 1.0):
                    await client.ping()
                break
            except transient as err:
                if attempt == retries:
                    raise BrokerUnavailable(
                        f"redis at {url} is unreachable after {retries + 1} attempts: {err}") from err
                await anyio.sleep(min(1.0, 0.05 * 2 ** attempt))
    except BaseException:
        await client.aclose()
        raise
    return client


class redis_stream_messages(BrokerSource):
    """Read *stream* through consumer group *group*; yield :class:`Message` items.

    Parameters:

    * ``url``: ``redis://host:port/db``; ``consumer``: this instance's name
      in the group (default ``host-pid-random``).
    * ``batch``: ``XREADGROUP COUNT``; at most one batch is held by the
      source.  ``block``: seconds one read waits.
    * ``field``: the entry field holding the payload (None: the whole field
      dict is the payload); ``decode``: bytes -> payload (default
      ``json.loads``; None: raw bytes).  A payload that fails to decode is
      dead-lettered.
    * ``claim_idle``: seconds a pending message must sit unacknowledged
      before any consumer may take it over; ``claim_interval``: seconds
      between reclaim scans when the last one found nothing (default
      ``claim_idle / 2``, at most 1 s).  Taken-over messages come one at a
      time: each is handed downstream once everything before it is settled,
      and the next waits for it (at most ``isolate_timeout`` s), so a poison
      message fails alone and its batch-mates' delivery counts do not grow.
    * ``max_deliveries``: a message delivered more often than this goes to
      ``dead_letter`` (default ``"<stream>:dead"``), with the reason.
    * ``ack_batch`` / ``ack_interval``: acknowledgements are sent in one
      ``XACK`` per ``ack_batch`` ids or after ``ack_interval`` seconds.
    * ``create_group``: create the group (and stream) at ``start_id`` when
      missing (``"0"``: from the beginning; ``"$"``: only new entries).
    * ``idle_exit``: end the stream after this many seconds without a
      message (None: run until cancelled; with ``partitions``, the time spent
      waiting for a partition handed over to this instance does not count).
    * ``retries`` / ``timeout``: bounded retries of the first connection
      (see :func:`connect_redis`).
    * ``outage_budget``: seconds every later command keeps retrying an
      unreachable server (backoff, warnings logged) before the run fails
      with :class:`BrokerUnavailable`; the consumer name and its pending
      entries are kept across the outage.
    * When the run ends, entries this consumer still owns are handed back:
      ``XCLAIM ... IDLE <large> JUSTID`` makes them claimable by the others'
      next scan at once, without raising their delivery counts.
    * ``partitions``: read the partition streams ``<stream>:0`` ..
      ``<stream>:<n-1>`` written by a sink with ``key=``, each owned by one
      instance at a time through a lease renewed every ``lease_ttl / 3``
      seconds and lapsing after ``lease_ttl``; within a partition entries
      are handled strictly in order (see ``docs/scale-out.md``,
      Partitioning).  ``claim_idle`` does not apply: a new owner takes over
      what is pending in its partition first.
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
        decode: Callable[[bytes], Any] | None = json.loads,
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
        outage_budget: float = DEFAULT_OUTAGE_BUDGET,
        isolate_timeout: float = 10.0,
        partitions: int | None = None,
        lease_ttl: float = 5.0,
        name: str | None = None,
    ) -> None:
        super().__init__(batch=batch, idle_exit=idle_exit, wait=block, name=name or f"redis:{stream}",
                         isolate_timeout=isolate_timeout)
        if partitions is not None:
            check_partitions(partitions)
        if lease_ttl <= 0:
            raise ValueError("lease_ttl must be positive")
        self.partitions = partitions
        self.lease_ttl = lease_ttl
        self.owned_partitions: list[int] = []
        """The partitions this source holds the lease of now (``partitions=n``)."""
        self.stream_name = stream
        self.group = group
        self.url = url
        self.consumer = consumer
        self.field = field
        self.field_key = field.encode() if field is not None else None
        self.decode = decode
        self.claim_idle = claim_idle
        self.claim_interval = claim_interval if claim_interval is not None else min(max(claim_idle / 2, 0.05), 1.0)
        self.max_deliveries = max_deliveries
        self.dead_letter = dead_letter or f"{stream}:dead"
        self.dead_letter_maxlen = dead_letter_maxlen
        self.ack_batch = ack_batch or batch
        self.ack_interval = ack_interval
        self.create_group = create_group
        self.start_id = start_id
        self.retries = retries
        self.timeout = timeout
        self.outage_budget = outage_budget

    async def _open(self) -> BrokerSession:
        client = await connect_redis(self.url, retries=self.retries, connect_timeout=self.timeout,
                                     socket_timeout=_reply_timeout(self.timeout, self.wait))
        if self.partitions is not None:
            session = RedisPartitionSession(self, client, self.consumer or default_consumer_name(), redis_transient())
            try:
                await session.start()
            except BaseException:
                await client.aclose()
                raise
            return session
        try:
            if self.create_group:
                await ensure_group(client, self.stream_name, self.group, self.start_id)
        except BaseException:
            await client.aclose()
            raise
        return RedisSession(self, client, self.consumer or default_consumer_name(), redis_transient())


async def ensure_group(client: Any, stream: str, group: str, start_id: str = "0") -> None:
    """Create consumer group *group* on *stream* (and the stream) unless it exists."""
    redis = import_client("redis", "redis")
    try:
        await client.xgroup_create(stream, group, id=start_id, mkstream=True)
    except redis.exceptions.ResponseError as err:
        if "BUSYGROUP" not in str(err):
            raise


class _RedisWriter(BatchWriter):
    def __init__(self, sink: to_redis_stream, client: Any) -> None:
        self.sink = sink
        self.client = client
        self.guard = OutageGuard(sink.label, f"redis at {sink.url}", sink.outage_budget, redis_transient(),
                                 call_timeout=stage_call_timeout(sink.timeout), on_outage=self._outage_started)

    def _outage_started(self) -> None:
        self.sink.stats.outages += 1

    async def write(self, payloads: list[Any], partitions: list[int] | None = None) -> None:
        sink = self.sink
        attempts = 0
        streams = [sink.stream_name] * len(payloads) if partitions is None else \
            [f"{sink.stream_name}:{p}" for p in partitions]

        async def attempt() -> Any:
            nonlocal attempts
            attempts += 1
            if attempts > 1:  # the failed round trip may have stored some of them: at least once
                sink.stats.rewritten += len(payloads)
            pipe = self.client.pipeline(transaction=False)
            for stream, payload in zip(streams, payloads, strict=True):
                fields = payload if sink.field is None else {sink.field: payload}
                pipe.xadd(stream, fields, maxlen=sink.maxlen, approximate=sink.approximate)
            return await pipe.execute()

        await self.guard.call("XADD", attempt)

    async def aclose(self) -> None:
        await self.client.aclose()


class to_redis_stream(BrokerSink):
    """``XADD`` each item to *stream*, in pipelined batches; yield the items once written.

    The payload is ``encode(item)`` (a message's ``.data``), stored in
    ``field`` (None: the encoded value must be a field dict).  ``maxlen``
    caps the stream (``approximate=True``: ``MAXLEN ~``, cheaper).  Place
    ``ack()`` after the sink to acknowledge the source's messages once their
    results are written.  ``key`` (a field name of the payload, or a
    function of it) with ``partitions=n``: each item goes to stream
    ``<stream>:<crc32(key) % n>``, read by ``redis_stream_messages(...,
    partitions=n)`` in order per key.
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
        outage_budget: float = DEFAULT_OUTAGE_BUDGET,
        key: KeyOf | None = None,
        partitions: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(batch=batch, encode=encode, name=name or f"redis-sink:{stream}", key=key,
                         partitions=partitions)
        self.stream_name = stream
        self.url = url
        self.field = field
        self.maxlen = maxlen
        self.approximate = approximate
        self.retries = retries
        self.timeout = timeout
        self.outage_budget = outage_budget

    async def _open_writer(self) -> BatchWriter:
        client = await connect_redis(self.url, retries=self.retries, connect_timeout=self.timeout,
                                     socket_timeout=_reply_timeout(self.timeout))
        return _RedisWriter(self, client)


# The names these stages had before connector stages were named like every other stage: kept for one release.
if TYPE_CHECKING:
    from typing_extensions import deprecated

    @deprecated("RedisStreamSource is deprecated: use redis_stream_messages")
    class RedisStreamSource(redis_stream_messages):
        """Deprecated name of :class:`redis_stream_messages`."""

    @deprecated("RedisStreamSink is deprecated: use to_redis_stream")
    class RedisStreamSink(to_redis_stream):
        """Deprecated name of :class:`to_redis_stream`."""

else:
    _RENAMED = {
        "RedisStreamSource": ("redis_stream_messages", redis_stream_messages),
        "RedisStreamSink": ("to_redis_stream", to_redis_stream),
    }

    def __getattr__(name: str) -> Any:
        return old_name(__name__, name, _RENAMED)
