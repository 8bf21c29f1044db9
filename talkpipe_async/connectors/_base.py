"""The broker-neutral interface of the scale-out connectors.

A broker source yields :class:`Message` items: the decoded payload
(``.data``) together with an acknowledgement token (``.token``).  Handling
downstream keeps the ``Message`` as the item (``map_data`` replaces the
payload and keeps the token); the ``ack()`` segment at the end of the
pipeline, or :func:`consume`, acknowledges each message after every stage
before it has finished with it.  A message never acknowledged stays pending
at the broker and is delivered again (to this instance or another): the
guarantee is *at least once*.

A broker adapter (Redis Streams, NATS JetStream, later Kafka) provides:

* an :class:`AckToken` subclass (``ack``/``nak``/``term``/``touch`` for one
  delivery),
* a :class:`BrokerSession` subclass (``read(n)`` returns the next batch of
  messages; ``background()`` runs for the whole run; ``aclose()`` flushes
  and disconnects),
* a :class:`BrokerSource` subclass whose ``_open()`` connects and returns
  the session, and a :class:`BrokerSink` subclass whose ``_open_writer()``
  returns a :class:`BatchWriter`.

The redis and nats clients are asyncio libraries: these stages need the
asyncio event loop (plain or uvloop) and raise :class:`BackendNotSupported`
on trio.
"""

from __future__ import annotations

import inspect
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Literal

import anyio
import anyio.lowlevel

from .._aio import require_asyncio
from .._core._channel import Channel, ChannelClosed
from .._core._errors import TalkpipeAsyncError
from .._core._run import current_run
from .._core._segment import AbstractSegment, AbstractSource
from ._messages import AckToken, ConnectorStats, Message
from ._outage import BrokerUnavailable
from ._partitions import KeyOf, check_partitions, key_function, partition_for

__all__ = [
    "Ack",
    "AckToken",
    "BatchWriter",
    "BrokerSession",
    "BrokerSink",
    "BrokerSource",
    "BrokerUnavailable",
    "ConnectorStats",
    "Message",
    "MissingClient",
    "ack",
    "consume",
    "filter_data",
    "map_data",
    "messages_in",
]

logger = logging.getLogger("talkpipe_async.connectors")

CLOSE_TIMEOUT = 5.0
CLIENTS = "the redis and nats clients (asyncio libraries)"


class MissingClient(ImportError, TalkpipeAsyncError):
    """The optional client library of a connector is not installed."""


def import_client(module: str, extra: str) -> Any:
    """Import an optional client library, with a clear error naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingClient(
            f"the {extra} connector needs the {module!r} package: pip install \"talkpipe-async[{extra}]\""
        ) from err


def messages_in(item: Any) -> Iterator[Message[Any]]:
    """The messages an item carries: a :class:`Message`, or a list/tuple of them (a batch)."""
    if isinstance(item, Message):
        yield item
    elif isinstance(item, (list, tuple)):
        for part in item:
            yield from messages_in(part)


class Ack(AbstractSegment[Any, Any]):
    """Acknowledge every message carried by each item, then pass the item on.

    Place it at the end of the pipeline (after the sink): when ``Ack``
    receives an item, every stage before it has finished with it.  An item
    may be a :class:`Message` or a list/tuple of messages (a batch).  An item
    carrying no message is an error (``TypeError`` naming the item) unless
    ``missing="pass"``: a transformation that lost the token would otherwise
    cause silent redeliveries.  ``unwrap=True`` yields ``message.data``
    instead of the message.
    """

    def __init__(self, *, unwrap: bool = False, missing: Literal["error", "pass"] = "error",
                 name: str = "ack") -> None:
        super().__init__()
        self.unwrap = unwrap
        self.missing = missing
        self.name = name
        self.passed_without_token = 0

    async def transform(self, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Acknowledge and yield each item."""
        unwrap = self.unwrap
        async for item in items:
            if isinstance(item, Message):
                pending = item.token.ack_nowait()
                if pending is not None:
                    await pending
                yield item.data if unwrap else item
                continue
            found = False
            for message in messages_in(item):
                found = True
                await message.token.ack()
            if not found:
                if self.missing == "error":
                    raise TypeError(f"{self.label}: item carries no Message to acknowledge: {item!r}")
                self.passed_without_token += 1
            if unwrap and found:
                yield [m.data for m in messages_in(item)]
            else:
                yield item


