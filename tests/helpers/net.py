"""Test servers for the network stages: uvicorn in a thread, raw anyio listeners for faults."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import uvicorn
from anyio.abc import SocketAttribute
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from talkpipe_async import Backoff

#: A quick reconnect policy for tests: 10 ms first wait, 50 ms cap, 5 attempts.
FAST = Backoff(initial=0.01, maximum=0.05, max_attempts=5)


class AppServer:
    """Serve an ASGI app with uvicorn on 127.0.0.1 (ephemeral port) in its own thread and loop.

    uvicorn runs on asyncio; the client side of a test can run on any backend.
    """

    def __init__(self, app: Any) -> None:
        self.config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="critical", lifespan="off", access_log=False
        )
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)
        self.port = 0

    def __enter__(self) -> AppServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:  # a bounded wait for the server thread's flag
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.005)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def url(self, path: str) -> str:
        """The full URL of *path* on this server."""
        return f"http://127.0.0.1:{self.port}{path}"


@dataclass
class AppState:
    """What the test app saw: Last-Event-ID headers, POSTed batches, failures left to inject."""

    last_event_ids: list[str | None] = field(default_factory=list)
    posted: list[Any] = field(default_factory=list)
    fail_posts: int = 0
    poll_version: int = 0
    poll_hits: int = 0
    poll_bump_at: int = 0
    stream_closed: threading.Event = field(default_factory=threading.Event)


def make_app(state: AppState) -> Starlette:
    """The Starlette app the HTTP tests talk to."""

    async def sse(request: Request) -> Response:
        last = request.headers.get("last-event-id")
        state.last_event_ids.append(last)
        n = int(request.query_params.get("n", "5"))
        drop_after = int(request.query_params.get("drop_after", "0"))
        start = int(last or 0)
        if start >= n:
            return Response(status_code=204)
        first = last is None

        async def body() -> AsyncIterator[bytes]:
            yield b"retry: 10\n\n"
            for i in range(start + 1, n + 1):
                yield f"id: {i}\ndata: event {i}\n\n".encode()
                if first and drop_after and i == drop_after:
                    yield b"data: cut in the mid"
                    await asyncio.sleep(0.01)
                    raise RuntimeError("injected mid-line disconnect")

        return StreamingResponse(body(), media_type="text/event-stream")

    async def lines(request: Request) -> Response:
        n = int(request.query_params.get("n", "100"))

        async def body() -> AsyncIterator[bytes]:
            for i in range(0, n, 10):
                yield "".join(f"line {j}\n" for j in range(i, min(n, i + 10))).encode()

        return StreamingResponse(body(), media_type="text/plain")

    async def ndjson(request: Request) -> Response:
        records = [json.dumps({"n": 1, "text": "a\u2028b"}), "{not json"]
        records += [json.dumps({"n": 3}), "", json.dumps({"n": 5})]

        async def body() -> AsyncIterator[bytes]:
            for r in records:
                yield (r + "\n").encode()

        return StreamingResponse(body(), media_type="application/x-ndjson")

    async def poll(request: Request) -> Response:
        state.poll_hits += 1
        if state.poll_bump_at and state.poll_hits >= state.poll_bump_at:
            state.poll_version, state.poll_bump_at = state.poll_version + 1, 0
        etag = f'"v{state.poll_version}"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304)
        items = [{"id": i} for i in range(state.poll_version + 1)]
        return JSONResponse(items, headers={"ETag": etag})

    async def status(request: Request) -> Response:
        return Response(status_code=int(request.path_params["code"]))

    async def wrong_type(request: Request) -> Response:
        return Response("data: x\n\n", media_type="text/plain")

    async def ingest(request: Request) -> Response:
        if state.fail_posts > 0:
            state.fail_posts -= 1
            return Response(status_code=503, headers={"Retry-After": "0"})
        body = await request.body()
        if request.headers.get("content-type") == "application/x-ndjson":
            state.posted.append([json.loads(x) for x in body.decode().splitlines()])
        else:
            state.posted.append(json.loads(body))
        return Response(status_code=204)

    async def reject(request: Request) -> Response:
        return Response(status_code=400)

    return Starlette(
        routes=[
            Route("/sse", sse),
            Route("/lines", lines),
            Route("/ndjson", ndjson),
            Route("/poll", poll),
            Route("/status/{code:int}", status),
            Route("/wrong-type", wrong_type),
            Route("/ingest", ingest, methods=["POST"]),
            Route("/reject", reject, methods=["POST"]),
        ]
    )


Handler = Callable[[anyio.abc.SocketStream], Awaitable[None]]
#: What a peer going away raises on a raw connection: a normal end for a test server.
_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError)


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[int]:
    """A raw TCP listener on 127.0.0.1 running *handler* per connection; yields the port."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.listeners[0].extra(SocketAttribute.local_port)

    async def guarded(stream: anyio.abc.SocketStream) -> None:
        try:
            await handler(stream)
        except _GONE:
            pass  # the client went away: a normal end for a test server
        finally:
            await anyio.aclose_forcefully(stream)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, guarded)
        try:
            yield port
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def hanging_up(accepted: list[float]) -> AsyncIterator[int]:
    """A listener that closes each connection as soon as it is accepted, noting the time (a refusing or crashing
    server); yields its port."""

    async def close_at_once(stream: anyio.abc.SocketStream) -> None:
        accepted.append(anyio.current_time())

    async with raw_server(close_at_once) as port:
        yield port


