"""A hub served to 200 concurrent SSE clients by a real uvicorn + Starlette app over loopback.

150 clients read as fast as they can; 50 open the stream and stop reading
(their sockets have small kernel buffers, so the server's ``send`` for them
soon waits, and their hub buffers fill).  The fast ones receive every item,
in order, nothing twice, while the stalled ones are handled by the hub's
policy: ``disconnect`` (each later reads a contiguous prefix and then the
``SubscriberDisconnected`` error event) or ``drop_oldest`` (each later reads
an in-order subsequence that ends with the last item; what it read plus
what was dropped is every item).  Every wait is on the hub's counters,
evaluated in the server's own loop through ``run_coroutine_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from talkpipe_async import Pipeline, source
from talkpipe_async.sinks import Hub, HubStats, SubscriberStats
from talkpipe_async.sinks.web import PipelineResponse, streaming_response
from talkpipe_async.sources.sse import SSEEvent, SSEParser

pytestmark = pytest.mark.anyio

N_FAST = 150
N_STALLED = 50
AFTER_STALL = 20  # items the fast clients must get while every stalled client is held by the policy
SMALL_BUFFER = 4096  # SO_RCVBUF of the stalled clients, SO_SNDBUF of the server's sockets
PAD = "x" * 2000  # big items: the stalled sockets fill after few of them
#: (the hub's policy for the stalled clients, the clients' backend, uvicorn's loop): two runs, to keep CI short
CASES = [("disconnect", "asyncio", "asyncio"), ("drop_oldest", "trio", "uvloop")]


@pytest.fixture(params=CASES, ids=["-".join(case) for case in CASES])
def case(request: pytest.FixtureRequest) -> tuple[str, str, str]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def anyio_backend(case: tuple[str, str, str]) -> tuple[str, dict[str, object]]:
    """This module runs each case on its own client backend (not on all three)."""
    return case[1], {}


@source
async def numbered(app: FeedApp) -> AsyncIterator[dict[str, Any]]:
    """``{"seq": 0, "pad": ...}``, 1, 2, ... from when every client has joined until ``app.stop``."""
    await app.hub.wait_until(lambda s: s.subscribers >= N_FAST + N_STALLED)  # everyone gets item 0
    seq = 0
    while not app.stop:
        yield {"seq": seq, "pad": PAD}
        seq += 1
        await anyio.lowlevel.checkpoint()


class FeedApp:
    """A Starlette app whose lifespan hosts one hub; ``/feed`` serves a subscriber as SSE."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.stop = False
        self.stats: dict[str, SubscriberStats] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.hub: Hub[dict[str, Any]] = Hub(numbered(app=self), buffer=8, policy=policy)
        self.app = Starlette(routes=[Route("/feed", self.serve)], lifespan=self.lifespan)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.loop = asyncio.get_running_loop()
        async with self.hub:
            yield

    async def serve(self, request: Request) -> PipelineResponse:
        name = request.query_params["name"]
        stats = self.stats[name] = SubscriberStats()
        policy = request.query_params.get("policy")  # the fast clients ask for "block": they set the pace
        subscriber = self.hub.source(name=name, policy=policy, stats=stats)  # type: ignore[arg-type]
        return streaming_response(Pipeline(subscriber), format="sse", id_of=lambda item: item["seq"])

    async def on_server(self, check: Callable[[HubStats], bool], timeout: float = 40) -> None:
        """Wait until ``check(hub.stats)`` holds, evaluated in the server's loop."""
        assert self.loop is not None
        # a fresh context: the caller's (a trio client's) would tell anyio the server's loop is trio
        future = contextvars.Context().run(asyncio.run_coroutine_threadsafe, self._wait(check), self.loop)
        await anyio.to_thread.run_sync(future.result, timeout)

    async def _wait(self, check: Callable[[HubStats], bool]) -> None:
        await self.hub.wait_until(check)