def ack(*, unwrap: bool = False, missing: Literal["error", "pass"] = "error") -> Ack:
    """An :class:`Ack` segment (acknowledge at the end of the pipeline)."""
    return Ack(unwrap=unwrap, missing=missing)


OnError = Literal["raise", "dead_letter", "nak"]


class MapData(AbstractSegment[Any, Any]):
    """Replace each message's payload by ``func(payload)``; the token stays with it.

    ``func`` may be sync or ``async``.  ``on_error`` is the error policy when
    ``func`` raises: ``"raise"`` ends the run (the message stays pending and
    is redelivered later, up to the source's ``max_deliveries``),
    ``"dead_letter"`` terminates the message with the error as reason and
    goes on, ``"nak"`` asks for redelivery and goes on.  Errors handled by a
    policy are counted in ``errors``.
    """

    def __init__(self, func: Callable[[Any], Any], *, on_error: OnError = "raise", name: str | None = None) -> None:
        super().__init__()
        self.func = func
        self.on_error = on_error
        self.name = name or str(getattr(func, "__name__", "map_data"))
        self.errors = 0

    async def transform(self, items: AsyncIterator[Message[Any]]) -> AsyncIterator[Message[Any]]:
        """Yield each message with its new payload."""
        func = self.func
        is_async = inspect.iscoroutinefunction(func)
        policy = self.on_error
        async for message in items:
            try:
                result = await func(message.data) if is_async else func(message.data)
            except Exception as exc:
                if policy == "raise":
                    raise
                self.errors += 1
                if policy == "dead_letter":
                    await message.term(f"{self.label}: {type(exc).__name__}: {exc}")
                else:
                    await message.nak()
                continue
            yield Message(result, message.token)


def map_data(func: Callable[[Any], Any], *, on_error: OnError = "raise") -> MapData:
    """A :class:`MapData` segment."""
    return MapData(func, on_error=on_error)


class FilterData(AbstractSegment[Any, Any]):
    """Keep messages whose payload passes ``predicate``; acknowledge the others.

    A message filtered out is fully handled, so it is acknowledged here
    (counted in ``dropped``), never left pending.
    """

    def __init__(self, predicate: Callable[[Any], Any], *, name: str | None = None) -> None:
        super().__init__()
        self.predicate = predicate
        self.name = name or str(getattr(predicate, "__name__", "filter_data"))
        self.dropped = 0

    async def transform(self, items: AsyncIterator[Message[Any]]) -> AsyncIterator[Message[Any]]:
        """Yield the messages that pass; ack the rest."""
        predicate = self.predicate
        is_async = inspect.iscoroutinefunction(predicate)
        async for message in items:
            keep = await predicate(message.data) if is_async else predicate(message.data)
            if keep:
                yield message
            else:
                self.dropped += 1
                await message.ack()


def filter_data(predicate: Callable[[Any], Any]) -> FilterData:
    """A :class:`FilterData` segment."""
    return FilterData(predicate)


async def consume(
    pipeline: Any,
    handler: Callable[[Any], Awaitable[Any] | Any] | None = None,
    *,
    limit: int | None = None,
) -> int:
    """Run *pipeline* to its end, acknowledging each output item's messages.

    Each output item is first passed to ``handler`` (sync or async; its
    payload when the item is a single message), then every message it
    carries is acknowledged.  If the handler raises, the run ends with that
    error and the message stays unacknowledged (it will be delivered again).
    ``limit`` stops after that many items.  Returns how many items were
    handled.
    """
    is_async = handler is not None and inspect.iscoroutinefunction(handler)
    count = 0
    async with pipeline.stream() as items:
        async for item in items:
            if handler is not None:
                arg = item.data if isinstance(item, Message) else item
                result = handler(arg)
                if is_async:
                    await result
            if type(item) is Message:
                pending = item.token.ack_nowait()
                if pending is not None:
                    await pending
            else:
                for message in messages_in(item):
                    await message.token.ack()
            count += 1
            if limit is not None and count >= limit:
                break
    return count


