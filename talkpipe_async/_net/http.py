"""What every httpx-based stage shares: the client it borrows or owns, and its timeouts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx

__all__ = ["client_for", "http_timeout"]


@asynccontextmanager
async def client_for(client: httpx.AsyncClient | None) -> AsyncIterator[httpx.AsyncClient]:
    """The caller's client (left open), or a private one closed on exit."""
    if client is not None:
        yield client
        return
    own = httpx.AsyncClient()
    try:
        yield own
    finally:
        with anyio.CancelScope(shield=True):
            await own.aclose()


def http_timeout(read: float | None, connect: float) -> httpx.Timeout:
    """The timeouts of a streamed request: *read* per chunk (None: none), *connect*, 30 s for the rest."""
    return httpx.Timeout(connect=connect, read=read, write=30.0, pool=30.0)
