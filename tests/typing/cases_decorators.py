"""@source, @segment and @field_segment keep the function's parameters and item types."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from typing_extensions import Never, assert_type

from talkpipe_async import AbstractSegment, AbstractSource, Metadata, Pipeline, field_segment, segment, source


@source
async def numbers(n: int = 10) -> AsyncIterator[int]:
    for i in range(n):
        yield i


@source(blocking=True)
def lines(path: str, *, limit: int = 3) -> Iterator[str]:
    yield from [path] * limit


@segment
async def to_str(items: AsyncIterator[int]) -> AsyncIterator[str]:
    async for x in items:
        yield str(x)


@segment
def add(items: Iterable[int], k: int = 1) -> Iterator[int]:
    for x in items:
        yield x + k


@segment(process_metadata=True)
async def lengths(items: AsyncIterator[str | Metadata], *, plus: int = 0) -> AsyncIterator[int | Metadata]:
    async for x in items:
        yield x if isinstance(x, Metadata) else len(x) + plus


@field_segment
def domain(email: str) -> str:
    return email.split("@")[1]


@field_segment
async def scaled(value: float, factor: float = 2.0) -> float:
    return value * factor


@field_segment(field="user.name")
def shout(name: str) -> str:
    return name.upper()


@field_segment(multi_emit=True)
def words(text: str, sep: str = " ") -> list[str]:
    return text.split(sep)


@field_segment(set_as="n")
def count_chars(text: str) -> int:
    return len(text)


def factories() -> None:
    assert_type(numbers(), AbstractSource[int])
    assert_type(numbers(n=3), AbstractSource[int])
    assert_type(numbers(3), AbstractSource[int])
    assert_type(lines("a.txt", limit=2), AbstractSource[str])
    assert_type(to_str(), AbstractSegment[int, str])
    assert_type(add(k=2), AbstractSegment[int, int])
    assert_type(add(2), AbstractSegment[int, int])
    assert_type(lengths(plus=1), AbstractSegment[str | Metadata, int | Metadata])
    assert_type(domain(), AbstractSegment[str, str])
    assert_type(scaled(factor=3.0), AbstractSegment[float, float])
    assert_type(words(sep=","), AbstractSegment[str, str])


def stage_options() -> None:
    # the stage options are accepted at construction (such a call is checked loosely)
    assert_type(numbers(n=3, name="nums"), AbstractSource[int])
    assert_type(numbers(n=3, blocking=True), AbstractSource[int])
    assert_type(numbers(emits_metadata=False), AbstractSource[int])
    assert_type(to_str(process_metadata=False), AbstractSegment[int, str])
    assert_type(add(k=1, name="plus one"), AbstractSegment[int, int])
    assert_type(domain(field="email"), AbstractSegment[Any, str])
    assert_type(words(multi_emit=True), AbstractSegment[Any, str])
    assert_type(domain(name="d"), AbstractSegment[str, str])


async def pipelines() -> None:
    p1 = numbers(n=3) | to_str()
    assert_type(p1, Pipeline[Never, str])
    assert_type(await p1.collect(), list[str])
    assert_type(await (numbers() | add(k=2) | to_str()).collect(), list[str])
    assert_type(await (lines("x") | domain()).collect(), list[str])
    assert_type(await (numbers() | to_str() | words()).collect(), list[str])
    assert_type(numbers() | to_str() | lengths(), Pipeline[Never, int | Metadata])
    # set_as yields the items themselves: their type comes from upstream (then() infers it on both checkers)
    assert_type(await lines("x").then(count_chars()).collect(), list[str])
    assert_type(await (numbers() | to_str()).then(domain(set_as="d")).collect(), list[str])


def single_stages() -> None:
    assert_type(add().iter_sync([1, 2]), Iterator[int])
    assert_type(add().run_blocking([1]), list[int])
    assert_type(numbers().pipeline(), Pipeline[Never, int])


@field_segment(field="text", multi_emit=True)
async def tokens(text: str) -> list[str]:
    return text.split()


@field_segment(field="n", scale=3)
def times(n: int, scale: int = 1) -> int:
    return n * scale


def field_options() -> None:
    assert_type(shout(), AbstractSegment[Any, str])
    assert_type(tokens(), AbstractSegment[Any, str])
    assert_type(times(scale=2), AbstractSegment[Any, int])


@source(name="countdown")
async def countdown(start: int) -> AsyncIterator[int]:
    for i in range(start, 0, -1):
        yield i


@source
def letters(word: str) -> Iterator[str]:
    yield from word


@segment(blocking=True)
def pairs(items: Iterable[str], sep: str = "-") -> Iterator[tuple[str, str]]:
    for x in items:
        yield (x, sep)


def every_form() -> None:
    assert_type(countdown(3), AbstractSource[int])
    assert_type(letters("abc"), AbstractSource[str])
    assert_type(pairs(sep="+"), AbstractSegment[str, tuple[str, str]])
    assert_type((letters("ab") | pairs()).iter_sync(), Iterator[tuple[str, str]])
    assert_type((countdown(2) | to_str()).run_blocking(), list[str])
