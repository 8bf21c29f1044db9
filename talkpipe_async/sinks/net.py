"""Network sinks: lines or JSON Lines to TCP/Unix sockets and stdout; HTTP POST of batches.

Each sink is a pass-through segment: it writes every item, then yields it on,
so it can sit at the end of a pipeline (drain it with ``collect()`` or a
loop) or in the middle.  Writes go out in groups of ``flush_every`` items,
when a :class:`Flush` arrives, and at the end of the stream; every write
awaits the transport, so a slow receiver slows the pipeline (no unbounded
buffer).  Metadata passes through unchanged.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TextIO

import anyio
import anyio.abc
import httpx

from .._backoff import Backoff, Retries
from .._core._errors import TalkpipeAsyncError
from .._core._metadata import Flush, is_metadata
from .._core._segment import PassThrough
from .._net.connect import check_unix_path, connect_tcp, connect_unix
from .._net.framing import ConnectionLost, NetStats
from .._net.http import client_for
from .._renamed import old_name
from ._item_types import T
from ._ndjson import ndjson_dumps

__all__ = ["DeliveryFailed", "to_http", "to_stdout", "to_tcp", "to_unix"]

Format = Literal["lines", "jsonl"]


class DeliveryFailed(ConnectionError, TalkpipeAsyncError):
    """A batch could not be delivered after every retry; ``items`` holds the undelivered batch."""

    def __init__(self, message: str, items: list[Any]) -> None:
        super().__init__(message)
        self.items = items


def _encoder(fmt: Format, serializer: Callable[[Any], str] | None) -> Callable[[Any], bytes]:
    if fmt not in ("lines", "jsonl"):
        raise ValueError(f"format must be 'lines' or 'jsonl', not {fmt!r}")
    if serializer is not None:
        ser = serializer
        return lambda item: (ser(item) + "\n").encode()
    if fmt == "jsonl":
        return lambda item: (ndjson_dumps(item) + "\n").encode()

    def line(item: Any) -> bytes:
        if isinstance(item, bytes):
            return item if item.endswith(b"\n") else item + b"\n"
        text = str(item)
        return (text if text.endswith("\n") else text + "\n").encode()

    return line


@dataclass
class _SinkRun:
    """What one run of a sink keeps: its counters, its retry budget, the connection it closed after a failure."""

    stats: NetStats
    retries: Retries
    broken: Any = None


class _ByteSink(PassThrough[T]):
    """Shared body: encode items, write them in groups, pass them on."""

    backoff = Backoff(max_attempts=1)  # sinks that reconnect set their own

    def __init__(
        self,
        *,
        format: Format,
        serializer: Callable[[Any], str] | None,
        flush_every: int,
        stats: NetStats | None,
        name: str | None,
    ) -> None:
        super().__init__(process_metadata=True)
        if flush_every < 1:
            raise ValueError("flush_every must be at least 1")
        self.encode = _encoder(format, serializer)
        self.flush_every = flush_every
        self.stats = stats if stats is not None else NetStats()
        if name:
            self.name = name

    async def _open(self) -> Any:
        raise NotImplementedError

    async def _write(self, target: Any, data: bytes) -> None:
        raise NotImplementedError

    async def _close(self, target: Any) -> None:
        raise NotImplementedError

    async def transform(self, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Write each item, yield it on."""
        stats = self.stats if self.stats is not None else NetStats()
        run = _SinkRun(stats, Retries(self.backoff))
        target = await self._connect(run)
        encode = self.encode
        pending: list[bytes] = []
        every = self.flush_every
        try:
            async for item in items:
                if is_metadata(item):
                    if isinstance(item, Flush) and pending:
                        target = await self._send(target, pending, run)
                    yield item
                    continue
                pending.append(encode(item))
                if len(pending) >= every:
                    target = await self._send(target, pending, run)
                stats.items += 1
                yield item
            if pending:
                target = await self._send(target, pending, run)
        finally:
            if target is not run.broken:  # a broken connection was closed already, before the retry
                await self._close(target)

    async def _connect(self, run: _SinkRun) -> Any:
        """Open the target (subclasses that reconnect retry here)."""
        return await self._open()

    async def _send(self, target: Any, pending: list[bytes], run: _SinkRun) -> Any:
        """Write *pending* as one block; return the target to use from now on."""
        data = b"".join(pending)
        pending.clear()
        target = await self._deliver(target, data, run)
        run.stats.bytes_sent += len(data)
        return target

    async def _deliver(self, target: Any, data: bytes, run: _SinkRun) -> Any:
        """Write *data*; return the target that took it (a reconnecting sink may open a new one)."""
        await self._write(target, data)
        return target


#: What a broken or refused socket raises.
_SOCKET_ERRORS = (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError, TimeoutError, ssl.SSLError)


