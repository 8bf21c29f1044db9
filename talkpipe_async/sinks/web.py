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

__all__ = ["PipelineResponse", "sse_format", "streaming_response"]

log = logging.getLogger("talkpipe_async.web")


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
    - an error in the pipeline after the headers went out: with SSE an
      ``event: error`` is sent and the stream ends; with NDJSON the error is
      re-raised, so the server aborts the connection and the client sees a
      broken (not a silently short) body.

    ``serializer`` turns an item into text (default ``json.dumps``).  SSE:
    ``event_name`` names each event; ``id_of(item)`` sets its ``id``;
    ``heartbeat`` seconds between ``: ping`` comments while idle.
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
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        if format not in ("ndjson", "sse"):
            raise ValueError(f"format must be 'ndjson' or 'sse', not {format!r}")
        self.pipeline = pipeline
        self.input = input
        self.format = format
        self.serializer = serializer or (lambda item: json.dumps(item, ensure_ascii=False))
        self.event_name = event_name
        self.id_of = id_of
        self.retry = retry
        self.heartbeat = heartbeat
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
            if failure is not None and self.format == "sse" and not self.disconnected:
                log.error("pipeline failed while streaming a response", exc_info=failure)
                await body(sse_format(f"{type(failure).__name__}: {failure}", event="error"))
                failure = None
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
