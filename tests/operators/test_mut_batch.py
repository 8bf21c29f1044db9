"""Batch and window operators: names, validation texts, the smallest accepted sizes and the edges of each policy.

The behaviour tests run on virtual clocks (asyncio's VirtualClockLoop and trio's autojumping MockClock) through the
testing kit; one marble unit is 10 ms of virtual time.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from talkpipe_async import Flush, Metadata, source
from talkpipe_async.operators import batch, flush_n, flush_t, time_window, window
from talkpipe_async.testing import assert_emits, run_stage, virtual_backend
from tests.helpers.ops import pulled_while_the_consumer_holds_the_first_output
from tests.helpers.ops_a import timed

F = Flush()


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """The anyio tests of this module on each virtual clock."""
    return virtual_backend(request.param)


def test_default_and_given_stage_names() -> None:
    """Each operator is named after itself unless given a name (the name labels stats, errors and feed tasks)."""
    defaults = [batch(2), batch(2, timeout=1.0), window(2), flush_n(2), flush_t(1.0), time_window(1.0)]
    assert [s.name for s in defaults] == ["batch", "batch", "window", "flush_n", "flush_t", "time_window"]
    named = [
        batch(2, name="b"),
        window(2, name="w"),
        flush_n(2, name="n"),
        flush_t(1.0, name="t"),
        time_window(1.0, name="tw"),
    ]
    assert [s.name for s in named] == ["b", "w", "n", "t", "tw"]


def test_settings_are_kept_with_their_defaults() -> None:
    """The constructor keeps each setting; ``time_window`` holds at most 100 000 items and skips empty windows by
    default."""
    b = batch(5, timeout=0.5)
    assert (b.size, b.timeout) == (5, 0.5)
    w = window(4, 2)
    assert (w.size, w.step) == (4, 2)
    assert flush_n(3).n == 3 and flush_t(0.25).seconds == 0.25
    tw = time_window(2.0)
    assert (tw.seconds, tw.every, tw.max_items, tw.emit_empty) == (2.0, None, 100_000, False)
    tw = time_window(2.0, every=0.5, max_items=7, emit_empty=True)
    assert (tw.seconds, tw.every, tw.max_items, tw.emit_empty) == (2.0, 0.5, 7, True)
    # each handles metadata itself: a Flush empties what it holds
    stages = (batch(2), batch(2, timeout=1.0), window(2), flush_n(2), flush_t(1.0), time_window(1.0))
    assert [st.process_metadata for st in stages] == [True] * 6


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: batch(0), "batch: size must be at least 1, not 0"),
        (lambda: batch(3, timeout=0), "batch: timeout must be positive, not 0"),
        (lambda: batch(3, timeout=-0.5), "batch: timeout must be positive, not -0.5"),
        (lambda: window(0), "window: size and step must be at least 1, not 0 and None"),
        (lambda: window(0, 2), "window: size and step must be at least 1, not 0 and 2"),
        (lambda: window(2, 0), "window: size and step must be at least 1, not 2 and 0"),
        (lambda: flush_n(0), "flush_n: n must be at least 1, not 0"),
        (lambda: flush_t(-1), "flush_t: seconds must be positive, not -1"),
        (lambda: flush_t(0.0), "flush_t: seconds must be positive, not 0.0"),
        (lambda: time_window(0), "time_window: seconds must be positive, not 0"),
        (lambda: time_window(1.0, every=0), "time_window: every must be positive, not 0"),
        (lambda: time_window(1.0, max_items=0), "time_window: max_items must be at least 1"),
    ],
)
def test_validation_messages_name_the_operator_and_the_value(make: Any, message: str) -> None:
    """Each invalid setting raises ``ValueError`` naming the operator, the setting and the value given."""
    with pytest.raises(ValueError) as err:
        make()
    assert str(err.value) == message


@pytest.mark.anyio
async def test_the_smallest_sizes_are_accepted() -> None:
    """Size, step, n and max_items of 1 are valid: one item per batch, window, flush or tumbling window."""
    await assert_emits(batch(1), [1, 2], [[1], [2]])
    await assert_emits(batch(1, timeout=60.0), [1, 2], [[1], [2]])
    await assert_emits(window(1), [1, 2], [[1], [2]])
    await assert_emits(window(1, step=1), [1, 2], [[1], [2]])
    await assert_emits(window(2, step=1), [1, 2, 3], [[1, 2], [2, 3]])
    await assert_emits(flush_n(1), [1, 2], [1, F, 2, F], metadata=True)
    await assert_emits(time_window(60.0, max_items=1), [1, 2], [[1], [2]])


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.anyio
async def test_timed_operators_read_ahead_a_bounded_amount_in_a_named_task() -> None:
    """The upstream of a timed operator is read by a task named after the stage, and runs ahead by a fixed bound:
    ``batch``'s ``size + 1`` past the batch the consumer holds, ``flush_t``'s 256 (1 + 2 x 256 items pulled while
    the consumer holds the first item), ``time_window``'s chunks of at most 1024."""
    assert await pulled_while_the_consumer_holds_the_first_output(batch(3, timeout=60.0)) == (
        3 + 3 + 1,
        {"talkpipe_async feed of batch"},
    )
    assert await pulled_while_the_consumer_holds_the_first_output(batch(5, timeout=60.0, name="b")) == (
        5 + 5 + 1,
        {"talkpipe_async feed of b"},
    )
    assert await pulled_while_the_consumer_holds_the_first_output(flush_t(60.0, name="ft")) == (
        1 + 2 * 256,
        {"talkpipe_async feed of ft"},
    )
    assert await pulled_while_the_consumer_holds_the_first_output(time_window(60.0, max_items=3)) == (
        7,
        {"talkpipe_async feed of time_window"},
    )
    assert await pulled_while_the_consumer_holds_the_first_output(time_window(60.0, max_items=2000)) == (
        3 * 1024 + 1,
        {"talkpipe_async feed of time_window"},
    )