class _SocketSink(_ByteSink[T]):
    """A socket sink; with ``reconnect=True`` a broken connection is reopened with ``backoff``."""

    reconnect = False
    backoff: Backoff

    def _where(self) -> str:
        raise NotImplementedError

    async def _write(self, target: Any, data: bytes) -> None:
        await target.send(data)

    async def _close(self, target: Any) -> None:
        if target is None:
            return
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + 5.0
            await target.aclose()

    def _failed(self, err: BaseException, run: _SinkRun) -> BaseException:
        """Count a failure; raise it unless the sink reconnects."""
        run.stats.errors += 1
        run.stats.last_error = repr(err)
        if not self.reconnect:
            raise err
        return err

    async def _retry(self, err: BaseException, run: _SinkRun) -> None:
        """Wait until the next attempt is due; :class:`ConnectionLost` once ``backoff.max_attempts`` are used up."""
        if not await run.retries.next_attempt():
            where = f"{self.label} ({self._where()})"
            raise ConnectionLost(f"{where}: gave up after {run.retries.failures} attempts: {err!r}") from err

    async def _connect(self, run: _SinkRun) -> Any:
        while True:
            try:
                target = await self._open()
            except _SOCKET_ERRORS as err:
                failure = self._failed(err, run)
            else:
                run.retries.opened()
                return target
            await self._retry(failure, run)

    async def _deliver(self, target: Any, data: bytes, run: _SinkRun) -> Any:
        while True:
            try:
                await self._write(target, data)
            except _SOCKET_ERRORS as err:
                failure = self._failed(err, run)
            else:
                run.retries.delivered()
                return target
            await anyio.aclose_forcefully(target)
            run.broken = target
            await self._retry(failure, run)
            target = await self._connect(run)
            run.stats.reconnects += 1


class to_tcp(_SocketSink[T]):
    """Write items as lines (``str(item)``) or JSON Lines to a TCP connection, then pass them on.

    One connection per run, opened before the first item; ``tls=True`` or an
    ``ssl_context`` wraps it in TLS.  ``send`` waits for the kernel, so a
    slow receiver blocks the pipeline.  A broken or refused connection raises,
    unless ``reconnect=True``: then it is opened again with ``backoff`` (the
    shared :class:`Backoff`; :class:`ConnectionLost` once its
    ``max_attempts`` are used up) and the write that failed is sent again.
    A connection counts as healthy, and the count of failures starts again,
    only after it took a write and stayed up ``backoff.healthy_after``
    seconds: a peer that accepts and then resets sooner is one more failure.
    TCP acknowledges nothing to the sender: what the kernel had accepted
    just before a connection broke may be lost without an error (counted in
    no counter, because nobody can know).  Use :class:`to_http` or
    the Redis/NATS connectors where every item must arrive.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        format: Format = "lines",
        serializer: Callable[[Any], str] | None = None,
        flush_every: int = 1,
        tls: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        tls_hostname: str | None = None,
        connect_timeout: float = 10.0,
        reconnect: bool = False,
        backoff: Backoff | None = None,
        stats: NetStats | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(format=format, serializer=serializer, flush_every=flush_every, stats=stats, name=name)
        self.reconnect = reconnect
        self.backoff = backoff or Backoff()
        self.host = host
        self.port = port
        self.tls = tls or ssl_context is not None
        self.ssl_context = ssl_context
        self.tls_hostname = tls_hostname
        self.connect_timeout = connect_timeout

    def _where(self) -> str:
        return f"{self.host}:{self.port}"

    async def _open(self) -> Any:
        with anyio.fail_after(self.connect_timeout):
            return await connect_tcp(self.host, self.port, self.tls, self.ssl_context, self.tls_hostname)


class to_unix(_SocketSink[T]):
    """Write items as lines or JSON Lines to a Unix stream socket, then pass them on (as :class:`to_tcp`,
    ``reconnect`` included)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        format: Format = "lines",
        serializer: Callable[[Any], str] | None = None,
        flush_every: int = 1,
        reconnect: bool = False,
        backoff: Backoff | None = None,
        stats: NetStats | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(format=format, serializer=serializer, flush_every=flush_every, stats=stats, name=name)
        self.reconnect = reconnect
        self.backoff = backoff or Backoff()
        self.path = check_unix_path(path)

    def _where(self) -> str:
        return str(self.path)

    async def _open(self) -> Any:
        return await connect_unix(self.path)


