"""Hooks for ``stream(on_stats=...)``: a live progress display and Prometheus metrics.

::

    run = pipeline.stream(stats_every=1.0, on_stats=progress())
    run = pipeline.stream(stats_every=5.0, on_stats=prometheus(pipeline="ingest"))

OpenTelemetry (a span per run, metrics per stage) is in :mod:`talkpipe_async.otel`.
:class:`StageCounters` is what every stage's own ``stats`` object offers
(``as_dict()``, counters accumulated over the object's lifetime).
"""

from __future__ import annotations

import errno
import importlib
import sys
from collections.abc import Callable
from functools import cache
from types import ModuleType, TracebackType
from typing import Any, Literal, TextIO

from ._core._counters import StageCounters
from ._core._stats import RunStats

__all__ = ["ProgressDisplay", "StageCounters", "combine", "progress", "prometheus"]

Backend = Literal["auto", "rich", "tqdm", "plain", "notebook"]
"""The displays :func:`progress` can draw with (``"auto"``: the best one installed, or the notebook's)."""

_INSTALL = {"rich": 'pip install "talkpipe-async[progress]"', "tqdm": "pip install tqdm"}
# rich takes about 0.5 ms per stage to draw its table (5 ms for 10 stages on a slow core), in the event loop:
# at most this often while the run goes on, whatever stats_every is (rich's own Live refreshes 4 times a second).
_RICH_MIN_INTERVAL = 0.25


def _rate(items: int, snap: RunStats) -> float:
    return items / snap.elapsed_s if snap.elapsed_s > 0 else 0.0


def _fullest(snap: RunStats) -> str:
    fills = [(s.buffer_fill, s.buffer_capacity) for s in snap.stages if s.buffer_fill is not None]
    return f"buffer {max(fills)[0]}/{max(fills)[1]}" if fills else ""


def _summary(snap: RunStats) -> str:
    """``1,234 items, 617/s, 2.0 s, 0 errors, buffer 3/8``: the last stage's output and the run's figures."""
    last = snap.stages[-1]
    errors = sum(s.errors for s in snap.stages)
    parts = [f"{last.items_out:,} items", f"{_rate(last.items_out, snap):,.0f}/s", f"{snap.elapsed_s:.1f} s"]
    parts += [f"{errors} errors", _fullest(snap)]
    return ", ".join(p for p in parts if p)


class _Plain:
    """One status line redrawn in place with a carriage return."""

    def __init__(self, out: TextIO, force: bool) -> None:
        self._out = out
        self._open = False

    def show(self, snap: RunStats) -> None:
        self._out.write(f"\r{_summary(snap)}\x1b[K")
        self._out.flush()
        self._open = True

    def close(self, snap: RunStats | None) -> None:
        if self._open:
            self._out.write("\n")
            self._out.flush()
            self._open = False


@cache
def _rich_console_class() -> Any:
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            # rich's default points sys.stdout at /dev/null and exits the process: here the display only turns off.
            self.quiet = True
            raise BrokenPipeError(errno.EPIPE, "the progress display's stream is closed")

    return _Console


class _Rich:
    """A ``rich.live.Live`` table, one row per stage, refreshed by hand (no refresh thread)."""

    def __init__(self, out: TextIO, force: bool) -> None:
        from rich.live import Live

        console = _rich_console_class()(
            file=out,
            force_terminal=True if force else None,
            force_interactive=True if force else None,
            highlight=False,
        )
        # auto_refresh=False: no thread of rich's, the hook alone redraws.  No redirection of sys.stdout or
        # sys.stderr: a pipeline may be writing its items to stdout, and they must not go to the terminal.
        self._live = Live(console=console, auto_refresh=False, redirect_stdout=False, redirect_stderr=False)
        self._live.start()
        self._drawn_at = -_RICH_MIN_INTERVAL

    def _table(self, snap: RunStats, state: str) -> Any:
        from rich import box
        from rich.table import Table
        from rich.text import Text

        heads = ("in", "out", "/s", "errors", "buffer")
        rows = [
            (
                f"{s.items_in:,}",
                f"{s.items_out:,}",
                f"{_rate(s.items_out, snap):,.0f}",
                str(s.errors),
                "" if s.buffer_fill is None else f"{s.buffer_fill}/{s.buffer_capacity}",
            )
            for s in snap.stages
        ]
        table = Table(
            box=box.SIMPLE_HEAD, show_edge=False, caption=f"{snap.elapsed_s:.1f} s, {state}", caption_justify="left"
        )
        # On a narrow terminal the stage names are cut (with an ellipsis), not the figures, and nothing wraps:
        # the stage column gets what the figures leave (each column has a space either side, and one between).
        width = self._live.console.width
        widths = [max(len(head), *(len(r[i]) for r in rows)) for i, head in enumerate(heads)]
        table.add_column("stage", no_wrap=True, overflow="ellipsis", max_width=max(6, width - sum(widths) - 3 * 6))
        for head, w in zip(heads, widths, strict=True):
            table.add_column(head, justify="right", no_wrap=True, min_width=w)
        for s, row in zip(snap.stages, rows, strict=True):
            errors = Text(row[3], style="bold red" if s.errors else "")
            table.add_row(Text(s.name), *row[:3], errors, row[4])  # Text: a stage name is never read as markup
        return table

    def show(self, snap: RunStats) -> None:
        if not snap.running:
            self._live.update(self._table(snap, "done"))  # drawn by close() (Live.stop), not twice
        elif snap.elapsed_s - self._drawn_at >= _RICH_MIN_INTERVAL:
            self._live.update(self._table(snap, "running"), refresh=True)
            self._drawn_at = snap.elapsed_s

    def close(self, snap: RunStats | None) -> None:
        if snap is not None and snap.running:  # closed before the run said it ended (cancelled from outside)
            self._live.update(self._table(snap, "stopped"))
        self._live.stop()  # draws the last table for good, a newline, and shows the cursor again


