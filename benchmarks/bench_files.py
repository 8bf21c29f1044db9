"""File sources and tail (issue 5): read_lines against plain open(), and tail latency from append to sink."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from talkpipe_async._core import _batch_items as _items
from talkpipe_async.sinks import write_lines
from talkpipe_async.sources import read_lines, tail_file

from ._harness import Result, compare, measure_async

__all__ = ["run"]


def _make_file(path: Path, n: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(f"{i:08d} the quick brown fox jumps over the lazy dog\n")  # 53 bytes


def _lines_scenarios(tmp: Path, quick: bool) -> list[Result]:
    n = 200_000 if quick else 1_000_000
    repeat = 3 if quick else 7
    path = tmp / "lines.txt"
    _make_file(path, n)
    source = read_lines(path)

    def plain() -> None:
        with open(path, encoding="utf-8") as f:
            for _ in f:
                pass

    async def subject() -> None:
        async with source.stream() as items:
            async for _ in items:
                pass

    async def twin() -> None:
        # The same source with the pure-Python item step (what runs without the C extension).
        saved, _items.SPEEDUPS = _items.SPEEDUPS, False
        try:
            async with source.stream() as items:
                async for _ in items:
                    pass
        finally:
            _items.SPEEDUPS = saved

    async def hand_lines() -> AsyncIterator[str]:
        # The best hand-written async reader: 1 MiB of readlines() per thread hop.
        with open(path, encoding="utf-8") as f:
            while True:
                lines = await anyio.to_thread.run_sync(f.readlines, 1 << 20)
                if not lines:
                    return
                for line in lines:
                    yield line

    async def hand() -> None:
        async for _ in hand_lines():
            pass

    with open(path, encoding="utf-8") as f:
        in_memory = f.read().split("\n")

    async def floor_lines() -> AsyncIterator[str]:
        for line in in_memory:
            yield line

    async def floor() -> None:
        # No I/O and no splitting: what `async for` over an async generator alone costs.
        async for _ in floor_lines():
            pass

    results = compare(
        f"read_lines, {n:,} lines of 53 bytes (asyncio)",
        ("talkpipe_async read_lines", measure_async(subject)),
        [
            ("plain open() iteration", plain),
            ("hand-written to_thread readlines() generator", measure_async(hand)),
            ("async-for floor: async generator over in-memory lines", measure_async(floor)),
            ("read_lines with the pure-Python item step (no C extension)", measure_async(twin)),
        ],
        repeat=repeat,
        targets={"plain open() iteration": ("<= 1.3", lambda r: r <= 1.3)},
    )
    results += compare(
        f"read_lines, {n:,} lines of 53 bytes (trio)",
        ("talkpipe_async read_lines", measure_async(subject, backend="trio")),
        [("plain open() iteration", plain)],
        repeat=repeat,
        targets={"plain open() iteration": ("<= 1.3", lambda r: r <= 1.3)},
    )

    small = tmp / "small.txt"
    m = 20_000
    _make_file(small, m)

    async def small_subject() -> None:
        async with read_lines(small).stream() as items:
            async for _ in items:
                pass

    async def with_aiofiles() -> None:
        import aiofiles

        async with aiofiles.open(small, encoding="utf-8") as f:
            async for _ in f:
                pass

    results += compare(
        f"read_lines vs aiofiles line iteration, {m:,} lines (asyncio)",
        ("talkpipe_async read_lines", measure_async(small_subject)),
        [("aiofiles async for line", measure_async(with_aiofiles))],
        repeat=3,
    )
    return results


async def _latency(tmp: Path, n: int, every: float, **tail_options: Any) -> list[float]:
    """Append *n* lines, one every *every* seconds; return append->sink latencies."""
    log = tmp / f"tail-{every}-{len(tail_options)}.log"
    out = tmp / f"sink-{every}-{len(tail_options)}.log"
    log.write_bytes(b"")
    stamps: dict[str, float] = {}
    latencies: list[float] = []
    source = tail_file(log, text=True, **tail_options)
    pipeline = source | write_lines(out)

    async def writer() -> None:
        while source.stats.files == 0:  # the tail finds its start on its first poll
            await anyio.sleep(0.001)
        fd = os.open(log, os.O_WRONLY | os.O_APPEND)
        try:
            for i in range(n):
                key = f"line-{i}"
                stamps[key] = time.perf_counter()
                os.write(fd, key.encode() + b"\n")
                await anyio.sleep(every)
        finally:
            os.close(fd)

    async with pipeline.stream() as items, anyio.create_task_group() as tg:
        tg.start_soon(writer)
        async for line in items:
            latencies.append(time.perf_counter() - stamps[line])
            if len(latencies) == n:
                break
    return latencies


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _latency_scenarios(tmp: Path, quick: bool) -> list[Result]:
    cases = [
        ("sparse appends (every 50 ms), defaults poll 10-250 ms", 40 if quick else 100, 0.05, {}),
        ("busy appends (every 1 ms), defaults poll 10-250 ms", 500 if quick else 2000, 0.001, {}),
        (
            "sparse appends (every 50 ms), poll 2-20 ms",
            40 if quick else 100,
            0.05,
            {"poll_min": 0.002, "poll_max": 0.02},
        ),
        (
            "sparse appends (every 50 ms), defaults poll 10-250 ms, polling only (watch=False)",
            40 if quick else 100,
            0.05,
            {"watch": False},
        ),
    ]
    results = []
    for label, n, every, options in cases:
        lat = anyio.run(partial(_latency, tmp, n, every, **options))
        p50, p90, p99 = _pct(lat, 0.5), _pct(lat, 0.9), _pct(lat, 0.99)
        poll_max = options.get("poll_max", 0.25)
        results.append(
            Result(
                f"tail latency append->sink, {label}",
                "p99 latency",
                "poll_max (idle poll ceiling)",
                p99,
                poll_max,
                0.0,
                0.0,
                target="p99 <= poll_max + 5 ms",
                met=p99 <= poll_max + 0.005,
                note=f"p50 {p50 * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, n={len(lat)}",
                extra={"p50_s": p50, "p90_s": p90, "p99_s": p99, "max_s": max(lat), "mean_s": statistics.mean(lat)},
            )
        )
    return results


def run(quick: bool) -> list[Result]:
    """File line throughput against open(); tail latency percentiles."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        return _lines_scenarios(tmp, quick) + _latency_scenarios(tmp, quick)


if __name__ == "__main__":
    import sys

    for r in run(quick="--quick" in sys.argv):
        print(f"{r.scenario}: {r.subject} {r.subject_s:.4f}s vs {r.baseline} {r.baseline_s:.4f}s "
              f"ratio {r.ratio:.2f} target {r.target} met={r.met} {r.note}")
