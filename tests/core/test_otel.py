"""OpenTelemetry: the run's span, the stage metrics and item trace context, on the real SDK (in-memory exporters)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import anyio
import pytest

pytest.importorskip("opentelemetry.sdk", reason="the OpenTelemetry SDK is in the test extra")

from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from talkpipe_async import RunStats, segment, source
from talkpipe_async.otel import context_of, extract_context, inject_headers, item_span, opentelemetry

pytestmark = pytest.mark.anyio


class Telemetry:
    """A private tracer and meter provider with in-memory export, for one test."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def hook(self, pipeline: str = "demo") -> Any:
        return opentelemetry(pipeline, tracer_provider=self.tracer_provider, meter_provider=self.meter_provider)

    def finished(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if name is None or s.name == name]

    def metrics(self) -> dict[str, dict[tuple[tuple[str, Any], ...], Any]]:
        """{metric name: {sorted attribute items: value}} as the reader sees them now."""
        out: dict[str, dict[tuple[tuple[str, Any], ...], Any]] = {}
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data is not None else ():
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    points = out.setdefault(m.name, {})
                    for p in m.data.data_points:
                        points[tuple(sorted((p.attributes or {}).items()))] = p.value  # type: ignore[union-attr]
        return out


@pytest.fixture
def otel() -> Iterator[Telemetry]:
    t = Telemetry()
    yield t
    t.tracer_provider.shutdown()
    t.meter_provider.shutdown()


def stage(name: str) -> tuple[tuple[str, Any], ...]:
    return (("talkpipe.pipeline", "demo"), ("talkpipe.stage", name))


