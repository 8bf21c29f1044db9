"""Helpers for the operator tests of part A (transform, select, batch, time)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import anyio
import pytest

from talkpipe_async import Pipeline, source

# Hypothesis tests are sync functions that start an event loop per example.
LOOPS = [
    pytest.param(("asyncio", {}), id="asyncio"),
    pytest.param(("trio", {}), id="trio"),
]


def run_collect(loop: tuple[str, dict[str, Any]], pipeline: Any, data: Iterable[Any], *, metadata: bool = False) -> Any:
    """Run *pipeline* over *data* (fed by an async source) on *loop*; return the items."""
    backend, options = loop
    full: Pipeline[Any, Any] = items_of(list(data)) | pipeline

    async def main() -> list[Any]:
        return await full.collect(metadata=metadata)

    return anyio.run(main, backend=backend, backend_options=options or None)


@source
async def items_of(data: list[Any]) -> AsyncIterator[Any]:
    """Yield the given items (metadata included) from an async generator."""
    for x in data:
        yield x


class Gate:
    """A source that yields its items, then waits until ``release`` (or forever), noting its end."""

    def __init__(self, first: list[Any], then: list[Any] | None = None) -> None:
        self.first = first
        self.then = then or []
        self.release = anyio.Event()
        self.closed = anyio.Event()
        self.waiting = anyio.Event()

    def source(self) -> Any:
        """The source stage."""
        gate = self

        @source
        async def gated() -> AsyncIterator[Any]:
            try:
                for x in gate.first:
                    yield x
                gate.waiting.set()
                await gate.release.wait()
                for x in gate.then:
                    yield x
            finally:
                gate.closed.set()

        return gated()


@source
async def timed(schedule: list[tuple[float, Any]]) -> AsyncIterator[Any]:
    """Yield each item at its (virtual) time after the start."""
    start = anyio.current_time()
    for at, x in schedule:
        await anyio.sleep_until(start + at)
        yield x


def on_mock_clock(pipeline: Any, *, metadata: bool = False) -> list[tuple[float, Any]]:
    """Run *pipeline* on trio with an autojumping MockClock; return (time, item) pairs."""
    from trio.testing import MockClock

    async def main() -> list[tuple[float, Any]]:
        start = anyio.current_time()
        out = []
        async with pipeline.stream(metadata=metadata) as items:
            async for x in items:
                out.append((round(anyio.current_time() - start, 6), x))
        return out

    result: list[tuple[float, Any]] = anyio.run(
        main, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)}
    )
    return result