@cache
def _tqdm_class() -> Any:
    tqdm = importlib.import_module("tqdm").tqdm
    # monitor_interval=0: no monitor thread (it adjusts miniters for update(); the hook redraws by hand).
    return type("_ProgressBar", (tqdm,), {"monitor_interval": 0})


class _Tqdm:
    """One tqdm bar counting the last stage's items out (total unknown); rate, errors and buffer in the postfix."""

    def __init__(self, out: TextIO, force: bool) -> None:
        self._cls = _tqdm_class()
        self._bar: Any = None
        self._out = out

    @staticmethod
    def _postfix(snap: RunStats) -> str:
        return _summary(snap).split(" items, ", 1)[1]  # tqdm puts the ", " before it

    def show(self, snap: RunStats) -> None:
        last = snap.stages[-1].items_out
        if self._bar is None:
            self._bar = self._cls(
                file=self._out, total=None, initial=last, unit="items", leave=True, disable=False,
                bar_format="{n:,} {unit}{postfix}", postfix=self._postfix(snap),
            )
            return
        self._bar.n = last
        self._bar.set_postfix_str(self._postfix(snap), refresh=False)
        if snap.running:  # the last figures are drawn by close()
            self._bar.refresh()

    def close(self, snap: RunStats | None) -> None:
        if self._bar is not None:
            self._bar.close()  # draws the last figures and a newline


def _in_notebook() -> bool:
    """True in a Jupyter kernel (IPython's ZMQ shell), which shows rich output in the cell."""
    get = getattr(sys.modules.get("IPython"), "get_ipython", None)
    shell = get() if get is not None else None
    return type(shell).__name__ == "ZMQInteractiveShell"


class _Table:
    """One snapshot as an HTML table for the notebook (plain text where HTML is not shown)."""

    def __init__(self, snap: RunStats, state: str) -> None:
        self.rows = [
            (s.name, f"{s.items_in:,}", f"{s.items_out:,}", f"{_rate(s.items_out, snap):,.0f}", str(s.errors),
             "" if s.buffer_fill is None else f"{s.buffer_fill}/{s.buffer_capacity}")
            for s in snap.stages
        ]
        self.caption = f"{snap.elapsed_s:.1f} s, {state}"

    def _repr_html_(self) -> str:
        from html import escape

        head = "".join(f"<th>{h}</th>" for h in ("stage", "in", "out", "/s", "errors", "buffer"))
        body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table><p>{escape(self.caption)}</p>"

    def __repr__(self) -> str:
        return "\n".join(["  ".join(row) for row in self.rows] + [self.caption])


class _Notebook:
    """A table in the cell's output, updated in place (IPython's display with a display id)."""

    def __init__(self, out: TextIO, force: bool) -> None:
        self._display: Any = importlib.import_module("IPython.display").display
        self._handle: Any = None
        self._drawn_at = -_RICH_MIN_INTERVAL

    def _draw(self, table: _Table) -> None:
        if self._handle is None:
            self._handle = self._display(table, display_id=True)
        else:
            self._handle.update(table)

    def show(self, snap: RunStats) -> None:
        if snap.running and snap.elapsed_s - self._drawn_at >= _RICH_MIN_INTERVAL:
            self._draw(_Table(snap, "running"))
            self._drawn_at = snap.elapsed_s
        elif not snap.running:
            self._draw(_Table(snap, "done"))

    def close(self, snap: RunStats | None) -> None:
        if snap is not None and snap.running:  # closed before the run said it ended
            self._draw(_Table(snap, "stopped"))


