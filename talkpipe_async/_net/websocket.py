"""The WebSocket session every WebSocket stage shares, through httpx-ws (the ``[ws]`` extra).

The handshake goes through ``httpx_ws.aconnect_ws`` and so through an
``httpx.AsyncClient`` (the caller's, with its proxies, TLS settings and
transports, or a private one per run), on asyncio, uvloop and trio.

httpx-ws's own session reads in a background task, queues what it reads and
reassembles fragmented messages without a size limit; a pipeline stage can
hold neither a task group across its ``yield`` nor unbounded memory.  So
httpx-ws is handed a session class that starts nothing, and the connection
it opened is driven by :class:`PullSession`: it reads from the socket only
when the stage asks for the next message, parses frames with wsproto one at
a time, answers pings while it reads, and caps every message at
``max_message_bytes`` as its fragments arrive.  What it holds beyond the
message being delivered is the unparsed rest of one read (``read_size``
bytes at most); a slow pipeline leaves the rest in the kernel, and TCP flow
control makes the server wait.

httpx-ws, wsproto and httpcore are imported at the first connection, so
importing :mod:`talkpipe_async.sources` costs nothing more without them.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anyio
import httpx

from .._core._errors import TalkpipeAsyncError
from .framing import READ_SIZE, ConnectionLost, NetStats, Overlong

if TYPE_CHECKING:  # imported for real by _load(), at the first connection
    import httpcore
    import wsproto.events as ws_events
    from httpx_ws import AsyncWebSocketSession, WebSocketUpgradeError, aconnect_ws
    from wsproto.connection import Connection, ConnectionState

__all__ = [
    "CLOSE_TIMEOUT",
    "DEFAULT_MAX_MESSAGE",
    "NORMAL_CLOSE",
    "RETRY_STATUSES",
    "MessageTooLarge",
    "Mode",
    "PullSession",
    "WebSocketClosed",
    "WebSocketRejected",
    "WebSocketStats",
    "check_close_code",
    "check_mode",
    "connect",
    "http_url",
    "payload_size",
    "require_httpx_ws",
]

log = logging.getLogger("talkpipe_async.net")

Mode = Literal["text", "bytes", "json"]

DEFAULT_MAX_MESSAGE = 1 << 20
#: close codes that end the stream cleanly when ``reconnect`` is off: normal closure, and a close frame without a code
NORMAL_CLOSE = frozenset({1000, 1005})
#: handshake answers retried (with ``reconnect=True``) instead of raised at once
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
CLOSE_TIMEOUT = 5.0
#: what the closing handshake reads (and discards) at most while it waits for the peer's close reply
CLOSE_DRAIN_BYTES = 16 << 20


def require_httpx_ws() -> None:
    """Raise a clear ``ImportError`` when httpx-ws is not installed (checked without importing it)."""
    if importlib.util.find_spec("httpx_ws") is None:
        raise ImportError("WebSocket stages need httpx-ws>=0.9: pip install 'talkpipe-async[ws]'")


def check_close_code(code: int) -> None:
    """``ValueError`` unless *code* is one an endpoint may send: 1000, or 3000-4999 (registered and private)."""
    if code != 1000 and not 3000 <= code <= 4999:
        raise ValueError(f"close_code must be 1000 or in 3000-4999, not {code!r}")


def check_mode(mode: str) -> None:
    """``ValueError`` unless *mode* is a message mode of the WebSocket stages."""
    if mode not in ("text", "bytes", "json"):
        raise ValueError(f"mode must be 'text', 'bytes' or 'json', not {mode!r}")


_quiet_session: type[AsyncWebSocketSession] | None = None
#: what a broken or closed transport raises (httpcore's errors once loaded; anyio's for in-process transports)
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (OSError, anyio.EndOfStream, anyio.ClosedResourceError)
#: the same, plus wsproto's refusal to send on a closed connection
_SEND_ERRORS: tuple[type[BaseException], ...] = _TRANSPORT_ERRORS


def _load() -> type[AsyncWebSocketSession]:
    """Import httpx-ws, wsproto and httpcore; return the session class that starts no background task."""
    global httpcore, ws_events, AsyncWebSocketSession, WebSocketUpgradeError, aconnect_ws
    global Connection, ConnectionState, _quiet_session, _TRANSPORT_ERRORS, _SEND_ERRORS
    if _quiet_session is not None:
        return _quiet_session
    require_httpx_ws()
    import httpcore
    import wsproto.events as ws_events
    from httpx_ws import AsyncWebSocketSession, WebSocketUpgradeError, aconnect_ws
    from wsproto.connection import Connection, ConnectionState
    from wsproto.utilities import LocalProtocolError

    if not hasattr(AsyncWebSocketSession, "__asynccontextmanager__"):
        raise ImportError("WebSocket stages need httpx-ws>=0.9: pip install -U 'talkpipe-async[ws]'")

    class QuietSession(AsyncWebSocketSession):
        """httpx-ws's session minus its background tasks: the handshake's result, for :class:`PullSession`."""

        @asynccontextmanager
        async def __asynccontextmanager__(self) -> AsyncIterator[QuietSession]:
            yield self

    _TRANSPORT_ERRORS = (
        httpcore.NetworkError,
        httpcore.TimeoutException,
        OSError,
        anyio.EndOfStream,
        anyio.ClosedResourceError,
        anyio.BrokenResourceError,
    )
    _SEND_ERRORS = (LocalProtocolError, *_TRANSPORT_ERRORS)
    _quiet_session = QuietSession
    return QuietSession


def http_url(url: str) -> str:
    """``ws://`` and ``wss://`` URLs as the ``http://`` / ``https://`` URLs httpx requests."""
    if url.startswith("ws://"):
        return "http://" + url[5:]
    if url.startswith("wss://"):
        return "https://" + url[6:]
    return url