class BrokerSession(ABC):
    """One connection of a source for one run: reads batches, settles tokens.

    The session keeps the tokens of the messages handed downstream and not
    yet settled (``held``) and the rest of the batch being handed out
    (``unyielded``): when the run ends, :meth:`hand_back` returns what is
    left to the broker at once.  ``failure`` is an error of the background
    work (acknowledgements that could not be sent within the outage budget):
    the read loop raises it, so it ends the run with its own type.
    """

    def __init__(self) -> None:
        self.held: dict[str, AckToken] = {}
        self.unyielded: list[Message[Any]] = []
        self.failure: BaseException | None = None
        self._drained: anyio.Event | None = None

    def track(self, token: AckToken) -> None:
        """Remember a token handed downstream until it is settled."""
        token._tracker = self
        self.held[token.id] = token

    async def wait_drained(self, limit: float) -> bool:
        """Wait (at most *limit* s) until every message handed downstream is settled."""
        if not self.held:
            return True
        self._drained = anyio.Event()
        with anyio.move_on_after(limit):
            await self._drained.wait()
        self._drained = None
        return not self.held

    @abstractmethod
    async def read(self, count: int, wait: float) -> list[Message[Any]]:
        """Return up to *count* messages, waiting at most about *wait* seconds ([] if none)."""

    def retire(self) -> None:
        """The stream has ended (stopped or idle): nothing more will be read; default: nothing to do."""
        return

    def expecting(self) -> bool:
        """Messages are known to be on their way (a partition handed over): ``idle_exit`` does not count now."""
        return False

    async def background(self) -> None:
        """Work that runs for the whole run (e.g. flushing acknowledgements); default: none."""
        await anyio.sleep_forever()

    @abstractmethod
    async def hand_back(self, tokens: list[AckToken]) -> None:
        """Return unhandled messages to the broker so that any consumer gets them at once."""

    def leftovers(self) -> list[AckToken]:
        """Tokens not settled: handed downstream and unfinished, or never handed out."""
        tokens = [t for t in self.held.values() if not t.settled]
        tokens += [m.token for m in self.unyielded if m.token._tracker is None and not m.token.settled]
        self.unyielded = []
        return tokens

    @abstractmethod
    async def aclose(self) -> None:
        """Flush pending acknowledgements, hand back what is left, and disconnect."""


async def _close_shielded(closer: Callable[[], Awaitable[None]], what: str) -> None:
    """Await *closer* shielded from the run's cancellation, for at most ``CLOSE_TIMEOUT`` seconds.

    A close cut at that deadline is logged: what it did not finish (an
    acknowledgement, a lease release) is then left to the broker's own
    expiry, and that should never pass unseen.
    """
    with anyio.CancelScope(shield=True) as scope:
        scope.deadline = anyio.current_time() + CLOSE_TIMEOUT
        await closer()
    if scope.cancelled_caught:
        logger.warning("%s: cut short after %.0f s; what it did not finish is left to the broker (unacknowledged "
                       "messages are delivered again, leases lapse after lease_ttl)", what, CLOSE_TIMEOUT)


class _Closer:
    """Who closes a session: the run's task, once it has started, or else the source when it ends."""

    __slots__ = ("taken",)

    def __init__(self) -> None:
        self.taken = False

    def take(self) -> bool:
        """True for the first caller only."""
        first, self.taken = not self.taken, True
        return first


