"""NATS JetStream: a durable pull-consumer source and a publish-ack sink.

``jetstream_messages`` binds to (or creates) the durable pull consumer
*durable* on *stream* and ``fetch``es at most ``batch`` messages per read,
as the pipeline pulls.  Every instance that uses the same durable shares the
work.  The server redelivers any message not acknowledged within
``ack_wait`` seconds (a dead or stuck instance), caps in-flight messages per
consumer at ``max_ack_pending``, and stops after ``max_deliveries + 1``
deliveries; the source dead-letters (publishes to ``dead_letter`` and
``term``s) a message delivered more than ``max_deliveries`` times or whose
payload the decoder rejects.  A redelivered message is handed downstream
alone (fetched one at a time while redeliveries come), so a poison message
fails alone.  Through a broker outage the client reconnects for
``outage_budget`` seconds (the durable consumer keeps its state on the
server); then the run fails with :class:`BrokerUnavailable`.

Needs ``pip install "talkpipe-async[nats]"`` and the asyncio backend.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import anyio

from .._renamed import old_name
from ._base import (
    AckToken,
    BatchWriter,
    BrokerSession,
    BrokerSink,
    BrokerSource,
    ConnectorStats,
    Message,
    import_client,
)
from ._outage import DEFAULT_OUTAGE_BUDGET, BrokerUnavailable, OutageGuard, stage_call_timeout
from ._partitions import KeyOf, check_partitions

__all__ = ["to_jetstream", "jetstream_messages", "JetStreamToken", "NatsLink", "confirm_sent", "connect_nats",
           "nats_transient"]

logger = logging.getLogger("talkpipe_async.connectors")

CULPRIT_DELAY = 2.0
"""Seconds before a message that was in progress alone when its run failed is delivered again: the messages
handed back with it are handled first."""


def _delivery(msg: Any) -> tuple[int, str]:
    """(delivery count, stream sequence) of a JetStream message, read from its reply subject.

    The reply is ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>...``
    (9 tokens) or, with a domain and an account hash, 11 or 12 tokens; the
    client's ``msg.metadata`` parses the same subject into several objects.
    """
    tokens = msg.reply.split(".")
    n = len(tokens)
    if n == 9:
        return int(tokens[4]), tokens[5]
    if n >= 11 and tokens[0] == "$JS":
        return int(tokens[6]), tokens[7]
    metadata = msg.metadata  # raises the client's own error for a message that is not from JetStream
    return int(metadata.num_delivered), str(metadata.sequence.stream)


def _nats(module: str = "nats") -> Any:
    """nats-py (or one of its modules, such as ``nats.js.api``); :class:`MissingClient` names the extra to install."""
    return import_client(module, "nats")


def _json_encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def nats_transient() -> tuple[type[BaseException], ...]:
    """The nats-py errors that mean "the server is unreachable or not ready now"."""
    nats = _nats()
    e, j = nats.errors, nats.js.errors
    return (e.ConnectionClosedError, e.ConnectionReconnectingError, e.OutboundBufferLimitError,
            e.NoRespondersError, e.StaleConnectionError, e.FlushTimeoutError, e.TimeoutError,
            j.ServiceUnavailableError, j.TooManyStalledMsgsError, OSError, asyncio.TimeoutError)


async def confirm_sent(nc: Any, within: float) -> None:
    """Return once the server has read everything *nc* sent before (acknowledgements): one request and its reply.

    Not ``nc.flush()``: a flush cut by its timeout leaves a cancelled future
    waiting for its PONG, and when that PONG arrives late, nats-py's read loop
    ends on the error while the connection stays open, so nothing the server
    sends is read again (every later call times out). A request cut short is
    forgotten cleanly and its late reply dropped.  The JetStream API answers
    it; without JetStream the server's "no responders" reply is the same
    round trip.
    """
    nats = _nats()
    try:
        await nc.request("$JS.API.INFO", b"", timeout=within)
    except nats.errors.NoRespondersError:
        return


async def close_nats(nc: Any) -> None:
    """Close a client; a connection already lost (the server went away) is not an error here."""
    try:
        await nc.close()
    except Exception as exc:  # OSError, or RuntimeError from uvloop's closed transport
        logger.debug("nats close after a lost connection: %r", exc)


class NatsLink:
    """A connection and what it went through: when it was lost, whether it ever was, what JetStream refused."""

    def __init__(self) -> None:
        self.nc: Any = None
        self.down_since: float | None = None
        self.ever_down = False
        self.on_refusal: Callable[[BaseException], None] | None = None
        """Called with JetStream's error answer to an asynchronous publish: nats-py raises that answer in the
        client's error callback instead of on the publish's future, which it leaves pending."""

    async def disconnected(self) -> None:
        """Client callback: the connection was lost (the client reconnects)."""
        if self.down_since is None:
            self.down_since = anyio.current_time()
        self.ever_down = True

    async def reconnected(self) -> None:
        """Client callback: connected again."""
        self.down_since = None


class _OutOfAttempts(Exception):
    """The first connection failed ``retries + 1`` times."""


async def connect_nats(servers: str | list[str], *, retries: int = 3, connect_timeout: float = 2.0,
                       link: NatsLink | None = None, **options: Any) -> Any:
    """A connected ``nats.aio.client.Client``.

    The first connection is tried ``retries + 1`` times per server (0.1 s
    apart); then :class:`BrokerUnavailable` names the servers.  Once
    connected, the client reconnects without a limit of attempts: the stages
    bound an outage in time (``outage_budget``) and close the client then.
    *link* records disconnections.
    """
    nats = _nats()
    errors: list[BaseException] = []
    user_error_cb = options.pop("error_cb", None)
    connected = False

    async def on_error(exc: Exception) -> None:
        errors.append(exc)
        logger.debug("nats client error: %r", exc)
        if link is not None and link.on_refusal is not None and isinstance(exc, nats.js.errors.APIError):
            link.on_refusal(exc)
        if user_error_cb is not None:
            await user_error_cb(exc)
        # nats-py's own count of first attempts reads 0 as "no limit" and differs by failure: count them here
        if not connected and len(errors) > retries:
            raise _OutOfAttempts

    if link is not None:
        options.setdefault("disconnected_cb", link.disconnected)
        options.setdefault("reconnected_cb", link.reconnected)
    nc = nats.aio.client.Client()
    try:
        await nc.connect(  # a limit, never -1: with no server left to try, nats-py would spin without awaiting
            servers, connect_timeout=connect_timeout, max_reconnect_attempts=max(retries, 1), reconnect_time_wait=0.1,
            allow_reconnect=True, error_cb=on_error, **options,
        )
    except (_OutOfAttempts, nats.errors.Error, OSError, asyncio.TimeoutError) as err:
        await close_nats(nc)
        detail = f"{errors[-1]!r}" if errors else repr(err)
        raise BrokerUnavailable(f"nats at {servers} is unreachable after {retries + 1} attempts: {detail}") from err
    connected = True
    nc.options["max_reconnect_attempts"] = -1
    nc.options["reconnect_time_wait"] = 0.25
    if link is not None:
        link.nc = nc
    return nc


class JetStreamToken(AckToken):
    """Acknowledgement token of one JetStream delivery."""

    __slots__ = ("_msg", "_session")

    def __init__(self, session: _JetStreamSession, msg: Any, id: str, deliveries: int, suspect: bool) -> None:
        # AckToken.__init__, written out: one token per message
        self.id = id
        self.deliveries = deliveries
        self.settled = False
        self.suspect = suspect
        self._tracker = None
        self._session = session
        self._msg = msg

    async def ack(self) -> None:
        """``+ACK`` (sent without waiting for the server; flushed at the end of the run)."""
        if self.settled:
            return
        # AckToken._settle written out: this runs once per message
        self.settled = True
        tracker = self._tracker
        if tracker is not None:
            held = tracker.held
            held.pop(self.id, None)
            if not held and tracker._drained is not None:
                tracker._drained.set()
        self._session.stats.acked += 1
        await self._msg.ack()

    async def nak(self, delay: float | None = None) -> None:
        """``-NAK``: redeliver (after *delay* seconds)."""
        if self._settle():
            self._session.stats.nacked += 1
            await self._msg.nak(delay=delay)

    async def term(self, reason: str) -> None:
        """Publish to the dead-letter subject with *reason*, then ``+TERM``."""
        if self._settle():
            await self._session.dead_letter(self._msg, reason, self.deliveries)

    async def touch(self) -> None:
        """``+WPI``: still working, reset the ``ack_wait`` clock."""
        if not self.settled:
            await self._msg.in_progress()


class _JetStreamSession(BrokerSession):
    def __init__(self, source: jetstream_messages, link: NatsLink, js: Any, sub: Any) -> None:
        super().__init__()
        self.src = source
        self.link = link
        self.nc = link.nc
        self.js = js
        self.sub = sub
        self.stats: ConnectorStats = source.stats
        self.isolating = False
        self.keep_order = False  # a partition is handled in order: suspects are not moved after fresh messages
        self.guard = OutageGuard(source.label, f"nats at {source.servers}", source.outage_budget, nats_transient(),
                                 call_timeout=stage_call_timeout(source.timeout), on_outage=self._outage_started)

    def _outage_started(self) -> None:
        self.stats.outages += 1

    async def dead_letter(self, msg: Any, reason: str, deliveries: int) -> None:
        src = self.src
        if src.dead_letter_subject is not None:
            headers = {"dlq-stream": src.stream_name, "dlq-subject": msg.subject,
                       "dlq-seq": str(msg.metadata.sequence.stream), "dlq-reason": reason[:1000],
                       "dlq-deliveries": str(deliveries)}
            await self.guard.call("dead-letter publish", self.js.publish, src.dead_letter_subject, msg.data,
                                  headers=headers, timeout=src.timeout)
            logger.warning("%s: message %s moved to %s: %s", src.label, msg.metadata.sequence.stream,
                           src.dead_letter_subject, reason)
        else:
            logger.warning("%s: message %s terminated and dropped (dead_letter=False): %s",
                           src.label, msg.metadata.sequence.stream, reason)
        await msg.term()
        self.stats.dead_lettered += 1

    async def _fetch(self, count: int, wait: float) -> list[Any]:
        try:
            return list(await self.sub.fetch(count, timeout=wait))
        except asyncio.TimeoutError:  # nats.errors.TimeoutError is a subclass; fetch raises either
            if self.link.down_since is None and self.nc.is_connected:
                return []
            raise _nats().errors.ConnectionReconnectingError() from None

    async def read(self, count: int, wait: float) -> list[Any]:
        self.stats.reads += 1
        raw = await self.guard.call("fetch", self._fetch, 1 if self.isolating else count, max(wait, 0.01),
                                    deadline_extra=wait)
        out: list[Message[Any]] = []
        src = self.src
        decode = src.decode
        max_deliveries = src.max_deliveries
        stats = self.stats
        suspects = 0
        for msg in raw:
            deliveries, seq = _delivery(msg)
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
                suspects += 1
            out.append(Message(data, JetStreamToken(self, msg, seq, deliveries, deliveries > 1)))
        stats.delivered += len(out)
        # while redeliveries come, fetch one at a time (a delivery raises only the fetched message's count)
        self.isolating = suspects > 0
        if suspects and suspects < len(out) and not self.keep_order:
            out.sort(key=lambda m: m.token.suspect)  # fresh messages first, then the suspects one by one
        return out

    async def hand_back(self, tokens: list[AckToken]) -> None:
        """``-NAK`` each: the server delivers them again at once (to any instance)."""
        for token in tokens:
            await token.nak()
            self.stats.handed_back += 1

    async def aclose(self) -> None:
        try:
            for token in self.leftovers():
                # a redelivered message still in progress alone when the run ended is the likely culprit:
                # it comes back a little later, after the others handed back with it
                if token.suspect and token.id in self.held:
                    await token.nak(CULPRIT_DELAY)
                else:
                    await token.nak()
                self.stats.handed_back += 1
            if self.nc.is_connected:
                await confirm_sent(self.nc, 2)
        except Exception as exc:  # the run's own error (if any) is what the caller sees
            logger.warning("%s: could not send the last acknowledgements or hand back messages (%s: %s); "
                           "they are redelivered after ack_wait", self.src.label, type(exc).__name__, exc)
        finally:
            await close_nats(self.nc)


DeadLetter = str | Literal[False] | None


class jetstream_messages(BrokerSource):
    """Fetch from the durable pull consumer *durable* of *stream*; yield :class:`Message` items.

    Parameters:

    * ``servers``: NATS URL(s); ``subject``: filter subject of the consumer
      (default: the whole stream).
    * ``batch``: messages per ``fetch``; ``fetch_wait``: seconds one fetch
      waits when the stream is empty.
    * ``ack_wait``: seconds before the server redelivers an unacknowledged
      message; ``max_ack_pending``: in-flight cap of the consumer (all
      instances together); ``max_deliveries``: more deliveries than this go
      to the dead letter.
    * ``dead_letter``: None (default): a copy goes to subject
      ``dlq.<stream>``, stored in stream ``<stream>_DLQ`` (created when
      missing); a subject: published there (some stream must store it);
      ``False``: terminated and dropped, logged as a warning and counted
      (an explicit choice to lose poison messages).
    * ``decode``: bytes -> payload (default ``json.loads``; None: raw bytes).
    * ``create``: create or update the durable consumer with these settings
      (otherwise bind to an existing one).
    * ``idle_exit``: end the stream after this many seconds without a message
      (with ``partitions``, the time spent waiting for a partition handed over
      to this instance does not count).
    * ``retries`` / ``timeout``: bounded retries of the first connection.
    * ``outage_budget``: seconds the source rides out a lost connection
      (the client reconnects; warnings logged) before the run fails with
      :class:`BrokerUnavailable`.
    * Redelivered messages are fetched and handed downstream one at a time;
      when the run ends, messages not settled are handed back (``-NAK``).
    * ``partitions``: read the partition subjects ``<subject>.0`` ..
      ``<subject>.<n-1>`` written by a sink with ``key=``, each through its
      own durable ``<durable>_<i>`` and owned by one instance at a time
      through a lease (KV bucket ``<stream>_<durable>_leases``, lapsing
      after ``lease_ttl``); ``consumer`` names this instance (default
      ``host-pid-random``).  See ``docs/scale-out.md``, Partitioning.
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
        dead_letter: DeadLetter = None,
        decode: Callable[[bytes], Any] | None = json.loads,
        create: bool = True,
        idle_exit: float | None = None,
        retries: int = 3,
        timeout: float = 2.0,
        outage_budget: float = DEFAULT_OUTAGE_BUDGET,
        isolate_timeout: float = 10.0,
        partitions: int | None = None,
        lease_ttl: float = 5.0,
        consumer: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(batch=batch, idle_exit=idle_exit, wait=fetch_wait, name=name or f"jetstream:{stream}",
                         isolate_timeout=isolate_timeout)
        if partitions is not None:
            check_partitions(partitions)
            if subject is None:
                raise ValueError("partitions= needs subject=: the partitions are <subject>.0 .. <subject>.<n-1>")
        if lease_ttl <= 0:
            raise ValueError("lease_ttl must be positive")
        self.partitions = partitions
        self.lease_ttl = lease_ttl
        self.consumer = consumer
        self.owned_partitions: list[int] = []
        """The partitions this source holds the lease of now (``partitions=n``)."""
        self.stream_name = stream
        self.durable = durable
        self.servers = servers
        self.subject = subject
        self.ack_wait = ack_wait
        self.max_ack_pending = max_ack_pending
        self.max_deliveries = max_deliveries
        self.dead_letter = dead_letter
        self.dead_letter_subject: str | None = (
            f"dlq.{stream}" if dead_letter is None else (dead_letter or None))
        self.decode = decode
        self.create = create
        self.retries = retries
        self.timeout = timeout
        self.outage_budget = outage_budget

    async def _ensure_dead_letter_stream(self, js: Any) -> None:
        nats = _nats()
        name = f"{self.stream_name}_DLQ"
        try:
            await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            await js.add_stream(name=name, subjects=[f"dlq.{self.stream_name}"])

    async def _open(self) -> BrokerSession:
        api = _nats("nats.js.api")
        link = NatsLink()
        nc = await connect_nats(self.servers, retries=self.retries, connect_timeout=self.timeout, link=link)
        if self.partitions is not None:
            return await self._open_partitions(link, nc)
        try:
            js = nc.jetstream()
            if self.create:
                if self.dead_letter is None:
                    await self._ensure_dead_letter_stream(js)
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
        return _JetStreamSession(self, link, js, sub)

    async def _open_partitions(self, link: NatsLink, nc: Any) -> BrokerSession:
        from ._nats_partitions import NatsPartitionSession
        from .redis import default_consumer_name

        try:
            js = nc.jetstream()
            if self.dead_letter is None:
                await self._ensure_dead_letter_stream(js)
            session = NatsPartitionSession(self, link, js, self.consumer or default_consumer_name())
            await session.start()
        except BaseException:
            await nc.close()
            raise
        return session


