"""Observability hooks: the live progress display (rich, tqdm, plain line), Prometheus gauges, stage counters."""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import anyio
import pytest

from talkpipe_async import RunStats, segment, source
from talkpipe_async.observe import ProgressDisplay, combine, progress, prometheus
from tests.conftest import new_threads

pytestmark = pytest.mark.anyio


@source
async def numbers(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


@segment
async def evens(items: AsyncIterator[int]) -> AsyncIterator[int]:
    async for x in items:
        if x % 2 == 0:
            yield x


async def test_progress_line_only_on_terminal() -> None:
    quiet, forced = io.StringIO(), io.StringIO()
    hook = combine(progress(quiet), progress(forced, force=True, backend="plain"))
    async with (numbers(n=100) | evens()).stream(on_stats=hook) as items:
        assert len([x async for x in items]) == 50
    assert quiet.getvalue() == ""
    assert "50 items" in forced.getvalue() and forced.getvalue().endswith("\n")


async def test_prometheus_gauges() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    hook = prometheus(registry, pipeline="demo")
    async with (numbers(n=10) | evens()).stream(on_stats=hook) as items:
        assert len([x async for x in items]) == 5
    value = registry.get_sample_value("talkpipe_items_out", {"pipeline": "demo", "stage": "evens"})
    assert value == 5
    assert registry.get_sample_value("talkpipe_items_in", {"pipeline": "demo", "stage": "evens"}) == 10


# --- the live display: rich, tqdm, plain ---------------------------------------------------------------

DISPLAYS = ["rich", "tqdm", "plain"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@source
async def halted(n: int, gate: Any) -> AsyncIterator[int]:
    """Yields n items; halfway it waits for *gate* (an event set once the display has drawn a running run)."""
    for i in range(n):
        if i == n // 2:
            await gate.wait()
        yield i


@segment
def doubled(items: Iterable[int]) -> Iterator[int]:
    """A sync stage after async ones: it runs in a worker thread, with a buffer the display shows."""
    for x in items:
        yield 2 * x


@segment
async def fails_at(items: AsyncIterator[int], bad: int) -> AsyncIterator[int]:
    async for x in items:
        if x == bad:
            raise ValueError(f"cannot take {x}")
        yield x


def running_snapshots(k: int) -> tuple[Callable[[RunStats], None], anyio.Event]:
    """A hook that sets the event once it has seen *k* snapshots of a running run."""
    seen = anyio.Event()
    count = 0

    def hook(snap: RunStats) -> None:
        nonlocal count
        count += snap.running
        if count >= k:
            seen.set()

    return hook, seen


def final_table(raw: str) -> dict[str, list[str]]:
    """The last table rich drew, as {stage: [in, out, /s, errors, buffer...]}; its caption under ''."""
    text = ANSI.sub("", raw)
    lines = text[text.rindex(" stage ") :].splitlines()
    assert lines[0].split() == ["stage", "in", "out", "/s", "errors", "buffer"], lines
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:-1] if line.strip()}
    rows[""] = [lines[-1].strip()]
    return rows


def last_line(raw: str) -> str:
    return ANSI.sub("", raw).rstrip("\n").split("\r")[-1].strip()


@pytest.mark.parametrize("backend", DISPLAYS)
async def test_each_backend_draws_the_figures_and_closes_at_the_end(backend: str) -> None:
    screen = io.StringIO()
    ready = anyio.Event()
    ready.set()
    pipeline = halted(n=200, gate=ready) | evens() | doubled()
    assert len(await pipeline.collect()) == 100  # the worker thread of the pool exists before we count threads
    before = set(threading.enumerate())
    display = progress(screen, force=True, backend=backend)  # type: ignore[arg-type]  # a str from parametrize
    waiter, seen = running_snapshots(3)
    pipeline = halted(n=200, gate=seen) | evens() | doubled()
    async with pipeline.stream(stats_every=0.01, on_stats=combine(display, waiter)) as items:
        assert len([x async for x in items]) == 100
    assert not new_threads(before)  # no refresh or monitor thread left behind
    assert display.backend == backend
    raw = screen.getvalue()
    if backend == "rich":
        rows = final_table(raw)
        assert rows["halted"][:2] == ["0", "200"]
        assert rows["evens"][:2] == ["200", "100"] and rows["evens"][3] == "0"
        assert rows["doubled"][:2] == ["100", "100"] and rows["doubled"][4].endswith("/768")
        assert rows[""][0].endswith(" s, done")
        assert " s, running" in ANSI.sub("", raw)  # drawn while the run was going
        assert "\x1b[?25l" in raw and raw.endswith("\x1b[?25h")  # the cursor is hidden while drawing, then back
    else:
        final = last_line(raw)
        assert final.startswith("100 items, ") and ", 0 errors, buffer " in final and final.endswith("/768"), final
        assert re.search(r", [\d,]+/s, [\d.]+ s, ", final), final
        assert raw.count("\r") >= 2 and raw.endswith("\n")  # redrawn in place, then ended with a newline