@contextmanager
def full_backlog() -> Iterator[int]:
    """A listener that never accepts, its backlog filled: the kernel drops the next SYN, so a connect hangs; yields
    its port."""
    listener = socket.socket()
    held: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(3):
            s = socket.socket()
            held.append(s)
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
        yield port
    finally:
        for s in held:
            s.close()
        listener.close()


class HoldingRelay:
    """A TCP relay to a real server whose answers can be held back: a server that is up but does not answer in
    time.  What the client sends always goes through; while :meth:`hold` is in force, what the server sends waits
    in the relay (and then in the kernel) until :meth:`release`."""

    def __init__(self) -> None:
        self.port = 0
        self._open = anyio.Event()
        self._open.set()

    def hold(self) -> None:
        """From now on, keep what the server sends."""
        if self._open.is_set():
            self._open = anyio.Event()

    def release(self) -> None:
        """Pass on what was kept, and everything after it."""
        self._open.set()

    async def _client_to_server(self, client: anyio.abc.SocketStream, server: anyio.abc.SocketStream) -> None:
        with suppress(*_GONE):
            async for data in client:
                await server.send(data)
            await server.send_eof()

    async def _server_to_client(self, server: anyio.abc.SocketStream, client: anyio.abc.SocketStream) -> None:
        with suppress(*_GONE):
            async for data in server:
                await self._open.wait()
                await client.send(data)


@asynccontextmanager
async def holding_relay(target_port: int) -> AsyncIterator[HoldingRelay]:
    """A :class:`HoldingRelay` on 127.0.0.1 in front of *target_port*; its port is ``relay.port``."""
    relay = HoldingRelay()

    async def carry(client: anyio.abc.SocketStream) -> None:
        async with await anyio.connect_tcp("127.0.0.1", target_port) as server, anyio.create_task_group() as tg:
            tg.start_soon(relay._client_to_server, client, server)
            await relay._server_to_client(server, client)
            tg.cancel_scope.cancel()

    async with raw_server(carry) as port:
        relay.port = port
        yield relay


def parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    """An HTTP request head (without its blank line): the request line and the headers (lower-case names)."""
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers


async def read_request(stream: anyio.abc.SocketStream) -> dict[str, str]:
    """Read an HTTP request head from an anyio stream; return its headers (lower-case names)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
    return parse_head(data.split(b"\r\n\r\n", 1)[0])[1]


class RawRequest(dict[str, str]):
    """One request as a raw server read it: its headers by lower-case name (the last of each kept), every name in
    the order sent (``names``), the request line (``line``) and the body, read to its ``Content-Length``."""

    names: list[str]
    line: str
    body: bytes


async def read_whole_request(stream: anyio.abc.SocketStream) -> RawRequest:
    """Read one whole request from an anyio stream: head and body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
    head, body = data.split(b"\r\n\r\n", 1)
    line, headers = parse_head(head)
    request = RawRequest(headers)
    request.line = line
    request.names = [h.partition(":")[0].strip().lower() for h in head.decode("latin-1").split("\r\n")[1:]]
    while len(body) < int(request.get("content-length", "0")):
        body += await stream.receive()
    request.body = body
    return request


Script = Callable[[int, anyio.abc.SocketStream], Awaitable[None]]


@asynccontextmanager
async def scripted(script: Script, path: str = "/") -> AsyncIterator[tuple[str, list[RawRequest]]]:
    """A raw server that records each connection's request, then answers with ``script(n, stream)`` (n counts
    from 1); yields the URL of *path* on it and the list of requests seen so far."""
    seen: list[RawRequest] = []

    async def handler(stream: anyio.abc.SocketStream) -> None:
        seen.append(await read_whole_request(stream))
        await script(len(seen), stream)

    async with raw_server(handler) as port:
        yield f"http://127.0.0.1:{port}{path}", seen


