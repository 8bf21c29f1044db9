"""Live fan-out: one Hub served to 1,000 concurrent SSE clients over loopback, some of them stalled.

The server (uvicorn + Starlette, ``streaming_response(hub.source())``) runs
in a subprocess, so that its resident memory is measured alone and the
clients' work does not share its interpreter.  A paced upstream stamps each
item with ``time.monotonic()`` (one clock for every process on Linux); the
fast clients record the delay from that stamp to the moment they parsed the
event.  Stalled clients open the stream and never read (small socket
buffers on both sides: their sockets fill after a few items), so the hub's
``drop_oldest`` policy holds them while the others go on.

* latency p50/p99 to the fast clients while the stalled ones are held,
  against the same hub with no stalled client (same number of fast ones);
* server memory per subscriber (RSS growth from no client to every client
  connected and the stalled ones held, divided by the clients), against the
  same clients served by a plain per-request pipeline (each request runs its
  own paced source, no hub).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ._harness import Result

__all__ = ["run", "serve"]

ROOT = Path(__file__).resolve().parent.parent
SMALL_BUFFER = 4096
PAD = 4000
BUFFER = 16
#: items per second from the upstream (quick, full): low enough that one client process parses every event in time
RATES = (10.0, 2.0)


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def serve(mode: str, port_file: str, rate: float) -> None:
    """The server process: ``mode`` is ``"hub"`` (one hub, a subscriber per request) or ``"plain"``."""
    import contextlib

    import anyio
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from talkpipe_async import Pipeline, source
    from talkpipe_async.sinks import Hub
    from talkpipe_async.sinks.web import streaming_response

    @source
    async def ticks() -> Any:
        seq, due = 0, time.monotonic()
        while True:
            yield {"seq": seq, "t": time.monotonic(), "pad": "x" * PAD}
            seq += 1
            due += 1 / rate
            await anyio.sleep(max(0.0, due - time.monotonic()))

    hub = Hub(ticks(), buffer=BUFFER, policy="drop_oldest", keep_running=True)
    open_responses = [0]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        if mode == "hub":
            async with hub:
                yield
        else:
            yield

    async def events(request: Any) -> Any:
        open_responses[0] += 1
        pipeline = Pipeline(hub.source()) if mode == "hub" else Pipeline(ticks())
        return streaming_response(pipeline, format="sse")

    async def stats(request: Any) -> JSONResponse:
        held = sum(1 for s in hub.subscriber_stats() if s.dropped > 0)
        return JSONResponse({"rss_kb": _rss_kb(), "requests": open_responses[0], "held": held,
                             "subscribers": hub.stats.subscribers})

    app = Starlette(routes=[Route("/events", events), Route("/stats", stats)], lifespan=lifespan)
    listeners = []
    for send_buffer in (None, SMALL_BUFFER):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if send_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        sock.bind(("127.0.0.1", 0))
        listeners.append(sock)
    Path(port_file).write_text(" ".join(str(s.getsockname()[1]) for s in listeners))
    config = uvicorn.Config(app, log_level="critical", lifespan="on", access_log=False, backlog=4096)
    uvicorn.Server(config).run(sockets=listeners)


async def _scenario(mode: str, fast: int, stalled: int, window: float, rate: float) -> dict[str, Any]:
    import anyio
    import httpx

    from talkpipe_async.sources.sse import SSEParser

    port_file = tempfile.mktemp(prefix="talkpipe-hub-bench-")
    child = subprocess.Popen(
        [sys.executable, "-c", f"from benchmarks.bench_hub import serve; serve({mode!r}, {port_file!r}, {rate!r})"],
        cwd=ROOT, stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (os.path.exists(port_file) and Path(port_file).read_text()):
            assert time.monotonic() < deadline and child.poll() is None, "the server did not start"
            await anyio.sleep(0.05)
        await anyio.sleep(0.5)  # the ports were written just before uvicorn started listening
        port, small_port = Path(port_file).read_text().split()
        limits = httpx.Limits(max_connections=None)
        async with httpx.AsyncClient(timeout=60, limits=limits) as control:

            async def server_stats() -> dict[str, Any]:
                reply = await control.get(f"http://127.0.0.1:{port}/stats")
                return reply.json()  # type: ignore[no-any-return]

            rss0 = (await server_stats())["rss_kb"]
            delays: list[float] = []
            measuring = [False]

            async def reader(client: httpx.AsyncClient) -> None:
                parser = SSEParser()
                async with client.stream("GET", f"http://127.0.0.1:{port}/events") as response:
                    async for chunk in response.aiter_raw():
                        now = time.monotonic()
                        for event in parser.feed(chunk):
                            if measuring[0]:
                                delays.append(now - json.loads(event.data)["t"])

            small = [(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)]
            stalled_transport = httpx.AsyncHTTPTransport(socket_options=small, limits=limits)
            async with httpx.AsyncClient(timeout=60, transport=stalled_transport) as stalled_client, \
                    httpx.AsyncClient(timeout=60, limits=limits) as fast_client, \
                    anyio.create_task_group() as tg:
                stalled_streams = []
                for _ in range(stalled):
                    stream = stalled_client.stream("GET", f"http://127.0.0.1:{small_port}/events")
                    stalled_streams.append(stream)
                    await stream.__aenter__()
                for _ in range(fast):
                    tg.start_soon(reader, fast_client)
                _log(f"{mode}: {stalled} stalled connected, {fast} fast starting")
                while (await server_stats())["requests"] < fast + stalled:
                    await anyio.sleep(0.1)
                _log(f"{mode}: all connected")
                held = 0
                deadline = time.monotonic() + 60
                while mode == "hub" and stalled and held < stalled and time.monotonic() < deadline:
                    await anyio.sleep(0.2)
                    held = (await server_stats())["held"]
                if mode != "hub" or not stalled:
                    await anyio.sleep(40 / rate)  # about the settling time the stalled clients need
                rss1 = (await server_stats())["rss_kb"]
                _log(f"{mode}: {held} held; measuring")
                measuring[0] = True
                await anyio.sleep(window)
                measuring[0] = False
                tg.cancel_scope.cancel()
                for stream in stalled_streams:
                    await stream.__aexit__(None, None, None)
    finally:
        child.terminate()
        child.wait(10)
        Path(port_file).unlink(missing_ok=True)
    delays.sort()
    clients = fast + stalled
    return {
        "p50_ms": 1000 * statistics.median(delays),
        "p99_ms": 1000 * delays[int(0.99 * (len(delays) - 1))],
        "kb_per_client": (rss1 - rss0) / clients,
        "samples": len(delays),
        "held": held,
    }


def _log(text: str) -> None:
    print(f"   bench_hub: {text}", file=sys.stderr, flush=True)


def _measure(mode: str, fast: int, stalled: int, window: float, rate: float) -> dict[str, Any]:
    import anyio

    return anyio.run(_scenario, mode, fast, stalled, window, rate)


def run(quick: bool) -> list[Result]:
    """The hub with stalled clients against the same hub without them, and against per-request pipelines."""
    clients, stalled, window = (200, 20, 3.0) if quick else (1000, 100, 8.0)
    rate = RATES[0] if quick else RATES[1]
    fast = clients - stalled
    with_stalled = _measure("hub", fast, stalled, window, rate)
    no_stalled = _measure("hub", fast, 0, window, rate)
    plain = _measure("plain", fast, stalled, window, rate)
    note = (f"{fast} fast + {stalled} stalled clients, {rate:.0f} items/s of {PAD} B; "
            f"p50 {with_stalled['p50_ms']:.1f} ms vs {no_stalled['p50_ms']:.1f} ms; "
            f"{with_stalled['held']} of {stalled} stalled held by drop_oldest; "
            f"{with_stalled['samples']} deliveries measured")
    memory_note = (f"{with_stalled['kb_per_client']:.0f} KB vs {plain['kb_per_client']:.0f} KB per client "
                   f"(server RSS growth / clients, stalled sockets' unsent bytes included)")
    return [
        Result(
            f"hub: SSE delivery latency p99 (ms) to {fast} fast clients while {stalled} are stalled",
            "hub, with stalled clients",
            "the same hub, no stalled client",
            with_stalled["p99_ms"],
            no_stalled["p99_ms"],
            0.0,
            0.0,
            target="<= 2.0",
            met=with_stalled["p99_ms"] <= 2.0 * no_stalled["p99_ms"],
            note=note,
        ),
        Result(
            f"hub: server memory per SSE client (KB), {clients} clients, {stalled} stalled",
            "one hub, a subscriber per request",
            "a pipeline per request (no hub)",
            with_stalled["kb_per_client"],
            plain["kb_per_client"],
            0.0,
            0.0,
            target="<= 1.0",
            met=with_stalled["kb_per_client"] <= plain["kb_per_client"],
            note=memory_note,
        ),
    ]


if __name__ == "__main__":
    for result in run("--quick" in sys.argv):
        print(result.as_dict())
