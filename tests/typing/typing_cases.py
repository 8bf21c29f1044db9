"""Type-checked by mypy --strict in CI (not run by pytest): element types survive ``|``."""

from __future__ import annotations

from collections.abc import AsyncIterator

from typing_extensions import assert_type

from talkpipe_async import AbstractSegment, AbstractSource, Pipeline


class Numbers(AbstractSource[int]):
    async def generate(self) -> AsyncIterator[int]:
        yield 1


class ToStr(AbstractSegment[int, str]):
    async def transform(self, items: AsyncIterator[int]) -> AsyncIterator[str]:
        async for x in items:
            yield str(x)


class Length(AbstractSegment[str, int]):
    async def transform(self, items: AsyncIterator[str]) -> AsyncIterator[int]:
        async for x in items:
            yield len(x)


async def chained() -> None:
    pipeline = Numbers() | ToStr() | Length()
    out = await pipeline.collect()
    assert_type(out, list[int])
    seg_only = ToStr() | Length()
    assert_type(seg_only, Pipeline[int, int])
    nested = ToStr() | (Length() | ToStr())
    assert_type(await nested.collect([1]), list[str])
