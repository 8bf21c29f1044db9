"""Small sources, sequence operators, aggregates and latest-value operators keep their item types."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

from typing_extensions import Never, assert_type

from talkpipe_async import Pipeline, segment, source
from talkpipe_async.operators import (
    TimeInterval,
    Timestamped,
    cast,
    catch,
    chain,
    chain_with,
    combine_latest,
    concat,
    maximum,
    mean,
    merge_with,
    minimum,
    pairwise,
    running_max,
    running_min,
    sample,
    skip_last,
    starmap,
    switch_map,
    take_last,
    take_until,
    time_interval,
    timestamp,
    with_latest_from,
)
from talkpipe_async.sources import empty, from_iterable, just, never, repeat, throw


@source
async def numbers(n: int = 10) -> AsyncIterator[int]:
    for i in range(n):
        yield i


@segment
async def to_text(items: AsyncIterator[int]) -> AsyncIterator[str]:
    async for x in items:
        yield str(x)


def add(a: int, b: int) -> str:
    return str(a + b)


async def letters(n: int) -> AsyncIterator[str]:
    for _ in range(n):
        yield "a"


async def small_sources() -> None:
    assert_type(just(1, 2), just[int])
    assert_type(await just("a").collect(), list[str])
    assert_type(repeat(1.5, 2), repeat[float])
    assert_type(from_iterable(range(3)), from_iterable[int])
    assert_type(from_iterable(letters(2)), from_iterable[str])
    assert_type(await empty().collect(), list[Never])
    assert_type(await never().collect(), list[Never])
    assert_type(await throw(ValueError).collect(), list[Never])
    assert_type(empty() | to_text(), Pipeline[Never, str])
    assert_type(numbers() | catch(empty()), Pipeline[Never, int])
    assert_type(numbers() | take_until(never()), Pipeline[Never, int])


async def sequence_ops() -> None:
    assert_type(numbers().then(pairwise()), Pipeline[Never, tuple[int, int]])
    assert_type(numbers().then(pairwise()) | starmap(add), Pipeline[Never, str])
    assert_type(numbers().then(take_last(2)), Pipeline[Never, int])
    assert_type(numbers().then(skip_last(2)), Pipeline[Never, int])
    assert_type(numbers().then(timestamp()), Pipeline[Never, Timestamped[int]])
    assert_type(numbers().then(time_interval()), Pipeline[Never, TimeInterval[int]])


async def pass_through_alone_on_the_right() -> None:
    """A stage whose items come out as they went in is typed by the stage before it, also under pyright."""
    assert_type(numbers() | take_last(2), Pipeline[Never, int])
    assert_type(numbers() | to_text() | skip_last(1), Pipeline[Never, str])
    assert_type(numbers() | sample(1.0) | to_text(), Pipeline[Never, str])
    assert_type(await (numbers() | running_max()).collect(), list[int])


async def sequencing_and_casting() -> None:
    assert_type(chain(numbers(), just(5)), chain[int])
    assert_type(await concat(just("a"), just("b")).collect(), list[str])
    assert_type(numbers() | chain_with(just(5)), Pipeline[Never, int])
    assert_type(numbers() | merge_with(just(5)), Pipeline[Never, int])
    assert_type(just("1") | cast(int), Pipeline[Never, int])
    assert_type(just("1") | cast(float, on_error="skip"), Pipeline[Never, float])
    assert_type(just("1") | cast(int, on_error="replace", default=None), Pipeline[Never, int | None])
    assert_type(just("1") | cast("int"), Pipeline[Never, Any])


async def aggregates() -> None:
    assert_type(await minimum(numbers()), int)
    assert_type(await maximum(numbers(), default=None), int | None)
    assert_type(await mean(numbers()), float)
    assert_type(await mean(numbers(), default=None), float | None)
    assert_type(await mean(just(Decimal(1))), Decimal)
    assert_type(numbers().then(running_min()), Pipeline[Never, int])
    assert_type(numbers().then(running_max()), Pipeline[Never, int])


async def latest_ops() -> None:
    assert_type(numbers().then(catch(just(0))), Pipeline[Never, int])
    assert_type(numbers().then(take_until(never())), Pipeline[Never, int])
    assert_type(numbers().then(sample(1.0)), Pipeline[Never, int])
    assert_type(numbers() | switch_map(letters), Pipeline[Never, str])
    assert_type(numbers().then(with_latest_from(just("a"))), Pipeline[Never, tuple[int, str]])
    assert_type(numbers().then(with_latest_from(just("a"), just(1.5))), Pipeline[Never, tuple[int, str, float]])
    assert_type(numbers().then(combine_latest(just("a"))), Pipeline[Never, tuple[int, str]])
    assert_type(numbers().then(combine_latest(just("a"), just(1.5))), Pipeline[Never, tuple[int, str, float]])
