"""Ending TLS connections cleanly on the server side, and counting failed handshakes."""

from __future__ import annotations

import ssl

import anyio
import anyio.abc
from anyio.streams.tls import TLSListener, TLSStream

from .framing import NetStats

__all__ = ["TLS_SHUTDOWN_TIMEOUT", "CountingTLSListener", "drain", "flush_and_drain", "hang_up"]

#: how long a server waits for a TLS client's close_notify after sending its own
TLS_SHUTDOWN_TIMEOUT = 2.0


async def hang_up(stream: anyio.abc.ByteStream) -> None:
    """Close a served connection; a TLS one first with close_notify, so a standard client sees a clean end.

    The server then waits (shielded, ``TLS_SHUTDOWN_TIMEOUT`` seconds at
    most) for the client's close_notify or its end of stream, which also
    drains what the client still sends: closing a socket with unread data
    would make the kernel reset the connection, and the client could lose
    our close_notify.
    """
    if isinstance(stream, TLSStream):
        with anyio.move_on_after(TLS_SHUTDOWN_TIMEOUT, shield=True):
            try:
                await stream.unwrap()
            except ssl.SSLError:  # data after our close_notify: send it if still held, drop the rest until EOF
                await flush_and_drain(stream)
            except (OSError, anyio.BrokenResourceError, anyio.EndOfStream, anyio.ClosedResourceError):
                pass  # the client closed without its own close_notify, or reset: ours went out first
    await anyio.aclose_forcefully(stream)


async def flush_and_drain(stream: TLSStream) -> None:
    """Send what the TLS layer still holds (our close_notify, when the client's data came first), then drain."""
    outgoing = getattr(stream, "_write_bio", None)  # anyio keeps it private; without it only the drain runs
    try:
        if isinstance(outgoing, ssl.MemoryBIO) and outgoing.pending:
            await stream.transport_stream.send(outgoing.read())
    except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        return
    await drain(stream.transport_stream)


async def drain(stream: anyio.abc.AnyByteReceiveStream) -> None:
    """Read and drop what *stream* brings until its end (the caller bounds the time)."""
    try:
        while True:
            await stream.receive()
    except (OSError, anyio.BrokenResourceError, anyio.EndOfStream, anyio.ClosedResourceError):
        pass



class CountingTLSListener(TLSListener):
    """A TLS listener that counts failed handshakes (``stats.tls_failures``) instead of logging tracebacks."""

    stats: NetStats

    async def handle_handshake_error(self, exc: BaseException, stream: anyio.abc.AnyByteStream) -> None:  # type: ignore[override]
        """Close the connection and count the failure; cancellation goes on."""
        await anyio.aclose_forcefully(stream)
        if not isinstance(exc, Exception):
            raise exc
        self.stats.tls_failures += 1
        self.stats.last_error = repr(exc)

