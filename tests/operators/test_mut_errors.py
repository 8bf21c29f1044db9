"""Error operators (``talkpipe_async.operators.errors``): names, texts, counters, log lines and the retry callbacks.

``on_error``: the stage and wrapped names, every validation text, the counters of each policy, the skip log lines
(a WARNING for the first, DEBUG after), metadata taken exactly when the inner segment takes it, callable objects
with an ``async __call__``, and the item and error a dead letter or an error note names.  ``retry_call``,
``retrying``, ``retry`` and ``retry_source``: what ``on_retry`` is given, the debug and warning lines, the
``rng`` that makes the jitter reproducible, the give-up notes, the names, the source's metadata and its producer
task.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import anyio
import pytest

from talkpipe_async import Flush, error_context, segment, source
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
from talkpipe_async.sources import just

pytestmark = pytest.mark.anyio

#: Waits without jitter, so log lines and callbacks see known delays: 1 ms, 2 ms, 4 ms (three waits, four tries).
PLAIN = Backoff(initial=0.001, multiplier=2.0, maximum=0.004, jitter="none", max_attempts=4)
#: Full jitter: the waits depend on the random generator given.
JITTER = Backoff(initial=0.002, multiplier=2.0, maximum=0.004, jitter="full", max_attempts=4)


def inverse(x: int) -> float:
    return 1 / x


@segment
async def inverses(items: AsyncIterator[int]) -> AsyncIterator[float]:
    """1/x for each item (fails on 0)."""
    async for x in items:
        yield 1 / x


@segment
def sync_copy(items: Iterable[int]) -> Iterator[int]:
    """A sync generator segment."""
    yield from items


@segment(process_metadata=True)
async def drop_metadata(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """Takes metadata and drops it; 1/x for the rest."""
    async for x in items:
        if not isinstance(x, Flush):
            yield 1 / x


class AsyncCallable:
    """A callable object whose ``__call__`` is ``async def`` (no ``__name__``)."""

    async def __call__(self, x: int) -> float:
        await anyio.lowlevel.checkpoint()
        return 1 / x


class SyncCallable:
    """A callable object without ``__name__``."""

    def __call__(self, x: int) -> float:
        return 1 / x


# ------------------------------------------------------------------ on_error


def test_on_error_names() -> None:
    """The default name is ``on_error(<inner>, <policy>)``: the inner segment's label, a function's ``__name__``,
    or a callable object's type name; a given name wins."""
    assert on_error(inverses(), "skip").label == "on_error(inverses, skip)"
    assert on_error(inverse).label == "on_error(inverse, raise)"
    assert on_error(SyncCallable(), "replace").label == "on_error(SyncCallable, replace)"
    assert on_error(inverse, "skip", name="safe").label == "safe"
    assert on_error(inverse).policy == "raise"


def test_on_error_validation_texts() -> None:
    """Each refusal names what was wrong."""
    with pytest.raises(ValueError, match=r"^unknown error policy 'ignore'$"):
        on_error(inverse, "ignore")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match=r"^policy 'dead_letter' needs a sink$"):
        on_error(inverse, "dead_letter")
    with pytest.raises(TypeError, match=r"^on_error wraps async segments; 'sync_copy' is a sync generator$"):
        on_error(sync_copy())
    with pytest.raises(TypeError, match=r"^on_error wraps an async segment or a function, not 42$"):
        on_error(42)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"^on_error wraps an async segment or a function, not "):
        on_error(just(1))  # type: ignore[call-overload]
    for policy in ("raise", "skip", "replace"):
        assert on_error(inverse, policy).policy == policy
    assert on_error(inverse, "dead_letter", sink=print).policy == "dead_letter"


async def test_stats_are_the_stages_own_or_the_given_ones(anyio_backend: Any) -> None:
    """Without ``stats`` the stage has its own ``ErrorStats``; with it, that object; ``last_stats`` is None before
    a run and then the same object, counting over runs."""
    own = on_error(inverse, "skip")
    assert isinstance(own.stats, ErrorStats) and own.last_stats is None
    given = ErrorStats()
    stage = on_error(inverses(), "skip", stats=given)
    assert stage.stats is given and stage.last_stats is None
    with anyio.fail_after(10):
        assert await (just(1, 0, 2) | own).collect() == [1.0, 0.5]
        assert await (just(0, 0, 4) | stage).collect() == [0.25]
        assert await (just(0) | stage).collect() == []
    assert own.last_stats is own.stats
    assert (own.stats.failed, own.stats.skipped) == (1, 1)
    assert stage.last_stats is given and (given.failed, given.skipped) == (3, 3)


