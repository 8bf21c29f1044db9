"""The live demo: a local Server-Sent Events feed and a pipeline reading it, in one process.

A small SSE server (raw anyio TCP, HTTP/1.1 chunked) starts on 127.0.0.1 on an
ephemeral port and streams sensor readings.  Midway it cuts the connection in
the middle of an event, as real feeds do; the ``sse_events`` source drops the
partial event, reconnects with ``Last-Event-ID`` after the server's ``retry``
delay, and the server resumes after the last event delivered.  Nothing is
lost or repeated, and everything shuts down before the function returns.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from ._backoff import Backoff
from ._core._pipeline import Pipeline
from ._core._segment import segment
from .sources.sockets import NetStats
from .sources.sse import SSEEvent, sse_events

__all__ = ["run_live_demo"]

SENSORS = ("boiler", "intake", "exhaust")


def _reading(n: int) -> dict[str, Any]:
    sensor = SENSORS[n % len(SENSORS)]
    value = round(50 + 30 * math.sin(n / 3) + (n * 7919) % 13, 1)
    return {"n": n, "sensor": sensor, "celsius": value}


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def _serve_feed(stream: anyio.abc.SocketStream, cut_after: int, period: float, log: list[str]) -> None:
    """One SSE connection: resume after Last-Event-ID; the first connection is cut mid-event."""
    head = b""
    while b"\r\n\r\n" not in head:
        head += await stream.receive()
    last_id = 0
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "last-event-id" and value.strip().isdigit():
            last_id = int(value.strip())
    first = last_id == 0
    log.append(f"feed: client connected (Last-Event-ID: {last_id or '-'})")
    await stream.send(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + _chunk(b"retry: 150\n: live demo feed\n\n")
    )
    n = last_id
    while True:
        n += 1
        body = json.dumps(_reading(n)).encode()
        if first and n == cut_after + 1:
            await stream.send(_chunk(b"id: %d\nevent: reading\ndata: %s" % (n, body[: len(body) // 2])))
            log.append(f"feed: connection cut in the middle of event {n}")
            return  # closed without the final chunk: a broken body
        await stream.send(_chunk(b"id: %d\nevent: reading\ndata: %s\n\n" % (n, body)))
        await anyio.sleep(period)


@segment
async def _describe(events: AsyncIterator[SSEEvent]) -> AsyncIterator[str]:
    """Turn each event into a printable line, with a running mean per sensor."""
    totals: dict[str, tuple[float, int]] = {}
    async for event in events:
        reading = event.json()
        total, count = totals.get(reading["sensor"], (0.0, 0))
        total, count = total + reading["celsius"], count + 1
        totals[reading["sensor"]] = (total, count)
        yield (
            f"event id={event.id:>3}  {reading['sensor']:<8} {reading['celsius']:6.1f} C"
            f"   (mean {total / count:6.1f} C over {count})"
        )


async def run_live_demo(count: int) -> None:
    """Serve a local SSE feed, read *count* events through a pipeline, print them, shut down."""
    period = 0.02
    feed_log: list[str] = []
    stats = NetStats()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.listeners[0].extra(SocketAttribute.local_port)
    url = f"http://127.0.0.1:{port}/readings"

    async def handle(stream: anyio.abc.SocketStream) -> None:
        try:
            await _serve_feed(stream, max(1, count // 2), period, feed_log)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass  # the client went away
        finally:
            await anyio.aclose_forcefully(stream)

    print(f"live demo: SSE feed on {url}; pipeline: sse_events | describe")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        feed = sse_events(url, read_timeout=5.0, backoff=Backoff(initial=0.2, maximum=2.0), stats=stats)
        pipeline: Pipeline[Any, str] = Pipeline(feed, _describe())
        shown = 0
        try:
            async with pipeline.stream() as lines:
                async for line in lines:
                    while feed_log:
                        print("  " + feed_log.pop(0), flush=True)
                    print(line, flush=True)
                    shown += 1
                    if shown >= count:
                        break
        finally:
            tg.cancel_scope.cancel()
    for note in feed_log:
        print("  " + note)
    print(
        f"done: {shown} events over {stats.connections} connection(s), {stats.reconnects} reconnect(s), "
        f"{stats.partial_dropped} partial event(s) dropped; feed and pipeline closed."
    )