async def ws_handshake(stream: anyio.abc.SocketStream, *, choose_subprotocol: bool = False) -> dict[str, str]:
    """The server side of a WebSocket handshake, by hand; the request's headers (lower-case names).

    With *choose_subprotocol*, the first subprotocol the client offers is accepted.
    """
    headers = await read_request(stream)
    key = headers["sec-websocket-key"].encode()
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()).decode()
    offered = headers.get("sec-websocket-protocol", "") if choose_subprotocol else ""
    chosen = f"Sec-WebSocket-Protocol: {offered.split(',')[0].strip()}\r\n" if offered else ""
    await stream.send(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        + f"Sec-WebSocket-Accept: {accept}\r\n{chosen}\r\n".encode()
    )
    return headers


async def hold_after_request(stream: anyio.abc.SocketStream) -> None:
    """A server that reads the request, then keeps the connection and never answers."""
    await read_request(stream)
    await anyio.sleep_forever()


def ws_frame(payload: bytes, *, opcode: int = 0x1, fin: bool = True) -> bytes:
    """One unmasked (server-to-client) frame."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        return head + bytes([n]) + payload
    if n < 1 << 16:
        return head + bytes([126]) + struct.pack("!H", n) + payload
    return head + bytes([127]) + struct.pack("!Q", n) + payload


def ws_close_frame(code: int, reason: bytes = b"") -> bytes:
    """A server-to-client close frame with *code* and *reason*."""
    return ws_frame(code.to_bytes(2, "big") + reason, opcode=0x8)


def client_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The whole masked (client-to-server) frames at the start of *data*: their opcodes and unmasked payloads."""
    frames: list[tuple[int, bytes]] = []
    i = 0
    while i + 2 <= len(data):
        opcode, size, at = data[i] & 0x0F, data[i + 1] & 0x7F, i + 2
        if size == 126:
            size, at = int.from_bytes(data[at : at + 2], "big"), at + 2
        elif size == 127:
            size, at = int.from_bytes(data[at : at + 8], "big"), at + 8
        if at + 4 + size > len(data):
            break
        mask, payload = data[at : at + 4], data[at + 4 : at + 4 + size]
        frames.append((opcode, bytes(b ^ mask[n % 4] for n, b in enumerate(payload))))
        i = at + 4 + size
    return frames


def reset(stream: anyio.abc.SocketStream) -> None:
    """Make closing *stream* send a TCP reset (SO_LINGER 0) instead of a FIN."""
    sock = stream.extra(SocketAttribute.raw_socket)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def chunked_head(content_type: str, status: str = "200 OK") -> bytes:
    """A response head announcing a chunked body."""
    return f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()


def chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


class EndlessLine:
    """A :func:`raw_server` handler that answers with one line that never ends.

    It sends a chunked head of ``content_type`` and then 64 KiB chunks of
    ``x`` until 1 GiB or the client goes away; ``sent`` counts the bytes, so a
    test can show that the client stopped reading long before that.
    """

    def __init__(self, content_type: str) -> None:
        self.content_type = content_type
        self.sent = 0

    async def __call__(self, stream: anyio.abc.SocketStream) -> None:
        await read_request(stream)
        await stream.send(chunked_head(self.content_type))
        block = chunk(b"x" * 65536)
        while self.sent < 1 << 30:
            await stream.send(block)
            self.sent += 65536


async def send_until_the_kernel_refuses(stream: anyio.abc.SocketStream, block: bytes) -> int:
    """Send *block* again and again on *stream*'s socket, without waiting, until the kernel refuses; the bytes sent.

    A refused non-blocking send (``EAGAIN``) is the exact sign that the
    peer stopped reading: its receive buffer and our send buffer are full.
    Call it once the peer is known to have stopped (an event of the test);
    it then ends after a bounded number of bytes (the two kernel buffers).
    """
    raw = stream.extra(SocketAttribute.raw_socket)
    with socket.fromfd(raw.fileno(), raw.family, raw.type) as sock:  # a duplicate: the loop's wrapper cannot send
        sock.setblocking(False)
        view = memoryview(block)
        sent = 0
        while True:
            try:
                n = sock.send(view)
            except BlockingIOError:
                return sent
            sent += n
            view = view[n:] if n < len(view) else memoryview(block)
            if sent > 1 << 30:
                raise AssertionError("1 GiB went out: the peer never stopped reading")
            if sent % (1 << 20) < n:
                await anyio.lowlevel.checkpoint()  # stay cancellable


def iter_chunks(data: bytes, size: int) -> Iterator[bytes]:
    """*data* in pieces of *size* bytes."""
    for i in range(0, len(data), size):
        yield data[i : i + size]