async def _timed_outputs(pipeline: Any, *, pause_after_first: float = 0.0, metadata: bool = False) -> list[Any]:
    """(virtual time since start, output) pairs; the consumer pauses after the first output when asked."""
    start = anyio.current_time()
    got: list[Any] = []
    async with pipeline.stream(metadata=metadata) as items:
        async for x in items:
            got.append((round(anyio.current_time() - start, 6), x))
            if len(got) == 1 and pause_after_first:
                await anyio.sleep(pause_after_first)  # a slow consumer, in virtual time
    return got


@pytest.mark.anyio
async def test_a_tumbling_window_that_fell_behind_skips_whole_windows_on_its_grid() -> None:
    """When the consumer holds the stage past a window's end, the windows that ended meanwhile are skipped (even
    with ``emit_empty``), including one ending exactly when the stage resumes; the grid stays at whole seconds."""
    schedule = [(0.5, "a"), (3.7, "b"), (4.2, "c")]
    stage = time_window(1.0, emit_empty=True)
    got = await _timed_outputs(timed(schedule) | stage, pause_after_first=1.0)  # resumes at 2.0 exactly
    assert got == [(1.0, ["a"]), (3.0, []), (4.0, ["b"]), (4.2, ["c"])]
    got = await _timed_outputs(timed(schedule) | time_window(1.0, emit_empty=True), pause_after_first=2.5)
    assert got == [(1.0, ["a"]), (4.0, ["b"]), (4.2, ["c"])]


@pytest.mark.anyio
async def test_flush_t_ticks_on_a_grid_from_the_start_of_the_stage() -> None:
    """``flush_t``'s ticks are counted from when the stage starts, not from whole multiples of the clock."""
    await anyio.sleep(0.3)  # the stage starts off the clock's whole seconds
    got = await _timed_outputs(timed([(2.5, "x")]) | flush_t(1.0), metadata=True)
    assert got == [(1.0, F), (2.0, F), (2.5, "x")]


@pytest.mark.anyio
async def test_a_tumbling_window_passes_metadata_on_ahead_of_held_items() -> None:
    """Metadata other than Flush goes on at once, ahead of the items held, and the items after it in the same
    read are kept; a Flush with nothing held emits no empty window."""
    tag = Metadata(tag=1)
    await assert_emits(time_window(60.0), [F, 1, tag, 2, 3], [F, tag, [1, 2, 3]], metadata=True)


@pytest.mark.anyio
async def test_flush_t_that_fell_behind_sends_one_late_flush_then_keeps_its_grid() -> None:
    """When the consumer holds ``flush_t`` past its ticks, the missed ticks give one Flush at once (also when it
    resumes exactly on a tick), then the ticks go on at whole seconds from the stage's start."""
    got = await _timed_outputs(timed([(0.5, "a"), (4.5, "b")]) | flush_t(1.0), pause_after_first=1.5, metadata=True)
    assert got == [(0.5, "a"), (2.0, F), (3.0, F), (4.0, F), (4.5, "b")]
    got = await _timed_outputs(timed([(0.5, "a"), (4.5, "b")]) | flush_t(1.0), pause_after_first=2.7, metadata=True)
    assert got == [(0.5, "a"), (3.2, F), (4.0, F), (4.5, "b")]


