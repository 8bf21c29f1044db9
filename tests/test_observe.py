"""Observability hooks: progress line and Prometheus gauges (issue 8)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import pytest

from talkpipe_async import segment, source
from talkpipe_async.observe import combine, progress, prometheus

pytestmark = pytest.mark.anyio


@source
async def numbers(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


@segment
async def evens(items: AsyncIterator[int]) -> AsyncIterator[int]:
    async for x in items:
        if x % 2 == 0:
            yield x


async def test_progress_line_only_on_terminal() -> None:
    quiet, forced = io.StringIO(), io.StringIO()
    hook = combine(progress(quiet), progress(forced, force=True))
    async with (numbers(n=100) | evens()).stream(on_stats=hook) as items:
        assert len([x async for x in items]) == 50
    assert quiet.getvalue() == ""
    assert "50 items" in forced.getvalue() and forced.getvalue().endswith("\n")


async def test_prometheus_gauges() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    hook = prometheus(registry, pipeline="demo")
    async with (numbers(n=10) | evens()).stream(on_stats=hook) as items:
        assert len([x async for x in items]) == 5
    value = registry.get_sample_value("talkpipe_items_out", {"pipeline": "demo", "stage": "evens"})
    assert value == 5
    assert registry.get_sample_value("talkpipe_items_in", {"pipeline": "demo", "stage": "evens"}) == 10