@pytest.mark.parametrize("backend", DISPLAYS)
async def test_a_run_ending_with_an_error_closes_the_display(backend: str) -> None:
    screen = io.StringIO()
    before = set(threading.enumerate())
    display = progress(screen, force=True, backend=backend)  # type: ignore[arg-type]  # a str from parametrize
    waiter, seen = running_snapshots(2)
    with pytest.raises(ValueError, match="cannot take 150"):
        async with (halted(n=200, gate=seen) | fails_at(bad=150)).stream(
            stats_every=0.01, on_stats=combine(display, waiter)
        ) as items:
            async for _ in items:
                pass
    assert not new_threads(before)
    raw = screen.getvalue()
    if backend == "rich":
        rows = final_table(raw)
        assert rows["fails_at"][:4] == ["151", "150", rows["fails_at"][2], "1"], rows
        assert rows[""][0].endswith(" s, done") and raw.endswith("\x1b[?25h")
    else:
        assert last_line(raw).startswith("150 items, ") and ", 1 errors" in last_line(raw), raw
        assert raw.endswith("\n")


async def test_close_ends_a_display_whose_run_was_cancelled_from_outside() -> None:
    # A run cancelled by a scope around it may end without its final snapshot: close() (or `with`) still ends
    # the display and gives the terminal its cursor back.
    screen = io.StringIO()
    before = set(threading.enumerate())
    with progress(screen, force=True, backend="rich") as display:
        waiter, seen = running_snapshots(2)
        with anyio.CancelScope() as scope:
            async with halted(n=200, gate=seen).stream(stats_every=0.01, on_stats=combine(display, waiter)) as items:
                async for x in items:
                    if x == 150:
                        scope.cancel()
    assert scope.cancelled_caught
    assert not new_threads(before)
    raw = screen.getvalue()
    assert raw.endswith("\x1b[?25h")
    assert final_table(raw)[""][0].endswith((" s, stopped", " s, done"))
    display.close()  # again: nothing more
    assert screen.getvalue() == raw


@pytest.mark.parametrize("backend", ["auto", *DISPLAYS])
async def test_not_a_terminal_nothing_is_written(backend: str) -> None:
    screen = io.StringIO()
    display = progress(screen, backend=backend)  # type: ignore[arg-type]  # a str from parametrize
    assert display.backend is None
    async with (numbers(n=100) | evens()).stream(stats_every=0.01, on_stats=display) as items:
        assert len([x async for x in items]) == 50
    assert screen.getvalue() == ""


def test_auto_takes_rich_then_tqdm_then_the_plain_line(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("rich")
    pytest.importorskip("tqdm")

    def chosen() -> str | None:
        display = progress(io.StringIO(), force=True)
        assert isinstance(display, ProgressDisplay)
        return display.backend

    assert chosen() == "rich"
    # A package that is not installed: None in sys.modules makes its import fail, as for a missing package.
    monkeypatch.setitem(sys.modules, "rich", None)
    assert chosen() == "tqdm"
    monkeypatch.setitem(sys.modules, "tqdm", None)
    assert chosen() == "plain"


def test_a_backend_asked_for_and_not_installed_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)
    monkeypatch.setitem(sys.modules, "tqdm", None)
    with pytest.raises(ImportError, match=re.escape('pip install "talkpipe-async[progress]"')):
        progress(io.StringIO(), force=True, backend="rich")
    with pytest.raises(ImportError, match="pip install tqdm"):
        progress(io.StringIO(), backend="tqdm")  # even when nothing would be drawn: the mistake shows at once
    assert progress(io.StringIO(), force=True, backend="plain").backend == "plain"
    with pytest.raises(ValueError, match="backend must be"):
        progress(io.StringIO(), backend="curses")  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", DISPLAYS)