class to_stdout(_ByteSink[T]):
    """Print items as lines or JSON Lines to ``file`` (default: ``sys.stdout``), then pass them on.

    Text is written and flushed every ``flush_every`` items (and on Flush and
    at the end); the stream is never closed here.
    """

    def __init__(
        self,
        *,
        format: Format = "lines",
        serializer: Callable[[Any], str] | None = None,
        flush_every: int = 1,
        file: TextIO | None = None,
        stats: NetStats | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(format=format, serializer=serializer, flush_every=flush_every, stats=stats, name=name)
        self.file = file

    async def _open(self) -> Any:
        return self.file if self.file is not None else sys.stdout

    async def _write(self, target: Any, data: bytes) -> None:
        target.write(data.decode())
        target.flush()

    async def _close(self, target: Any) -> None:
        return None


RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class to_http(PassThrough[T]):
    """POST items to ``url`` in batches: one request per ``batch_size`` items, not one per item.

    A batch is a JSON array, or NDJSON with ``format="ndjson"``;
    one is also sent when a :class:`Flush` arrives and at the end.  The
    items of a batch are passed on only after the server accepted it (2xx),
    so downstream sees delivered items.  Transport errors and statuses in
    ``retry_statuses`` (429, 5xx, ...) are retried with ``backoff`` (a
    ``Retry-After`` in seconds is honoured, capped at ``backoff.maximum``);
    once ``backoff.max_attempts`` attempts fail, :class:`DeliveryFailed`
    carries the batch.  Other statuses raise ``httpx.HTTPStatusError`` at once.
    """

    def __init__(
        self,
        url: str,
        *,
        batch_size: int = 100,
        format: Literal["json", "ndjson"] = "json",
        client: httpx.AsyncClient | None = None,
        headers: Mapping[str, str] | None = None,
        backoff: Backoff | None = None,
        retry_statuses: frozenset[int] = RETRY_STATUSES,
        timeout: float = 30.0,
        stats: NetStats | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(process_metadata=True)
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if format not in ("json", "ndjson"):
            raise ValueError(f"format must be 'json' or 'ndjson', not {format!r}")
        self.url = url
        self.batch_size = batch_size
        self.format = format
        self.client = client
        self.headers = dict(headers or {})
        self.backoff = backoff or Backoff(initial=0.5, maximum=30.0, max_attempts=5)
        self.retry_statuses = retry_statuses
        self.timeout = timeout
        self.stats = stats if stats is not None else NetStats()
        if name:
            self.name = name

    def _body(self, batch: list[Any]) -> tuple[bytes, str]:
        if self.format == "ndjson":
            return "".join(json.dumps(x) + "\n" for x in batch).encode(), "application/x-ndjson"
        return json.dumps(batch).encode(), "application/json"

    async def _post(self, client: httpx.AsyncClient, batch: list[Any], stats: NetStats) -> None:
        body, ctype = self._body(batch)
        headers = {"Content-Type": ctype, **self.headers}
        retries = Retries(self.backoff)  # per batch: no connection to keep healthy, every failure counts
        while True:
            wait: float | None = None
            try:
                response = await client.post(self.url, content=body, headers=headers, timeout=self.timeout)
            except httpx.TransportError as err:
                problem = repr(err)
            else:
                if response.is_success:
                    stats.bytes_sent += len(body)
                    stats.items += len(batch)
                    return
                if response.status_code not in self.retry_statuses:
                    response.raise_for_status()
                    raise httpx.HTTPStatusError(
                        f"POST {self.url}: HTTP {response.status_code}", request=response.request, response=response
                    )
                problem = f"HTTP {response.status_code}"
                after = response.headers.get("retry-after", "")
                if after.isdigit():
                    wait = min(float(after), self.backoff.maximum)
            stats.errors += 1
            stats.last_error = problem
            if not await retries.next_attempt(wait=wait):
                attempts = retries.failures
                message = f"POST {self.url}: batch of {len(batch)} not delivered after {attempts} attempts: {problem}"
                raise DeliveryFailed(message, batch)
            stats.reconnects += 1

    async def transform(self, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Collect, POST, then yield each delivered item (metadata passes in order)."""
        stats = self.stats if self.stats is not None else NetStats()
        batch: list[Any] = []
        held: list[Any] = []  # items and metadata in arrival order since the last POST
        async with client_for(self.client) as client:
            async for item in items:
                held.append(item)
                if is_metadata(item):
                    if isinstance(item, Flush) and batch:
                        await self._post(client, batch, stats)
                        batch = []
                    if not batch:
                        for x in held:
                            yield x
                        held = []
                    continue
                batch.append(item)
                if len(batch) >= self.batch_size:
                    await self._post(client, batch, stats)
                    batch = []
                    for x in held:
                        yield x
                    held = []
            if batch:
                await self._post(client, batch, stats)
            for x in held:
                yield x


# The names these stages had before sinks were named ``to_<destination>``: kept for one release.
if TYPE_CHECKING:
    from typing_extensions import deprecated

    @deprecated("tcp_sink is deprecated: use to_tcp")
    class tcp_sink(to_tcp[T]):
        """Deprecated name of :class:`to_tcp`."""

    @deprecated("unix_sink is deprecated: use to_unix")
    class unix_sink(to_unix[T]):
        """Deprecated name of :class:`to_unix`."""

    @deprecated("stdout_sink is deprecated: use to_stdout")
    class stdout_sink(to_stdout[T]):
        """Deprecated name of :class:`to_stdout`."""

    @deprecated("http_post_batches is deprecated: use to_http")
    class http_post_batches(to_http[T]):
        """Deprecated name of :class:`to_http`."""

else:
    _RENAMED = {
        "tcp_sink": ("to_tcp", to_tcp),
        "unix_sink": ("to_unix", to_unix),
        "stdout_sink": ("to_stdout", to_stdout),
        "http_post_batches": ("to_http", to_http),
    }

    def __getattr__(name: str) -> Any:
        return old_name(__name__, name, _RENAMED)