async def _keep_session(session: BrokerSession, label: str, closer: _Closer) -> None:
    """Run the session's background work; close it when the run ends (after every stage closed)."""
    if not closer.take():
        return  # the run ended before this task started, and the source closed the session itself
    try:
        await session.background()
    finally:
        await _close_shielded(session.aclose, f"{label}: closing the session")


class BrokerSource(AbstractSource[Message[Any]]):
    """The shared read loop of the broker sources.

    Each read asks the broker for at most ``batch`` messages (the pipeline's
    own pull drives it: the next read starts only when downstream asks for
    the item after the last of the batch).  ``idle_exit``: end the stream
    after that many seconds without a message (None: never end; the time a
    partitioned source waits for a partition handed over to it does not
    count).  The
    connection lives until the run ends, so acknowledgements issued by any
    later stage, even after the source has finished, still reach the broker.

    A redelivered message (``token.suspect``: it was in progress when an
    instance failed) is handed downstream only once everything handed out
    before it is settled, and nothing follows it until it is settled (or
    ``isolate_timeout`` s passed): if it is the message that makes the
    pipeline fail, it fails alone and only its own delivery count grows.

    :meth:`stop` asks the source to stop fetching: the rest of the current
    batch is handed back to the broker at once and the stream ends, so the
    stages after it finish (and acknowledge) what is in progress.
    """

    def __init__(self, *, batch: int, idle_exit: float | None, wait: float, name: str,
                 isolate_timeout: float) -> None:
        super().__init__(emits_metadata=False)
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self.batch = batch
        self.idle_exit = idle_exit
        self.wait = wait
        self.name = name
        self.isolate_timeout = isolate_timeout
        self.stats = ConnectorStats()
        self.stopping = False
        self._session: BrokerSession | None = None

    def stop(self) -> None:
        """Stop fetching: hand back what is not yet handed downstream and end the stream (within ``wait`` s).

        A partitioned source also leaves the members at its next lease
        round, while the stages after it finish what is in progress.
        """
        self.stopping = True
        if self._session is not None:
            self._session.retire()

    @abstractmethod
    async def _open(self) -> BrokerSession:
        """Connect (bounded retries) and return a session for one run."""

    async def generate(self) -> AsyncIterator[Message[Any]]:
        """Yield messages as the pipeline pulls them."""
        require_asyncio(self.label, CLIENTS)
        self.stopping = False
        session = self._session = await self._open()
        closer = await self._keep_open(session)
        try:
            idle_exit = self.idle_exit
            last = anyio.current_time()
            batch = self.batch
            stats = self.stats
            track = session.track
            while not self.stopping:
                if session.failure is not None:
                    raise session.failure
                wait = self._read_wait(idle_exit, last)
                if wait is None:
                    break
                messages = await session.read(batch, wait)
                if not messages:
                    if session.expecting():
                        last = anyio.current_time()
                    continue
                last = anyio.current_time()
                session.unyielded = messages
                held = session.held
                for message in messages:
                    if self.stopping:
                        break
                    token = message.token
                    if token.suspect:
                        await session.wait_drained(self.isolate_timeout)
                        stats.isolated += 1
                        track(token)
                        yield message
                        await session.wait_drained(self.isolate_timeout)
                        continue
                    token._tracker = session  # BrokerSession.track, inlined: once per message
                    held[token.id] = token
                    yield message
            session.retire()
            await _hand_back_unyielded(session, self.label)
        finally:
            self._session = None
            if closer.take():
                await _close_shielded(session.aclose, f"{self.label}: closing the session")

    async def _keep_open(self, session: BrokerSession) -> _Closer:
        """Give the session to the run, which closes it when the run ends; outside a run the source closes it.

        The run closes it after every stage has closed, so acknowledgements
        issued after the source has finished still reach the broker.  The
        run's task starts before the first read; if it never starts (the
        run was already ending), the source closes the session when it ends,
        so a run that reads nothing still disconnects and releases leases.
        """
        closer = _Closer()
        try:
            run = current_run()
        except RuntimeError:
            return closer
        run.start_soon(_keep_session, session, self.label, closer, name=f"{self.label} session")
        await anyio.lowlevel.checkpoint()  # let that task start and take the close over
        return closer

    def _read_wait(self, idle_exit: float | None, last: float) -> float | None:
        """How long the next read may wait: ``wait``, cut to what is left of *idle_exit*; None once that passed."""
        if idle_exit is None:
            return self.wait
        remaining = idle_exit - (anyio.current_time() - last)
        if remaining <= 0:
            return None
        return min(self.wait, remaining)


