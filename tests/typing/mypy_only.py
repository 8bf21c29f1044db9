"""Cases only mypy can pass: it infers the right operand of ``|`` from the left one.

pyright types both operands of a binary operator on their own (by design), so
there ``numbers() | take(3)`` yields ``Unknown`` items; the same chains written
with ``then()`` or the typed methods are in the other case files and pass on
both checkers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from typing_extensions import Never, assert_type

from talkpipe_async import Pipeline, field_segment, segment, source
from talkpipe_async.operators import batch, filter, map, merge_with, scan, take, window, zip_with


@source
async def numbers(n: int = 10) -> AsyncIterator[int]:
    for i in range(n):
        yield i


@source
async def names() -> AsyncIterator[str]:
    yield "a"


@segment
async def to_str(items: AsyncIterator[int]) -> AsyncIterator[str]:
    async for x in items:
        yield str(x)


@field_segment
def size(text: str) -> int:
    return len(text)


async def pipe_inference() -> None:
    p1 = numbers(n=3) | to_str()
    assert_type(p1 | take(3), Pipeline[Never, str])
    assert_type(p1 | batch(3), Pipeline[Never, list[str]])
    assert_type(numbers() | window(2) | take(1), Pipeline[Never, list[int]])
    assert_type(p1 | map(lambda s: s.upper()), Pipeline[Never, str])
    assert_type(numbers() | map(lambda x: x * 2.5), Pipeline[Never, float])
    assert_type(numbers() | filter(lambda x: x > 1), Pipeline[Never, int])
    assert_type(numbers() | scan(lambda a, b: a + b), Pipeline[Never, int])
    assert_type(p1 | size(set_as="n"), Pipeline[Never, str])
    assert_type(numbers() | merge_with(numbers()), Pipeline[Never, int])
    assert_type(numbers() | zip_with(names()), Pipeline[Never, tuple[int, str]])
    assert_type(await (p1 | take(2)).collect(), list[str])


def lambda_mistakes() -> None:
    numbers() | map(lambda s: s.upper())  # type: ignore[attr-defined]
