"""``|`` composes item types; the runners return them; metadata only when asked; the typed methods."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any

from typing_extensions import Never, assert_type

from talkpipe_async import AbstractSegment, BlockingStream, Metadata, Pipeline, segment, source
from talkpipe_async._core._chain import Runner
from talkpipe_async.operators import take


@source
async def numbers(n: int = 10) -> AsyncIterator[int]:
    for i in range(n):
        yield i


@segment
async def to_str(items: AsyncIterator[int]) -> AsyncIterator[str]:
    async for x in items:
        yield str(x)


@segment
async def length(items: AsyncIterator[str]) -> AsyncIterator[int]:
    async for x in items:
        yield len(x)


@segment
def parse(items: Iterable[bytes]) -> Iterator[int]:
    for x in items:
        yield int(x)


@segment
async def describe(items: AsyncIterator[object]) -> AsyncIterator[str]:
    async for x in items:
        yield repr(x)


@segment
def to_dict(items: Iterable[int]) -> Iterator[dict[str, int]]:
    for x in items:
        yield {"user": x % 3, "n": x}


async def fetch_len(x: str) -> int:
    return len(x)


def talkpipe_style(items: Iterable[str]) -> Iterator[bytes]:
    for x in items:
        yield x.encode()


async def composition() -> None:
    a = to_str() | length()
    assert_type(a, Pipeline[int, int])
    assert_type(a | to_str(), Pipeline[int, str])
    assert_type(to_str() | (length() | to_str()), Pipeline[int, str])
    assert_type(numbers() | a, Pipeline[Never, int])
    assert_type(numbers() | describe(), Pipeline[Never, str])  # a stage that reads object takes int
    assert_type(to_str() | talkpipe_style, Pipeline[int, bytes])  # a TalkPipe-style callable segment
    assert_type(to_str() | talkpipe_style | parse(), Pipeline[int, int])
    assert_type(Pipeline(numbers(), to_str()), Pipeline[Any, Any])  # built by hand: untyped


async def runners() -> None:
    p = numbers(n=3) | to_str()
    assert_type(await p.collect(), list[str])
    assert_type(await p.collect(metadata=True), list[str | Metadata])
    async with p.stream() as items:
        assert_type(items, AsyncIterator[str])
    async with p.stream(metadata=True, stats=True) as both:
        assert_type(both, AsyncIterator[str | Metadata])
    s = to_str() | length()
    assert_type(await s.collect([1, 2]), list[int])
    assert_type(await s.collect([1, Metadata(action="flush")]), list[int])


def blocking_runners() -> None:
    p = numbers() | to_str()
    assert_type(p.run_blocking(), list[str])
    assert_type(p.run_blocking(metadata=True), list[str | Metadata])
    assert_type(p.iter_blocking(), BlockingStream[str])
    with p.iter_blocking() as items:
        assert_type(items, Iterator[str])
    assert_type((parse() | to_str()).iter_sync([b"1"]), Iterator[str])
    assert_type((parse() | to_str()).iter_sync([b"1"], metadata=True), Iterator[str | Metadata])


async def as_function() -> None:
    s = to_str() | length()
    assert_type(s.as_function(), Runner[int, Awaitable[list[int]]])
    assert_type(await s.as_function()([1, 2]), list[int])
    assert_type(await s.as_function(single_in=True)(1), list[int])
    assert_type(await s.as_function(single_out=True)([1]), int)
    assert_type(await s.as_function(single_in=True, single_out=True)(1), int)
    assert_type(await (numbers() | to_str()).as_function()(), list[str])
    assert_type(s.as_function_blocking(single_in=True, single_out=True)(1), int)
    assert_type(s.as_function_blocking()([1]), list[int])
    flag = bool(len("x"))
    assert_type(s.as_function(single_in=flag), Callable[..., Awaitable[Any]])


async def typed_methods() -> None:
    assert_type(numbers().map(lambda x: x * 2.5), Pipeline[Never, float])
    assert_type(numbers().map(lambda x: str(x)).map(len), Pipeline[Never, int])
    assert_type(numbers().filter(lambda x: x % 2 == 0), Pipeline[Never, int])
    assert_type(numbers().flat_map(lambda x: [x, x]), Pipeline[Never, int])
    assert_type(numbers().flat_map(lambda x: str(x)), Pipeline[Never, str])
    assert_type(numbers().scan(lambda a, b: a + b), Pipeline[Never, int])
    assert_type(numbers().scan(lambda acc, x: [*acc, x], initial=list[int]()), Pipeline[Never, list[int]])
    assert_type(numbers().then(take(3)), Pipeline[Never, int])
    assert_type(to_str().map(len), Pipeline[int, int])
    assert_type((to_str() | length()).filter(bool), Pipeline[int, int])

    async def fetch(x: int) -> bytes:
        return bytes(x)

    assert_type(numbers().concurrent_map(fetch, limit=4), Pipeline[Never, bytes])
    # key=: a callable of the item (its parameter inferred from upstream) or a field name
    assert_type(numbers().concurrent_map(fetch, 4, key=lambda x: x.bit_length() % 3), Pipeline[Never, bytes])
    assert_type(to_str().concurrent_map(fetch_len, key=str.lower, ordered=False), Pipeline[int, int])

    async def by_user(item: dict[str, int]) -> int:
        return item["n"]

    assert_type((parse() | to_dict()).concurrent_map(by_user, key="user"), Pipeline[bytes, int])
    assert_type(numbers().map(fetch), Pipeline[Never, bytes])  # an async function: its awaited result
    assert_type(await numbers().map(lambda x: -x).collect(), list[int])


def widen(seg: AbstractSegment[int, object]) -> Pipeline[bool, object]:
    return seg.then(describe())


def variance() -> None:
    # a segment's input type is contravariant, its output covariant
    assert_type(widen(to_str()), Pipeline[bool, object])
