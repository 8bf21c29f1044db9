"""HTTP sources through httpx: streamed bytes, lines, NDJSON records, and polling.

Every request is ``async with client.stream(...)``, so the connection goes
back to the pool (or is closed) as soon as the stage stops, even after an
early ``break``.  Lines are framed from bytes on ``b"\\n"`` with a byte cap
(``httpx``'s ``aiter_lines`` also splits on U+2028 and has no cap).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, overload

import anyio
import httpx

from .._backoff import Backoff, Retries
from .._core._errors import TalkpipeAsyncError
from .._core._segment import AbstractSource
from .._net.framing import DEFAULT_MAX_LINE, ConnectionLost, LineFramer, NetStats, Overlong
from .._net.http import client_for, http_timeout
from ._item_types import Item, Text

__all__ = [
    "MalformedRecord",
    "http_bytes",
    "http_lines",
    "http_ndjson",
    "http_poll",
]

log = logging.getLogger("talkpipe_async.net")

OnDisconnect = Literal["raise", "reconnect"]
OnError = Literal["raise", "skip"] | Callable[["MalformedRecord"], Any]


class MalformedRecord(ValueError, TalkpipeAsyncError):
    """A record that could not be parsed; ``line_number`` is 1-based, ``line`` its first 200 bytes."""

    def __init__(self, message: str, *, source: str, line_number: int, line: bytes) -> None:
        super().__init__(f"{source}: line {line_number}: {message}")
        self.source = source
        self.line_number = line_number
        self.line = line[:200]


@dataclass(frozen=True)
class _Request:
    method: str
    url: str
    headers: dict[str, str]
    params: dict[str, Any]
    content: bytes | None


class _HttpStream(AbstractSource[Item]):
    """Shared body: one streamed request (or several, reconnecting), as chunks."""

    def __init__(
        self,
        url: str,
        *,
        method: str = "GET",
        client: httpx.AsyncClient | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        content: bytes | None = None,
        read_timeout: float | None = 60.0,
        connect_timeout: float = 10.0,
        on_disconnect: OnDisconnect = "raise",
        backoff: Backoff | None = None,
        stats: NetStats | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if on_disconnect not in ("raise", "reconnect"):
            raise ValueError(f"on_disconnect must be 'raise' or 'reconnect', not {on_disconnect!r}")
        self.request = _Request(method, url, dict(headers or {}), dict(params or {}), content)
        self.client = client
        self.read_timeout = read_timeout
        self.connect_timeout = connect_timeout
        self.on_disconnect = on_disconnect
        self.backoff = backoff or Backoff()
        self.stats = stats if stats is not None else NetStats()
        if name:
            self.name = name

    async def _chunks(self, stats: NetStats, restarted: list[int]) -> AsyncGenerator[bytes, None]:
        """Yield body chunks; on a reconnect, bump ``restarted[0]`` before the new body's chunks."""
        req = self.request
        timeout = http_timeout(self.read_timeout, self.connect_timeout)
        retries = Retries(self.backoff)
        async with client_for(self.client) as client:
            while True:
                received = 0
                try:
                    async with client.stream(
                        req.method,
                        req.url,
                        headers=req.headers,
                        params=req.params or None,
                        content=req.content,
                        timeout=timeout,
                    ) as response:
                        if not response.is_success:
                            raise httpx.HTTPStatusError(
                                f"{req.method} {req.url}: HTTP {response.status_code}",
                                request=response.request,
                                response=response,
                            )
                        stats.connections += 1
                        retries.opened()
                        async for chunk in response.aiter_bytes():
                            received += len(chunk)
                            stats.bytes_received += len(chunk)
                            retries.delivered()
                            yield chunk
                    return
                except httpx.TransportError as err:
                    stats.errors += 1
                    stats.last_error = repr(err)
                    if self.on_disconnect == "raise":
                        raise ConnectionLost(
                            f"{req.method} {req.url}: stream broken after {received} bytes: {err!r}"
                        ) from err
                    failure = err
                if not await retries.next_attempt():
                    raise ConnectionLost(
                        f"{req.method} {req.url}: gave up after {retries.failures} attempts: {failure!r}"
                    ) from failure
                stats.reconnects += 1
                restarted[0] += 1


class http_bytes(_HttpStream[bytes]):
    """The body of an HTTP response, as the chunks httpx delivers (decompressed).

    ``read_timeout`` applies to each chunk.  A broken stream raises
    :class:`ConnectionLost` (``on_disconnect="raise"``) or re-requests the
    resource after ``backoff`` (``"reconnect"``): a connection that broke
    before it delivered data and stayed up ``backoff.healthy_after`` seconds
    counts as a failure, so ``backoff.max_attempts`` bounds a server that
    keeps dropping (:class:`ConnectionLost` then); a non-2xx status raises
    ``httpx.HTTPStatusError`` at once.
    """

    async def generate(self) -> AsyncIterator[bytes]:
        """Yield the body chunks."""
        stats = self.stats if self.stats is not None else NetStats()
        chunks = self._chunks(stats, [0])
        try:
            async for chunk in chunks:
                stats.items += 1
                yield chunk
        finally:
            await chunks.aclose()


