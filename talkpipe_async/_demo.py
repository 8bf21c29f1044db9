"""The demo behind ``python -m talkpipe_async demo``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio

from ._core._metadata import Flush
from ._core._segment import segment, source


@source
async def ticker(count: int) -> AsyncIterator[object]:
    """Readings from a simulated sensor, with a Flush every 5 items."""
    for i in range(count):
        yield {"n": i, "value": (i * 37) % 101}
        if i % 5 == 4:
            yield Flush(after=i)
        await anyio.sleep(0.01)


@segment
async def keep_high(items: AsyncIterator[dict[str, int]]) -> AsyncIterator[dict[str, int]]:
    """Drop readings below 30."""
    async for item in items:
        if item["value"] >= 30:
            yield item


@segment(process_metadata=True)
async def window_mean(items: AsyncIterator[object]) -> AsyncIterator[str]:
    """Print each reading and the mean of each window closed by a Flush."""
    window: list[int] = []
    async for item in items:
        if isinstance(item, Flush):
            if window:
                yield f"flush after {item.after}: mean of {len(window)} = {sum(window) / len(window):.1f}"
            window.clear()
        else:
            assert isinstance(item, dict)
            window.append(item["value"])
            yield f"reading {item['n']}: {item['value']}"


async def run_demo(count: int) -> None:
    """Run ``ticker | keep_high | window_mean`` and print what flows."""
    pipeline = ticker(count=count) | keep_high() | window_mean()
    async with pipeline.stream() as lines:
        async for line in lines:
            print(line, flush=True)
