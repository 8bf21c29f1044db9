"""OpenTelemetry for pipeline runs: a span per run, metrics per stage, trace context carried by items.

Needs the OpenTelemetry API (``pip install "talkpipe-async[otel]"``) and, to
export anything, an SDK set up by the application; with none set up, the API's
no-op providers make every call here nearly free.  Importing
``talkpipe_async`` never imports OpenTelemetry: only this module does.

::

    telemetry = opentelemetry(pipeline="ingest")
    async with telemetry.stream(source | parse | store, stats_every=5.0) as items:
        async for item in items:
            ...

``telemetry`` is also a plain ``on_stats`` hook (``stream(on_stats=telemetry)``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, propagate, trace
except ImportError as exc:  # pragma: no cover - depends on the extra
    raise ImportError('talkpipe_async.otel needs OpenTelemetry: pip install "talkpipe-async[otel]"') from exc

from ._core._errors import error_context
from ._core._stats import RunStats, StageSnapshot

__all__ = ["PipelineTelemetry", "context_of", "extract_context", "inject_headers", "item_span", "opentelemetry"]

_SCOPE = "talkpipe_async"
# Cumulative per-run figures of a snapshot that become monotonic OpenTelemetry counters (added as deltas).
_COUNTED = ("items_in", "items_out", "errors", "skipped", "time_s")


class _Instruments:
    """The metric instruments of one :class:`PipelineTelemetry` (created once, shared by its runs)."""

    def __init__(self, meter: metrics.Meter, prefix: str, live: Callable[[], Iterable[_RunTrace]]) -> None:
        self.live = live
        self.counters = {
            "items_in": meter.create_counter(f"{prefix}.stage.items_in", "{item}", "Items the stage received"),
            "items_out": meter.create_counter(f"{prefix}.stage.items_out", "{item}", "Items the stage handed on"),
            "errors": meter.create_counter(f"{prefix}.stage.errors", "{error}", "Errors raised in the stage"),
            "skipped": meter.create_counter(f"{prefix}.stage.skipped", "{item}", "Items the stage skipped"),
            "time_s": meter.create_counter(f"{prefix}.stage.time", "s", "The stage's own running time"),
        }
        self.runs = meter.create_counter(f"{prefix}.runs", "{run}", "Runs ended, by outcome (ok, error)")
        meter.create_observable_gauge(
            f"{prefix}.stage.buffer_fill", [self._observe_fill], "{item}", "Items held in the stage's buffer"
        )
        meter.create_observable_gauge(
            f"{prefix}.stage.buffer_capacity", [self._observe_capacity], "{item}", "Bound of the stage's buffer"
        )

    def _levels(self, index: int) -> Iterator[metrics.Observation]:
        totals: dict[tuple[str, str], int] = {}
        for run in list(self.live()):
            for stage in run.last.stages if run.last is not None else ():
                level = (stage.buffer_fill, stage.buffer_capacity)[index]
                if level is not None:
                    key = (run.owner.pipeline, stage.name)
                    totals[key] = totals.get(key, 0) + level
        for (pipeline, stage_name), level in totals.items():
            yield metrics.Observation(level, {"talkpipe.pipeline": pipeline, "talkpipe.stage": stage_name})

    def _observe_fill(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        return list(self._levels(0))

    def _observe_capacity(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        return list(self._levels(1))


class _RunTrace:
    """One run's span and the figures already reported for it."""

    def __init__(self, owner: PipelineTelemetry) -> None:
        self.owner = owner
        self.span: trace.Span | None = None
        self.owned = False  # the span is started and ended by PipelineTelemetry.stream(), not by the snapshots
        self.last: RunStats | None = None
        self.reported: dict[tuple[int, str], float] = {}
        self.errors: dict[int, int] = {}

    def start(self, snap: RunStats | None) -> trace.Span:
        """Start the run's span (back-dated to the run's start when a snapshot is at hand)."""
        owner = self.owner
        start = None if snap is None else time.time_ns() - int(snap.elapsed_s * 1e9)
        self.span = owner.tracer.start_span(
            f"talkpipe run {owner.pipeline}",
            start_time=start,
            attributes={"talkpipe.pipeline": owner.pipeline},
        )
        owner.live.add(self)
        return self.span

    def on_stats(self, snap: RunStats) -> None:
        """The ``on_stats`` hook of this run."""
        span = self.span if self.span is not None else self.start(snap)
        self.last = snap
        self.owner.live.add(self)  # a reused hook's next run (its span was ended)
        pipeline = self.owner.pipeline
        for i, stage in enumerate(snap.stages):
            attrs = {"talkpipe.pipeline": pipeline, "talkpipe.stage": stage.name}
            for field in _COUNTED:
                self._add(i, stage, field, attrs)
            if stage.errors > self.errors.get(i, 0):
                span.add_event(
                    "talkpipe.stage.error", {"talkpipe.stage": stage.name, "talkpipe.stage.errors": stage.errors}
                )
                self.errors[i] = stage.errors
        if not snap.running:
            self.finish_run(snap)

    def _add(self, i: int, stage: StageSnapshot, field: str, attrs: dict[str, str]) -> None:
        value = getattr(stage, field)
        if value is None:
            return
        key = (i, field)
        done = self.reported.get(key, 0)
        if value > done:  # a stage's own time may dip between samples: counters only ever grow
            self.owner.instruments.counters[field].add(value - done, attrs)
            self.reported[key] = value

    def finish_run(self, snap: RunStats) -> None:
        """The run's last snapshot: the figures on the span, the outcome; end the span unless stream() owns it."""
        span = self.span
        assert span is not None
        stages = snap.stages
        span.set_attributes({
            "talkpipe.stages": [s.name for s in stages],
            "talkpipe.stage.items_in": [s.items_in for s in stages],
            "talkpipe.stage.items_out": [s.items_out for s in stages],
            "talkpipe.stage.errors": [s.errors for s in stages],
            "talkpipe.elapsed_s": snap.elapsed_s,
            "talkpipe.metadata_dropped": snap.metadata_dropped,
        })
        failed = [s.name for s in stages if s.errors]
        if failed:
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"errors in {', '.join(failed)}"))
        self.owner.instruments.runs.add(1, {"talkpipe.pipeline": self.owner.pipeline,
                                            "outcome": "error" if failed else "ok"})
        self.owner.live.discard(self)
        if not self.owned:
            self.end()

    def end(self) -> None:
        """End the span (once) and forget the run's figures, so that a reused hook starts afresh."""
        span, self.span = self.span, None
        self.owner.live.discard(self)
        self.reported.clear()
        self.errors.clear()
        if span is not None:
            span.end()


