"""A real uvicorn app feeds a background pipeline from its request handlers; shutdown drains it.

Every event whose request was answered 202 (its ``push`` had returned) must be
written by the pipeline, although clients keep posting while the server shuts
down.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from talkpipe_async.operators import Feed, FeedClosed, background, batch
from talkpipe_async.operators import map as map_
from talkpipe_async.sinks import callback

pytestmark = pytest.mark.anyio


class Shop:
    """The app and what it wrote."""

    def __init__(self) -> None:
        self.written: list[int] = []
        self.drain_error: BaseException | None = None
        self.not_delivered = -1
        self.app = Starlette(routes=[Route("/events", self.ingest, methods=["POST"])], lifespan=self.lifespan)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        feed: Feed[int] = Feed(maxsize=100)
        pipeline = feed | map_(lambda x: x) | batch(50, timeout=0.2) | callback(self.written.extend)
        async with background(pipeline) as run:
            app.state.feed = feed
            yield
            try:
                await run.stop(drain=True, grace=20)
            except BaseException as exc:  # recorded for the test
                self.drain_error = exc
            self.not_delivered = run.not_delivered

    async def ingest(self, request: Request) -> JSONResponse:
        event = int((await request.body()).decode())
        try:
            await request.app.state.feed.push(event)
        except FeedClosed:
            return JSONResponse({"accepted": False}, status_code=503)
        return JSONResponse({"accepted": True}, status_code=202)


async def test_uvicorn_shutdown_writes_every_accepted_event() -> None:
    shop = Shop()
    config = uvicorn.Config(shop.app, host="127.0.0.1", port=0, log_level="critical", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-shop", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:  # a bounded wait for the server thread's flag
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            await anyio.sleep(0.005)
        port = server.servers[0].sockets[0].getsockname()[1]
        accepted: list[int] = []
        attempted: list[int] = []

        async def client(n: int) -> None:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20) as http:
                for i in range(n * 10_000, n * 10_000 + 2_000):  # bounded in count
                    attempted.append(i)
                    try:
                        response = await http.post("/events", content=str(i))
                    except httpx.TransportError:  # the server has closed: stop posting
                        return
                    if response.status_code == 202:
                        accepted.append(i)
                        if len(accepted) == 300:
                            server.should_exit = True  # shut down while every client is still posting
                    elif response.status_code != 503:
                        raise AssertionError(response)

        with anyio.fail_after(50):
            async with anyio.create_task_group() as tg:
                for n in range(8):
                    tg.start_soon(client, n)
            await anyio.to_thread.run_sync(thread.join, 20)
        assert not thread.is_alive()
    finally:
        server.should_exit = True
        thread.join(10)
    assert shop.drain_error is None and shop.not_delivered == 0
    assert len(accepted) >= 300
    assert len(shop.written) == len(set(shop.written))
    assert set(accepted) <= set(shop.written) <= set(attempted)


