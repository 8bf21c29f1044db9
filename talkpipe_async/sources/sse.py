"""Server-Sent Events: a WHATWG-conformant byte parser and a reconnecting source.

The parser follows the HTML Living Standard's "event stream interpretation":
UTF-8 decoding (errors replaced), one leading BOM stripped, lines ended by CR,
LF or CRLF (even when the CR and the LF arrive in different chunks), comments
(``:`` lines), multi-line ``data``, ``id`` kept across events and ignored when
it contains NUL, ``retry`` accepted only when it is all ASCII digits, events
with no data not dispatched, and an unterminated final event dropped.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from .._backoff import Backoff, Retries
from .._core._errors import TalkpipeAsyncError
from .._core._segment import AbstractSource
from .._net.framing import NetStats
from .._net.http import client_for, http_timeout

__all__ = ["SSEError", "SSEEvent", "SSEParser", "sse_events"]

_LINE_END = re.compile(r"\r\n|\r|\n")
DEFAULT_MAX_LINE_CHARS = 1 << 20


class SSEError(TalkpipeAsyncError):
    """The event stream cannot continue: a non-200 status, a wrong content type, an over-long line."""


@dataclass(frozen=True)
class SSEEvent:
    """One dispatched event: ``event`` type, ``data``, and the stream's last event ``id`` at dispatch."""

    event: str = "message"
    data: str = ""
    id: str = ""

    def json(self) -> Any:
        """``json.loads(self.data)``."""
        return json.loads(self.data)