class _JetStreamWriter(BatchWriter):
    def __init__(self, sink: to_jetstream, link: NatsLink) -> None:
        self.sink = sink
        self.link = link
        self.nc = link.nc
        self.js = link.nc.jetstream()
        self.prefix = uuid.uuid4().hex
        self.sequence = 0
        # the writer bounds each publish itself (``timeout``) and reports to the guard: it makes no guarded call
        self.guard = OutageGuard(sink.label, f"nats at {sink.servers}", sink.outage_budget, nats_transient(),
                                 on_outage=self._outage_started)
        self.no_stream = _nats().js.errors.NoStreamResponseError
        self.in_flight: dict[int, asyncio.Future[Any]] = {}
        link.on_refusal = self._refused

    def _outage_started(self) -> None:
        self.sink.stats.outages += 1

    def _refused(self, exc: BaseException) -> None:
        """JetStream refused a message in flight (nats-py does not say which): each one still waiting fails with
        that answer, so the batch ends at once instead of at its deadline."""
        for future in self.in_flight.values():
            if not future.done():
                future.set_exception(exc)

    async def _retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, self.guard.transient):
            return True
        if not isinstance(exc, self.no_stream):
            return False
        # "no responders": no stream stores the subject, or JetStream is shutting down or not recovered yet
        # (a restart); only a JetStream that answers "no stream matches" makes it final
        if self.link.ever_down:
            return True
        nats = _nats()
        try:
            with anyio.fail_after(self.sink.timeout):
                await self.js.find_stream_name_by_subject(self.sink.subject)
        except nats.js.errors.NotFoundError:
            return False
        except Exception:  # JetStream does not answer: unavailable, not misconfigured
            return True
        return True

    async def write(self, payloads: list[Any], partitions: list[int] | None = None) -> None:
        sink = self.sink
        subjects = [sink.subject] * len(payloads) if partitions is None else \
            [f"{sink.subject}.{p}" for p in partitions]
        ids: list[str | None] = [None] * len(payloads)
        if sink.dedup:
            base = self.sequence
            self.sequence += len(payloads)
            ids = [f"{self.prefix}-{base + i}" for i in range(len(payloads))]
        todo = list(range(len(payloads)))
        while todo:
            failed, cause = await self._publish(payloads, subjects, ids, todo)
            if not failed:
                self.guard.recovered()
                return
            if cause is not None and not await self._retryable(cause):
                raise cause
            sink.stats.rewritten += len(failed)
            await self.guard.failed("publish", cause or TimeoutError("no publish acknowledgement in time"))
            todo = failed

    async def _publish(self, payloads: list[Any], subjects: list[str], ids: list[str | None],
                       todo: list[int]) -> tuple[list[int], BaseException | None]:
        """Publish *todo*; return those not stored in time (and the last error) once all settled or timed out."""
        js = self.js
        futures: dict[int, asyncio.Future[Any]] = {}
        self.in_flight = futures
        cause: BaseException | None = None
        try:
            for i in todo:
                headers = None if ids[i] is None else {"Nats-Msg-Id": ids[i]}
                futures[i] = await js.publish_async(subjects[i], payloads[i], headers=headers,
                                                    wait_stall=self.sink.timeout)
        except self.guard.transient as exc:
            cause = exc
        if futures:
            await asyncio.wait(list(futures.values()), timeout=self.sink.timeout)
        failed = [i for i in todo if i not in futures]
        for i, future in futures.items():
            if not future.done():
                future.cancel()
                failed.append(i)
            elif future.cancelled():
                failed.append(i)
            elif future.exception() is not None:
                cause = future.exception()
                failed.append(i)
        return sorted(failed), cause

    async def aclose(self) -> None:
        await close_nats(self.nc)


