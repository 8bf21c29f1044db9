"""The blocking wrapper (issue 3): sync consumption against in-loop consumption and a per-item hop.

1,000,000 ints go through a 3-stage pipeline (a source and two segments).
The subject consumes them with ``iter_blocking()`` in a plain ``for`` loop;
the baselines are

* the same pipeline consumed with ``async for`` inside its own event loop
  (target: blocking throughput >= 40% of it, i.e. time ratio <= 2.5);
* a sync caller that hops the thread once per item through a blocking portal
  (``portal.call(items.__anext__)``), run on far fewer items and scaled per
  item (target: blocking throughput >= 100x, i.e. time ratio <= 0.01).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio.from_thread

from talkpipe_async import segment, source

from ._harness import Result, compare, measure_async

__all__ = ["run"]


@source
async def numbers(n: int) -> AsyncIterator[int]:
    """0 .. n-1."""
    for i in range(n):
        yield i


@segment
async def inc(items: AsyncIterator[int]) -> AsyncIterator[int]:
    """x + 1."""
    async for x in items:
        yield x + 1


def _scenario(backend: str, n: int, hop_items: int, repeat: int) -> list[Result]:
    pipeline = numbers(n=n) | inc() | inc()
    hop_pipeline = numbers(n=hop_items) | inc() | inc()
    # Warm the shared loop thread so its start-up is not measured.
    (numbers(n=1) | inc()).run_blocking(backend=backend)

    def blocking() -> None:
        with pipeline.iter_blocking(backend=backend) as items:
            for _ in items:
                pass

    async def in_loop() -> None:
        async with pipeline.stream() as items:
            async for _ in items:
                pass

    def per_item_hop() -> None:
        with portal.wrap_async_context_manager(hop_pipeline.stream()) as items:
            anext_: Any = items.__anext__
            for _ in range(hop_items):
                portal.call(anext_)

    label = f"{n:,} ints, 3 stages, sync consumer ({backend})"
    results = compare(
        label,
        ("iter_blocking()", blocking),
        [("async for in the loop", measure_async(in_loop, backend))],
        repeat=repeat,
        targets={"async for in the loop": ("<= 2.5 (throughput >= 40%)", lambda r: r <= 2.5)},
    )
    with anyio.from_thread.start_blocking_portal(backend) as portal:  # started outside the timings
        hop = compare(
            label,
            ("iter_blocking()", blocking),
            [("one portal hop per item (scaled)", per_item_hop)],
            repeat=max(1, repeat // 2),
        )[0]
    scale = n / hop_items
    hop.baseline_s *= scale
    hop.target = "<= 0.01 (throughput >= 100x)"
    hop.met = hop.ratio <= 0.01
    hop.note = f"per-item baseline run on {hop_items} items, scaled x{scale:g}"
    return [*results, hop]


def run(quick: bool) -> list[Result]:
    """asyncio always; trio too in full mode."""
    if quick:
        return _scenario("asyncio", 200_000, 1_000, 3)
    return _scenario("asyncio", 1_000_000, 2_000, 5) + _scenario("trio", 1_000_000, 2_000, 3)


if __name__ == "__main__":
    import sys

    for r in run(quick="--quick" in sys.argv):
        print(
            f"{r.scenario}: {r.subject} {r.subject_s:.3f}s vs {r.baseline} {r.baseline_s:.3f}s "
            f"ratio {r.ratio:.4f} target {r.target} met={r.met} {r.note}"
        )