_VIEWS: dict[str, Callable[[TextIO, bool], _Plain | _Rich | _Tqdm | _Notebook]] = {
    "plain": _Plain, "rich": _Rich, "tqdm": _Tqdm, "notebook": _Notebook,
}


def _importable(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


class ProgressDisplay:
    """The ``on_stats`` hook that :func:`progress` returns: a live display of each snapshot.

    Call it with each :class:`RunStats`; it draws on the first one and closes the
    display on the one that says the run has ended (``running`` False), also
    when the run fails.  A run cancelled from outside (a ``move_on_after`` or
    a cancelled task group around the ``stream()`` block) may end without that
    snapshot: call :meth:`close`, or use the display as a context manager, so
    that the terminal is left clean.  A stream that can no longer be written (a
    closed terminal) turns the display off; the run goes on.
    """

    def __init__(self, out: TextIO, backend: str | None, force: bool) -> None:
        self._out = out
        self._force = force
        self._view: _Plain | _Rich | _Tqdm | _Notebook | None = None
        self._last: RunStats | None = None
        #: The backend in use: ``"rich"``, ``"tqdm"`` or ``"plain"``; ``None`` when nothing is drawn.
        self.backend = backend

    def __call__(self, snap: RunStats) -> None:
        """Draw *snap*; close the display when the run has ended."""
        if self.backend is None:
            return
        if snap.stages:
            self._last = snap
            try:
                if self._view is None:
                    self._view = _VIEWS[self.backend](self._out, self._force)
                self._view.show(snap)
            except Exception as exc:
                if not self._gone(exc):
                    self.close()
                    raise
                self.close()  # the terminal went away: stop drawing, never fail the run for it
                self.backend = None
                return
        if not snap.running:
            self.close()

    def close(self) -> None:
        """End the display (once; later snapshots of a running run start a new one)."""
        view, self._view = self._view, None
        last, self._last = self._last, None
        if view is not None:
            try:
                view.close(last)
            except Exception as exc:
                if not self._gone(exc):
                    raise
                self.backend = None

    def _gone(self, exc: Exception) -> bool:
        """Whether *exc* says the stream can no longer be written (a closed pty, a hung-up session, a closed file)."""
        return isinstance(exc, OSError) or (isinstance(exc, ValueError) and bool(getattr(self._out, "closed", False)))

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def progress(
    stream: TextIO | None = None, *, force: bool = False, backend: Backend = "auto"
) -> ProgressDisplay:
    """A hook that shows a live progress display on a terminal (nothing when not a terminal).

    *backend*: ``"rich"`` draws a table, one row per stage (items in and out,
    rate, errors, buffer fill); ``"tqdm"`` one bar counting the last stage's
    items, with rate, errors and the fullest buffer; ``"plain"`` one status line
    with the same figures.  ``"auto"`` (the default) takes rich if it is
    installed (``pip install "talkpipe-async[progress]"``), else tqdm, else the
    plain line.  In a Jupyter notebook, with no *stream* given, ``"auto"``
    takes ``"notebook"``: a table in the cell's output, updated in place.  A
    backend asked for by name that is not installed raises
    :class:`ImportError`.

    *stream* defaults to ``sys.stderr``.  ``force=True`` draws even when it is
    not a terminal (for tests and logs that want it).  The display ends with
    the run's last snapshot; see :class:`ProgressDisplay` for runs cancelled
    from outside.  It draws from the event loop and starts no thread.
    """
    if backend not in ("auto", "rich", "tqdm", "plain", "notebook"):
        raise ValueError(f"backend must be 'auto', 'rich', 'tqdm', 'plain' or 'notebook', not {backend!r}")
    if backend == "notebook" or (backend == "auto" and stream is None and _in_notebook()):
        if not _in_notebook():
            raise RuntimeError('progress(backend="notebook") draws in a Jupyter kernel only')
        return ProgressDisplay(sys.stderr, "notebook", force)
    out = stream if stream is not None else sys.stderr
    if backend in _INSTALL and _importable(backend) is None:
        raise ImportError(f'progress(backend="{backend}") needs {backend}: {_INSTALL[backend]}')
    if not (force or out.isatty()):
        return ProgressDisplay(out, None, force)
    chosen: str = backend
    if backend == "auto":
        chosen = next((name for name in ("rich", "tqdm") if _importable(name) is not None), "plain")
    return ProgressDisplay(out, chosen, force)


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