@pytest.mark.anyio
async def test_a_sliding_window_drops_an_item_exactly_its_length_old() -> None:
    """A sliding window of ``seconds`` holds the items of the half-open interval (t - seconds, t]: at 1.5 s a
    1-second window no longer holds the item of 0.5 s (and the item arriving at 1.5 s is read after the tick)."""
    schedule = [(0.5, "a"), (1.0, "b"), (1.5, "c")]
    got = await _timed_outputs(timed(schedule) | time_window(1.0, every=0.5))
    assert got == [(1.0, ["a"]), (1.5, ["b"])]


@pytest.mark.anyio
async def test_a_sliding_window_that_fell_behind_skips_the_missed_ticks() -> None:
    """When the consumer holds a sliding window past its ticks, the missed ticks are skipped (also one falling
    exactly when it resumes) and the ticks stay on the grid from the stage's start."""
    schedule = [(0.5, "a"), (1.0, "b"), (3.7, "c")]
    got = await _timed_outputs(timed(schedule) | time_window(1.0, every=1.0, emit_empty=True), pause_after_first=1.0)
    assert got == [(1.0, ["a"]), (3.0, [])]
    got = await _timed_outputs(timed(schedule) | time_window(1.0, every=1.0, emit_empty=True), pause_after_first=2.2)
    assert got == [(1.0, ["a"])]


@pytest.mark.anyio
async def test_a_sliding_window_passes_metadata_on_and_may_hold_exactly_max_items() -> None:
    """Metadata goes on at once and is never part of a window, the items read with it are kept, a Flush clears the
    window, and holding exactly ``max_items`` is allowed."""
    tag = Metadata(tag=1)
    schedule = [(0.1, tag), (0.1, 1), (0.2, 2), (0.7, F), (0.8, 3)]
    got = await _timed_outputs(timed(schedule) | time_window(1.0, every=0.5, max_items=2), metadata=True)
    assert got == [(0.1, tag), (0.5, [1, 2]), (0.7, F)]


@pytest.mark.anyio
async def test_a_sliding_window_over_max_items_names_the_stage_and_the_bound() -> None:
    """Holding more than ``max_items`` raises ``BufferError`` naming the stage, the bound and the window length."""
    with pytest.raises(BufferError) as err:
        await run_stage(time_window(60.0, every=30.0, max_items=5, name="recent"), range(10))
    assert str(err.value) == "recent: more than max_items=5 items in a 60.0 s window"


@pytest.mark.anyio
async def test_catching_up_keeps_the_grid_of_a_half_second_step() -> None:
    """Catching up after a slow consumer moves the tick by whole steps of the stage's own length (here 0.5 s, where
    a step and its inverse differ), so the ticks stay on the stage's grid."""
    stage = time_window(0.5, emit_empty=True)
    got = await _timed_outputs(timed([(0.2, "a"), (3.4, "b")]) | stage, pause_after_first=1.1)
    assert got == [(0.5, ["a"]), (2.0, []), (2.5, []), (3.0, []), (3.4, ["b"])]
    got = await _timed_outputs(timed([(0.2, "a"), (2.4, "b")]) | flush_t(0.5), pause_after_first=1.1, metadata=True)
    assert got == [(0.2, "a"), (1.3, F), (1.5, F), (2.0, F), (2.4, "b")]
    stage = time_window(0.5, every=0.5, emit_empty=True)
    got = await _timed_outputs(timed([(0.2, "a"), (2.4, "b")]) | stage, pause_after_first=1.15)
    assert got == [(0.5, ["a"]), (2.0, [])]


@pytest.mark.anyio
async def test_a_sliding_window_reads_ahead_1024_items_in_a_named_task() -> None:
    """While the consumer holds a sliding window's output, its upstream runs ahead by the feed's 1024 items (and
    one in the feeding task's hand), read by a task named after the stage."""
    gate = anyio.Event()
    pulled = 0

    @source
    async def gated() -> Any:
        nonlocal pulled
        for i in range(3):
            pulled += 1
            yield i
        await gate.wait()
        for i in range(5000):
            pulled += 1
            yield i

    async with (gated() | time_window(1.0, every=0.5, name="sw")).stream() as items:
        async for window_ in items:
            assert window_ == [0, 1, 2]
            gate.set()
            await anyio.wait_all_tasks_blocked()
            names = {t.name or "" for t in anyio.get_running_tasks() if "feed of" in (t.name or "")}
            assert (pulled, names) == (3 + 1024 + 1, {"talkpipe_async feed of sw"})
            break
