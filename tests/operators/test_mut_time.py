"""Time operators: names, settings, validation texts, the fields of their errors and the edges of each timing rule.

The behaviour tests run on virtual clocks (asyncio's VirtualClockLoop and trio's autojumping MockClock) through the
testing kit; one marble unit is 10 ms of virtual time.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from talkpipe_async import Flush
from talkpipe_async.operators import StageTimeout, deadline, debounce, delay, interval, throttle, timeout, timer
from talkpipe_async.testing import assert_emits, assert_marbles, marble_source, virtual_backend
from tests.helpers.ops import pulled_while_the_consumer_holds_the_first_output


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """The anyio tests of this module on each virtual clock."""
    return virtual_backend(request.param)


def test_default_and_given_stage_names() -> None:
    """Each operator is named after itself unless given a name (the name labels stats, errors and feed tasks)."""
    defaults = [throttle(1), debounce(1), delay(1), timeout(1), deadline(1), interval(1), timer(1)]
    assert [s.name for s in defaults] == ["throttle", "debounce", "delay", "timeout", "deadline", "interval", "timer"]
    named = [
        throttle(1, name="a"),
        debounce(1, name="b"),
        delay(1, name="c"),
        timeout(1, name="d"),
        deadline(1, name="e"),
        interval(1, name="f"),
        timer(1, name="g"),
    ]
    assert [s.name for s in named] == ["a", "b", "c", "d", "e", "f", "g"]


def test_settings_are_kept_with_their_defaults() -> None:
    """Defaults: debounce holds at most 10 000 keys, delay 1 000 items; interval's first tick is one period in;
    timer ticks once unless given a period.  The operators that see metadata say so; interval emits none."""
    assert debounce(1).max_keys == 10_000 and debounce(1, max_keys=3).max_keys == 3
    assert delay(1).max_pending == 1000 and delay(1, max_pending=3).max_pending == 3
    i = interval(2.0)
    assert (i.seconds, i.first, i.count) == (2.0, 2.0, None)
    i = interval(2.0, first=0.5, count=4)
    assert (i.seconds, i.first, i.count) == (2.0, 0.5, 4)
    t = timer(5.0)
    assert (t.first, t.count) == (5.0, 1)
    t = timer(0.0, 2.0)
    assert (t.seconds, t.first, t.count) == (2.0, 0.0, None)
    assert (throttle(4, burst=3).rate, throttle(4, burst=3).burst) == (4, 3)
    assert [s.process_metadata for s in (debounce(1), delay(1), timeout(1), deadline(1))] == [True] * 4
    assert interval(1).emits_metadata is False


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: throttle(0), "throttle: rate must be positive, not 0"),
        (lambda: throttle(1, burst=0), "throttle: burst must be at least 1, not 0"),
        (lambda: debounce(0), "debounce: seconds must be positive, not 0"),
        (lambda: debounce(1, max_keys=0), "debounce: max_keys must be at least 1"),
        (lambda: delay(-1), "delay: seconds must not be negative, not -1"),
        (lambda: delay(1, max_pending=0), "delay: max_pending must be at least 1"),
        (lambda: timeout(0), "timeout: seconds must be positive, not 0"),
        (lambda: timeout(1, first=0), "timeout: first must be positive, not 0"),
        (lambda: deadline(0), "deadline: seconds must be positive, not 0"),
        (lambda: deadline(1, on_expire="never"), "deadline: on_expire must be 'raise' or 'stop', not 'never'"),
        (lambda: interval(0), "interval: seconds must be positive, not 0"),
        (lambda: interval(1, first=-1), "interval: first must not be negative"),
        (lambda: timer(-1), "timer: delay must not be negative"),
    ],
)
def test_validation_messages_name_the_operator_and_the_value(make: Any, message: str) -> None:
    """Each invalid setting raises ``ValueError`` naming the operator, the setting and (where useful) the value."""
    with pytest.raises(ValueError) as err:
        make()
    assert str(err.value) == message


@pytest.mark.anyio
async def test_the_smallest_settings_are_accepted() -> None:
    """One key, one pending item, no delay and a first tick at once are valid settings."""
    await assert_emits(debounce(1.0, key=lambda x: x, max_keys=1), [1, 2], [1, 2])
    await assert_emits(delay(0.0, max_pending=1), [1, 2], [1, 2])
    await assert_marbles(interval(0.02, first=0, count=2), None, "a-(b|)", {"a": 0, "b": 1})
    await assert_marbles(timer(0.0), None, "(a|)", {"a": 0})


async def _error_of(stage: Any, diagram: str, values: dict[str, Any] | None = None) -> StageTimeout:
    with pytest.raises(StageTimeout) as err:
        await (marble_source(diagram, values) | stage).collect()
    return err.value


@pytest.mark.anyio
async def test_timeout_error_names_the_stage_the_limit_and_the_item_waited_for() -> None:
    """The error carries the stage and the limit that passed, and says which item was late."""
    err = await _error_of(timeout(0.05, name="t"), "-a-b--------c|")
    assert str(err) == "t: no item within 0.05 s (waiting for the item after item #2)"
    assert (err.stage, err.seconds) == ("t", 0.05)
    err = await _error_of(timeout(0.02, first=0.05), "--------a|")
    assert str(err) == "timeout: no item within 0.05 s (waiting for the first item)"
    assert (err.stage, err.seconds) == ("timeout", 0.05)


@pytest.mark.anyio
async def test_deadline_error_counts_the_items_not_the_metadata() -> None:
    """The deadline's error says how many items got through before it; metadata passes but is not counted."""
    values = {"a": "a", "b": "b", "c": "c", "F": Flush()}
    err = await _error_of(deadline(0.05, name="dl"), "-aFbF--c|", values)
    assert str(err) == "dl: stream not finished within 0.05 s (2 items)"
    assert (err.stage, err.seconds) == ("dl", 0.05)
    err = await _error_of(deadline(0.05), "F------a|", values)
    assert str(err) == "deadline: stream not finished within 0.05 s (0 items)"


