"""A broker message, the token that acknowledges it, and the connectors' counters.

Every adapter (Redis Streams, NATS JetStream) subclasses :class:`AckToken`
for one delivery and yields :class:`Message` items; its stages count in a
:class:`ConnectorStats`.  ``talkpipe_async.connectors._base`` offers these
names too, with the rest of the broker-neutral interface.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Awaitable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .._core._counters import Counters

if TYPE_CHECKING:
    from ._base import BrokerSession

__all__ = ["AckToken", "ConnectorStats", "Message"]

T = TypeVar("T")


@dataclass
class ConnectorStats(Counters):
    """Counters of one stage instance, cumulative over all its runs."""

    delivered: int = 0
    """Messages yielded by the source (fresh and redelivered)."""
    redelivered: int = 0
    """Messages yielded that had been delivered before (reclaimed or redelivered)."""
    acked: int = 0
    """Acknowledgements issued."""
    nacked: int = 0
    """Negative acknowledgements (redeliver later)."""
    dead_lettered: int = 0
    """Messages moved to the dead-letter stream/subject (poison, malformed or terminated)."""
    malformed: int = 0
    """Payloads the decoder rejected (also counted in ``dead_lettered``)."""
    reads: int = 0
    """Read requests sent to the broker (XREADGROUP / fetch)."""
    claims: int = 0
    """Reclaim requests (XAUTOCLAIM) sent to the broker."""
    written: int = 0
    """Items written by a sink (acknowledged by the broker)."""
    write_batches: int = 0
    """Write round trips of a sink."""
    outages: int = 0
    """Broker outages ridden out (calls that failed, then succeeded again within ``outage_budget``)."""
    isolated: int = 0
    """Redelivered messages handed downstream one at a time (nothing else in progress)."""
    handed_back: int = 0
    """Messages returned to the broker unhandled when the stage stopped (claimable / redelivered at once)."""
    rewritten: int = 0
    """Items a sink wrote again after a failed round trip (the first attempt may have been stored too)."""

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def naked(self) -> int:
        """Deprecated spelling of :attr:`nacked` (kept for one release)."""
        warnings.warn("ConnectorStats.naked is deprecated: use ConnectorStats.nacked", DeprecationWarning,
                      stacklevel=2)
        return self.nacked

    @naked.setter
    def naked(self, value: int) -> None:
        warnings.warn("ConnectorStats.naked is deprecated: use ConnectorStats.nacked", DeprecationWarning,
                      stacklevel=2)
        self.nacked = value


class AckToken(ABC):
    """The acknowledgement handle of one delivery of one message.

    Settling is idempotent: the first of ``ack``/``nak``/``term`` wins and
    the others do nothing (so copies made with :meth:`Message.with_data`
    cannot acknowledge twice).
    """

    __slots__ = ("_tracker", "deliveries", "id", "settled", "suspect")

    def __init__(self, id: str, deliveries: int, suspect: bool = False) -> None:
        self.id = id
        self.deliveries = deliveries
        self.settled = False
        self.suspect = suspect
        self._tracker: BrokerSession | None = None

    def _settle(self) -> bool:
        """Mark the token settled; False if it already was (the caller then does nothing)."""
        if self.settled:
            return False
        self.settled = True
        tracker = self._tracker
        if tracker is not None:  # inlined BrokerSession.untrack: this runs once per message
            held = tracker.held
            held.pop(self.id, None)
            if not held and tracker._drained is not None:
                tracker._drained.set()
        return True

    @abstractmethod
    async def ack(self) -> None:
        """The message is fully handled: the broker may forget it."""

    def ack_nowait(self) -> Awaitable[None] | None:
        """Acknowledge at once where the adapter only queues it; else an awaitable that finishes the job.

        The per-message path of :func:`consume` and :class:`Ack`: an adapter
        that buffers acknowledgements (Redis) settles and queues here without
        a coroutine per message, and returns an awaitable only when the
        buffer is due to be sent.
        """
        return self.ack()

    @abstractmethod
    async def nak(self, delay: float | None = None) -> None:
        """Handling failed: deliver the message again (after about *delay* seconds)."""

    @abstractmethod
    async def term(self, reason: str) -> None:
        """Never deliver again: move the message to the dead-letter stream, with *reason*."""

    @abstractmethod
    async def touch(self) -> None:
        """Still working on it: postpone redelivery (reset the idle / ack-wait clock)."""


class Message(Generic[T]):
    """A payload from a broker and the token that acknowledges it.

    ``data`` is the decoded payload; ``id`` the broker's message id;
    ``deliveries`` how many times the broker has delivered it (1 the first
    time).  ``with_data(x)`` returns a message with another payload and the
    same token.
    """

    __slots__ = ("data", "token")

    def __init__(self, data: T, token: AckToken) -> None:
        self.data = data
        self.token = token

    @property
    def id(self) -> str:
        """The broker's id for this message."""
        return self.token.id

    @property
    def deliveries(self) -> int:
        """How many times this message has been delivered (1 the first time)."""
        return self.token.deliveries

    @property
    def settled(self) -> bool:
        """True once the message was acked, nacked or terminated."""
        return self.token.settled

    def with_data(self, data: Any) -> Message[Any]:
        """The same message (same token) carrying *data* instead."""
        return Message(data, self.token)

    async def ack(self) -> None:
        """Acknowledge: the message has been fully handled."""
        await self.token.ack()

    async def nak(self, delay: float | None = None) -> None:
        """Ask for redelivery (after about *delay* seconds)."""
        await self.token.nak(delay)

    async def term(self, reason: str) -> None:
        """Dead-letter the message with *reason*; it is never delivered again."""
        await self.token.term(reason)

    async def touch(self) -> None:
        """Postpone redelivery while handling takes long."""
        await self.token.touch()

    def __repr__(self) -> str:
        return f"Message(id={self.id!r}, deliveries={self.deliveries}, data={self.data!r})"