class PipelineTelemetry:
    """What :func:`opentelemetry` returns: an ``on_stats`` hook and a traced ``stream()``.

    As a hook (``pipeline.stream(stats_every=5.0, on_stats=telemetry)``) it
    follows one run at a time: the span starts with the first snapshot
    (back-dated to the run's start) and ends with the run's last one; for
    several runs at once, use one hook per run or :meth:`stream`.
    """

    def __init__(
        self,
        pipeline: str = "pipeline",
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        prefix: str = "talkpipe",
    ) -> None:
        #: The ``talkpipe.pipeline`` attribute of the spans and metrics.
        self.pipeline = pipeline
        self.tracer = trace.get_tracer(_SCOPE, tracer_provider=tracer_provider)
        meter = metrics.get_meter(_SCOPE, meter_provider=meter_provider)
        self.live: set[_RunTrace] = set()
        self.instruments = _Instruments(meter, prefix, lambda: self.live)
        self._hook_run = _RunTrace(self)

    def __call__(self, snap: RunStats) -> None:
        """Report *snap*: metrics, span events for new errors; the last snapshot ends the span."""
        self._hook_run.on_stats(snap)

    def close(self) -> None:
        """End the hook's open span, if a run was cancelled before its last snapshot (marked ``stopped``)."""
        run = self._hook_run
        if run.span is not None:
            run.span.add_event("talkpipe.run.stopped")
            run.end()

    def __enter__(self) -> PipelineTelemetry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @asynccontextmanager
    async def stream(
        self,
        pipeline: Any,
        input: Any = None,
        *,
        stats_every: float | None = None,
        on_stats: Callable[[RunStats], Any] | None = None,
        **options: Any,
    ) -> AsyncIterator[AsyncIterator[Any]]:
        """``pipeline.stream(...)`` inside the run's span, which is current for the stages and the consumer.

        Spans the stages (or the ``async with`` body) start are children of the
        run's span.  An exception that ends the run is recorded on the span
        (with the failing stage) and sets its status to error; a cancellation
        is an event (``talkpipe.run.cancelled``), not an error.  *on_stats*, if
        given, receives each snapshot too.
        """
        run = _RunTrace(self)
        span = run.start(None)
        run.owned = True

        def hook(snap: RunStats) -> None:
            run.on_stats(snap)
            if on_stats is not None:
                on_stats(snap)

        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            async with pipeline.stream(input, stats_every=stats_every, on_stats=hook, **options) as items:
                yield items
        except Exception as exc:
            ctx = error_context(exc)
            span.record_exception(exc, {"talkpipe.stage": ctx.segment} if ctx is not None else None)
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        except BaseException:
            span.add_event("talkpipe.run.cancelled")
            raise
        finally:
            otel_context.detach(token)
            run.end()


