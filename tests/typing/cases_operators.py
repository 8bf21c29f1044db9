"""The built-in operators are generic: their item types follow the items upstream or their functions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from typing_extensions import Never, assert_type

from talkpipe_async import Pipeline, source
from talkpipe_async.operators import (
    DeadLetter,
    batch,
    broadcast,
    concurrent_map,
    filter,
    flat_map,
    fork,
    map,
    merge,
    merge_with,
    on_error,
    retry,
    retry_source,
    scan,
    take,
    thread_map,
    window,
    zip_streams,
    zip_with,
)
from talkpipe_async.sinks import callback, collect, count, reduce


@source
async def numbers(n: int = 10) -> AsyncIterator[int]:
    for i in range(n):
        yield i


@source
async def names() -> AsyncIterator[str]:
    yield "a"


def to_text(x: int) -> str:
    return str(x)


async def fetch(x: int) -> bytes:
    return bytes(x)


def is_even(x: int) -> bool:
    return x % 2 == 0


def digits(x: int) -> list[int]:
    return [int(d) for d in str(x)]


def total(acc: float, x: int) -> float:
    return acc + x


async def transform_ops() -> None:
    assert_type(numbers() | map(to_text), Pipeline[Never, str])
    assert_type(numbers() | map(fetch), Pipeline[Never, bytes])
    assert_type(numbers() | filter(is_even), Pipeline[Never, int])
    assert_type(numbers() | flat_map(digits), Pipeline[Never, int])
    assert_type(numbers() | scan(total, initial=0.0), Pipeline[Never, float])
    assert_type(numbers().then(scan(max)), Pipeline[Never, int])
    assert_type(numbers() | concurrent_map(fetch, limit=8), Pipeline[Never, bytes])
    assert_type(numbers() | thread_map(to_text), Pipeline[Never, str])
    assert_type(numbers() | map(to_text) | map(len), Pipeline[Never, int])


async def generic_ops() -> None:
    # operators whose item type comes only from upstream: then() infers it on both checkers
    assert_type(numbers().then(batch(10)), Pipeline[Never, list[int]])
    assert_type(numbers().then(batch(10, timeout=0.5)), Pipeline[Never, list[int]])
    assert_type(numbers().then(window(3, step=1)), Pipeline[Never, list[int]])
    assert_type(numbers().then(take(3)).then(batch(2)), Pipeline[Never, list[int]])
    assert_type(numbers() | batch[int](10), Pipeline[Never, list[int]])  # or spell the type


async def combine_ops() -> None:
    assert_type(merge(numbers(), numbers(n=3) | map(abs)), merge[int])
    assert_type(await merge(numbers(), numbers()).collect(), list[int])
    assert_type(zip_streams(numbers(), names()), zip_streams[tuple[int, str]])
    assert_type(await (zip_streams(numbers(), names(), numbers())).collect(), list[tuple[int, str, int]])
    assert_type(numbers().then(merge_with(numbers())), Pipeline[Never, int])
    assert_type(numbers().then(zip_with(names())), Pipeline[Never, tuple[int, str]])
    assert_type(numbers() | fork(map(to_text), map(to_text) | map(str.upper)), Pipeline[Never, str])
    assert_type(numbers() | broadcast(map(to_text), map(to_text)), Pipeline[Never, str])


async def error_ops() -> None:
    assert_type(numbers() | on_error(to_text, "skip"), Pipeline[Never, str])
    assert_type(numbers() | on_error(fetch, "replace", value=b""), Pipeline[Never, bytes])
    assert_type(numbers() | on_error(map(to_text), "dead_letter", sink=print), Pipeline[Never, str])
    assert_type(numbers() | retry(fetch), Pipeline[Never, bytes])
    assert_type(retry_source(numbers()), retry_source[int])
    assert_type(retry_source(numbers), retry_source[int])  # a factory, called for each attempt
    assert_type(DeadLetter(item=1, error=ValueError(), stage="s").item, Any)


async def sinks() -> None:
    assert_type(await collect(numbers() | map(to_text)), list[str])
    assert_type(await collect(numbers()), list[int])
    assert_type(await count(numbers()), int)
    assert_type(await reduce(numbers(), total, 0.0), float)
    assert_type(numbers().then(callback(print)), Pipeline[Never, int])


async def sources_and_typed_sinks() -> None:
    from talkpipe_async.operators import interval
    from talkpipe_async.sinks import write_lines
    from talkpipe_async.sources import SSEEvent, process_lines, read_chunks, read_lines, sse_events

    assert_type(read_lines("a.log").map(len), Pipeline[Never, int])
    assert_type(read_chunks("a.bin").map(len), Pipeline[Never, int])
    assert_type(await read_chunks("a.bin").collect(), list[bytes])
    assert_type(await read_lines("a.log").then(write_lines("b.log")).collect(), list[str])
    assert_type(await process_lines(["echo", "x"]).collect(), list[str])
    assert_type(await sse_events("http://127.0.0.1:1/").collect(), list[SSEEvent])
    assert_type(interval(1.0).map(float), Pipeline[Never, float])
