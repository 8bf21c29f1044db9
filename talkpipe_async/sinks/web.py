"""Serve a pipeline's output as a streaming HTTP response (Starlette / FastAPI).

``streaming_response(pipeline)`` returns an ASGI response that runs the
pipeline for one request and sends each item as it is produced: NDJSON
(one JSON document per line) or Server-Sent Events.  Needs ``starlette``
(the ``web`` extra).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from typing import Any, Literal

import anyio
from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .._core._pipeline import Pipeline
from ._ndjson import ndjson_dumps

__all__ = ["SSE_END_ID", "PipelineResponse", "sse_ended", "sse_format", "streaming_response"]

log = logging.getLogger("talkpipe_async.web")

#: the id of the end event (``PipelineResponse(end_event=...)``): a reconnect that carries it comes after the end
SSE_END_ID = "end"


def sse_ended(headers: Mapping[str, str], end_id: str = SSE_END_ID) -> bool:
    """True when a reconnecting client already received the end event (its ``Last-Event-ID`` is *end_id*).

    Answer such a request with ``Response(status_code=204)``: an
    ``EventSource`` then stops reconnecting, and the pipeline does not run
    again.  *headers*: the request's headers (Starlette's ``request.headers``).
    """
    return headers.get("last-event-id") == end_id


def _json_text(item: Any) -> str:
    return json.dumps(item, ensure_ascii=False)


def sse_format(data: str, *, event: str | None = None, id: str | None = None, retry: int | None = None) -> bytes:
    """One Server-Sent Event; multi-line *data* becomes several ``data:`` lines."""
    out: list[str] = []
    if retry is not None:
        out.append(f"retry: {int(retry)}")
    if id is not None:
        if "\n" in id or "\r" in id or "\0" in id:
            raise ValueError("an SSE id cannot contain CR, LF or NUL")
        out.append(f"id: {id}")
    if event is not None:
        if "\n" in event or "\r" in event:
            raise ValueError("an SSE event name cannot contain CR or LF")
        out.append(f"event: {event}")
    for line in data.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        out.append(f"data: {line}")
    return ("\n".join(out) + "\n\n").encode()


class PipelineResponse(Response):
    """An ASGI response that streams the items of one pipeline run.

    Guarantees:

    - backpressure: each item is ``await send(...)``-ed before the next one
      is pulled, and the server's ``send`` waits while the client is not
      reading, so a slow client slows the pipeline instead of filling memory;
    - a client disconnect cancels the run, which closes every stage
      (sources included) before the response returns;
    - an error in the pipeline after the headers went out: with SSE an event
      named ``error_event`` (default ``"pipeline-error"``, not ``"error"``,
      which an ``EventSource`` reports to ``onerror`` as a failed connection)
      carries ``"Type: message"`` and the stream ends; with NDJSON the error
      is re-raised, so the server aborts the connection and the client sees
      a broken (not a silently short) body.

    ``serializer`` turns an item into text (default ``json.dumps`` with
    ``ensure_ascii=False``; for NDJSON, U+2028 and U+2029 are escaped so that
    line readers such as httpx's ``aiter_lines`` do not split a record).
    SSE: ``event_name`` names each event; ``id_of(item)`` sets its ``id``;
    ``heartbeat`` seconds between ``: ping`` comments while idle.

    A browser's ``EventSource`` reconnects whenever a stream ends, which
    would run the pipeline again.  To end a stream for good, set
    ``end_event`` (e.g. ``"end"``): after the last item (or the error event)
    one more event of that name goes out, with data
    ``{"items": <sent>, "failed": <bool>}`` and id ``end_id``.  A client
    that listens for it calls ``close()``; one that reconnects anyway sends
    ``Last-Event-ID: <end_id>``, which :func:`sse_ended` recognises, and the
    endpoint answers ``204 No Content``, which stops an ``EventSource`` (and
    :class:`~talkpipe_async.sources.sse_events`) for good.
    """

    def __init__(
        self,
        pipeline: Pipeline[Any, Any],
        input: Iterable[Any] | AsyncIterable[Any] | None = None,
        *,
        format: Literal["ndjson", "sse"] = "ndjson",
        serializer: Callable[[Any], str] | None = None,
        event_name: str | None = None,
        id_of: Callable[[Any], Any] | None = None,
        retry: int | None = None,
        heartbeat: float | None = None,
        error_event: str = "pipeline-error",
        end_event: str | None = None,
        end_id: str = SSE_END_ID,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        if format not in ("ndjson", "sse"):
            raise ValueError(f"format must be 'ndjson' or 'sse', not {format!r}")
        self.pipeline = pipeline
        self.input = input
        self.format = format
        if serializer is None:
            serializer = ndjson_dumps if format == "ndjson" else _json_text
        self.serializer: Callable[[Any], str] = serializer
        self.event_name = event_name
        self.id_of = id_of
        self.retry = retry
        self.heartbeat = heartbeat
        for name in (error_event, end_event or "", end_id):
            if "\n" in name or "\r" in name or "\0" in name:
                raise ValueError(f"an SSE event name or id cannot contain CR, LF or NUL: {name!r}")
        self.error_event = error_event
        self.end_event = end_event
        self.end_id = end_id
        self.status_code = status_code
        self.media_type = "text/event-stream" if format == "sse" else "application/x-ndjson"
        self.background = background
        extra = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})}
        self.init_headers(extra)
        self.items_sent = 0
        self.disconnected = False

    def _encode(self, item: Any) -> bytes:
        text = self.serializer(item)
        if self.format == "ndjson":
            if "\n" in text:
                raise ValueError("an NDJSON record serialized to text with a newline")
            return (text + "\n").encode()
        ident = None if self.id_of is None else str(self.id_of(item))
        return sse_format(text, event=self.event_name, id=ident)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the pipeline and stream its items until the end, an error or a disconnect."""
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        lock = anyio.Lock()
        idle = anyio.Event()
        failure: BaseException | None = None

        async def body(chunk: bytes) -> None:
            async with lock:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})

        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        self.disconnected = True
                        tg.cancel_scope.cancel()
                        return

            async def beat(period: float) -> None:
                while True:
                    await anyio.sleep(period)
                    if idle.is_set():
                        await body(b": ping\n\n")
                    idle.set()

            tg.start_soon(watch)
            if self.format == "sse" and self.heartbeat:
                tg.start_soon(beat, self.heartbeat)
            try:
                if self.format == "sse" and self.retry is not None:
                    await body(f"retry: {int(self.retry)}\n\n".encode())
                async with self.pipeline.stream(self.input) as items:
                    async for item in items:
                        await body(self._encode(item))
                        self.items_sent += 1
                        idle = anyio.Event()
            except OSError:  # the server reports the client gone
                self.disconnected = True
            except Exception as exc:
                failure = exc
            failed = failure is not None
            if failure is not None and self.format == "sse" and not self.disconnected:
                log.error("pipeline failed while streaming a response", exc_info=failure)
                await body(sse_format(f"{type(failure).__name__}: {failure}", event=self.error_event))
                failure = None
            if self.end_event is not None and self.format == "sse" and not self.disconnected:
                summary = json.dumps({"items": self.items_sent, "failed": failed})
                await body(sse_format(summary, event=self.end_event, id=self.end_id))
            if not self.disconnected and failure is None:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            tg.cancel_scope.cancel()
        if failure is not None:
            raise failure
        if self.background is not None:
            await self.background()


def streaming_response(
    pipeline: Pipeline[Any, Any],
    input: Iterable[Any] | AsyncIterable[Any] | None = None,
    **options: Any,
) -> PipelineResponse:
    """A :class:`PipelineResponse` for a Starlette/FastAPI endpoint::

    async def events(request):
        return streaming_response(feed() | enrich(), format="sse")
    """
    return PipelineResponse(pipeline, input, **options)