class SSEParser:
    """Incremental event-stream parser: ``feed(bytes) -> list[SSEEvent]``.

    ``last_event_id`` (carried across reconnections: pass the previous
    parser's value to the next one) and ``retry`` (milliseconds, or None)
    expose the stream state.  A line, or the data of one event, longer than
    ``max_line_chars`` raises :class:`SSEError`, so memory stays bounded.

    The cost is linear in the input however it is chunked: an unfinished
    line is kept as a list of pieces, joined once when its end arrives, and
    each chunk is searched for line ends only once.  ``scanned`` counts the
    characters searched, split or joined so far (at most about three times
    the characters fed).
    """

    def __init__(self, last_event_id: str = "", *, max_line_chars: int = DEFAULT_MAX_LINE_CHARS) -> None:
        self.last_event_id = last_event_id
        self.retry: int | None = None
        self.max_line_chars = max_line_chars
        self.scanned = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._started = False
        self._skip_lf = False
        self._pieces: list[str] = []
        self._held = 0
        self._data: list[str] = []
        self._data_size = 0
        self._event = ""
        self._id_buffer = last_event_id

    @property
    def partial(self) -> bool:
        """True while an unfinished line or an undispatched event is held (dropped if the stream ends here)."""
        return bool(self._pieces or self._data)

    def _too_long(self) -> SSEError:
        return SSEError(f"event-stream line longer than {self.max_line_chars} characters")

    def _hold(self, text: str) -> None:
        self._held += len(text)
        if self._held > self.max_line_chars:
            raise self._too_long()
        self._pieces.append(text)

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Parse *chunk*; return the events it completes."""
        text = self._decoder.decode(chunk)
        if not self._started and text:
            self._started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        if self._skip_lf and text:
            self._skip_lf = False
            if text.startswith("\n"):
                text = text[1:]
        if not text:
            return []
        self.scanned += len(text)
        end = max(text.rfind("\n"), text.rfind("\r"))
        if end < 0:  # the middle of a long line: only held (the common case of small chunks)
            self._held += len(text)
            if self._held > self.max_line_chars:
                raise self._too_long()
            self._pieces.append(text)
            return []
        head, rest = text[: end + 1], text[end + 1 :]
        self._skip_lf = not rest and text[end] == "\r"
        if self._pieces:
            self._pieces.append(head)
            head = "".join(self._pieces)
            self._pieces, self._held = [], 0
            self.scanned += len(head)
        self.scanned += len(head)
        lines = _LINE_END.split(head)
        lines.pop()  # the empty text after the last line end
        if rest:
            self._hold(rest)
        events: list[SSEEvent] = []
        cap = self.max_line_chars
        for line in lines:
            if len(line) > cap:
                raise self._too_long()
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._data_size += len(value) + 1
            if self._data_size > self.max_line_chars:
                raise SSEError(f"event data longer than {self.max_line_chars} characters")
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id_buffer = value
        elif name == "retry":
            if value and value.isascii() and value.isdigit():
                self.retry = int(value)
        return None

    def _dispatch(self) -> SSEEvent | None:
        self.last_event_id = self._id_buffer
        if not self._data:
            self._event = ""
            return None
        event = SSEEvent(self._event or "message", "\n".join(self._data), self.last_event_id)
        self._data = []
        self._data_size = 0
        self._event = ""
        return event


class sse_events(AbstractSource[SSEEvent]):
    """The events of a Server-Sent Events endpoint, reconnecting like a browser's ``EventSource``.

    Each connection is ``async with client.stream("GET", ...)`` (closed
    deterministically).  On EOF, a mid-line disconnect (the partial line is
    dropped), a transport error or a read timeout (``read_timeout`` applies
    per chunk: set it to a few heartbeat intervals) the source reconnects
    with ``Last-Event-ID``; the first retry waits the server's ``retry``
    (milliseconds; or ``backoff.initial`` seconds), later ones back off
    exponentially with full jitter up to ``backoff.maximum``; the count and
    the delay start again only after a connection that received data and
    stayed up ``backoff.healthy_after`` seconds, so ``backoff.max_attempts``
    bounds a server that keeps dropping the stream.  A 204 ends the stream; any other non-200 status or a
    content type other than ``text/event-stream`` raises :class:`SSEError`
    without retrying.  ``client``: a shared ``httpx.AsyncClient`` (not closed
    here); by default each run makes and closes its own.
    """

    def __init__(
        self,
        url: str,
        *,
        client: httpx.AsyncClient | None = None,
        headers: Mapping[str, str] | None = None,
        last_event_id: str = "",
        read_timeout: float | None = 60.0,
        connect_timeout: float = 10.0,
        backoff: Backoff | None = None,
        max_line_chars: int = DEFAULT_MAX_LINE_CHARS,
        stats: NetStats | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.url = url
        self.client = client
        self.headers = dict(headers or {})
        self.last_event_id = last_event_id
        self.read_timeout = read_timeout
        self.connect_timeout = connect_timeout
        self.backoff = backoff or Backoff(initial=3.0, exact_first=True)
        self.max_line_chars = max_line_chars
        self.stats = stats if stats is not None else NetStats()
        if name:
            self.name = name

    async def generate(self) -> AsyncIterator[SSEEvent]:
        """Connect, parse, yield events; reconnect until a 204, an error or the end of the run."""
        stats = self.stats if self.stats is not None else NetStats()
        timeout = http_timeout(self.read_timeout, self.connect_timeout)
        last_id = self.last_event_id
        retry_ms: int | None = None
        retries = Retries(self.backoff)
        async with client_for(self.client) as client:
            while True:
                headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache", **self.headers}
                if last_id:
                    headers["Last-Event-ID"] = last_id
                parser = SSEParser(last_id, max_line_chars=self.max_line_chars)
                try:
                    async with client.stream("GET", self.url, headers=headers, timeout=timeout) as response:
                        if response.status_code == 204:
                            return
                        if response.status_code != 200:
                            raise SSEError(f"{self.url}: HTTP {response.status_code}, not retrying")
                        ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
                        if ctype != "text/event-stream":
                            raise SSEError(f"{self.url}: content type {ctype!r} is not text/event-stream")
                        stats.connections += 1
                        retries.opened()
                        async for chunk in response.aiter_bytes():
                            stats.bytes_received += len(chunk)
                            retries.delivered()
                            events = parser.feed(chunk)
                            if parser.retry is not None:
                                retry_ms = parser.retry
                            last_id = parser.last_event_id
                            if events:
                                stats.items += len(events)
                                for event in events:
                                    yield event
                    if parser.partial:
                        stats.partial_dropped += 1
                except httpx.TransportError as err:  # RemoteProtocolError, ReadTimeout, ReadError, ConnectError
                    stats.errors += 1
                    stats.last_error = repr(err)
                    if parser.partial:
                        stats.partial_dropped += 1
                last_id = parser.last_event_id
                if not await retries.next_attempt(retry_ms / 1000 if retry_ms is not None else None):
                    raise SSEError(f"{self.url}: gave up after {retries.failures} reconnection attempts")
                stats.reconnects += 1
