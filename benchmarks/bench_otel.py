"""What the OpenTelemetry adapter costs on the README pipeline.

The subject is the README form (``@source`` + five ``@segment``) run through
``opentelemetry(...).stream(..., stats_every=0.05)`` with the API's no-op
tracer and meter providers (what an application that installed the extra but
set up no SDK gets); the bar is against the same run with the same snapshot
cadence and a hook that does nothing, so the figure is the adapter's own cost
(the statistics it needs have their own row in the core benchmark).  Rows for
information: the SDK's providers with nothing exporting (spans sampled and
dropped, metrics aggregated and never read), and the README form with
statistics off.  Interleaved in one process, timed in CPU time.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any

from ._harness import Result, compare, measure_async
from .bench_core import drain, readme_pipeline

__all__ = ["run"]

EVERY = 0.05  # a snapshot every 50 ms: 5 to 20 per run of 500,000 items, by the machine's speed


def _otel_run(n: int, sdk: bool) -> Callable[[], Coroutine[Any, Any, None]]:
    from opentelemetry import metrics, trace

    from talkpipe_async.otel import opentelemetry

    tracer_provider: Any
    meter_provider: Any
    if sdk:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import TracerProvider

        tracer_provider, meter_provider = TracerProvider(), MeterProvider()
    else:
        tracer_provider, meter_provider = trace.NoOpTracerProvider(), metrics.NoOpMeterProvider()
    telemetry = opentelemetry("bench", tracer_provider=tracer_provider, meter_provider=meter_provider)

    async def run() -> None:
        async with telemetry.stream(readme_pipeline(n), stats_every=EVERY) as items:
            async for _ in items:
                pass

    return run


def _nothing(snap: Any) -> None:
    """The baseline's hook: receives each snapshot, does nothing."""


def run(quick: bool) -> list[Result]:
    """The adapter's cost; 500,000 ints in full mode (100,000 in quick mode)."""
    if importlib.util.find_spec("opentelemetry") is None:
        print('   skipped: OpenTelemetry is not installed (pip install "talkpipe-async[otel]")')
        return []
    n = 100_000 if quick else 500_000
    baselines = [
        ("README form, same snapshots, a hook that does nothing",
         measure_async(drain(readme_pipeline(n), stats_every=EVERY, on_stats=_nothing))),
        ("README form, statistics off", measure_async(drain(readme_pipeline(n)))),
    ]
    if importlib.util.find_spec("opentelemetry.sdk") is not None:
        baselines.append(("OpenTelemetry SDK providers, nothing exporting", measure_async(_otel_run(n, sdk=True))))
    bar = 1.03
    return compare(
        "README form with the OpenTelemetry adapter, no-op providers (asyncio)",
        ("talkpipe_async otel stream()", measure_async(_otel_run(n, sdk=False))),
        baselines,
        repeat=3 if quick else 15,  # a 3% bar: many samples for a steady median
        cpu=True,
        targets={baselines[0][0]: (f"<= {bar:.2f}", lambda r: r <= bar)},
    )


if __name__ == "__main__":
    import sys

    for r in run(quick="--quick" in sys.argv):
        print(f"{r.scenario}: {r.subject_s:.3f}s vs {r.baseline}: {r.baseline_s:.3f}s")
        print(f"    ratio {r.ratio:.3f}, target {r.target}, met={r.met}")
