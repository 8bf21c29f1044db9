"""WebSocket sink through httpx-ws (the ``[ws]`` extra): each item sent as one message, then passed on."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import httpx

from .._core._run import current_run
from .._core._segment import PassThrough
from .._net.framing import ConnectionLost
from .._net.http import client_for
from .._net.websocket import (
    Mode,
    WebSocketStats,
    check_close_code,
    check_mode,
    connect,
    payload_size,
    require_httpx_ws,
)
from .._renamed import old_name
from ._item_types import T

__all__ = ["to_websocket"]


class to_websocket(PassThrough[T]):
    """Send each item as a WebSocket message, then pass it on (like :class:`to_tcp`).

    ``mode``: ``"text"`` sends ``str(item)`` as a text message (``bytes``
    items go as binary messages, as they are), ``"bytes"`` sends ``bytes``
    items as binary messages (``str`` encoded as UTF-8; other types raise
    ``TypeError``), ``"json"`` sends ``serializer(item)`` (default
    ``json.dumps``) as a text message.

    One connection per run, opened before the first item through
    ``client`` (a shared ``httpx.AsyncClient``, left open) or a private
    client; ``headers`` and ``subprotocols`` go into the handshake.  Each
    send waits for the socket, so a slow server slows the pipeline.  A task
    of the run reads what the server sends meanwhile: it answers pings (so
    the server keeps the connection during quiet spells), counts and
    discards messages (``stats.ignored_messages``; those over 1 MiB are
    dropped as they arrive, ``stats.dropped_messages``) and notices a close.
    A closed or broken connection raises :class:`WebSocketClosed` at the
    next send; a refused handshake raises :class:`WebSocketRejected`, a
    failed connection ``ConnectionLost``.  At the end (or on ``break``, an
    error, cancellation) the sink runs the closing handshake: a close frame
    with ``close_code`` (1000 by default), then it waits (at most 5 seconds)
    for the server's close reply before it closes the socket, so the server
    records that code.  Metadata passes by in order.
    """

    def __init__(
        self,
        url: str,
        *,
        client: httpx.AsyncClient | None = None,
        mode: Mode = "text",
        serializer: Callable[[Any], str] | None = None,
        headers: Mapping[str, str] | None = None,
        subprotocols: Sequence[str] | None = None,
        connect_timeout: float = 10.0,
        close_code: int = 1000,
        stats: WebSocketStats | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        require_httpx_ws()
        check_mode(mode)
        check_close_code(close_code)
        self.close_code = close_code
        self.url = url
        self.client = client
        self.mode = mode
        self.serializer = serializer
        self.headers = dict(headers or {})
        self.subprotocols = list(subprotocols) if subprotocols else None
        self.connect_timeout = connect_timeout
        self.stats = stats if stats is not None else WebSocketStats()
        if name:
            self.name = name

    def _encoder(self, where: str) -> Callable[[Any], str | bytes]:
        if self.mode == "json":
            dumps = self.serializer or (lambda item: json.dumps(item, ensure_ascii=False))
            return dumps
        if self.mode == "text":
            return lambda item: item if isinstance(item, (str, bytes)) else str(item)

        def binary(item: Any) -> bytes:
            if isinstance(item, bytes):
                return item
            if isinstance(item, (bytearray, memoryview)):
                return bytes(item)
            if isinstance(item, str):
                return item.encode()
            raise TypeError(f"{where}: mode='bytes' sends bytes or str, not {type(item).__name__}")

        return binary

    async def transform(self, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Send each item, yield it on."""
        stats = self.stats if self.stats is not None else WebSocketStats()
        where = f"{self.label} ({self.url})"
        encode = self._encoder(where)
        async with client_for(self.client) as client, AsyncExitStack() as stack:
            try:
                session = await stack.enter_async_context(
                    connect(
                        client,
                        self.url,
                        stats=stats,
                        label=where,
                        headers=self.headers,
                        subprotocols=self.subprotocols,
                        connect_timeout=self.connect_timeout,
                        close_code=self.close_code,
                        on_oversize="skip",  # the reader drops big messages (counted) and goes on
                    )
                )
            except httpx.TransportError as err:
                raise ConnectionLost(f"{where}: cannot connect: {err!r}") from err
            stats.connections += 1
            session.expect_reader()  # from now on only the reader task reads, the closing handshake included
            current_run().start_soon(session.drain, name=f"{self.label} reader")
            async for item in items:
                data = encode(item)
                await session.send_message(data)
                stats.bytes_sent += payload_size(data)
                stats.items += 1
                yield item


# The name this stage had before sinks were named ``to_<destination>``: kept for one release.
if TYPE_CHECKING:
    from typing_extensions import deprecated

    @deprecated("websocket_send is deprecated: use to_websocket")
    class websocket_send(to_websocket[T]):
        """Deprecated name of :class:`to_websocket`."""

else:
    _RENAMED = {"websocket_send": ("to_websocket", to_websocket)}

    def __getattr__(name: str) -> Any:
        return old_name(__name__, name, _RENAMED)
