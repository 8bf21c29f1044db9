"""NATS JetStream: a durable pull-consumer source and a publish-ack sink.

``JetStreamSource`` binds to (or creates) the durable pull consumer
*durable* on *stream* and ``fetch``es at most ``batch`` messages per read,
as the pipeline pulls.  Every instance that uses the same durable shares the
work.  The server redelivers any message not acknowledged within
``ack_wait`` seconds (a dead or stuck instance), caps in-flight messages per
consumer at ``max_ack_pending``, and stops after ``max_deliveries + 1``
deliveries; the source dead-letters (publishes to ``dead_letter`` and
``term``s) a message delivered more than ``max_deliveries`` times or whose
payload the decoder rejects.

Needs ``pip install "talkpipe-async[nats]"`` and the asyncio backend.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

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

__all__ = ["JetStreamSink", "JetStreamSource", "JetStreamToken", "connect_nats"]

logger = logging.getLogger("talkpipe_async.connectors")


def _json_decode(raw: bytes) -> Any:
    return json.loads(raw)


def _json_encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


async def connect_nats(servers: str | list[str], *, retries: int = 3, connect_timeout: float = 2.0,
                        **options: Any) -> Any:
    """A connected ``nats.aio.client.Client``.

    The first connection is tried ``retries + 1`` times per server (0.1 s
    apart); then :class:`BrokerUnavailable` names the servers.  Later
    disconnections are retried by the client the same number of times.
    """
    nats = import_client("nats", "nats")
    errors: list[BaseException] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)
        logger.debug("nats client error: %r", exc)

    options.setdefault("error_cb", on_error)
    try:
        return await nats.connect(
            servers, connect_timeout=connect_timeout, max_reconnect_attempts=retries, reconnect_time_wait=0.1,
            allow_reconnect=True, **options,
        )
    except (nats.errors.NoServersError, OSError, asyncio.TimeoutError) as err:
        detail = f"{errors[-1]!r}" if errors else repr(err)
        raise BrokerUnavailable(f"nats at {servers} is unreachable after {retries + 1} attempts: {detail}") from err


class JetStreamToken(AckToken):
    """Acknowledgement token of one JetStream delivery."""

    __slots__ = ("_msg", "_session")

    def __init__(self, session: _JetStreamSession, msg: Any, id: str, deliveries: int) -> None:
        super().__init__(id, deliveries)
        self._session = session
        self._msg = msg

    async def ack(self) -> None:
        """``+ACK`` (sent without waiting for the server; flushed at the end of the run)."""
        if self.settled:
            return
        self.settled = True
        self._session.stats.acked += 1
        await self._msg.ack()

    async def nak(self, delay: float | None = None) -> None:
        """``-NAK``: redeliver (after *delay* seconds)."""
        if self.settled:
            return
        self.settled = True
        self._session.stats.naked += 1
        await self._msg.nak(delay=delay)

    async def term(self, reason: str) -> None:
        """Publish to the dead-letter subject with *reason*, then ``+TERM``."""
        if self.settled:
            return
        self.settled = True
        await self._session.dead_letter(self._msg, reason, self.deliveries)

    async def touch(self) -> None:
        """``+WPI``: still working, reset the ``ack_wait`` clock."""
        if not self.settled:
            await self._msg.in_progress()


class _JetStreamSession(BrokerSession):
    def __init__(self, source: JetStreamSource, nc: Any, js: Any, sub: Any) -> None:
        self.src = source
        self.nc = nc
        self.js = js
        self.sub = sub
        self.stats: ConnectorStats = source.stats

    async def dead_letter(self, msg: Any, reason: str, deliveries: int) -> None:
        src = self.src
        if src.dead_letter is not None:
            headers = {"dlq-stream": src.stream_name, "dlq-subject": msg.subject,
                       "dlq-seq": str(msg.metadata.sequence.stream), "dlq-reason": reason[:1000],
                       "dlq-deliveries": str(deliveries)}
            await self.js.publish(src.dead_letter, msg.data, headers=headers)
        else:
            logger.warning("%s: message %s terminated without a dead-letter subject: %s",
                           src.label, msg.metadata.sequence.stream, reason)
        await msg.term()
        self.stats.dead_lettered += 1

    async def read(self, count: int, wait: float) -> list[Message[Any]]:
        self.stats.reads += 1
        try:
            raw = await self.sub.fetch(count, timeout=max(wait, 0.01))
        except asyncio.TimeoutError:  # nats.errors.TimeoutError is a subclass; fetch raises either
            return []
        out: list[Message[Any]] = []
        src = self.src
        decode = src.decode
        max_deliveries = src.max_deliveries
        stats = self.stats
        for msg in raw:
            metadata = msg.metadata
            deliveries = metadata.num_delivered
            if deliveries > max_deliveries:
                await self.dead_letter(msg, f"delivered {deliveries} times (max_deliveries={max_deliveries})",
                                       deliveries)
                continue
            try:
                data = msg.data if decode is None else decode(msg.data)
            except Exception as exc:
                stats.malformed += 1
                await self.dead_letter(msg, f"malformed payload: {type(exc).__name__}: {exc}", deliveries)
                continue
            if deliveries > 1:
                stats.redelivered += 1
            out.append(Message(data, JetStreamToken(self, msg, str(metadata.sequence.stream), deliveries)))
        stats.delivered += len(out)
        return out

    async def aclose(self) -> None:
        try:
            if self.nc.is_connected:
                await self.nc.flush(timeout=2)
        finally:
            await self.nc.close()


class JetStreamSource(BrokerSource):
    """Fetch from the durable pull consumer *durable* of *stream*; yield :class:`Message` items.

    Parameters:

    * ``servers``: NATS URL(s); ``subject``: filter subject of the consumer
      (default: the whole stream).
    * ``batch``: messages per ``fetch``; ``fetch_wait``: seconds one fetch
      waits when the stream is empty.
    * ``ack_wait``: seconds before the server redelivers an unacknowledged
      message; ``max_ack_pending``: in-flight cap of the consumer (all
      instances together); ``max_deliveries``: more deliveries than this go
      to ``dead_letter`` (a subject some stream captures; None: terminated
      and logged as a warning, still counted).
    * ``decode``: bytes -> payload (default ``json.loads``; None: raw bytes).
    * ``create``: create or update the durable consumer with these settings
      (otherwise bind to an existing one).
    * ``idle_exit``: end the stream after this many seconds without a message.
    * ``retries`` / ``timeout``: bounded connection retries.
    """

    def __init__(
        self,
        stream: str,
        durable: str,
        *,
        servers: str | list[str] = "nats://127.0.0.1:4222",
        subject: str | None = None,
        batch: int = 100,
        fetch_wait: float = 1.0,
        ack_wait: float = 30.0,
        max_ack_pending: int = 1000,
        max_deliveries: int = 5,
        dead_letter: str | None = None,
        decode: Callable[[bytes], Any] | None = _json_decode,
        create: bool = True,
        idle_exit: float | None = None,
        retries: int = 3,
        timeout: float = 2.0,
        name: str | None = None,
    ) -> None:
        super().__init__(batch=batch, idle_exit=idle_exit, wait=fetch_wait, name=name or f"jetstream:{stream}")
        self.stream_name = stream
        self.durable = durable
        self.servers = servers
        self.subject = subject
        self.ack_wait = ack_wait
        self.max_ack_pending = max_ack_pending
        self.max_deliveries = max_deliveries
        self.dead_letter = dead_letter
        self.decode = decode
        self.create = create
        self.retries = retries
        self.timeout = timeout

    async def _open(self) -> BrokerSession:
        api = import_client("nats.js.api", "nats")
        nc = await connect_nats(self.servers, retries=self.retries, connect_timeout=self.timeout)
        try:
            js = nc.jetstream()
            if self.create:
                config = api.ConsumerConfig(
                    durable_name=self.durable,
                    ack_policy=api.AckPolicy.EXPLICIT,
                    ack_wait=self.ack_wait,
                    max_deliver=self.max_deliveries + 1,
                    max_ack_pending=self.max_ack_pending,
                    filter_subject=self.subject,
                )
                await js.add_consumer(self.stream_name, config=config)
            sub = await js.pull_subscribe_bind(self.durable, stream=self.stream_name)
        except BaseException:
            await nc.close()
            raise
        return _JetStreamSession(self, nc, js, sub)


class _JetStreamWriter(BatchWriter):
    def __init__(self, sink: JetStreamSink, nc: Any, js: Any) -> None:
        self.sink = sink
        self.nc = nc
        self.js = js

    async def write(self, payloads: list[Any]) -> None:
        js = self.js
        subject = self.sink.subject
        futures = [await js.publish_async(subject, payload) for payload in payloads]
        await asyncio.gather(*futures)

    async def aclose(self) -> None:
        await self.nc.close()


class JetStreamSink(BrokerSink):
    """Publish each item to *subject* and wait for the JetStream acknowledgements, per batch.

    A batch's messages are published back to back and the sink yields them
    only once the server has stored every one (a failed publish raises,
    naming the subject).  Place ``ack()`` after the sink to acknowledge the
    source's messages once their results are stored.
    """

    def __init__(
        self,
        subject: str,
        *,
        servers: str | list[str] = "nats://127.0.0.1:4222",
        batch: int = 100,
        encode: Callable[[Any], bytes] = _json_encode,
        retries: int = 3,
        timeout: float = 2.0,
        name: str | None = None,
    ) -> None:
        super().__init__(batch=batch, encode=encode, name=name or f"jetstream-sink:{subject}")
        self.subject = subject
        self.servers = servers
        self.retries = retries
        self.timeout = timeout

    async def _open_writer(self) -> BatchWriter:
        nc = await connect_nats(self.servers, retries=self.retries, connect_timeout=self.timeout)
        return _JetStreamWriter(self, nc, nc.jetstream())