class MessageTooLarge(ValueError, TalkpipeAsyncError):
    """A message exceeded ``max_message_bytes`` (raised with ``on_oversize="raise"``)."""


class WebSocketClosed(ConnectionLost):
    """The connection ended other than by a normal close, and reconnecting is off.

    ``code`` is the close code (1006 when the connection dropped without a
    close frame), ``reason`` the peer's reason text.
    """

    def __init__(self, message: str, *, code: int, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class WebSocketRejected(ConnectionError, TalkpipeAsyncError):
    """The server refused the WebSocket handshake; ``status_code`` is its HTTP answer."""

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code



@dataclass
class WebSocketStats(NetStats):
    """:class:`NetStats` plus the WebSocket counters; pass one in as ``stats=``.

    ``dropped_messages`` (oversized, skipped; their bytes in
    ``dropped_bytes``), ``ignored_messages`` (messages a server sent to
    :func:`to_websocket`, read and discarded), ``pings`` (pings answered),
    ``close_code`` / ``close_reason`` (how the last connection ended).
    """

    dropped_messages: int = 0
    ignored_messages: int = 0
    pings: int = 0
    close_code: int | None = None
    close_reason: str = ""


def payload_size(data: str | bytes) -> int:
    """The payload size in bytes (UTF-8 for text; O(1) for ASCII strings)."""
    if isinstance(data, str) and not data.isascii():
        return len(data.encode())
    return len(data)


class PullSession:
    """Drives an open WebSocket connection from its caller's task: nothing is read ahead.

    ``stream`` is the upgraded connection (an httpcore network stream),
    ``connection`` its wsproto state machine (both from httpx-ws's
    handshake).  :meth:`receive_message` reads and parses frames until one
    whole data message is there, answering pings and replying to a close on
    the way; :meth:`send_message` sends one; :meth:`finish` runs the closing
    handshake with ``exit_code`` (``close_code``, 1000 by default, unless a
    policy set another such as 1009) and closes the socket, shielded, within
    ``close_timeout`` seconds.  :func:`connect` builds one.
    """

    def __init__(
        self,
        stream: httpcore.AsyncNetworkStream,
        connection: Connection,
        *,
        stats: WebSocketStats,
        label: str,
        read_size: int = READ_SIZE,
        read_timeout: float | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE,
        on_oversize: Overlong = "raise",
        close_code: int = 1000,
        close_timeout: float = CLOSE_TIMEOUT,
    ) -> None:
        self.stream = stream
        self.connection = connection
        self.stats = stats
        self.label = label
        self.read_size = read_size
        self.read_timeout = read_timeout
        self.max_message_bytes = max_message_bytes
        self.on_oversize = on_oversize
        self.exit_code = close_code
        self.close_timeout = close_timeout
        self.close_code: int | None = None
        self.close_reason = ""
        self.lost: BaseException | None = None
        self._events: Iterator[ws_events.Event] = iter(())
        self._write_lock = anyio.Lock()
        self._drained: anyio.Event | None = None

    @property
    def open(self) -> bool:
        """True while messages can still be sent and received."""
        return bool(self.connection.state is ConnectionState.OPEN)

    async def _write(self, event: ws_events.Event) -> None:
        async with self._write_lock:
            await self.stream.write(self.connection.send(event))

    async def send_message(self, data: str | bytes) -> None:
        """Send one text (``str``) or binary message; raise :class:`WebSocketClosed` if the connection is gone.

        A connection whose reading failed (``lost``) counts as gone: nothing is sent into a connection whose
        pings and close frame nobody reads.
        """
        if self.lost is not None:
            raise self._closed() from self.lost
        event: ws_events.Event
        if isinstance(data, str):
            event = ws_events.TextMessage(data=data)
        else:
            event = ws_events.BytesMessage(data=data)
        try:
            await self._write(event)
        except _SEND_ERRORS as err:
            raise self._closed() from err

    def _closed(self) -> WebSocketClosed:
        """The error a send into a closed connection raises: how it closed, 1006 if no close frame came."""
        code = self.close_code if self.close_code is not None else 1006
        detail = f": {self.close_reason}" if self.close_reason else ""
        return WebSocketClosed(
            f"{self.label}: cannot send, the connection is closed (code {code}{detail})",
            code=code,
            reason=self.close_reason,
        )

    async def _read(self) -> bytes:
        try:
            return await self.stream.read(self.read_size, timeout=self.read_timeout)
        except _TRANSPORT_ERRORS as err:  # a reset, a read timeout, a closed stream
            self.lost = err
            return b""

    def _too_large(self, size: int) -> None:
        if self.on_oversize == "raise":
            self.exit_code = 1009  # "message too big"
            raise MessageTooLarge(
                f"{self.label}: message larger than max_message_bytes={self.max_message_bytes} (at least {size} bytes)"
            )
        self.stats.dropped_messages += 1
        if self.stats.dropped_messages == 1:
            log.warning(
                "%s: dropping messages larger than %d bytes (counted in stats)", self.label, self.max_message_bytes
            )

    async def receive_message(self) -> str | bytes | None:
        """The next whole data message (``str`` for text, ``bytes`` for binary), or None once the connection closed.

        After None, ``close_code`` / ``close_reason`` tell how (1006: dropped
        without a close frame; ``lost`` then holds the transport error).
        """
        parts: list[Any] = []
        size = 0
        dropping = False
        cap = self.max_message_bytes
        stats = self.stats
        while True:
            for event in self._events:
                if isinstance(event, ws_events.Message):
                    data = event.data
                    size += payload_size(data)
                    if dropping:
                        pass
                    elif size > cap:
                        self._too_large(size)
                        dropping = True
                        parts = []
                    else:
                        parts.append(data)
                    if not event.message_finished:
                        continue
                    if dropping:
                        stats.dropped_bytes += size
                        size, dropping = 0, False
                        continue
                    if len(parts) == 1:
                        whole: str | bytes = parts[0]
                        return whole
                    return "".join(parts) if isinstance(data, str) else b"".join(parts)
                if isinstance(event, ws_events.Ping):
                    stats.pings += 1
                    try:
                        await self._write(event.response())
                    except _SEND_ERRORS as err:
                        self.lost = err
                elif isinstance(event, ws_events.CloseConnection):
                    self.close_code, self.close_reason = event.code, event.reason or ""
                    stats.close_code, stats.close_reason = self.close_code, self.close_reason
                    if self.connection.state is ConnectionState.REMOTE_CLOSING:  # reply: the closing handshake
                        try:
                            await self._write(event.response())
                        except _SEND_ERRORS:
                            pass
                    elif self.connection.state is ConnectionState.OPEN:  # a protocol error found by the parser
                        self.exit_code = event.code
                    return None
            data = await self._read()
            if data:
                stats.bytes_received += len(data)
                self.connection.receive_data(data)
            else:
                self.connection.receive_data(None)  # yields CloseConnection(1006)
            self._events = self.connection.events()

    async def drain(self) -> None:
        """Read (and count, and discard) what the peer sends until the connection closes; answer its pings.

        Meant to run as a task beside a sender: it never raises (an error
        ends the reading and is kept in ``lost``; the next send reports it).
        While it runs, :meth:`finish` lets it read the peer's close reply.
        """
        drained = self.expect_reader()
        try:
            while await self.receive_message() is not None:
                self.stats.ignored_messages += 1
        except Exception as err:  # the sender reports a broken connection
            self.lost = err
            self.stats.last_error = repr(err)
        finally:
            drained.set()

    def expect_reader(self) -> anyio.Event:
        """Say that :meth:`drain` reads this connection (call it before starting the task).

        :meth:`finish` then leaves all reading, the close reply included, to that task.
        """
        if self._drained is None:
            self._drained = anyio.Event()
        return self._drained

    async def finish(self) -> None:
        """The closing handshake, then close the socket; shielded, within ``close_timeout`` seconds.

        Sends a close frame (``exit_code``) if the connection is open (or
        the reply if the peer closed first), then reads and discards what the
        peer still sends until its close frame arrives (at most 16 MiB), so
        the peer sees a clean close with that code (closing a socket with
        unread data would make the kernel send a reset instead, and the peer
        record 1006).
        """
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + self.close_timeout
            try:
                state = self.connection.state
                if state is ConnectionState.OPEN or state is ConnectionState.REMOTE_CLOSING:
                    await self._write(ws_events.CloseConnection(code=self.exit_code))
                await self._await_close_reply()
            except _SEND_ERRORS:
                pass
            finally:
                try:
                    await self.stream.aclose()
                except _TRANSPORT_ERRORS:
                    pass

    async def _await_close_reply(self) -> None:
        """Read until the peer's close frame (or the end of the transport) after we sent ours."""
        if self._drained is not None:
            await self._drained.wait()  # the reader task sees the reply (or has been cancelled)
        budget = CLOSE_DRAIN_BYTES
        while self.connection.state is ConnectionState.LOCAL_CLOSING and self.lost is None and budget > 0:
            for event in self._events:
                if isinstance(event, ws_events.CloseConnection):
                    self.close_code, self.close_reason = event.code, event.reason or ""
                    self.stats.close_code, self.stats.close_reason = self.close_code, self.close_reason
                    return
            data = await self._read()
            if not data:
                return
            budget -= len(data)
            self.stats.bytes_received += len(data)
            self.connection.receive_data(data)
            self._events = self.connection.events()


@asynccontextmanager
async def connect(
    client: httpx.AsyncClient,
    url: str,
    *,
    stats: WebSocketStats,
    label: str,
    headers: Mapping[str, str] | None = None,
    subprotocols: Sequence[str] | None = None,
    connect_timeout: float = 10.0,
    **limits: Any,
) -> AsyncIterator[PullSession]:
    """Open a :class:`PullSession` to *url* with httpx-ws's handshake, through *client*.

    A refused handshake raises :class:`WebSocketRejected`; transport errors
    (``httpx.ConnectError``, ...) pass through.  ``limits`` go to
    :class:`PullSession`.  Leaving the block closes the connection.
    """
    session_class = _load()
    async with AsyncExitStack() as stack:
        try:
            raw = await stack.enter_async_context(
                aconnect_ws(
                    http_url(url),
                    client,
                    subprotocols=list(subprotocols) if subprotocols else None,
                    session_class=session_class,
                    keepalive_ping_interval_seconds=None,
                    headers=dict(headers or {}),  # aconnect_ws adds the handshake headers to this dict
                    timeout=httpx.Timeout(connect_timeout),
                )
            )
        except WebSocketUpgradeError as err:
            status = err.response.status_code
            raise WebSocketRejected(f"{label}: handshake refused: HTTP {status}", status_code=status) from None
        session = PullSession(raw.stream, raw.connection, stats=stats, label=label, **limits)
        try:
            yield session
        finally:
            await session.finish()