@pytest.mark.parametrize("inner", ["segment", "function"])
async def test_each_policy_counts_exactly(anyio_backend: Any, inner: str) -> None:
    """``failed`` counts every handled failure and each policy its own counter, one per failure."""
    letters: list[DeadLetter] = []
    make = (lambda: inverses()) if inner == "segment" else (lambda: inverse)
    for policy, field in (("skip", "skipped"), ("replace", "replaced"), ("dead_letter", "dead_lettered")):
        stats = ErrorStats()
        stage = on_error(make(), policy, value=-1, sink=letters.append, stats=stats)  # type: ignore[call-overload]
        with anyio.fail_after(10):
            await (just(0, 1, 0, 0, 2) | stage).collect()
        counts = {f: getattr(stats, f) for f in ("failed", "skipped", "replaced", "dead_lettered")}
        assert counts == {"failed": 3, "skipped": 0, "replaced": 0, "dead_lettered": 0, field: 3}, policy
    assert len(letters) == 3


async def test_skip_logs_a_warning_for_the_first_then_debug_lines(
    anyio_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The first skipped item is logged at WARNING, the later ones at DEBUG, each line naming the stage, the item,
    the error's type and text."""
    with caplog.at_level(logging.DEBUG, logger="talkpipe_async.operators.errors"):
        with anyio.fail_after(10):
            await (just(1, 0, 0, 2, 0) | on_error(inverses(), "skip", name="safe")).collect()
    records = [r for r in caplog.records if r.name == "talkpipe_async.operators.errors"]
    assert [r.levelno for r in records] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert records[0].getMessage() == (
        "safe skipped item 0 after ZeroDivisionError: division by zero (counted in ErrorStats.skipped)"
    )
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="talkpipe_async.operators.errors"):
        with anyio.fail_after(10):
            skipping: Any = on_error(inverse, "skip")
            await (just("x" * 100) | skipping).collect()
    (record,) = [r for r in caplog.records if r.name == "talkpipe_async.operators.errors"]
    assert record.levelno == logging.WARNING  # a new run of a new stage: its first skip again
    assert record.getMessage() == (  # a long item is shortened in the line
        "on_error(inverse, skip) skipped item 'xxxxxxxxxxxx...xxxxxxxxxxxxx' after TypeError: unsupported operand"
        " type(s) for /: 'int' and 'str' (counted in ErrorStats.skipped)"
    )


async def test_metadata_is_taken_exactly_when_the_inner_segment_takes_it(anyio_backend: Any) -> None:
    """A segment that takes metadata sees it (here it drops it); a function or a segment that does not is never
    given metadata, which then passes by in order."""
    f = Flush()
    data: list[Any] = [1, f, 0, 2]
    with anyio.fail_after(10):
        out = await (just(*data) | on_error(drop_metadata(), "skip")).collect(metadata=True)
        assert out == [1.0, 0.5]
        out = await (just(*data) | on_error(inverse, "skip")).collect(metadata=True)
        assert out == [1.0, f, 0.5]
        out = await (just(*data) | on_error(inverses(), "skip")).collect(metadata=True)
        assert out == [1.0, f, 0.5]


async def test_callable_objects_sync_and_async(anyio_backend: Any) -> None:
    """A callable object with an ``async def __call__`` is awaited; a sync one is called."""
    with anyio.fail_after(10):
        assert await (just(1, 0, 4) | on_error(AsyncCallable(), "replace", value=None)).collect() == [1.0, None, 0.25]
        assert await (just(1, 0, 4) | on_error(SyncCallable(), "skip")).collect() == [1.0, 0.25]


async def test_function_failures_name_the_item_in_dead_letters_and_notes(anyio_backend: Any) -> None:
    """For a function, the dead letter holds the failing item, its exception and the function's name; under
    ``raise`` the error names the function and the item (for a segment: the item it read last)."""
    letters: list[DeadLetter] = []
    with anyio.fail_after(10):
        out = await (just(1, 0, 2) | on_error(inverse, "dead_letter", sink=letters.append)).collect()
    assert out == [1.0, 0.5]
    (letter,) = letters
    assert letter.item == 0 and isinstance(letter.error, ZeroDivisionError) and letter.stage == "inverse"
    with pytest.raises(ZeroDivisionError) as info:
        with anyio.fail_after(10):
            await (just(3, 0, 2) | on_error(inverses())).collect()
    ctx = error_context(info.value)
    assert ctx is not None and (ctx.segment, ctx.item) == ("inverses", "0")


async def test_a_restarted_segment_goes_on_with_the_remaining_input(anyio_backend: Any) -> None:
    """After a handled failure the segment starts again on the items after the failing one, as often as needed."""
    with anyio.fail_after(10):
        out = await (just(0, 0, 1, 0, 2, 0) | on_error(inverses(), "replace", value="r")).collect()
    assert out == ["r", "r", 1.0, "r", 0.5, "r"]


# --------------------------------------------------------------------- retry


