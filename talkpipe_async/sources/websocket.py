"""WebSocket client source through httpx-ws (the ``[ws]`` extra): messages, pulled one at a time.

The handshake goes through ``httpx_ws.aconnect_ws`` and so through an
``httpx.AsyncClient`` (yours, with its proxies, TLS settings and
transports, or a private one per run), on asyncio, uvloop and trio.
The connection is driven by :class:`PullSession`, which reads from the
socket only when the stage asks for the next message, parses frames one at
a time, answers pings while it reads and caps every message at
``max_message_bytes`` as its fragments arrive (no background task, no
unbounded queue).

httpx-ws, wsproto and httpcore are imported at the first connection, so
importing :mod:`talkpipe_async.sources` costs nothing more without them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import httpx

from .._backoff import Backoff, Retries
from .._core._segment import AbstractSource
from .._net.framing import READ_SIZE, ConnectionLost, NetStats, Overlong
from .._net.http import client_for
from .._net.websocket import DEFAULT_MAX_MESSAGE as DEFAULT_MAX_MESSAGE
from .._net.websocket import NORMAL_CLOSE as NORMAL_CLOSE
from .._net.websocket import RETRY_STATUSES as RETRY_STATUSES
from .._net.websocket import MessageTooLarge as MessageTooLarge
from .._net.websocket import Mode as Mode
from .._net.websocket import PullSession as PullSession
from .._net.websocket import WebSocketClosed as WebSocketClosed
from .._net.websocket import WebSocketRejected as WebSocketRejected
from .._net.websocket import WebSocketStats as WebSocketStats
from .._net.websocket import check_close_code, check_mode, connect, require_httpx_ws
from ._item_types import Item
from .http import MalformedRecord

__all__ = [
    "MalformedMessage",
    "MessageTooLarge",
    "PullSession",
    "WebSocketClosed",
    "WebSocketRejected",
    "WebSocketStats",
    "websocket_messages",
]

log = logging.getLogger("talkpipe_async.net")

OnError = Literal["raise", "skip"] | Callable[["MalformedMessage"], Any]


class MalformedMessage(MalformedRecord):
    """A message that is not valid JSON (``mode="json"``).

    ``message_number`` counts the data messages of the run from 1 (across
    reconnections); ``data`` holds the message's first 200 bytes.  As a
    :class:`MalformedRecord` it also carries ``line_number`` (the same number)
    and ``line`` (the same bytes), so one ``on_error`` hook serves both.
    """

    def __init__(self, message: str, *, source: str, message_number: int, data: bytes) -> None:
        ValueError.__init__(self, f"{source}: message {message_number}: {message}")
        self.source = source
        self.line_number = self.message_number = message_number
        self.line = self.data = data[:200]


class websocket_messages(AbstractSource[Item]):
    """The messages a WebSocket server sends, one item per message.

    ``mode``: ``"text"`` yields ``str`` (binary messages decoded as UTF-8
    with ``encoding_errors``), ``"bytes"`` yields ``bytes`` (text messages
    encoded as UTF-8), ``"json"`` yields each message parsed as JSON.

    Pull-based: a message is read from the socket only when the pipeline asks
    for the next item, so a slow pipeline makes TCP push back on the server;
    held beyond the delivered message is at most one read (``read_size``).
    The cost: while the pipeline is busy nobody answers the server's pings, so
    a consumer stalled longer than the server's ping timeout loses the
    connection (and, with ``reconnect=True``, reconnects).

    A message larger than ``max_message_bytes`` raises
    :class:`MessageTooLarge` (closing with code 1009) or, with
    ``on_oversize="skip"``, is dropped as its fragments arrive and counted
    (``stats.dropped_messages``, ``stats.dropped_bytes``): memory stays
    bounded whatever the server sends.  In ``mode="json"`` a message that is
    not valid JSON becomes a :class:`MalformedMessage` naming the stage, the
    URL and the message number, and goes to ``on_error``: ``"raise"``,
    ``"skip"`` (counted in ``stats.malformed``) or a callable (dead letters).

    Without ``reconnect`` a normal close (1000, or a close frame without a
    code) ends the stream; any other close or a dropped connection raises
    :class:`WebSocketClosed` (with its ``code``), and a failed connection
    :class:`ConnectionLost`.  With ``reconnect=True`` every end of a
    connection (normal closes included) and every failed attempt is followed
    by a new connection after ``backoff``; the attempt count and the delay
    start again only after a connection that delivered a message and stayed
    up ``backoff.healthy_after`` seconds, and ``backoff.max_attempts``
    consecutive failures (a server that keeps dropping included) raise
    :class:`ConnectionLost`.  A refused handshake
    raises :class:`WebSocketRejected` at once, unless its status is 408, 429
    or 5xx and ``reconnect`` is on.

    ``client``: a shared ``httpx.AsyncClient`` (left open; ``http(s)://`` and
    ``ws(s)://`` URLs both work); by default each run makes and closes its
    own.  ``headers`` and ``subprotocols`` go into the handshake;
    ``read_timeout`` bounds each read (a silent connection then counts as
    dropped).  Leaving the pipeline (end, ``break``, error, cancellation)
    runs the closing handshake before the run ends: a close frame with
    ``close_code`` (1000 by default; 1009 after an oversized message), then
    what the server still sends is read and discarded until its close reply
    arrives (at most 5 seconds and 16 MiB), so the server records a clean
    close with that code, never 1006.
    """

    emits_metadata = False

    @overload
    def __init__(
        self: websocket_messages[str],
        url: str,
        *,
        client: httpx.AsyncClient | None = ...,
        mode: Literal["text"] = ...,
        reconnect: bool = ...,
        backoff: Backoff | None = ...,
        max_message_bytes: int = ...,
        on_oversize: Overlong = ...,
        on_error: OnError = ...,
        headers: Mapping[str, str] | None = ...,
        subprotocols: Sequence[str] | None = ...,
        encoding_errors: str = ...,
        read_size: int = ...,
        read_timeout: float | None = ...,
        connect_timeout: float = ...,
        close_code: int = ...,
        stats: WebSocketStats | None = ...,
        name: str | None = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: websocket_messages[bytes],
        url: str,
        *,
        client: httpx.AsyncClient | None = ...,
        mode: Literal["bytes"],
        reconnect: bool = ...,
        backoff: Backoff | None = ...,
        max_message_bytes: int = ...,
        on_oversize: Overlong = ...,
        on_error: OnError = ...,
        headers: Mapping[str, str] | None = ...,
        subprotocols: Sequence[str] | None = ...,
        encoding_errors: str = ...,
        read_size: int = ...,
        read_timeout: float | None = ...,
        connect_timeout: float = ...,
        close_code: int = ...,
        stats: WebSocketStats | None = ...,
        name: str | None = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: websocket_messages[Any],
        url: str,
        *,
        client: httpx.AsyncClient | None = ...,
        mode: Mode,
        reconnect: bool = ...,
        backoff: Backoff | None = ...,
        max_message_bytes: int = ...,
        on_oversize: Overlong = ...,
        on_error: OnError = ...,
        headers: Mapping[str, str] | None = ...,
        subprotocols: Sequence[str] | None = ...,
        encoding_errors: str = ...,
        read_size: int = ...,
        read_timeout: float | None = ...,
        connect_timeout: float = ...,
        close_code: int = ...,
        stats: WebSocketStats | None = ...,
        name: str | None = ...,
    ) -> None: ...
    def __init__(
        self,
        url: str,
        *,
        client: httpx.AsyncClient | None = None,
        mode: Mode = "text",
        reconnect: bool = False,
        backoff: Backoff | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE,
        on_oversize: Overlong = "raise",
        on_error: OnError = "raise",
        headers: Mapping[str, str] | None = None,
        subprotocols: Sequence[str] | None = None,
        encoding_errors: str = "replace",
        read_size: int = READ_SIZE,
        read_timeout: float | None = None,
        connect_timeout: float = 10.0,
        close_code: int = 1000,
        stats: WebSocketStats | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        require_httpx_ws()
        check_mode(mode)
        check_close_code(close_code)
        if on_oversize not in ("raise", "skip"):
            raise ValueError(f"on_oversize must be 'raise' or 'skip', not {on_oversize!r}")
        if not callable(on_error) and on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise', 'skip' or a callable, not {on_error!r}")
        if max_message_bytes < 1 or read_size < 1:
            raise ValueError("max_message_bytes and read_size must be at least 1")
        self.url = url
        self.client = client
        self.mode = mode
        self.reconnect = reconnect
        self.backoff = backoff or Backoff()
        self.max_message_bytes = max_message_bytes
        self.on_oversize = on_oversize
        self.on_error = on_error
        self.headers = dict(headers or {})
        self.subprotocols = list(subprotocols) if subprotocols else None
        self.encoding_errors = encoding_errors
        self.read_size = read_size
        self.read_timeout = read_timeout
        self.connect_timeout = connect_timeout
        self.close_code = close_code
        self.stats = stats if stats is not None else WebSocketStats()
        if name:
            self.name = name

    async def generate(self) -> AsyncIterator[Any]:
        """Connect, yield each message, reconnect if asked; close the socket when the run leaves."""
        stats = self.stats if self.stats is not None else WebSocketStats()
        where = f"{self.label} ({self.url})"
        decode = self._decoder(where, stats)
        retries = Retries(self.backoff)
        async with client_for(self.client) as client:
            while True:
                ending = _Ending()
                try:
                    async with self._connect(client, stats, where) as session:
                        ending.connected = True
                        stats.connections += 1
                        retries.opened()
                        while (message := await session.receive_message()) is not None:
                            retries.delivered()
                            item = decode(message)
                            if item is not _SKIPPED:
                                stats.items += 1
                                yield item
                        ending.closed_by(session)
                # TransportError: ConnectError, ConnectTimeout, a broken handshake
                except (WebSocketRejected, httpx.TransportError) as err:
                    if not self._may_retry(err):
                        raise
                    ending.problem = err
                if self._ended(ending, where, stats):
                    return
                await self._before_reconnect(retries, ending, where, stats)

    def _may_retry(self, err: WebSocketRejected | httpx.TransportError) -> bool:
        """Whether a failed attempt may be retried: a refused upgrade only with ``reconnect`` and a passing status.

        A transport error is left to :meth:`_ended`, which raises it as
        :class:`ConnectionLost` unless ``reconnect`` is on.
        """
        if isinstance(err, WebSocketRejected):
            return self.reconnect and err.status_code in RETRY_STATUSES
        return True

    async def _before_reconnect(self, retries: Retries, ending: _Ending, where: str, stats: WebSocketStats) -> None:
        """Wait out the backoff before the next attempt; ``ConnectionLost`` once the backoff gives up."""
        if not await retries.next_attempt():
            last = ending.last
            raise ConnectionLost(f"{where}: gave up after {retries.failures} attempts: {last}") from ending.problem
        stats.reconnects += 1

    def _connect(self, client: httpx.AsyncClient, stats: WebSocketStats, where: str) -> Any:
        """The context manager of one connection (a :class:`PullSession` with this source's limits)."""
        return connect(
            client,
            self.url,
            stats=stats,
            label=where,
            headers=self.headers,
            subprotocols=self.subprotocols,
            connect_timeout=self.connect_timeout,
            read_size=self.read_size,
            read_timeout=self.read_timeout,
            max_message_bytes=self.max_message_bytes,
            on_oversize=self.on_oversize,
            close_code=self.close_code,
        )

    def _decoder(self, where: str, stats: NetStats) -> Callable[[str | bytes], Any]:
        """The function that turns a message into the item of ``mode`` (``_SKIPPED`` for a skipped bad one)."""
        mode, errors = self.mode, self.encoding_errors
        loads = json.loads
        number = 0  # the data messages of the run, across reconnections

        def decode(message: str | bytes) -> Any:
            nonlocal number
            number += 1
            if mode == "text":
                return message if isinstance(message, str) else message.decode("utf-8", errors)
            if mode == "bytes":
                return message.encode() if isinstance(message, str) else message
            try:
                return loads(message)
            except ValueError as err:
                raw = message.encode() if isinstance(message, str) else message
                bad = MalformedMessage(f"not valid JSON: {err}", source=where, message_number=number, data=raw)
                self._malformed(bad, stats)
                return _SKIPPED

        return decode

    def _ended(self, ending: _Ending, where: str, stats: NetStats) -> bool:
        """Count how a connection ended; True to end the stream, False to reconnect; raise what must be raised."""
        clean = ending.clean
        if not clean:
            stats.errors += 1
            stats.last_error = ending.describe()
        if self.reconnect:
            return False
        if clean:
            return True
        problem = ending.problem
        if not ending.connected:
            raise ConnectionLost(f"{where}: cannot connect: {problem!r}") from problem
        code = 1006 if ending.code is None else ending.code
        reason = ending.reason
        detail = f": {reason}" if reason else (f": {problem!r}" if problem is not None else "")
        raise WebSocketClosed(
            f"{where}: connection closed abnormally (code {code}{detail})", code=code, reason=reason
        ) from problem

    def _malformed(self, error: MalformedMessage, stats: NetStats) -> None:
        stats.malformed += 1
        if self.on_error == "raise":
            raise error
        if self.on_error == "skip":
            if stats.malformed == 1:
                log.warning("%s: skipping malformed messages (counted in stats): %s", self.label, error)
            return
        assert callable(self.on_error)
        self.on_error(error)


#: what the decoder returns for a malformed message that the ``on_error`` policy skipped
_SKIPPED: Any = object()


@dataclass
class _Ending:
    """How one connection attempt ended: whether it connected, the close code and reason, the error if any."""

    connected: bool = False
    code: int | None = None
    reason: str = ""
    problem: BaseException | None = None

    @property
    def clean(self) -> bool:
        """A normal close (1000, or a close frame without a code), no error."""
        return self.problem is None and self.code in NORMAL_CLOSE

    @property
    def last(self) -> str:
        """The error, or the close code: what a give-up message names."""
        return repr(self.problem) if self.problem is not None else f"close code {self.code}"

    def closed_by(self, session: PullSession) -> None:
        """Record how *session* (a :class:`PullSession` that has delivered its last message) ended."""
        self.code, self.reason, self.problem = session.close_code, session.close_reason, session.lost

    def describe(self) -> str:
        """The error, or the close code and reason: what ``stats.last_error`` records."""
        return repr(self.problem) if self.problem is not None else f"close code {self.code} {self.reason}".strip()
