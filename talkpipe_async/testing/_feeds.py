"""Scripted byte feeds: what a line, NDJSON or SSE peer sends, with cuts and stalls, without a server.

A script is a list of steps: ``bytes`` (or ``str``, sent as UTF-8) is one
chunk, :class:`Stall` waits (in the loop's time: virtual under a virtual
clock), :class:`Cut` ends the feed with a connection error.  The chunks
feed the project's parsers directly (``LineFramer.feed``,
``SSEParser.feed``) or a source built on an async byte iterator, and
:func:`scripted_transport` serves them to the HTTP sources (``sse_events``
and the others that take an ``httpx.AsyncClient``) without a socket.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

__all__ = ["Cut", "ScriptedFeed", "Stall", "ndjson", "scripted_transport", "split_every", "sse"]


@dataclass(frozen=True)
class Stall:
    """Send nothing for *seconds*."""

    seconds: float


@dataclass(frozen=True)
class Cut:
    """The peer goes away: the feed raises *error* (``ConnectionResetError`` by default) instead of ending."""

    error: BaseException | None = None


Step = bytes | str | Stall | Cut


class ScriptedFeed:
    """An async iterator of byte chunks that plays a script; ``sent`` counts the bytes handed out so far.

    ::

        feed = ScriptedFeed([b'{"a": 1}\\n{"a"', Stall(30), b": 2}\\n", Cut()])
        async for chunk in feed: ...
    """

    def __init__(self, script: Sequence[Step]) -> None:
        self.script = list(script)
        self.sent = 0
        self.chunks = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._play()

    async def _play(self) -> AsyncIterator[bytes]:
        for step in self.script:
            if isinstance(step, Stall):
                await anyio.sleep(step.seconds)
            elif isinstance(step, Cut):
                raise step.error or ConnectionResetError("scripted feed: connection cut")
            else:
                chunk = step.encode() if isinstance(step, str) else step
                self.sent += len(chunk)
                self.chunks += 1
                yield chunk


def ndjson(records: Iterable[Any]) -> bytes:
    """The NDJSON bytes of *records*: one compact JSON document per line."""
    return b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)


def sse(data: str, *, event: str | None = None, id: str | None = None, retry: int | None = None) -> bytes:
    """The bytes of one Server-Sent Event (each line of *data* a ``data:`` field), blank line included."""
    lines = [f"event: {event}"] if event is not None else []
    if id is not None:
        lines.append(f"id: {id}")
    if retry is not None:
        lines.append(f"retry: {retry}")
    lines.extend(f"data: {line}" for line in data.split("\n"))
    return ("\n".join(lines) + "\n\n").encode()


def split_every(data: bytes, size: int) -> list[bytes]:
    """*data* cut into chunks of *size* bytes (the last one shorter): frames that straddle chunk edges."""
    if size < 1:
        raise ValueError("size must be at least 1")
    return [data[i : i + size] for i in range(0, len(data), size)]


class _Body(httpx.AsyncByteStream):
    """A response body that plays a script; a cut is the transport error a dropped connection gives httpx."""

    def __init__(self, feed: ScriptedFeed) -> None:
        self.feed = feed

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.feed:
                yield chunk
        except OSError as exc:
            raise httpx.ReadError(f"scripted feed: {exc}") from exc


def scripted_transport(
    *scripts: Sequence[Step],
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    requests: list[httpx.Request] | None = None,
) -> httpx.MockTransport:
    """An httpx transport that answers the n-th request with the n-th script as a streamed body.

    After the last script every request gets status 204 (an SSE source's
    "do not reconnect").  *headers* default to ``text/event-stream``; each
    request is appended to *requests* when given (to check a
    ``Last-Event-ID``).  Use it as ``httpx.AsyncClient(transport=...)``.
    No socket is involved: read timeouts, TLS and the peer's TCP behaviour
    need a real server on 127.0.0.1 (docs/testing.md has the recipes).
    """
    pending = list(scripts)
    answer_headers = dict(headers or {"content-type": "text/event-stream"})

    def handle(request: httpx.Request) -> httpx.Response:
        if requests is not None:
            requests.append(request)
        if not pending:
            return httpx.Response(204)
        return httpx.Response(status, headers=answer_headers, stream=_Body(ScriptedFeed(pending.pop(0))))

    return httpx.MockTransport(handle)