class to_jetstream(BrokerSink):
    """Publish each item to *subject* and wait for the JetStream acknowledgements, per batch.

    A batch's messages are published back to back and the sink yields them
    only once the server has stored every one.  Each wait for an
    acknowledgement has a deadline (``timeout``); what is not acknowledged
    in time, or fails because the server is unreachable, is published again
    until ``outage_budget`` seconds have passed, then the run fails with
    :class:`BrokerUnavailable`.  With ``dedup=True`` (default) every message
    carries a ``Nats-Msg-Id`` header, so the stream stores a republished
    message once (within its duplicate window, 2 minutes by default).  A
    message the stream refuses with a 503 (JetStream unavailable, a full
    stream with ``discard=new``) counts as an outage too; any other error
    (no stream stores the subject, another refusal) raises at once.  Place
    ``ack()`` after the sink to acknowledge the source's messages once their
    results are stored.  ``key`` (a field name of the
    payload, or a function of it) with ``partitions=n``: each item goes to
    subject ``<subject>.<crc32(key) % n>``, read by ``jetstream_messages(...,
    subject=subject, partitions=n)`` in order per key.
    """

    def __init__(
        self,
        subject: str,
        *,
        servers: str | list[str] = "nats://127.0.0.1:4222",
        batch: int = 100,
        encode: Callable[[Any], bytes] = _json_encode,
        dedup: bool = True,
        retries: int = 3,
        timeout: float = 2.0,
        outage_budget: float = DEFAULT_OUTAGE_BUDGET,
        key: KeyOf | None = None,
        partitions: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(batch=batch, encode=encode, name=name or f"jetstream-sink:{subject}", key=key,
                         partitions=partitions)
        self.subject = subject
        self.servers = servers
        self.dedup = dedup
        self.retries = retries
        self.timeout = timeout
        self.outage_budget = outage_budget

    async def _open_writer(self) -> BatchWriter:
        link = NatsLink()
        await connect_nats(self.servers, retries=self.retries, connect_timeout=self.timeout, link=link)
        return _JetStreamWriter(self, link)


# The names these stages had before connector stages were named like every other stage: kept for one release.
if TYPE_CHECKING:
    from typing_extensions import deprecated

    @deprecated("JetStreamSource is deprecated: use jetstream_messages")
    class JetStreamSource(jetstream_messages):
        """Deprecated name of :class:`jetstream_messages`."""

    @deprecated("JetStreamSink is deprecated: use to_jetstream")
    class JetStreamSink(to_jetstream):
        """Deprecated name of :class:`to_jetstream`."""

else:
    _RENAMED = {
        "JetStreamSource": ("jetstream_messages", jetstream_messages),
        "JetStreamSink": ("to_jetstream", to_jetstream),
    }

    def __getattr__(name: str) -> Any:
        return old_name(__name__, name, _RENAMED)