class http_lines(_HttpStream[Text]):
    """The lines (str) of a streamed HTTP body, framed on ``\\n`` with a ``max_line_bytes`` cap.

    A partial line cut by a disconnect is dropped and counted
    (``stats.partial_dropped``); the complete body's unterminated last line
    is delivered.  Over-long lines raise :class:`LineTooLong` or, with
    ``on_overlong="skip"``, are dropped and counted.  Other options as
    :class:`http_bytes`.
    """

    raw = False

    def __init__(
        self,
        url: str,
        *,
        max_line_bytes: int = DEFAULT_MAX_LINE,
        on_overlong: Overlong = "raise",
        encoding: str = "utf-8",
        errors: str = "replace",
        **options: Any,
    ) -> None:
        super().__init__(url, **options)
        self.max_line_bytes = max_line_bytes
        self.on_overlong = on_overlong
        self.encoding = encoding
        self.errors = errors

    async def _raw_lines(self, stats: NetStats) -> AsyncGenerator[list[bytes], None]:
        restarted = [0]
        seen = 0
        framer = LineFramer(self.max_line_bytes, overlong=self.on_overlong, label=self.label, stats=stats)
        chunks = self._chunks(stats, restarted)
        try:
            async for chunk in chunks:
                if restarted[0] != seen:
                    seen = restarted[0]
                    framer.drop_partial()
                lines = framer.feed(chunk)
                if lines:
                    yield lines
        except ConnectionLost:
            framer.drop_partial()  # the stream broke for good: its unfinished line is dropped and counted too
            raise
        finally:
            await chunks.aclose()
        tail = framer.finish()
        if tail is not None:
            yield [tail]

    async def generate(self) -> AsyncIterator[Any]:
        """Yield each line."""
        stats = self.stats if self.stats is not None else NetStats()
        batches = self._raw_lines(stats)
        encoding, errors = self.encoding, self.errors
        try:
            async for lines in batches:
                stats.items += len(lines)
                for line in lines:
                    yield line.decode(encoding, errors)
        finally:
            await batches.aclose()


class http_ndjson(http_lines[Any]):
    """Records of a streamed NDJSON (JSON Lines) body.

    Lines are split on ``b"\\n"`` only (a U+2028 inside a JSON string stays
    put) with a ``max_line_bytes`` cap; blank lines are skipped.  A line that
    is not valid JSON becomes a :class:`MalformedRecord` carrying its line
    number and goes to ``on_error``: ``"raise"`` (default), ``"skip"``
    (counted in ``stats.malformed``), or a callable that receives it (a
    dead-letter hook) and the stream goes on.
    """

    def __init__(self, url: str, *, on_error: OnError = "raise", **options: Any) -> None:
        super().__init__(url, **options)
        if not callable(on_error) and on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise', 'skip' or a callable, not {on_error!r}")
        self.on_error = on_error

    async def generate(self) -> AsyncIterator[Any]:
        """Yield each parsed record."""
        stats = self.stats if self.stats is not None else NetStats()
        batches = self._raw_lines(stats)
        number = 0
        loads = json.loads
        try:
            async for lines in batches:
                for line in lines:
                    number += 1
                    if not line.strip():
                        continue
                    try:
                        record = loads(line)
                    except ValueError as err:
                        bad = MalformedRecord(str(err), source=self.request.url, line_number=number, line=line)
                        self._malformed(bad, stats)
                        continue
                    stats.items += 1
                    yield record
        finally:
            await batches.aclose()

    def _malformed(self, error: MalformedRecord, stats: NetStats) -> None:
        stats.malformed += 1
        if self.on_error == "raise":
            raise error
        if self.on_error == "skip":
            if stats.malformed == 1:
                log.warning("%s: skipping malformed records (counted in stats): %s", self.label, error)
            return
        assert callable(self.on_error)
        self.on_error(error)


