"""Error operators: on_error policies, retry with backoff, retry_source (asyncio, uvloop, trio)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from talkpipe_async import Flush, error_context, segment, source
from talkpipe_async._core._channel import Channel
from talkpipe_async.operators import (
    Backoff,
    DeadLetter,
    ErrorStats,
    on_error,
    retry,
    retry_call,
    retry_source,
    retrying,
)

pytestmark = pytest.mark.anyio

FAST = Backoff(initial=0.0005, multiplier=2.0, maximum=0.002, max_attempts=4)


@source
async def from_list(xs: list[Any]) -> AsyncIterator[Any]:
    """Yield *xs*."""
    for x in xs:
        yield x


def inverse(x: int) -> float:
    return 1 / x


async def ainverse(x: int) -> float:
    await anyio.lowlevel.checkpoint()
    return 1 / x


@segment
async def inverses(items: AsyncIterator[int]) -> AsyncIterator[float]:
    """1/x for each item (fails on 0)."""
    async for x in items:
        yield 1 / x


@settings(max_examples=25, deadline=None)
@given(xs=st.lists(st.integers(-3, 3), max_size=40))
async def test_skip_matches_reference_for_segment_and_function(xs: list[int]) -> None:
    expected = [1 / x for x in xs if x != 0]
    for inner in (inverses(), inverse, ainverse):
        stats = ErrorStats()
        out = await (from_list(xs) | on_error(inner, "skip", stats=stats)).collect()
        assert out == expected
        assert stats.skipped == stats.failed == xs.count(0)


async def test_replace() -> None:
    out = await (from_list([1, 0, 2]) | on_error(inverses(), "replace", value=float("nan"))).collect()
    assert out[0] == 1 and out[1] != out[1] and out[2] == 0.5


async def test_raise_is_the_default_and_names_item() -> None:
    with pytest.raises(ZeroDivisionError) as info:
        await (from_list([1, 0, 2]) | on_error(inverse)).collect()
    ctx = error_context(info.value)
    assert ctx is not None and ctx.item == "0" and ctx.segment == "inverse"


@pytest.mark.parametrize("kind", ["sync", "async", "channel", "stream"])
async def test_dead_letter_sinks(kind: str) -> None:
    letters: list[DeadLetter] = []
    send, receive = anyio.create_memory_object_stream[DeadLetter](10)
    channel = Channel(10)

    async def async_sink(letter: DeadLetter) -> None:
        letters.append(letter)

    sink: Any = {"sync": letters.append, "async": async_sink, "channel": channel, "stream": send}[kind]
    out = await (from_list([1, 0, 2, 0]) | on_error(inverses(), "dead_letter", sink=sink)).collect()
    assert out == [1.0, 0.5]
    if kind == "channel":
        letters = await channel.get_batch(10)
    elif kind == "stream":
        letters = [receive.receive_nowait(), receive.receive_nowait()]
    assert [letter.item for letter in letters] == [0, 0]
    assert all(isinstance(letter.error, ZeroDivisionError) for letter in letters)
    assert letters[0].stage == "inverses"
    send.close()
    receive.close()


async def test_upstream_errors_are_not_handled() -> None:
    @source
    async def broken() -> AsyncIterator[int]:
        yield 1
        raise OSError("upstream")

    with pytest.raises(OSError):
        await (broken() | on_error(inverses(), "skip")).collect()


async def test_only_listed_errors_are_handled() -> None:
    def bad(x: int) -> int:
        raise KeyError(x)

    with pytest.raises(KeyError):
        await (from_list([1]) | on_error(bad, "skip", errors=(ValueError,))).collect()


async def test_segment_failing_at_start_is_not_restarted() -> None:
    @segment
    async def broken_at_start(items: AsyncIterator[int]) -> AsyncIterator[int]:
        raise RuntimeError("setup failed")
        yield 0  # pragma: no cover

    with pytest.raises(RuntimeError):
        await (from_list([1, 2]) | on_error(broken_at_start(), "skip")).collect()


async def test_metadata_follows_the_inner_segment() -> None:
    out = await (from_list([1, Flush(), 0, 2]) | on_error(inverses(), "skip")).collect(metadata=True)
    assert out == [1.0, Flush(), 0.5]


async def test_on_error_argument_checks() -> None:
    with pytest.raises(ValueError):
        on_error(inverse, "dead_letter")
    with pytest.raises(ValueError):
        on_error(inverse, "ignore")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        on_error(from_list([1]))


# --------------------------------------------------------------------- retry


def test_backoff_schedule() -> None:
    plain = Backoff(initial=0.1, multiplier=2, maximum=1.0, jitter="none", max_attempts=6)
    assert list(plain.delays()) == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0])
    full = Backoff(initial=0.1, multiplier=2, maximum=1.0, jitter="full", max_attempts=6)
    for wait, cap in zip(full.delays(random.Random(1)), [0.1, 0.2, 0.4, 0.8, 1.0], strict=True):
        assert 0 <= wait <= cap
    equal = Backoff(initial=0.1, multiplier=2, maximum=1.0, jitter="equal", max_attempts=6)
    for wait, cap in zip(equal.delays(random.Random(2)), [0.1, 0.2, 0.4, 0.8, 1.0], strict=True):
        assert cap / 2 <= wait <= cap
    assert list(full.delays(random.Random(3))) == list(full.delays(random.Random(3)))
    with pytest.raises(ValueError):
        Backoff(max_attempts=0)
    exact = Backoff(initial=0.3, exact_first=True)
    assert exact.delay(0) == 0.3 and exact.delay(0, base=1.5) == 1.5
    assert Backoff(jitter=False).mode == "none" and Backoff(jitter=True).mode == "full"


async def test_retry_call_succeeds_after_failures() -> None:
    calls = 0
    seen: list[tuple[int, float]] = []

    async def flaky(x: int) -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("try again")
        return x + 1

    result = await retry_call(flaky, 1, backoff=FAST, on_retry=lambda n, exc, d: seen.append((n, d)))
    assert result == 2 and calls == 3 and [n for n, _ in seen] == [1, 2]


async def test_retry_gives_up_with_type_and_note() -> None:
    calls = 0

    async def never(x: int) -> int:
        nonlocal calls
        calls += 1
        raise TimeoutError("down")

    with pytest.raises(TimeoutError) as info:
        await (from_list([5]) | retry(never, FAST)).collect()
    assert calls == FAST.max_attempts
    assert any("gave up after 4 attempts" in n for n in info.value.__notes__)


async def test_retry_does_not_retry_other_errors() -> None:
    calls = 0

    async def wrong(x: int) -> int:
        nonlocal calls
        calls += 1
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        await retrying(wrong, FAST, retry_on=ConnectionError)(1)
    assert calls == 1


async def test_retry_segment_maps_in_order() -> None:
    failures = {2: 2, 4: 1}

    async def flaky(x: int) -> int:
        if failures.get(x, 0):
            failures[x] -= 1
            raise ConnectionError(x)
        return x * 10

    assert await (from_list([1, 2, 3, 4]) | retry(flaky, FAST)).collect() == [10, 20, 30, 40]


async def test_retry_source_reopens_and_resumes() -> None:
    opened = 0
    position = 0

    @source
    async def flaky_feed() -> AsyncIterator[int]:
        nonlocal opened, position
        opened += 1
        while position < 10:
            if opened < 3 and position in (3, 6):
                position += 1 if opened == 2 else 0
                raise ConnectionResetError("dropped")
            yield position
            position += 1

    out = await retry_source(flaky_feed(), FAST).collect()
    assert opened == 3
    assert out[:3] == [0, 1, 2] and out[-1] == 9


async def test_retry_source_gives_up_after_consecutive_failures() -> None:
    opened = 0

    def factory() -> Any:
        @source
        async def never() -> AsyncIterator[int]:
            nonlocal opened
            opened += 1
            raise ConnectionRefusedError("no server")
            yield 0  # pragma: no cover

        return never()

    retries: list[int] = []
    with pytest.raises(ConnectionRefusedError):
        await retry_source(factory, FAST, on_retry=lambda n, e, d: retries.append(n)).collect()
    assert opened == FAST.max_attempts and retries == [1, 2, 3]


async def test_retry_source_counts_reset_after_items() -> None:
    opened = 0

    @source
    async def one_then_fail() -> AsyncIterator[int]:
        nonlocal opened
        opened += 1
        if opened <= 6:
            yield opened
            raise ConnectionResetError("again")

    backoff = Backoff(initial=0.0001, maximum=0.0001, max_attempts=2, healthy_after=0)  # any item: healthy
    out = await retry_source(one_then_fail(), backoff).collect()
    assert out == [1, 2, 3, 4, 5, 6]  # six failures in all, but never two in a row without an item