async def test_a_terminal_that_goes_away_turns_the_display_off_not_the_run(backend: str) -> None:
    reader, writer = os.pipe()
    os.close(reader)  # nobody reads any more: every write fails with BrokenPipeError, as on a hung-up terminal
    gone = os.fdopen(writer, "w")
    try:
        display = progress(gone, force=True, backend=backend)  # type: ignore[arg-type]  # a str from parametrize
        async with (numbers(n=100) | evens()).stream(stats_every=0.01, on_stats=display) as items:
            assert len([x async for x in items]) == 50
        assert display.backend is None
    finally:
        with contextlib.suppress(BrokenPipeError):
            gone.close()


# --- stage counters: one meaning for every stage's stats ----------------------------------------------

#: The per-stage statistics types the package has today: the walk below must find at least these.
KNOWN_STATS = {"FileStats", "NetStats", "WebSocketStats", "ConnectorStats", "SinkStats", "ErrorStats", "ForkStats"}


def stats_types() -> dict[str, type]:
    """Every class named ``*Stats`` defined in the package, except the run's own figures (RunStats, StageStats)."""
    import importlib
    import pkgutil

    import talkpipe_async
    from talkpipe_async._core._stats import StageStats

    found: dict[str, type] = {}
    for info in pkgutil.walk_packages(talkpipe_async.__path__, "talkpipe_async."):
        if info.name.endswith("__main__"):
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional client this Python does not have
            continue
        for name, obj in vars(module).items():
            if (isinstance(obj, type) and name.endswith("Stats") and obj.__module__.startswith("talkpipe_async")
                    and obj not in (RunStats, StageStats)):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def test_every_stage_stats_type_follows_the_stage_counters_protocol() -> None:
    import dataclasses
    import json

    from talkpipe_async._core._counters import Counters
    from talkpipe_async.observe import StageCounters

    types = stats_types()
    assert KNOWN_STATS <= {cls.__name__ for cls in types.values()}
    for where, cls in types.items():
        assert dataclasses.is_dataclass(cls) and issubclass(cls, Counters), f"{where} is not a Counters dataclass"
        counters = cls()
        assert isinstance(counters, StageCounters)
        as_dict = counters.as_dict()
        assert type(as_dict) is dict, where
        assert {f.name for f in dataclasses.fields(cls)} <= set(as_dict), f"{where}.as_dict() leaves out a field"
        json.dumps(as_dict)  # plain values only
        for name, value in as_dict.items():
            assert value is None or type(value) in (int, float, str, list), f"{where}.{name} is {type(value)}"
            if isinstance(value, list):
                assert value is not getattr(counters, name), f"{where}.as_dict() hands out its own list"


async def test_fork_and_on_error_counters_accumulate_over_runs() -> None:
    from talkpipe_async.operators import ErrorStats, ForkStats, fork, on_error

    @segment
    async def odd_fails(items: AsyncIterator[int]) -> AsyncIterator[int]:
        async for x in items:
            if x % 2:
                raise ValueError(x)
            yield x

    guarded = on_error(odd_fails(), "skip")
    branches = fork(evens(), evens())
    assert isinstance(guarded.stats, ErrorStats) and isinstance(branches.stats, ForkStats)
    for _ in range(2):
        async with (numbers(n=10) | guarded | branches).stream() as items:
            assert len([x async for x in items]) == 10  # 5 even items, through two branches
    assert guarded.stats.as_dict() == {"failed": 10, "skipped": 10, "replaced": 0, "dead_lettered": 0}
    assert guarded.last_stats is guarded.stats
    assert branches.stats.as_dict() == {"delivered": [10, 10], "dropped": [0, 0]}
    assert branches.last_stats is branches.stats


def test_network_stages_keep_their_own_counters_when_given_none() -> None:
    from talkpipe_async.sinks import to_tcp
    from talkpipe_async.sources import http_lines, tcp_lines, websocket_messages

    for stage in (tcp_lines("127.0.0.1", 9), http_lines("http://127.0.0.1:9/"), websocket_messages("ws://127.0.0.1:9/")):
        assert stage.stats is not None and stage.stats.as_dict()["connections"] == 0
    assert to_tcp("127.0.0.1", 9).stats is not None