def opentelemetry(
    pipeline: str = "pipeline",
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
    prefix: str = "talkpipe",
) -> PipelineTelemetry:
    """Report runs to OpenTelemetry: a span per run and metrics per stage (needs the ``otel`` extra).

    The span (``talkpipe run <pipeline>``) carries the stage names and their
    items in and out and errors when the run ends, an event per stage error,
    and status error when a stage failed the run.  Metrics, attributes
    ``talkpipe.pipeline`` and ``talkpipe.stage``: counters
    ``<prefix>.stage.items_in``, ``.items_out``, ``.errors``, ``.skipped``,
    ``.time`` (seconds), gauges ``<prefix>.stage.buffer_fill`` and
    ``.buffer_capacity`` (thread stages), and ``<prefix>.runs`` by outcome.
    *tracer_provider* / *meter_provider* default to the global ones.
    """
    return PipelineTelemetry(pipeline, tracer_provider=tracer_provider, meter_provider=meter_provider, prefix=prefix)


def _text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)


def extract_context(headers: Mapping[Any, Any] | None) -> otel_context.Context | None:
    """The trace context carried by *headers* (``traceparent``, ``tracestate``, ``baggage``), or None.

    *headers* is any mapping of message headers or fields, with str or bytes
    keys and values (a Redis entry's fields are bytes); keys are matched
    without regard to case.  The global propagator reads them (W3C Trace
    Context and Baggage unless the application set another).
    """
    if not headers:
        return None
    carrier = {_text(k).lower(): _text(v) for k, v in headers.items()}
    ctx = propagate.extract(carrier)
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def context_of(item: Any) -> otel_context.Context | None:
    """The trace context an item carries, or None.

    Looked for in the item's ``headers`` (a broker message that exposes
    them), then in a broker message's ``data`` when it is a mapping (a Redis
    entry read with ``key=None`` has all its fields there), then in the item
    itself when it is a mapping.
    """
    for carrier in (getattr(item, "headers", None), getattr(item, "data", None), item):
        if isinstance(carrier, Mapping):
            ctx = extract_context(carrier)
            if ctx is not None:
                return ctx
    return None


def inject_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """*headers* (a new dict by default) with the current trace context added (``traceparent``, ...).

    Put them in the fields or headers of an outgoing message so that its
    consumer's :func:`context_of` links back to this trace.
    """
    carrier = {} if headers is None else headers
    propagate.inject(carrier)
    return carrier


@contextmanager
def item_span(
    item: Any,
    name: str,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[trace.Span]:
    """A span for handling *item*: a child of the trace context the item carries, linked to the current span.

    Without a carried context it is a child of the current span (the run's,
    inside :meth:`PipelineTelemetry.stream`).  The span is current inside the
    block: do not ``yield`` from a stage inside it (hand the item on after
    the block), since the consumer would run inside the span.
    """
    tracer = trace.get_tracer(_SCOPE, tracer_provider=tracer_provider)
    carried = context_of(item)
    current = trace.get_current_span().get_span_context()
    links = [trace.Link(current)] if carried is not None and current.is_valid else None
    with tracer.start_as_current_span(
        name, context=carried, kind=trace.SpanKind.CONSUMER, links=links, attributes=dict(attributes or {})
    ) as span:
        yield span
