"""Socket server sources: TCP (optionally TLS) and Unix servers whose items are the lines of all their clients."""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypedDict

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from .._core._channel import Channel, ChannelClosed
from .._core._run import current_run
from .._net.connect import UnixAcceptor, check_unix_path
from .._net.framing import DEFAULT_MAX_LINE, READ_SIZE, NetStats, Overlong
from .._net.tls import CountingTLSListener, hang_up
from ._framing import FramedSource

if TYPE_CHECKING:
    from typing_extensions import Unpack


class ServerOptions(TypedDict, total=False):
    """The options :class:`tcp_server_lines` and :class:`unix_server_lines` share (their defaults are the
    servers' own: see :class:`tcp_server_lines`)."""

    max_connections: int
    idle_timeout: float | None
    buffer: int
    max_line_bytes: int
    on_overlong: Overlong
    encoding: str
    errors: str
    on_listening: Callable[[Any], Any] | None
    stats: NetStats | None
    name: str | None

__all__ = ["tcp_server_lines", "unix_server_lines"]


class _ServerSource(FramedSource[str]):
    """Shared body of the TCP and Unix server sources."""

    def __init__(
        self,
        *,
        max_connections: int = 100,
        idle_timeout: float | None = None,
        buffer: int = 1024,
        max_line_bytes: int = DEFAULT_MAX_LINE,
        on_overlong: Overlong = "skip",
        encoding: str = "utf-8",
        errors: str = "replace",
        on_listening: Callable[[Any], Any] | None = None,
        stats: NetStats | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(max_line_bytes, on_overlong, encoding, errors, stats, name)
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.buffer = buffer
        self.on_listening = on_listening

    async def _listen(self, stats: NetStats) -> tuple[anyio.abc.Listener[Any], Any]:
        raise NotImplementedError

    async def generate(self) -> AsyncIterator[str]:
        """Listen, merge the lines of every connection into one bounded channel, yield them."""
        stats = self.stats if self.stats is not None else NetStats()
        listener, address = await self._listen(stats)
        channel = Channel(self.buffer)
        try:
            current_run().start_soon(self._serve, listener, channel, stats)
        except BaseException:
            await anyio.aclose_forcefully(listener)
            raise
        if self.on_listening is not None:
            self.on_listening(address)
        try:
            while True:
                try:
                    batch = await channel.get_batch(1024)
                except anyio.EndOfStream:
                    return
                if channel.high_water > stats.high_water:
                    stats.high_water = channel.high_water
                stats.items += len(batch)
                for line in batch:
                    yield line
        finally:
            channel.abort()

    async def _serve(self, listener: anyio.abc.Listener[Any], channel: Channel, stats: NetStats) -> None:
        active = 0
        label = self.label

        async def handle(stream: anyio.abc.ByteStream) -> None:
            nonlocal active
            if active >= self.max_connections:
                stats.rejected += 1
                await hang_up(stream)
                return
            active += 1
            stats.connections += 1
            framer = self._framer(label, stats)
            try:
                while True:
                    try:
                        with anyio.move_on_after(self.idle_timeout) as scope:
                            data = await stream.receive(READ_SIZE)
                        if scope.cancelled_caught:
                            stats.idle_closed += 1
                            framer.drop_partial()
                            return
                    except anyio.EndOfStream:
                        tail = framer.finish()
                        if tail is not None:
                            await channel.put(tail.decode(self.encoding, self.errors))
                        return
                    except (anyio.BrokenResourceError, OSError) as err:
                        framer.drop_partial()
                        stats.errors += 1
                        stats.last_error = repr(err)
                        return
                    stats.bytes_received += len(data)
                    lines = framer.feed_text(data, self.encoding, self.errors)
                    if lines:
                        if len(channel) >= channel.capacity:
                            stats.blocked_puts += 1
                        await channel.put_batch(lines)
            except ChannelClosed:
                return
            except Exception as exc:  # the source raises it, in order (e.g. LineTooLong)
                channel.close(exc)
            finally:
                active -= 1
                await hang_up(stream)

        try:
            async with listener:
                await listener.serve(handle)
        except Exception as exc:
            channel.close(exc)


class tcp_server_lines(_ServerSource):
    """A TCP server whose source items are the lines sent by all its clients, merged.

    Every connection's handler reads 64 KiB, splits lines and puts them, as a
    batch, into one bounded channel of ``buffer`` lines; when the pipeline is
    slow the channel fills, handlers stop reading and TCP flow control
    blocks the senders.  Buffered lines stay below ``buffer`` plus one batch
    (the lines of one 64 KiB read) per connection.  Connections beyond
    ``max_connections`` are closed at once (``stats.rejected``); a connection
    silent for ``idle_timeout`` seconds is closed (``stats.idle_closed``).
    ``on_listening(address)`` is called with the bound ``(host, port)``
    (use ``port=0`` for an ephemeral port).  Over-long lines are dropped and
    counted by default (``on_overlong="skip"``): one bad client must not stop
    the server.  With ``ssl_context`` (a server context holding the
    certificate) every connection is TLS; a failed or timed-out
    (``tls_handshake_timeout``) handshake closes that connection and is
    counted in ``stats.tls_failures``.  A TLS connection the server ends
    (idle, over the cap, the end of the run) gets a close_notify first, and
    the server waits up to 2 seconds for the client's, so standard clients
    (Python's ``ssl``, anyio in standard mode) see a clean end rather than a
    truncated stream.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        tls_handshake_timeout: float = 10.0,
        **options: Unpack[ServerOptions],
    ) -> None:
        super().__init__(**options)
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.tls_handshake_timeout = tls_handshake_timeout

    async def _listen(self, stats: NetStats) -> tuple[anyio.abc.Listener[Any], Any]:
        tcp = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
        address = tcp.listeners[0].extra(SocketAttribute.local_address)
        if self.ssl_context is None:
            return tcp, address
        listener = CountingTLSListener(
            tcp, self.ssl_context, standard_compatible=False, handshake_timeout=self.tls_handshake_timeout
        )
        listener.stats = stats
        return listener, address


class unix_server_lines(_ServerSource):
    """A Unix-socket server whose items are the lines of all its clients; as :class:`tcp_server_lines`.

    An existing socket file at ``path`` is replaced; the file is removed when the run ends.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        **options: Unpack[ServerOptions],
    ) -> None:
        super().__init__(**options)
        self.path = check_unix_path(path)

    async def _listen(self, stats: NetStats) -> tuple[anyio.abc.Listener[Any], Any]:
        run = current_run()  # outside a run: raise before the path is touched or a socket is made
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.path)
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        path = self.path

        def remove() -> None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

        run.on_close(remove)
        return UnixAcceptor(sock), path

