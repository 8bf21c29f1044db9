"""throttle on the real clock: the rate it delivers against the rate it is given.

Subject: ``source | throttle(rate)`` (burst 1) drained for a few seconds;
the time from the first item to the last.  Baseline: the time the requested
rate allows for the same items, ``(n - 1) / rate``.  A ratio of 1.0 is the
exact rate; the target is within 2% either way.  Each rate runs on asyncio,
uvloop and trio.
"""

from __future__ import annotations

import importlib.util
import statistics
from collections.abc import AsyncIterator
from typing import Any

import anyio

from talkpipe_async import source
from talkpipe_async.operators import throttle

from ._harness import Result

__all__ = ["run"]


@source(emits_metadata=False)
async def _numbers(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


def _backends() -> list[tuple[str, str, dict[str, Any]]]:
    found: list[tuple[str, str, dict[str, Any]]] = [("asyncio", "asyncio", {})]
    if importlib.util.find_spec("uvloop") is not None:
        found.append(("uvloop", "asyncio", {"use_uvloop": True}))
    if importlib.util.find_spec("trio") is not None:
        found.append(("trio", "trio", {}))
    return found


def _span(rate: float, n: int, backend: str, options: dict[str, Any]) -> float:
    """Seconds from the first item out of ``throttle(rate)`` to the last."""

    async def main() -> float:
        first = last = 0.0
        async with (_numbers(n) | throttle(rate)).stream() as items:
            async for i in items:
                last = anyio.current_time()
                if i == 0:
                    first = last
        return last - first

    result: float = anyio.run(main, backend=backend, backend_options=options or None)
    return result


def run(quick: bool) -> list[Result]:
    """One row per rate and event loop: achieved against requested."""
    seconds = 1.0 if quick else 3.0
    rates = [1, 1000, 100_000] if quick else [1, 10, 100, 1000, 10_000, 100_000]
    repeat = 1 if quick else 3
    results: list[Result] = []
    for label, backend, options in _backends():
        for rate in rates:
            n = max(3, int(rate * seconds) + 1)
            ideal = (n - 1) / rate
            spans = [_span(rate, n, backend, options) for _ in range(repeat)]
            span = statistics.median(spans)
            spread = (max(spans) - min(spans)) / span if span else 0.0
            result = Result(
                f"throttle({rate:,}) on {label}, {n:,} items",
                "first to last item",
                "(n - 1) / rate",
                span,
                ideal,
                spread,
                0.0,
                target="0.98-1.02 (rate within 2%)",
                note=f"achieved {(n - 1) / span:,.1f} items/s",
            )
            result.met = 0.98 <= result.ratio <= 1.02
            results.append(result)
    return results


if __name__ == "__main__":
    import sys

    for r in run(quick="--quick" in sys.argv):
        print(f"{r.scenario}: {r.note}, ratio {r.ratio:.4f} met={r.met}")
