"""TLS servers end connections with close_notify: standard TLS clients see a clean end, not a truncation.

``tcp_server_lines(ssl_context=...)`` closes a connection when it is idle,
over the connection cap, or when the run ends.  A TLS connection ended by a
bare TCP close looks truncated to a standard client (Python's ``ssl``:
``SSLEOFError``; anyio with ``standard_compatible=True``:
``BrokenResourceError``), so the server says close_notify first, and waits a
bounded time for the client's reply.  Certificates from trustme.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import pytest

from talkpipe_async import Pipeline
from talkpipe_async.sources import NetStats, tcp_server_lines

pytestmark = pytest.mark.anyio


def std_client(port: int, context: ssl.SSLContext, payload: bytes) -> str:
    """Python's ``ssl`` module, blocking (run in a thread): send, then read until the server ends the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        # suppress_ragged_eofs=False: report a TCP close without close_notify instead of hiding it as b""
        with context.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False) as conn:
            conn.sendall(payload)
            try:
                while conn.recv(1024):
                    pass
            except ssl.SSLEOFError as err:
                return f"truncated: {err}"
            return "clean end"


async def anyio_client(port: int, context: ssl.SSLContext, payload: bytes) -> str:
    """anyio's TLS stream in standard mode: send, then read until the server ends the connection."""
    stream = await anyio.connect_tcp("127.0.0.1", port, ssl_context=context, tls_hostname="localhost")
    try:
        await stream.send(payload)
        try:
            while True:
                await stream.receive()
        except anyio.EndOfStream:
            return "clean end"
        except anyio.BrokenResourceError as err:
            return f"truncated: {err!r} {err.__cause__!r}"
    finally:
        await anyio.aclose_forcefully(stream)


Client = Callable[[int, ssl.SSLContext, bytes], Any]


async def run_std(port: int, context: ssl.SSLContext, payload: bytes) -> str:
    return await anyio.to_thread.run_sync(std_client, port, context, payload)


CLIENTS = [pytest.param(run_std, id="python-ssl"), pytest.param(anyio_client, id="anyio-standard")]


@pytest.mark.parametrize("client", CLIENTS)
async def test_the_end_of_the_run_closes_tls_connections_cleanly(
    tls: tuple[ssl.SSLContext, ssl.SSLContext], client: Client
) -> None:
    server_ctx, client_ctx = tls
    ready = anyio.Event()
    address: list[Any] = []

    def listening(addr: Any) -> None:
        address.append(addr)
        ready.set()

    stats = NetStats()
    source = tcp_server_lines(ssl_context=server_ctx, on_listening=listening, stats=stats)
    outcome: list[str] = []
    got: list[str] = []
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:

            async def connect() -> None:
                await ready.wait()
                outcome.append(await client(address[0][1], client_ctx, b"one\ntwo\n"))

            tg.start_soon(connect)
            async with Pipeline(source).stream() as items:
                async for line in items:
                    got.append(line)
                    if len(got) == 2:
                        break  # the run ends with the client still connected and reading
    assert got == ["one", "two"] and outcome == ["clean end"] and stats.tls_failures == 0


@pytest.mark.parametrize("client", CLIENTS)
async def test_an_idle_tls_connection_is_closed_cleanly(
    tls: tuple[ssl.SSLContext, ssl.SSLContext], client: Client
) -> None:
    server_ctx, client_ctx = tls
    ready, done = anyio.Event(), anyio.Event()
    address: list[Any] = []

    def listening(addr: Any) -> None:
        address.append(addr)
        ready.set()

    stats = NetStats()
    source = tcp_server_lines(ssl_context=server_ctx, idle_timeout=0.2, on_listening=listening, stats=stats)
    outcome: list[str] = []
    got: list[str] = []
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:

            async def connect() -> None:
                await ready.wait()
                outcome.append(await client(address[0][1], client_ctx, b"hello\n"))  # then silent: idle
                done.set()

            tg.start_soon(connect)
            async with Pipeline(source).stream() as items:
                async for line in items:
                    got.append(line)
                    await done.wait()  # the server closes the idle connection meanwhile
                    break
    assert got == ["hello"] and outcome == ["clean end"] and stats.idle_closed == 1


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_tls_connection_over_the_cap_is_closed_cleanly(
    tls: tuple[ssl.SSLContext, ssl.SSLContext], client: Client
) -> None:
    server_ctx, client_ctx = tls
    ready, first_in, done = anyio.Event(), anyio.Event(), anyio.Event()
    address: list[Any] = []

    def listening(addr: Any) -> None:
        address.append(addr)
        ready.set()

    stats = NetStats()
    source = tcp_server_lines(ssl_context=server_ctx, max_connections=1, on_listening=listening, stats=stats)
    outcome: list[str] = []
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:

            async def connect() -> None:
                await ready.wait()
                port = address[0][1]
                first = await anyio.connect_tcp("127.0.0.1", port, ssl_context=client_ctx, tls_hostname="localhost")
                await first.send(b"first\n")
                await first_in.wait()  # the first connection holds the only place
                outcome.append(await client(port, client_ctx, b"second\n"))
                await anyio.aclose_forcefully(first)
                done.set()

            tg.start_soon(connect)
            async with Pipeline(source).stream() as items:
                async for line in items:
                    assert line == "first"
                    first_in.set()
                    await done.wait()
                    break
    assert outcome == ["clean end"] and stats.rejected == 1