@source
async def numbers(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


@segment
async def evens(items: AsyncIterator[int]) -> AsyncIterator[int]:
    async for x in items:
        if x % 2 == 0:
            yield x


@segment
async def fails_at(items: AsyncIterator[int], at: int = 7) -> AsyncIterator[int]:
    async for x in items:
        if x == at:
            raise ValueError(f"bad item {x}")
        yield x


async def test_a_span_per_run_with_the_stages_and_their_figures(otel: Telemetry) -> None:
    telemetry = otel.hook()
    child_parents: list[Any] = []

    @segment
    async def traced(items: AsyncIterator[int]) -> AsyncIterator[int]:
        tracer = otel.tracer_provider.get_tracer("user code")
        async for x in items:
            with tracer.start_as_current_span("work") as span:
                child_parents.append(span.parent)  # type: ignore[attr-defined]
            yield x

    async with telemetry.stream(numbers(n=100) | evens() | traced()) as items:
        assert len([x async for x in items]) == 50
    [run] = otel.finished("talkpipe run demo")
    assert run.attributes is not None
    assert run.attributes["talkpipe.stages"] == ("numbers", "evens", "traced")
    assert run.attributes["talkpipe.stage.items_in"] == (0, 100, 50)
    assert run.attributes["talkpipe.stage.items_out"] == (100, 50, 50)
    assert run.attributes["talkpipe.stage.errors"] == (0, 0, 0)
    assert run.status.status_code is trace.StatusCode.UNSET
    # spans the stages start are children of the run's span
    assert len(child_parents) == 50 and {p.span_id for p in child_parents} == {run.context.span_id}
    m = otel.metrics()
    assert m["talkpipe.stage.items_out"][stage("evens")] == 50
    assert m["talkpipe.stage.items_in"][stage("evens")] == 100
    assert m["talkpipe.runs"][(("outcome", "ok"), ("talkpipe.pipeline", "demo"))] == 1


async def test_a_failing_run_records_the_error_and_sets_status_error(otel: Telemetry) -> None:
    telemetry = otel.hook()
    with pytest.raises(ValueError, match="bad item 7"):
        async with telemetry.stream(numbers(n=20) | fails_at(at=7)) as items:
            async for _ in items:
                pass
    [run] = otel.finished()
    assert run.status.status_code is trace.StatusCode.ERROR
    assert run.attributes is not None and run.attributes["talkpipe.stage.errors"] == (0, 1)
    events = {e.name: e.attributes for e in run.events}
    assert events["talkpipe.stage.error"] == {"talkpipe.stage": "fails_at", "talkpipe.stage.errors": 1}
    exception = events["exception"]
    assert exception is not None
    assert exception["exception.type"] == "ValueError" and exception["talkpipe.stage"] == "fails_at"
    m = otel.metrics()
    assert m["talkpipe.stage.errors"][stage("fails_at")] == 1
    assert m["talkpipe.runs"][(("outcome", "error"), ("talkpipe.pipeline", "demo"))] == 1


async def test_the_hook_alone_makes_a_span_per_run_and_metrics_add_up_over_runs(otel: Telemetry) -> None:
    telemetry = otel.hook()
    elapsed: list[float] = []

    def seen(snap: RunStats) -> None:
        telemetry(snap)
        if not snap.running:
            elapsed.append(snap.elapsed_s)

    for n in (10, 30):
        async with (numbers(n=n) | evens()).stream(on_stats=seen) as items:
            async for _ in items:
                pass
    spans = otel.finished("talkpipe run demo")
    assert [s.attributes["talkpipe.stage.items_out"] for s in spans if s.attributes] == [(10, 5), (30, 15)]
    for span, took in zip(spans, elapsed, strict=True):
        assert span.start_time is not None and span.end_time is not None
        assert span.end_time - span.start_time >= int(took * 1e9) - 1_000  # back-dated to the run's start
    assert otel.metrics()["talkpipe.stage.items_out"][stage("evens")] == 20


async def test_one_telemetry_serves_concurrent_runs_each_with_its_span(otel: Telemetry) -> None:
    telemetry = otel.hook()
    both_started = anyio.Event()
    started: list[int] = []

    async def one(n: int) -> None:
        async with telemetry.stream(numbers(n=n) | evens()) as items:
            started.append(n)
            if len(started) == 2:
                both_started.set()
            await both_started.wait()  # both runs are open at once
            async for _ in items:
                pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(one, 10)
        tg.start_soon(one, 40)
    spans = otel.finished("talkpipe run demo")
    outs = [s.attributes["talkpipe.stage.items_out"] for s in spans if s.attributes]
    assert len(outs) == 2 and (10, 5) in outs and (40, 20) in outs
    assert len({s.context.span_id for s in spans}) == 2 and all(s.parent is None for s in spans)
    assert otel.metrics()["talkpipe.stage.items_out"][stage("evens")] == 25


async def test_buffer_levels_are_gauges_while_the_run_goes_on(otel: Telemetry) -> None:
    telemetry = otel.hook()
    reported = anyio.Event()

    @segment
    def double(items: Iterable[int]) -> Iterator[int]:  # a sync segment after an async one: a thread stage
        for x in items:
            yield 2 * x

    def on_stats(snap: RunStats) -> None:
        if snap.running:
            reported.set()

    async with telemetry.stream(numbers(n=10_000) | double(), stats_every=0.01, on_stats=on_stats) as items:
        await items.__anext__()
        await reported.wait()
        during = otel.metrics()
        async for _ in items:
            pass
    assert during["talkpipe.stage.buffer_capacity"][stage("double")] > 0
    assert stage("double") in during["talkpipe.stage.buffer_fill"]
    assert stage("numbers") not in during["talkpipe.stage.buffer_fill"]  # only stages with a buffer
    after = otel.metrics()
    assert after["talkpipe.stage.items_out"][stage("double")] == 10_000
    assert stage("double") not in after.get("talkpipe.stage.buffer_fill", {})  # a finished run holds no level


async def test_a_cancelled_run_ends_its_span_without_an_error(otel: Telemetry) -> None:
    telemetry = otel.hook()

    @source
    async def endless() -> AsyncIterator[int]:
        i = 0
        while True:
            yield i
            i += 1
            await anyio.lowlevel.checkpoint()

    with anyio.CancelScope() as scope:
        async with telemetry.stream(endless()) as items:
            async for x in items:
                if x == 5:
                    scope.cancel()
    [run] = otel.finished()
    assert run.status.status_code is not trace.StatusCode.ERROR
    assert "talkpipe.run.cancelled" in [e.name for e in run.events]


async def test_close_ends_the_span_of_a_hook_whose_run_never_ended(otel: Telemetry) -> None:
    from talkpipe_async import StageSnapshot

    with otel.hook() as telemetry:
        telemetry(RunStats((StageSnapshot("numbers", 0, 3, 0, None, 0.0, None, None),), 0.5, 0, True))
        assert otel.finished() == []
    [run] = otel.finished()
    assert [e.name for e in run.events] == ["talkpipe.run.stopped"]


def test_trace_context_from_headers_str_or_bytes(otel: Telemetry) -> None:
    tracer = otel.tracer_provider.get_tracer("producer")
    with tracer.start_as_current_span("publish") as producer:
        headers = inject_headers({"data": "x"})
    assert headers["data"] == "x" and "traceparent" in headers
    for carrier in (headers, {k.upper().encode(): v.encode() for k, v in headers.items()}):
        ctx = extract_context(carrier)
        assert ctx is not None
        assert trace.get_current_span(ctx).get_span_context().trace_id == producer.get_span_context().trace_id
    assert extract_context({"data": "x"}) is None and extract_context(None) is None
    assert context_of({"traceparent": "not a trace"}) is None and context_of(42) is None


async def test_item_span_is_a_child_of_the_carried_context_and_linked_to_the_run(otel: Telemetry) -> None:
    tracer = otel.tracer_provider.get_tracer("producer")
    with tracer.start_as_current_span("publish") as producer:
        carried = [inject_headers({"n": str(i)}) for i in range(3)]

    @segment
    async def handle(items: AsyncIterator[dict[str, str]]) -> AsyncIterator[str]:
        async for item in items:
            with item_span(item, "handle", tracer_provider=otel.tracer_provider):
                n = item["n"]
            yield n

    async with otel.hook().stream(handle(), carried) as items:
        assert [x async for x in items] == ["0", "1", "2"]
    [run] = otel.finished("talkpipe run demo")
    handled = otel.finished("handle")
    assert len(handled) == 3
    for span in handled:
        assert span.parent is not None and span.parent.span_id == producer.get_span_context().span_id
        assert [link.context.span_id for link in span.links] == [run.context.span_id]
        assert span.kind is trace.SpanKind.CONSUMER


def test_importing_the_package_does_not_import_opentelemetry() -> None:
    code = (
        "import sys, talkpipe_async, talkpipe_async.observe, talkpipe_async.operators, talkpipe_async.connectors\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_the_no_op_providers_run_the_whole_path() -> None:
    telemetry = opentelemetry("demo", tracer_provider=trace.NoOpTracerProvider(),
                              meter_provider=__import__("opentelemetry.metrics").metrics.NoOpMeterProvider())

    async def main() -> int:
        async with telemetry.stream(numbers(n=100) | fails_at(at=1000), stats_every=0.001) as items:
            return len([x async for x in items])

    assert anyio.run(main) == 100


@pytest.fixture
def asyncio_only(anyio_backend: Any) -> None:
    if anyio_backend[0] != "asyncio":
        pytest.skip("redis.asyncio runs on asyncio (and uvloop) only")


@pytest.mark.usefixtures("asyncio_only")
async def test_a_redis_entry_carries_its_trace_context_to_the_consumer(otel: Telemetry) -> None:
    pytest.importorskip("redis")
    import redis.asyncio as aioredis

    from talkpipe_async.connectors import redis_stream_messages
    from tests.helpers import servers

    tag = uuid.uuid4().hex[:8]
    tracer = otel.tracer_provider.get_tracer("producer")
    with servers.redis_server() as url:
        client = aioredis.Redis.from_url(url)
        try:
            with tracer.start_as_current_span("publish") as producer:
                fields: dict[Any, Any] = inject_headers({"data": json.dumps(1)})
                await client.xadd(f"in-{tag}", fields)
        finally:
            await client.aclose()
        src = redis_stream_messages(f"in-{tag}", f"g-{tag}", url=url, field=None, idle_exit=0.2, block=0.05)
        async with otel.hook().stream(src) as messages:
            async for msg in messages:
                with item_span(msg, "handle", tracer_provider=otel.tracer_provider):
                    pass
                await msg.ack()
    [handled] = otel.finished("handle")
    assert handled.parent is not None
    assert handled.parent.trace_id == producer.get_span_context().trace_id
    assert handled.parent.span_id == producer.get_span_context().span_id