class http_poll(AbstractSource[Item]):
    """GET a URL every ``interval`` seconds and emit what is new.

    Without ``key``: the whole body (decoded per ``decode``: ``"json"``,
    ``"text"`` or ``"bytes"``) whenever it changed; unchanged is detected by
    ``ETag``/``Last-Modified`` (conditional requests: a 304 emits nothing)
    and otherwise by a SHA-256 of the body.  With ``key``: the body is a JSON
    list (or ``select(body)`` returns one) and each element whose
    ``key(element)`` was not seen before is emitted, oldest first; the last
    ``remember`` keys are kept.  Bodies above ``max_body_bytes`` raise.
    Transport errors and 5xx responses are counted in ``stats.errors`` and
    retried at the next tick (``on_failure="retry"``) or raised
    (``"raise"``); other non-2xx statuses always raise.  Ticks are spaced
    start to start; a tick that overruns is not made up.
    """

    @overload
    def __init__(
        self: http_poll[str],
        url: str,
        interval: float,
        *,
        client: httpx.AsyncClient | None = ...,
        headers: Mapping[str, str] | None = ...,
        params: Mapping[str, Any] | None = ...,
        decode: Literal["text"],
        key: None = ...,
        select: None = ...,
        remember: int = ...,
        max_body_bytes: int = ...,
        timeout: float = ...,
        on_failure: Literal["retry", "raise"] = ...,
        stats: NetStats | None = ...,
        name: str | None = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: http_poll[bytes],
        url: str,
        interval: float,
        *,
        client: httpx.AsyncClient | None = ...,
        headers: Mapping[str, str] | None = ...,
        params: Mapping[str, Any] | None = ...,
        decode: Literal["bytes"],
        key: None = ...,
        select: None = ...,
        remember: int = ...,
        max_body_bytes: int = ...,
        timeout: float = ...,
        on_failure: Literal["retry", "raise"] = ...,
        stats: NetStats | None = ...,
        name: str | None = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: http_poll[Any],
        url: str,
        interval: float,
        *,
        client: httpx.AsyncClient | None = ...,
        headers: Mapping[str, str] | None = ...,
        params: Mapping[str, Any] | None = ...,
        decode: Literal["json", "text", "bytes"] = ...,
        key: Callable[[Any], Hashable] | None = ...,
        select: Callable[[Any], list[Any]] | None = ...,
        remember: int = ...,
        max_body_bytes: int = ...,
        timeout: float = ...,
        on_failure: Literal["retry", "raise"] = ...,
        stats: NetStats | None = ...,
        name: str | None = ...,
    ) -> None: ...
    def __init__(
        self,
        url: str,
        interval: float,
        *,
        client: httpx.AsyncClient | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        decode: Literal["json", "text", "bytes"] = "json",
        key: Callable[[Any], Hashable] | None = None,
        select: Callable[[Any], list[Any]] | None = None,
        remember: int = 100_000,
        max_body_bytes: int = 16 << 20,
        timeout: float = 30.0,
        on_failure: Literal["retry", "raise"] = "retry",
        stats: NetStats | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.url = url
        self.interval = interval
        self.client = client
        self.headers = dict(headers or {})
        self.params = dict(params or {})
        self.decode = decode
        self.key = key
        self.select = select
        self.remember = remember
        self.max_body_bytes = max_body_bytes
        self.timeout = timeout
        self.on_failure = on_failure
        self.stats = stats if stats is not None else NetStats()
        if name:
            self.name = name

    async def _fetch(self, client: httpx.AsyncClient, validators: dict[str, str]) -> bytes | None:
        headers = {**self.headers, **validators}
        params = self.params or None
        async with client.stream("GET", self.url, headers=headers, params=params, timeout=self.timeout) as resp:
            if resp.status_code == 304:
                return None
            if resp.status_code >= 500:
                raise _Retryable(f"GET {self.url}: HTTP {resp.status_code}")
            if not resp.is_success:
                message = f"GET {self.url}: HTTP {resp.status_code}"
                raise httpx.HTTPStatusError(message, request=resp.request, response=resp)
            parts: list[bytes] = []
            size = 0
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise ValueError(f"GET {self.url}: body larger than max_body_bytes={self.max_body_bytes}")
                parts.append(chunk)
            validators.clear()
            if "etag" in resp.headers:
                validators["If-None-Match"] = resp.headers["etag"]
            if "last-modified" in resp.headers:
                validators["If-Modified-Since"] = resp.headers["last-modified"]
            return b"".join(parts)

    def _decoded(self, body: bytes) -> Any:
        if self.decode == "json":
            return json.loads(body)
        if self.decode == "text":
            return body.decode()
        return body

    async def generate(self) -> AsyncIterator[Any]:
        """Poll forever, yielding new bodies or new elements."""
        stats = self.stats if self.stats is not None else NetStats()
        validators: dict[str, str] = {}
        last_digest = b""
        seen: OrderedDict[Hashable, None] = OrderedDict()
        next_tick = anyio.current_time()
        async with client_for(self.client) as client:
            while True:
                await anyio.sleep_until(next_tick)
                now = anyio.current_time()
                next_tick += self.interval
                if next_tick <= now:  # this poll started an interval late: skip the ticks missed
                    next_tick = now + self.interval
                try:
                    body = await self._fetch(client, validators)
                except (httpx.TransportError, _Retryable) as err:
                    stats.errors += 1
                    stats.last_error = repr(err)
                    if self.on_failure == "raise":
                        raise
                    log.warning("%s: poll failed, retrying next tick: %r", self.label, err)
                    continue
                stats.connections += 1
                if body is None:
                    continue
                stats.bytes_received += len(body)
                if self.key is None:
                    digest = hashlib.sha256(body).digest()
                    if digest == last_digest:
                        continue
                    last_digest = digest
                    stats.items += 1
                    yield self._decoded(body)
                    continue
                document = self._decoded(body)
                elements = self.select(document) if self.select else document
                if not isinstance(elements, list):
                    raise TypeError(f"GET {self.url}: expected a JSON list of elements, got {type(elements).__name__}")
                for element in elements:
                    k = self.key(element)
                    if k in seen:
                        continue
                    seen[k] = None
                    if len(seen) > self.remember:
                        seen.popitem(last=False)
                    stats.items += 1
                    yield element


class _Retryable(Exception):
    """A 5xx answer to a poll: counted and retried at the next tick."""
