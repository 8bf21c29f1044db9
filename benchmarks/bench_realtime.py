"""Real-time scenarios (issue 6): memory under a slow sink, end-to-end latency.

* A fast TCP producer feeds ``tcp_lines`` into a sink that sleeps: the
  process's resident memory must stay flat (growth under 10 MB), because the
  source reads only when the pipeline pulls and TCP flow control blocks the
  producer.  Runs in a subprocess so that only this scenario is measured.
* Events written to a socket at 5,000 per second, stamped with the write
  time, go through ``tcp_lines | parse`` to a sink that records the delay:
  p50 and p99, against the same events read by a hand-written
  ``asyncio.StreamReader.readline`` loop.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from talkpipe_async import Pipeline, segment
from talkpipe_async.sources.sockets import tcp_lines

from ._harness import Result

__all__ = ["run"]

_MEMORY_CHILD = r"""
import sys, time, anyio
from anyio.abc import SocketAttribute
from talkpipe_async import Pipeline, segment
from talkpipe_async.sources.sockets import tcp_lines

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

seconds = float(sys.argv[1])
LINE = b"x" * 60 + b"\n"
CHUNK = LINE * 16384

@segment
async def slow_sink(items):
    async for x in items:
        await anyio.sleep(0.001)
        yield x

async def main():
    sent = 0
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.listeners[0].extra(SocketAttribute.local_port)
    async def produce(stream):
        nonlocal sent
        async with stream:
            while True:
                await stream.send(CHUNK)
                sent += len(CHUNK)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, produce)
        got = 0
        samples = []
        start = time.monotonic()
        async with Pipeline(tcp_lines("127.0.0.1", port), slow_sink()).stream() as items:
            async for _ in items:
                got += 1
                if got == 200:
                    base = rss_mb()
                if got % 200 == 0:
                    samples.append(rss_mb())
                if time.monotonic() - start > seconds:
                    break
        tg.cancel_scope.cancel()
    print(base, max(samples), got, sent)

anyio.run(main)
"""


def _memory(seconds: float) -> Result:
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, str(seconds)], capture_output=True, text=True, check=True, timeout=120
    )
    base, peak, got, sent = out.stdout.split()
    growth = float(peak) - float(base)
    return Result(
        "RSS (MB) with a fast TCP producer and a slow sink (1 ms per item)",
        "peak RSS during the run",
        "RSS after the first 200 items",
        float(peak),
        float(base),
        0.0,
        0.0,
        target="growth < 10 MB",
        met=growth < 10,
        note=f"growth {growth:.2f} MB; {got} items consumed while the producer managed to send {int(sent) >> 20} MiB",
    )


@segment
async def _parse(items: AsyncIterator[str]) -> AsyncIterator[float]:
    async for line in items:
        yield float(line.split(" ", 1)[0])


async def _paced_server(rate: int, seconds: float, client: Callable[[int], Awaitable[list[float]]]) -> list[float]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.listeners[0].extra(SocketAttribute.local_port)
    total = int(rate * seconds)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            start = time.perf_counter()
            for i in range(total):
                due = start + i / rate
                delay = due - time.perf_counter()
                if delay > 0.0005:
                    await anyio.sleep(delay)
                await stream.send(b"%.9f event %d\n" % (time.perf_counter(), i))

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        delays = await client(port)
        tg.cancel_scope.cancel()
    return delays


def _latency_subject(rate: int, seconds: float) -> list[float]:
    total = int(rate * seconds)

    async def client(port: int) -> list[float]:
        delays: list[float] = []
        async with Pipeline(tcp_lines("127.0.0.1", port), _parse()).stream() as items:
            async for stamp in items:
                delays.append(time.perf_counter() - stamp)
                if len(delays) == total:
                    break
        return delays

    async def main() -> list[float]:
        return await _paced_server(rate, seconds, client)

    return anyio.run(main)


def _latency_baseline(rate: int, seconds: float) -> list[float]:
    total = int(rate * seconds)

    async def client(port: int) -> list[float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        delays: list[float] = []
        try:
            while len(delays) < total:
                line = await reader.readline()
                delays.append(time.perf_counter() - float(line.split(b" ", 1)[0]))
        finally:
            writer.close()
        return delays

    async def main() -> list[float]:
        return await _paced_server(rate, seconds, client)

    return anyio.run(main)


def _quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q * 100) - 1] if len(values) > 1 else values[0]


def run(quick: bool) -> list[Result]:
    """Memory with a slow sink, and latency at 5,000 events per second."""
    results = [_memory(2.0 if quick else 6.0)]
    seconds = 1.0 if quick else 4.0
    subject = _latency_subject(5000, seconds)
    baseline = _latency_baseline(5000, seconds)
    for q in (0.5, 0.99):
        s, b = _quantile(subject, q), _quantile(baseline, q)
        results.append(
            Result(
                f"end-to-end latency p{int(q * 100)} (s), 5,000 events/s over TCP into the sink",
                "tcp_lines | parse",
                "asyncio readline loop",
                s,
                b,
                0.0,
                0.0,
                note=f"p{int(q * 100)}: {s * 1000:.3f} ms vs {b * 1000:.3f} ms",
            )
        )
    return results
