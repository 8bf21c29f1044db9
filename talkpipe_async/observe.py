"""Hooks for ``stream(on_stats=...)``: a terminal progress line and Prometheus metrics.

::

    run = pipeline.stream(stats_every=1.0, on_stats=progress())
    run = pipeline.stream(stats_every=5.0, on_stats=prometheus(pipeline="ingest"))
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO

from ._core._stats import RunStats

__all__ = ["combine", "progress", "prometheus"]


def progress(stream: TextIO | None = None, *, force: bool = False) -> Callable[[RunStats], None]:
    """A hook that redraws one status line on a terminal (nothing when not a terminal).

    The line shows the items out of the last stage, the rate since the start,
    and the fullest buffer.  ``force=True`` draws even when *stream* is not a
    terminal (for tests and logs that want it).
    """
    out = stream if stream is not None else sys.stderr
    active = force or out.isatty()

    def hook(snap: RunStats) -> None:
        if not active or not snap.stages:
            return
        last = snap.stages[-1]
        rate = last.items_out / snap.elapsed_s if snap.elapsed_s > 0 else 0.0
        fills = [(s.buffer_fill, s.buffer_capacity) for s in snap.stages if s.buffer_fill is not None]
        buffer = f", buffer {max(fills)[0]}/{max(fills)[1]}" if fills else ""
        errors = sum(s.errors for s in snap.stages)
        end = "\n" if not snap.running else ""
        out.write(
            f"\r{last.items_out:,} items, {rate:,.0f}/s, {snap.elapsed_s:.1f} s, {errors} errors{buffer}\x1b[K{end}"
        )
        out.flush()

    return hook


def prometheus(
    registry: Any = None, *, pipeline: str = "pipeline", prefix: str = "talkpipe"
) -> Callable[[RunStats], None]:
    """A hook that publishes each snapshot as Prometheus gauges (needs ``prometheus-client``).

    Gauges, labelled by ``pipeline`` and ``stage``: ``<prefix>_items_in``,
    ``<prefix>_items_out``, ``<prefix>_errors``, ``<prefix>_stage_seconds``,
    ``<prefix>_buffer_fill``.  Install with ``pip install "talkpipe-async[prometheus]"``.
    """
    try:
        import prometheus_client
    except ImportError as exc:  # pragma: no cover - depends on the extra
        raise ImportError('prometheus() needs prometheus-client: pip install "talkpipe-async[prometheus]"') from exc
    reg = registry if registry is not None else prometheus_client.REGISTRY
    labels = ("pipeline", "stage")

    def gauge(name: str, text: str) -> Any:
        return prometheus_client.Gauge(f"{prefix}_{name}", text, labels, registry=reg)

    gauges = {
        "items_in": gauge("items_in", "Items the stage received"),
        "items_out": gauge("items_out", "Items the stage handed on"),
        "errors": gauge("errors", "Errors raised in the stage"),
        "time_s": gauge("stage_seconds", "Time spent in the stage (stats='timed')"),
        "buffer_fill": gauge("buffer_fill", "Items held in the stage's buffer"),
    }

    def hook(snap: RunStats) -> None:
        for stage in snap.stages:
            for field, g in gauges.items():
                value = getattr(stage, field)
                if value is not None:
                    g.labels(pipeline, stage.name).set(value)

    return hook


def combine(*hooks: Callable[[RunStats], Any]) -> Callable[[RunStats], None]:
    """Call several hooks with each snapshot."""

    def hook(snap: RunStats) -> None:
        for h in hooks:
            h(snap)

    return hook
