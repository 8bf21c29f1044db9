"""A pipeline served as Server-Sent Events to a real browser's EventSource (headless Chromium).

What a browser does with the stream is the promise: a pipeline error arrives
as its own event (not as ``onerror``), and a finished stream stays finished:
the pipeline runs once, whether the page closes on the end event or lets the
browser reconnect (answered 204 via ``sse_ended``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from talkpipe_async import source
from talkpipe_async.sinks.web import SSE_END_ID, sse_ended, streaming_response
from tests.helpers.chromium import Chromium
from tests.helpers.net import AppServer

PAGE = """<!doctype html><html><body><pre id="seen"></pre><script>
const seen = [];
const closeOnEnd = %(close_on_end)s;
window.outcome = new Promise((resolve) => {
  const es = new EventSource("/events?fail=%(fail)s");
  const note = (text) => { seen.push(text); document.getElementById("seen").textContent = seen.join("\\n"); };
  es.onmessage = (e) => note("message:" + e.data);
  es.addEventListener("pipeline-error", (e) => note("pipeline-error:" + e.data));
  es.addEventListener("end", (e) => {
    note("end:" + e.data + ":" + e.lastEventId);
    if (closeOnEnd) { es.close(); resolve(seen); }
  });
  es.onerror = () => {
    note("onerror:" + es.readyState);
    if (es.readyState === EventSource.CLOSED) resolve(seen);
  };
});
</script></body></html>"""


@dataclass
class Seen:
    """What the server saw: each /events request's Last-Event-ID, pipeline runs, 204 answers."""

    last_event_ids: list[str | None] = field(default_factory=list)
    runs: int = 0
    no_content: int = 0


def app(seen: Seen) -> Starlette:
    @source
    async def feed(fail: bool) -> AsyncIterator[int]:
        seen.runs += 1
        yield 1
        yield 2
        if fail:
            raise RuntimeError("boom in the pipeline")

    async def page(request: Request) -> Response:
        close_on_end = request.query_params.get("close_on_end", "true")
        fail = request.query_params.get("fail", "1")
        return HTMLResponse(PAGE % {"close_on_end": close_on_end, "fail": fail})

    async def events(request: Request) -> Response:
        seen.last_event_ids.append(request.headers.get("last-event-id"))
        if sse_ended(request.headers):
            seen.no_content += 1
            return Response(status_code=204)
        fail = request.query_params.get("fail") == "1"
        return streaming_response(feed(fail=fail), format="sse", end_event="end", retry=50, id_of=str)

    return Starlette(routes=[Route("/page", page), Route("/events", events)])


@pytest.fixture
def served() -> Iterator[tuple[AppServer, Seen]]:
    seen = Seen()
    with AppServer(app(seen)) as server:
        yield server, seen


def test_pipeline_error_is_its_own_event_and_a_closing_page_runs_the_pipeline_once(
    served: tuple[AppServer, Seen], tmp_path: Path
) -> None:
    server, seen = served
    got = Chromium(tmp_path).run(server.url("/page?close_on_end=true&fail=1"), "outcome")
    end = json.dumps({"items": 2, "failed": True})
    assert got == [
        "message:1",
        "message:2",
        "pipeline-error:RuntimeError: boom in the pipeline",
        f"end:{end}:{SSE_END_ID}",
    ]  # no onerror: the failure reached the page as data
    assert seen.runs == 1 and seen.last_event_ids == [None]


def test_a_reconnect_after_the_end_gets_204_and_the_browser_stops(
    served: tuple[AppServer, Seen], tmp_path: Path
) -> None:
    server, seen = served
    got = Chromium(tmp_path).run(server.url("/page?close_on_end=false&fail=0"), "outcome")
    end = json.dumps({"items": 2, "failed": False})
    # the stream ends, the browser reconnects with the end id, the 204 closes the EventSource (readyState 2)
    assert got == ["message:1", "message:2", f"end:{end}:{SSE_END_ID}", "onerror:0", "onerror:2"]
    assert seen.runs == 1 and seen.no_content == 1
    assert seen.last_event_ids == [None, SSE_END_ID]
