"""The testing kit on real clocks: run_stage / assert_emits and their diffs, marbles from a real-clock test
(run on a fresh virtual loop in a thread), scripted feeds through the project's parsers, the pytest plugin,
under anyio's plugin (asyncio, uvloop, trio) and under pytest-asyncio (strict here, auto in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from talkpipe_async import Flush, source
from talkpipe_async.operators import batch, debounce, map, take, throttle
from talkpipe_async.sources._framing import LineFramer
from talkpipe_async.sources.sse import SSEParser
from talkpipe_async.testing import (
    Cut,
    MarbleEvent,
    ScriptedFeed,
    StageTimedOut,
    Stall,
    VirtualClockLoop,
    assert_emits,
    assert_marbles,
    clock_is_virtual,
    ndjson,
    parse_marbles,
    run_stage,
    split_every,
    sse,
)


@source
async def forever() -> AsyncIterator[int]:
    yield 1
    await anyio.sleep_forever()


@pytest.mark.anyio
async def test_run_stage_returns_output_and_metadata_when_asked() -> None:
    assert await run_stage(map(lambda x: x * 2), [1, 2, 3], timeout=5) == [2, 4, 6]
    assert await run_stage(batch(2), [1, Flush(), 2, 3], metadata=True) == [[1], Flush(), [2, 3]]
    assert await run_stage(batch(2), [1, Flush(), 2, 3]) == [[1], [2, 3]]
    assert await run_stage(forever() | take(1)) == [1]


@pytest.mark.anyio
async def test_run_stage_timeout_keeps_what_came() -> None:
    with pytest.raises(StageTimedOut, match=r"did not finish within 0.2 s; it emitted 1 items so far: \[1\]") as info:
        await run_stage(forever(), timeout=0.2)
    assert info.value.items == [1]


@pytest.mark.anyio
async def test_assert_emits_names_the_first_difference() -> None:
    assert await assert_emits(map(lambda x: x + 1), [1, 2, 3], [2, 3, 4]) == [2, 3, 4]
    with pytest.raises(AssertionError) as info:
        await assert_emits(map(lambda x: x + 1), [1, 2, 3, 4], [2, 3, 5, 5])
    text = str(info.value)
    assert "differs from the expected at index 2 (expected 4 items, got 4)" in text
    assert "expected[2] = 5" in text and "got[2]      = 4" in text
    assert "diff (- expected, + got):" in text and "  + 4\n" in text and text.endswith("  - 5")
    with pytest.raises(AssertionError, match=r"at index 2 \(expected 2 items, got 3\)[\s\S]*expected ends at 2"):
        await assert_emits(map(lambda x: x), [1, 2, 3], [1, 2])


@pytest.mark.asyncio
async def test_assert_emits_under_pytest_asyncio() -> None:
    await assert_emits(batch(2), [1, 2, 3], [[1, 2], [3]])
    with pytest.raises(AssertionError, match="index 0"):
        await assert_emits(batch(2), [1, 2, 3], [[1], [2, 3]])


def test_marble_parsing() -> None:
    assert parse_marbles("-a-(bc)|", {"a": 1}) == [
        MarbleEvent(1, "item", 1),
        MarbleEvent(3, "item", "b"),
        MarbleEvent(3, "item", "c"),
        MarbleEvent(4, "end"),
    ]
    assert parse_marbles("F #")[0] == MarbleEvent(0, "item", Flush())
    assert parse_marbles("F #")[1].kind == "error"
    for bad in ("(a", "a)", "((a))"):
        with pytest.raises(ValueError, match="marbles"):
            parse_marbles(bad)


@pytest.mark.anyio
async def test_marbles_from_a_real_clock_run_in_virtual_time() -> None:
    assert not clock_is_virtual()
    start = anyio.current_time()
    await assert_marbles(debounce(600.0), "-a-b|", "----(b|)")  # at the end the waiting item goes at once
    await assert_marbles(throttle(1 / 60), "(ab)|", "a" + "-" * 5999 + "(b|)", unit=0.01)  # one minute per item
    assert anyio.current_time() - start < 30  # a virtual minute passed on the other loop, not here


@pytest.mark.asyncio
async def test_marbles_under_pytest_asyncio_real_loop() -> None:
    await assert_marbles(batch(2, timeout=0.05), "-a-b-c------|", "---x------y-|", {"x": ["a", "b"], "y": ["c"]})


@pytest.mark.anyio
async def test_marble_failure_shows_both_diagrams() -> None:
    with pytest.raises(AssertionError) as info:
        await assert_marbles(map(str.upper), "-a-b---c|", "-A-B--C|")
    text = str(info.value)
    assert "marbles differ at event 2" in text
    assert "expected: -A-B--C|" in text and "got:      -A-B---C|" in text
    assert "got event 2:      'C' at frame 7 (t=0.07 s)" in text


@pytest.mark.anyio
async def test_marble_errors_match_by_type() -> None:
    await assert_marbles(map(lambda x: 1 // 0), "-a|", "-#")
    await assert_marbles(map(lambda x: x), "-a#", "-a#", errors=ConnectionError, values={"#": ConnectionError("x")})
    with pytest.raises(AssertionError, match="error ZeroDivisionError"):
        await assert_marbles(map(lambda x: 1 // 0), "-a|", "-#", errors=KeyError)


@pytest.mark.anyio
async def test_scripted_ndjson_feed_through_the_line_framer() -> None:
    data = ndjson([{"a": 1}, {"a": 2}, {"a": 3}])
    feed = ScriptedFeed([*split_every(data, 3), Stall(0.01), Cut()])
    framer = LineFramer()
    lines: list[bytes] = []
    with pytest.raises(ConnectionResetError, match="cut"):
        async for chunk in feed:
            lines.extend(framer.feed(chunk))
    assert lines == [b'{"a":1}', b'{"a":2}', b'{"a":3}']
    assert feed.sent == len(data) and feed.chunks == -(-len(data) // 3)


@pytest.mark.anyio
async def test_scripted_sse_feed_cut_mid_event_leaves_a_partial_event() -> None:
    whole = sse("one", id="1") + sse("two\nlines", event="note", id="2")
    cut_at = len(whole) - 4
    parser = SSEParser()
    events = []
    with pytest.raises(ConnectionAbortedError):
        async for chunk in ScriptedFeed([*split_every(whole[:cut_at], 1), Cut(ConnectionAbortedError("gone"))]):
            events.extend(parser.feed(chunk))
    assert [(e.data, e.id) for e in events] == [("one", "1")]
    assert parser.partial


def test_plugin_is_loaded_and_offers_fixtures_by_name(
    pytestconfig: pytest.Config, virtual_anyio_backend: Any, virtual_event_loop_policy: Any
) -> None:
    assert pytestconfig.pluginmanager.has_plugin("talkpipe_async")
    assert virtual_anyio_backend("asyncio") == ("asyncio", {"loop_factory": VirtualClockLoop})
    loop = virtual_event_loop_policy.new_event_loop()
    try:
        assert isinstance(loop, VirtualClockLoop) and loop.time() == 0.0
    finally:
        loop.close()


@pytest.mark.anyio
async def test_marble_failure_lists_values_without_a_symbol() -> None:
    with pytest.raises(AssertionError) as info:
        await assert_marbles(map(lambda s: {"key": s}), "-a|", "-A|", {"A": {"key": "b"}})
    text = str(info.value)
    assert "got:      -?|" in text and "? at frame 1: {'key': 'a'}" in text


def test_kit_under_pytest_asyncio_auto_mode(tmp_path: Path) -> None:
    test = tmp_path / "test_auto.py"
    test.write_text(
        textwrap.dedent(
            """
            import pytest
            from talkpipe_async.operators import batch, time_window
            from talkpipe_async.testing import assert_emits, assert_marbles

            async def test_plain_async_test_runs_in_auto_mode():
                await assert_emits(batch(2), [1, 2, 3], [[1, 2], [3]])
                await assert_marbles(time_window(0.04), "-a-b-c-d--|", "----x---y-|",
                                     {"x": ["a", "b"], "y": ["c", "d"]})

            @pytest.mark.asyncio(loop_factories=["virtual"])
            async def test_virtual_loop_from_the_loop_factories_hook():
                import anyio
                from talkpipe_async.testing import clock_is_virtual
                assert clock_is_virtual()
                await anyio.sleep(3600)
                assert anyio.current_time() == 3600.0
            """
        )
    )
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(
            """
            import asyncio
            from talkpipe_async.testing import VirtualClockLoop

            def pytest_asyncio_loop_factories(config, item):
                return {"real": asyncio.new_event_loop, "virtual": VirtualClockLoop}
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-o", "asyncio_mode=auto", str(test)]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=50, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout  # the plain test on both factories, the marked one on "virtual"


def _cells() -> Any:
    from hypothesis import strategies as st

    letter = st.sampled_from("abcxyz")
    group = st.lists(letter, min_size=2, max_size=3).map(lambda g: "(" + "".join(g) + ")")
    return st.lists(st.one_of(st.just("-"), letter, group), max_size=20)


def test_marble_drawing_round_trips() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from talkpipe_async.testing._marbles import render

    def shape(events: list[MarbleEvent]) -> list[tuple[int, str, Any]]:
        return [(e.frame, e.kind, e.value if e.kind == "item" else None) for e in events]

    @settings(max_examples=200, deadline=None)
    @given(cells=_cells(), end=st.sampled_from(["|", "#", ""]))
    def check(cells: list[str], end: str) -> None:
        diagram = "".join(cells) + end
        events = parse_marbles(diagram)
        drawn, notes = render(events, {})
        expected = diagram.rstrip("-") if not end else diagram
        assert drawn == expected and shape(parse_marbles(drawn)) == shape(events)
        assert notes == ([f"# at frame {events[-1].frame}: {events[-1].value!r}"] if end == "#" else [])

    check()
