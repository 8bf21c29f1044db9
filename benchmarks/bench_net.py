"""Network sources (issue 5): TCP lines over loopback against an ``asyncio.StreamReader.readline`` loop.

A local server (same process, same loop) sends N lines of about 50 bytes and
closes; the subject reads them through ``tcp_lines`` in a pipeline, the
baseline through ``asyncio.open_connection`` + ``readline``.  Both include
the same server cost.  Target: the pipeline is at least 3x faster
(time ratio <= 0.333).  One extra scenario consumes ``tcp_lines(...).generate()``
directly, without the pipeline outlet's per-item metadata filter, to show
what the source itself costs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from talkpipe_async import Pipeline
from talkpipe_async.sources.sockets import tcp_lines
from talkpipe_async.sources.sse import SSEParser

from ._harness import Result, compare, measure_async

__all__ = ["run"]


def _payload(n: int) -> bytes:
    return b"".join(b"%08d reading sensor=boiler value=%06.2f status=ok\n" % (i, (i % 9000) / 100) for i in range(n))


async def _with_server(payload: bytes, client: Callable[[int], Awaitable[int]]) -> int:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.listeners[0].extra(SocketAttribute.local_port)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            view = memoryview(payload)
            for i in range(0, len(view), 1 << 20):
                await stream.send(view[i : i + (1 << 20)])

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        count = await client(port)
        tg.cancel_scope.cancel()
    return count


def _subject(payload: bytes, n: int) -> Callable[[], Any]:
    async def client(port: int) -> int:
        count = 0
        async with Pipeline(tcp_lines("127.0.0.1", port)).stream() as items:
            async for _ in items:
                count += 1
        assert count == n, count
        return count

    async def main() -> int:
        return await _with_server(payload, client)

    return main


def _direct(payload: bytes, n: int) -> Callable[[], Any]:
    async def client(port: int) -> int:
        count = 0
        async with aclosing(tcp_lines("127.0.0.1", port).generate()) as lines:  # type: ignore[type-var]
            async for _ in lines:
                count += 1
        assert count == n, count
        return count

    async def main() -> int:
        return await _with_server(payload, client)

    return main


def _baseline(payload: bytes, n: int) -> Callable[[], Any]:
    async def client(port: int) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        count = 0
        while True:
            line = await reader.readline()
            if not line:
                break
            line.decode()
            count += 1
        writer.close()
        await writer.wait_closed()
        assert count == n, count
        return count

    async def main() -> int:
        return await _with_server(payload, client)

    return main


def run(quick: bool) -> list[Result]:
    """TCP lines over loopback: 100,000 lines (quick) or 1,000,000 lines of about 50 bytes."""
    n = 100_000 if quick else 1_000_000
    repeat = 3 if quick else 5
    payload = _payload(n)
    target = {"asyncio StreamReader.readline loop": (">= 3x faster (ratio <= 0.333)", lambda r: r <= 1 / 3)}
    results = compare(
        f"TCP lines over loopback, {n:,} lines of ~50 bytes (asyncio)",
        ("tcp_lines pipeline", measure_async(_subject(payload, n))),
        [("asyncio StreamReader.readline loop", measure_async(_baseline(payload, n)))],
        repeat=repeat,
        targets=target,
    )
    results += compare(
        f"TCP lines over loopback, {n:,} lines of ~50 bytes (uvloop)",
        ("tcp_lines pipeline", measure_async(_subject(payload, n), use_uvloop=True)),
        [("asyncio StreamReader.readline loop", measure_async(_baseline(payload, n), use_uvloop=True))],
        repeat=repeat,
        targets=target,
    )
    results += compare(
        f"TCP lines over loopback, {n:,} lines of ~50 bytes (asyncio), source generator without the pipeline outlet",
        ("tcp_lines.generate() direct", measure_async(_direct(payload, n))),
        [("asyncio StreamReader.readline loop", measure_async(_baseline(payload, n)))],
        repeat=repeat,
        targets=target,
    )
    trio_subject = measure_async(_subject(payload, n), backend="trio")
    results += compare(
        f"TCP lines over loopback, {n:,} lines of ~50 bytes (tcp_lines on trio vs readline on asyncio)",
        ("tcp_lines pipeline (trio)", trio_subject),
        [("asyncio StreamReader.readline loop", measure_async(_baseline(payload, n)))],
        repeat=repeat,
    )
    for r in results:
        r.extra["lines"] = n
        r.extra["lines_per_s_subject"] = round(n / r.subject_s)
        r.extra["lines_per_s_baseline"] = round(n / r.baseline_s)
    return results + _sse_long_line(repeat)


def _sse_parse(data: bytes, size: int) -> Callable[[], Any]:
    def parse() -> int:
        parser = SSEParser()
        events = 0
        for i in range(0, len(data), size):
            events += len(parser.feed(data[i : i + size]))
        assert events == 1, events
        return events

    return parse


def _sse_long_line(repeat: int) -> list[Result]:
    """One SSE data line just under the 1 MiB cap, fed in 128-byte chunks against 64 KiB chunks (parse only).

    A parser that joins the held partial line with each new chunk does
    quadratic work on small chunks; the target keeps the cost linear: small
    chunks within 3x of large ones.
    """
    data = ("data: " + "x" * ((1 << 20) - 100) + "\n\n").encode()
    return compare(
        "SSE parser: one line of ~1 MiB, 128-byte chunks against 64 KiB chunks",
        ("128-byte chunks", _sse_parse(data, 128)),
        [("64 KiB chunks", _sse_parse(data, 65536))],
        repeat=repeat,
        targets={"64 KiB chunks": ("<= 3x (linear in the input)", lambda r: r <= 3.0)},
    )


if __name__ == "__main__":
    import sys

    for r in run(quick="--quick" in sys.argv):
        print(
            f"{r.scenario}: {r.subject} {r.subject_s:.3f}s vs {r.baseline} {r.baseline_s:.3f}s "
            f"ratio {r.ratio:.3f} (speed-up {1 / r.ratio:.2f}x) target {r.target} met={r.met}"
        )