async def test_retry_call_tells_on_retry_and_the_log_each_failure(
    anyio_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """``on_retry`` gets the failure count, the exception and the wait before each wait; a DEBUG line says the
    same (the function's name, or the callable itself when it has none)."""
    errors = [ConnectionError("a"), ConnectionError("b")]
    seen: list[tuple[int, BaseException, float]] = []

    async def flaky(x: int) -> int:
        if errors:
            raise errors[0]
        return x

    def on_retry(n: int, exc: BaseException, wait: float) -> None:
        seen.append((n, exc, wait))
        errors.pop(0)

    with caplog.at_level(logging.DEBUG, logger="talkpipe_async.operators.errors"):
        with anyio.fail_after(10):
            assert await retry_call(flaky, 7, backoff=PLAIN, on_retry=on_retry) == 7
    first, second = ConnectionError("a"), ConnectionError("b")
    assert [(n, type(e), str(e), w) for n, e, w in seen] == [
        (1, ConnectionError, "a", 0.001),
        (2, ConnectionError, "b", 0.002),
    ]
    lines = [r.getMessage() for r in caplog.records if r.name == "talkpipe_async.operators.errors"]
    assert lines == [
        f"retry 1 of flaky after {first!r}; waiting 0.001s",
        f"retry 2 of flaky after {second!r}; waiting 0.002s",
    ]
    caplog.clear()
    tries = [ConnectionError("c")]

    async def once(x: int) -> int:
        if tries:
            raise tries.pop()
        return x

    nameless = functools.partial(once)
    with caplog.at_level(logging.DEBUG, logger="talkpipe_async.operators.errors"):
        with anyio.fail_after(10):
            assert await retry_call(nameless, 1, backoff=PLAIN) == 1
    (line,) = [r.getMessage() for r in caplog.records if r.name == "talkpipe_async.operators.errors"]
    assert line.startswith("retry 1 of functools.partial(")


class CountingRandom(random.Random):
    """A seeded generator that counts the draws made from it."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.draws = 0

    def uniform(self, a: float, b: float) -> float:
        self.draws += 1
        return super().uniform(a, b)


def failing(times: int) -> Any:
    """An async function of one item that fails with ConnectionError *times* times, then returns the item."""
    left = [times]

    async def fn(x: int) -> int:
        if left[0]:
            left[0] -= 1
            raise ConnectionError("again")
        return x

    return fn


async def test_rng_draws_the_jittered_waits_of_every_retrying_form(anyio_backend: Any) -> None:
    """The given ``rng`` draws the jitter of ``retry_call``, ``retrying``, ``retry`` and ``retry_source``: one draw
    per wait, and the waits are those of ``backoff.delays(rng)``."""
    expected = list(JITTER.delays(random.Random(11)))
    waits: list[float] = []
    rng = CountingRandom(11)
    with anyio.fail_after(10):
        await retry_call(failing(3), 1, backoff=JITTER, rng=rng, on_retry=lambda n, e, w: waits.append(w))
    assert waits == expected and rng.draws == 3
    rng = CountingRandom(1)
    with anyio.fail_after(10):
        assert await retrying(failing(2), JITTER, rng=rng)(5) == 5
    assert rng.draws == 2
    rng = CountingRandom(2)
    with anyio.fail_after(10):
        assert await (just(4) | retry(failing(1), JITTER, rng=rng)).collect() == [4]
    assert rng.draws == 1
    got: list[float] = []
    opened = [0]

    @source
    async def flaky() -> AsyncIterator[int]:
        opened[0] += 1
        if opened[0] <= 3:
            raise ConnectionError("down")
        yield 1

    rng = CountingRandom(11)
    with anyio.fail_after(10):
        out = await retry_source(flaky(), JITTER, rng=rng, on_retry=lambda n, e, w: got.append(w)).collect()
    assert out == [1] and got == expected and rng.draws == 3


def test_retrying_keeps_the_functions_name() -> None:
    """The wrapper is named after the function (``retrying`` for a callable without a name)."""

    async def fetch(x: int) -> int:
        return x

    assert retrying(fetch).__name__ == "fetch"
    assert retrying(AsyncCallable()).__name__ == "retrying"


async def test_retrying_passes_backoff_retry_on_and_rng(anyio_backend: Any) -> None:
    """``retrying`` retries with the given backoff (its number of tries) and only the listed errors."""
    calls = 0

    async def down(x: int) -> int:
        nonlocal calls
        calls += 1
        raise ConnectionError("down")

    with anyio.fail_after(10), pytest.raises(ConnectionError) as info:
        await retrying(down, PLAIN)(1)
    assert calls == PLAIN.max_attempts
    assert "talkpipe_async: gave up after 4 attempts" in getattr(info.value, "__notes__", [])
    calls = 0
    with anyio.fail_after(10), pytest.raises(ConnectionError):
        await retrying(down, PLAIN, retry_on=(KeyError, ConnectionError))(1)
    assert calls == PLAIN.max_attempts


def test_retry_names() -> None:
    """``retry(fn)`` is named ``retry(<fn's name>)``, or after the type of a callable without one; a given name wins."""

    async def fetch(x: int) -> int:
        return x

    assert retry(fetch).label == "retry(fetch)"
    assert retry(AsyncCallable()).label == "retry(AsyncCallable)"
    assert retry(fetch, name="r").label == "r"


async def test_retry_gives_up_naming_the_stage_and_the_item(anyio_backend: Any) -> None:
    """An item that still fails is raised with a context naming the retry stage and the item."""
    left = [1]

    async def fetch(x: int) -> int:
        if x == 2:
            raise TimeoutError("slow")
        if left[0]:
            left[0] -= 1
            raise ConnectionError("again")
        return x

    with anyio.fail_after(10), pytest.raises(TimeoutError) as info:
        await (just(1, 2, 3) | retry(fetch, PLAIN, retry_on=(TimeoutError, ConnectionError))).collect()
    ctx = error_context(info.value)
    assert ctx is not None and (ctx.segment, ctx.item) == ("retry(fetch)", "2")
    assert "talkpipe_async: gave up after 4 attempts" in getattr(info.value, "__notes__", [])


async def test_retry_retries_only_the_listed_errors(anyio_backend: Any) -> None:
    """``retry(..., retry_on=...)`` calls again only after the listed errors; another error is raised at once."""
    calls = 0

    async def wrong(x: int) -> int:
        nonlocal calls
        calls += 1
        raise ValueError("bad input")

    with anyio.fail_after(10), pytest.raises(ValueError) as info:
        await (just(1) | retry(wrong, PLAIN, retry_on=ConnectionError)).collect()
    assert calls == 1
    assert not any("gave up" in note for note in getattr(info.value, "__notes__", []))


def test_retry_source_settings() -> None:
    """``retry_source`` is named ``retry_source`` unless named, holds 64 items between its producer and the
    consumer by default, and refuses at once what is neither a source, a pipeline nor a function."""
    assert retry_source(just(1)).label == "retry_source"
    assert retry_source(just(1), name="feed").label == "feed"
    assert retry_source(just(1)).capacity == 64
    assert retry_source(just(1), capacity=2).capacity == 2
    with pytest.raises(TypeError, match=r"^expected a source or a pipeline that starts with a source, got 42$"):
        retry_source(42)  # type: ignore[arg-type]


async def test_retry_source_passes_metadata_and_runs_in_a_named_task(anyio_backend: Any) -> None:
    """The source's metadata reaches a consumer that takes it, and the source runs in a task named after the stage."""
    f = Flush()
    names: list[str] = []

    @source
    async def feed() -> AsyncIterator[Any]:
        names.append(anyio.get_current_task().name or "")
        yield f
        yield 1

    with anyio.fail_after(10):
        assert await retry_source(feed(), PLAIN, name="feed").collect(metadata=True) == [f, 1]
    assert names and names[0].startswith("talkpipe producer of feed")


async def test_retry_source_reports_each_failure_and_its_give_up(
    anyio_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Each failure is logged at WARNING (stage, error, wait) and given to ``on_retry`` as (count, error, wait);
    the last one is raised with a note saying how many consecutive failures there were."""
    errors = [ConnectionRefusedError(f"no server {i}") for i in range(4)]
    seen: list[tuple[int, BaseException, float]] = []

    @source
    async def down() -> AsyncIterator[int]:
        raise errors.pop(0)
        yield 0  # pragma: no cover

    with caplog.at_level(logging.WARNING, logger="talkpipe_async.operators.errors"):
        with anyio.fail_after(10), pytest.raises(ConnectionRefusedError) as info:
            await retry_source(down(), PLAIN, on_retry=lambda n, e, w: seen.append((n, e, w))).collect()
    assert str(info.value) == "no server 3"
    assert "talkpipe_async: retry_source gave up after 4 consecutive failures" in getattr(info.value, "__notes__", [])
    assert [(n, str(e), w) for n, e, w in seen] == [
        (1, "no server 0", 0.001),
        (2, "no server 1", 0.002),
        (3, "no server 2", 0.004),
    ]
    lines = [r.getMessage() for r in caplog.records if r.name == "talkpipe_async.operators.errors"]
    assert lines == [
        f"retry_source: source failed ({ConnectionRefusedError('no server 0')!r}); re-opening in 0.001s",
        f"retry_source: source failed ({ConnectionRefusedError('no server 1')!r}); re-opening in 0.002s",
        f"retry_source: source failed ({ConnectionRefusedError('no server 2')!r}); re-opening in 0.004s",
    ]
