"""Helpers shared by the broker connector tests (test_redis, test_nats)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from talkpipe_async.connectors import BackendNotSupported, BrokerUnavailable

# The broker clients are asyncio libraries: their tests run on asyncio and uvloop.
ASYNCIO_LOOPS = [
    pytest.param(("asyncio", {}), id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
]


async def check_unreachable(url: str, make_source: Callable[[str], Any], make_sink: Callable[[str], Any]) -> None:
    """A source (made with 2 retries) and a sink on *url*, where no server listens, fail clearly within 10 s."""
    start = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=r"unreachable after 3 attempts"):
        await make_source(url).collect()
    with pytest.raises(BrokerUnavailable, match=url):
        await make_sink(url).collect([1])
    assert time.monotonic() - start < 10


def check_refused_on_trio(make_source: Callable[[], Any]) -> None:
    """Running the source on trio raises BackendNotSupported naming asyncio."""

    async def main() -> None:
        await make_source().collect()

    with pytest.raises(BackendNotSupported, match="asyncio"):
        anyio.run(main, backend="trio")