async def _hand_back_unyielded(session: BrokerSession, label: str) -> None:
    """Return the rest of a batch that was never handed downstream (after :meth:`BrokerSource.stop`) at once."""
    rest = [m.token for m in session.unyielded if m.token._tracker is None and not m.token.settled]
    session.unyielded = []
    if rest:
        await _close_shielded(lambda: session.hand_back(rest), f"{label}: handing back unread messages")


class BatchWriter(ABC):
    """The write side of a sink: one batch per round trip."""

    @abstractmethod
    async def write(self, payloads: list[Any], partitions: list[int] | None = None) -> None:
        """Write the payloads (payload ``i`` to partition ``partitions[i]`` when given); return once all are stored."""

    @abstractmethod
    async def aclose(self) -> None:
        """Disconnect."""


async def _feed(items: AsyncIterator[Any], channel: Channel) -> None:
    try:
        async for item in items:
            await channel.put(item)
    except ChannelClosed:
        return
    except anyio.get_cancelled_exc_class():
        raise
    except BaseException as exc:  # handed to the consumer, in order
        channel.close(exc)
        return
    channel.close()


class BrokerSink(AbstractSegment[Any, Any]):
    """Write each item (a message's payload, or the item itself) to the broker, in batches.

    A feeder task reads ahead up to ``batch`` items into a bounded channel;
    every round trip writes what is there (1..``batch`` items, never waiting
    for a batch to fill), waits for the broker's acknowledgement, then yields
    the written items in order, so an ``ack()`` placed after the sink
    acknowledges only what is durably written.
    """

    def __init__(self, *, batch: int, encode: Callable[[Any], Any], name: str, key: KeyOf | None = None,
                 partitions: int | None = None) -> None:
        super().__init__()
        if batch < 1:
            raise ValueError("batch must be at least 1")
        if (key is None) != (partitions is None):
            raise ValueError("key= and partitions= go together: the key chooses one of the partitions")
        if partitions is not None:
            check_partitions(partitions)
        self.batch = batch
        self.encode = encode
        self.name = name
        self.key_of = key_function(key) if key is not None else None
        self.partitions = partitions
        self.stats = ConnectorStats()

    def partitions_of(self, items: list[Any]) -> list[int] | None:
        """The partition of each item (by its payload's key), or None when the sink is not partitioned."""
        key_of, n = self.key_of, self.partitions
        if key_of is None or n is None:
            return None
        return [partition_for(key_of(x.data if isinstance(x, Message) else x), n) for x in items]

    @abstractmethod
    async def _open_writer(self) -> BatchWriter:
        """Connect (bounded retries) and return the writer for one run."""

    async def transform(self, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Write the items in batches and yield them once written."""
        require_asyncio(self.label, CLIENTS)
        writer = await self._open_writer()
        channel = Channel(self.batch)
        try:
            current_run().start_soon(_feed, items, channel, name=f"{self.label} feeder")
            encode = self.encode
            stats = self.stats
            while True:
                try:
                    batch = await channel.get_batch(self.batch)
                except anyio.EndOfStream:
                    return
                payloads = [encode(x.data if isinstance(x, Message) else x) for x in batch]
                await writer.write(payloads, self.partitions_of(batch))
                stats.written += len(batch)
                stats.write_batches += 1
                for item in batch:
                    yield item
        finally:
            channel.abort()
            await _close_shielded(writer.aclose, f"{self.label}: closing the writer")
