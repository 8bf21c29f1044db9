"""The UDP source: datagrams into a bounded drop-oldest ring (UDP has no backpressure)."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal, overload

import anyio
from anyio.abc import SocketAttribute

from .._core._run import current_run
from .._core._segment import AbstractSource
from .._net.framing import NetStats
from ._item_types import Item

__all__ = ["udp_datagrams"]

log = logging.getLogger("talkpipe_async.net")


class udp_datagrams(AbstractSource[Item]):
    """Datagrams received on a UDP socket: ``bytes``, or ``(bytes, (host, port))`` with ``with_address``.

    UDP has no backpressure, so a receiving task keeps at most ``buffer``
    datagrams; when the pipeline falls behind the oldest are dropped and
    counted in ``stats.datagrams_dropped`` (a warning is logged at the first
    drop).  ``on_listening(address)`` gets the bound ``(host, port)``.
    """

    @overload
    def __init__(
        self: udp_datagrams[bytes],
        host: str = ...,
        port: int = ...,
        *,
        buffer: int = ...,
        with_address: Literal[False] = ...,
        on_listening: Callable[[Any], Any] | None = ...,
        stats: NetStats | None = ...,
        name: str | None = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: udp_datagrams[tuple[bytes, tuple[str, int]]],
        host: str = ...,
        port: int = ...,
        *,
        buffer: int = ...,
        with_address: Literal[True],
        on_listening: Callable[[Any], Any] | None = ...,
        stats: NetStats | None = ...,
        name: str | None = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: udp_datagrams[Any],
        host: str = ...,
        port: int = ...,
        *,
        buffer: int = ...,
        with_address: bool,
        on_listening: Callable[[Any], Any] | None = ...,
        stats: NetStats | None = ...,
        name: str | None = ...,
    ) -> None: ...
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        buffer: int = 1024,
        with_address: bool = False,
        on_listening: Callable[[Any], Any] | None = None,
        stats: NetStats | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if buffer < 1:
            raise ValueError("buffer must be at least 1")
        self.host = host
        self.port = port
        self.buffer = buffer
        self.with_address = with_address
        self.on_listening = on_listening
        self.stats = stats if stats is not None else NetStats()
        if name:
            self.name = name

    async def generate(self) -> AsyncIterator[Any]:
        """Receive datagrams in a task into a drop-oldest ring; yield them in order."""
        stats = self.stats if self.stats is not None else NetStats()
        sock = await anyio.create_udp_socket(local_host=self.host, local_port=self.port)
        ring: deque[Any] = deque()
        state: dict[str, Any] = {"event": anyio.Event(), "error": None}
        cap = self.buffer
        label = self.label
        with_address = self.with_address

        async def receive() -> None:
            try:
                async with sock:
                    async for packet, address in sock:
                        if len(ring) >= cap:
                            ring.popleft()
                            stats.datagrams_dropped += 1
                            if stats.datagrams_dropped == 1:
                                log.warning("%s: buffer full, dropping oldest datagrams (counted in stats)", label)
                        ring.append((packet, address) if with_address else packet)
                        stats.bytes_received += len(packet)
                        if len(ring) > stats.high_water:
                            stats.high_water = len(ring)
                        state["event"].set()
            except Exception as exc:
                state["error"] = exc
                state["event"].set()

        try:
            current_run().start_soon(receive)
        except BaseException:
            await anyio.aclose_forcefully(sock)
            raise
        if self.on_listening is not None:
            self.on_listening(sock.extra(SocketAttribute.local_address))
        while True:
            while ring:
                stats.items += 1
                yield ring.popleft()
            if state["error"] is not None:
                raise state["error"]
            event = state["event"] = anyio.Event()
            if not ring:
                await event.wait()
