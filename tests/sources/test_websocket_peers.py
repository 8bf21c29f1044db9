"""The WebSocket stages against a foreign peer: a server of the ``websockets`` library, in its own thread and loop.

What the peer records is the promise: leaving a pipeline runs the closing
handshake, so the server sees the close code the stage sent (1000, or the
one asked for), never 1006 (a connection dropped without a close frame),
even while it is sending as fast as it can.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import anyio
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from talkpipe_async import Pipeline
from talkpipe_async.sinks import to_websocket
from talkpipe_async.sources import websocket_messages

pytestmark = pytest.mark.anyio


@dataclass
class Peer:
    """A ``websockets`` server: ``/feed`` sends 100-byte messages without pause, ``/collect`` keeps what it gets.

    The feed hands control to its event loop after each message, as a
    handler that gets its messages from elsewhere does (a bare ``while True:
    await ws.send(x)`` never does while the kernel takes the bytes, so that
    server reads nothing, our close frame included, until we stop reading).

    ``closes`` records ``(path, close code received, reason)`` for every
    finished connection; ``wait(count)`` returns once *count* are recorded.
    """

    port: int = 0
    closes: list[tuple[str, int | None, str]] = field(default_factory=list)
    received: list[str | bytes] = field(default_factory=list)
    recorded: threading.Condition = field(default_factory=threading.Condition)

    async def handler(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else ""
        try:
            if path.startswith("/feed"):
                payload = "f" * 100
                while True:
                    await ws.send(payload)
                    await asyncio.sleep(0)
            else:
                async for message in ws:
                    self.received.append(message)
        except ConnectionClosed:
            pass
        await ws.wait_closed()
        with self.recorded:
            self.closes.append((path, ws.close_code, ws.close_reason or ""))
            self.recorded.notify_all()

    async def wait(self, count: int) -> list[tuple[str, int | None, str]]:
        """The close records once *count* connections have finished (at most 10 s)."""

        def reached() -> bool:
            with self.recorded:
                return self.recorded.wait_for(lambda: len(self.closes) >= count, 10)

        assert await anyio.to_thread.run_sync(reached), f"only {self.closes} finished"
        return sorted(self.closes)

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"


@pytest.fixture
def peer() -> Iterator[Peer]:
    state = Peer()
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stop = loop.create_future()

    async def main() -> None:
        async with serve(state.handler, "127.0.0.1", 0) as server:
            state.port = next(iter(server.sockets)).getsockname()[1]
            ready.set()
            await stop

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), name="websockets-peer", daemon=True)
    thread.start()
    assert ready.wait(10), "the websockets server did not start"
    try:
        yield state
    finally:
        loop.call_soon_threadsafe(stop.set_result, None)
        thread.join(10)
        loop.close()


async def test_leaving_a_source_to_sink_pipeline_closes_both_connections_cleanly(peer: Peer) -> None:
    pipeline = websocket_messages(peer.url("/feed")) | to_websocket(peer.url("/collect"))
    got = 0
    async with pipeline.stream() as items:
        async for _message in items:
            got += 1
            if got == 200:
                break  # the feed keeps sending: our socket holds unread data
    closes = await peer.wait(2)
    assert closes == [("/collect", 1000, ""), ("/feed", 1000, "")]
    assert len(peer.received) == 200


async def test_every_one_of_many_runs_closes_cleanly(peer: Peer) -> None:
    rounds = 15
    for n in range(1, rounds + 1):  # leaving at a different point each time, the server still sending
        async with Pipeline(websocket_messages(peer.url("/feed"))).stream() as items:
            got = 0
            async for _message in items:
                got += 1
                if got == n * 7:
                    break
        await peer.wait(n)
    assert [code for _path, code, _reason in peer.closes] == [1000] * rounds


@pytest.mark.parametrize("how", ["break", "cancel", "error"])
async def test_the_close_code_asked_for_reaches_the_server(peer: Peer, how: str) -> None:
    source = websocket_messages(peer.url("/feed"), close_code=4001)
    with anyio.CancelScope() as scope:
        try:
            async with Pipeline(source).stream() as items:
                async for _message in items:
                    if how == "break":
                        break
                    if how == "error":
                        raise LookupError("consumer failed")
                    scope.cancel()
                    await anyio.sleep_forever()  # cancelled here
        except LookupError:
            pass
    assert await peer.wait(1) == [("/feed", 4001, "")]


async def test_sink_close_code_reaches_the_server(peer: Peer) -> None:
    await to_websocket(peer.url("/collect"), close_code=4002).collect(["a", "b"])
    assert await peer.wait(1) == [("/collect", 4002, "")]
    assert peer.received == ["a", "b"]


def test_close_code_must_be_one_an_endpoint_may_send() -> None:
    with pytest.raises(ValueError, match="close_code"):
        websocket_messages("ws://x/", close_code=1006)
    with pytest.raises(ValueError, match="close_code"):
        to_websocket("ws://x/", close_code=2000)