async def _tick_times(consumer_pauses: list[float], ticks: int) -> list[float]:
    """When ``interval(1.0)`` yields each tick while the consumer pauses as given after each one (then not at all)."""
    times: list[float] = []
    start = anyio.current_time()
    async with interval(1.0).stream() as items:
        async for _ in items:
            times.append(anyio.current_time() - start)
            if len(times) == ticks:
                break
            if len(times) <= len(consumer_pauses):
                await anyio.sleep(consumer_pauses[len(times) - 1])
    return times


@pytest.mark.anyio
async def test_interval_makes_up_one_tick_but_moves_the_grid_on_beyond_that() -> None:
    """A consumer exactly one tick late gets the missed tick at once and the grid keeps its phase; one more than a
    tick late moves the grid to now instead of bursting."""
    assert await _tick_times([2.0], 4) == [1.0, 3.0, 3.0, 4.0]
    assert await _tick_times([2.5, 2.5, 2.5], 4) == [1.0, 3.5, 6.0, 8.5]


@pytest.mark.anyio
async def test_throttle_after_a_pause_lets_only_the_burst_through() -> None:
    """After the throttle had to wait, a long pause of the upstream still earns no more than ``burst`` items."""
    await assert_marbles(
        throttle(10, burst=2),
        "(abc)-------------------------------------------(defg)|",
        "(ab)---------c---------------------------------(de)---------f---------(g|)",
    )


@pytest.mark.anyio
async def test_debounce_emits_the_oldest_key_early_only_beyond_max_keys() -> None:
    """``max_keys`` keys may wait at once; only a key beyond that sends the oldest waiting item out early."""
    first = {"a": "a", "b": "b", "c": "c"}
    await assert_marbles(debounce(0.05, key=lambda x: x, max_keys=2), "ab-------|", "-----ab--|", first)
    await assert_marbles(debounce(0.05, key=lambda x: x, max_keys=2), "abc-------|", "--a---bc--|", first)


@pytest.mark.anyio
async def test_debounce_and_delay_read_ahead_a_bounded_amount_in_a_named_task() -> None:
    """The upstream is read by a task named after the stage and runs ahead by a fixed bound: debounce's 256 (1 + 2 x
    256 items pulled while the consumer holds the first output), delay's ``max_pending`` (1 + 2 x max_pending)."""
    key_each = debounce(60.0, key=lambda x: x, max_keys=1)
    assert await pulled_while_the_consumer_holds_the_first_output(key_each) == (
        513,
        {"talkpipe_async feed of debounce"},
    )
    named = debounce(60.0, key=lambda x: x, max_keys=1, name="d")
    assert await pulled_while_the_consumer_holds_the_first_output(named) == (513, {"talkpipe_async feed of d"})
    assert await pulled_while_the_consumer_holds_the_first_output(delay(0.0)) == (
        2001,
        {"talkpipe_async feed of delay"},
    )
    small = delay(0.0, max_pending=10, name="dl")
    assert await pulled_while_the_consumer_holds_the_first_output(small) == (21, {"talkpipe_async feed of dl"})