def listener(send_buffer: int | None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if send_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)  # accepted sockets inherit it
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def serving(feed: FeedApp, loop: str) -> Any:
    """Serve the app on two ports: one with the system's send buffers, one with small ones (for stalled clients)."""
    listeners = [listener(None), listener(SMALL_BUFFER)]
    config = uvicorn.Config(feed.app, log_level="critical", lifespan="on", access_log=False, loop=loop,
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": listeners}, name="uvicorn-hub", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started:  # a bounded wait for the server thread's flag
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.005)
        yield tuple(f"http://127.0.0.1:{sock.getsockname()[1]}" for sock in listeners)
    finally:
        server.should_exit = True
        thread.join(20)
        for sock in listeners:
            sock.close()


async def read_events(response: httpx.Response) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    async for chunk in response.aiter_raw():
        events.extend(parser.feed(chunk))
    return events


def data_ids(events: list[SSEEvent]) -> list[int]:
    return [int(e.id) for e in events if e.event == "message"]


@pytest.mark.timeout(150)  # 200 clients over loopback: about 15 s of CPU, more on a loaded machine
async def test_fast_sse_clients_get_everything_while_stalled_ones_are_handled_by_the_policy(
    case: tuple[str, str, str],
) -> None:
    policy, _, loop = case
    feed = FeedApp(policy)
    with serving(feed, loop) as (url, small_url):
        stalled_names = [f"stalled-{i}" for i in range(N_STALLED)]
        fast_ids: dict[str, list[int]] = {}
        small = [(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)]
        async with AsyncExitStack() as stack:
            stalled: dict[str, httpx.Response] = {}
            for name in stalled_names:  # each opens its stream and reads nothing for now
                client = await stack.enter_async_context(
                    httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(socket_options=small), timeout=60)
                )
                stalled[name] = await stack.enter_async_context(client.stream("GET", f"{small_url}/feed?name={name}"))
            fast_client = await stack.enter_async_context(
                httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=None))
            )

            async def fast(name: str) -> None:
                async with fast_client.stream("GET", f"{url}/feed?name={name}&policy=block") as response:
                    events = await read_events(response)
                assert all(e.event == "message" for e in events), events[-1:]
                fast_ids[name] = data_ids(events)

            async with anyio.create_task_group() as tg:
                for i in range(N_FAST):
                    tg.start_soon(fast, f"fast-{i}")
                if policy == "disconnect":
                    await feed.on_server(lambda s: s.disconnected >= N_STALLED)
                else:
                    await feed.on_server(lambda s: all(feed.stats[n].dropped > 0 for n in stalled_names))
                held_at = feed.hub.stats.published
                await feed.on_server(lambda s: s.published >= held_at + AFTER_STALL)  # the fast ones go on
                feed.stop = True  # the upstream ends after its next item
            await feed.on_server(lambda s: s.upstream_runs == 1 and not s.upstream_running)
            total = feed.hub.stats.published
            assert total >= held_at + AFTER_STALL
            for name, ids in fast_ids.items():
                assert ids == list(range(total)), name  # every item, in order, nothing twice
                assert feed.stats[name].dropped == 0
            assert len(fast_ids) == N_FAST

            stalled_events: dict[str, list[SSEEvent]] = {}

            async def read_stalled(name: str) -> None:
                response = stalled[name]
                sock = response.extensions["network_stream"].get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # read at loopback speed now
                stalled_events[name] = await read_events(response)

            async with anyio.create_task_group() as tg:  # now they read what the policy left them
                for name in stalled_names:
                    tg.start_soon(read_stalled, name)
            for name, events in stalled_events.items():
                ids = data_ids(events)
                stats = feed.stats[name]
                assert len(ids) == stats.delivered, name
                if policy == "disconnect":
                    assert ids == list(range(len(ids))), name  # a contiguous prefix
                    assert events[-1].event == "pipeline-error"
                    assert events[-1].data.startswith("SubscriberDisconnected: subscriber 'stalled-")
                    assert "too slow" in events[-1].data
                    assert stats.state == "disconnected" and stats.reason == "slow" and stats.discarded > 0
                    assert len(ids) < held_at
                else:
                    assert ids == sorted(set(ids)) and ids[-1] == total - 1, name  # in order, the newest last
                    assert stats.delivered + stats.dropped == total and stats.dropped > 0
                    assert all(e.event == "message" for e in events)
            assert len(stalled_events) == N_STALLED
    assert feed.hub.stats.subscribers == 0
    assert feed.hub.stats.peak_subscribers == N_FAST + N_STALLED
