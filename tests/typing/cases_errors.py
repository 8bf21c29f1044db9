"""Mistakes the checkers must report.

Each line carries the mypy code and the pyright rule it must raise; an ignore
that is not needed is itself an error (mypy's warn_unused_ignores under
--strict, pyright's reportUnnecessaryTypeIgnoreComment), so a case that stops
failing fails the check.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator

from talkpipe_async import field_segment, segment, source
from talkpipe_async.operators import map


@source
async def numbers(n: int = 10) -> AsyncIterator[int]:
    for i in range(n):
        yield i


@segment
async def to_str(items: AsyncIterator[int], prefix: str = "") -> AsyncIterator[str]:
    async for x in items:
        yield prefix + str(x)


@segment
def from_bytes(items: Iterable[bytes]) -> Iterator[str]:
    for x in items:
        yield x.decode()


@field_segment
def double(value: int, times: int = 2) -> int:
    return value * times


async def fetch(x: int) -> bytes:
    return bytes(x)


async def wrong_items() -> None:
    p1 = numbers(n=3) | to_str()
    wrong: list[int] = await p1.collect()  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    to_str() | from_bytes()  # type: ignore[operator]  # pyright: ignore[reportOperatorIssue, reportUnusedExpression]
    p1 | to_str()  # type: ignore[operator]  # pyright: ignore[reportOperatorIssue, reportUnusedExpression]
    p1 | double()  # type: ignore[operator]  # pyright: ignore[reportOperatorIssue, reportUnusedExpression]
    numbers() | numbers()  # type: ignore[operator]  # pyright: ignore[reportOperatorIssue, reportUnusedExpression]
    to_str() | numbers()  # type: ignore[operator]  # pyright: ignore[reportOperatorIssue, reportUnusedExpression]
    numbers().map(lambda s: s.upper())  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType, reportUnknownLambdaType]
    numbers() | map(lambda s: s.upper())  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType, reportUnknownLambdaType, reportUnusedExpression]
    numbers().then(from_bytes())  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    await numbers().collect([1])  # type: ignore[list-item]  # pyright: ignore[reportArgumentType]
    await to_str().collect([b"x"])  # type: ignore[list-item]  # pyright: ignore[reportArgumentType]
    numbers().concurrent_map(fetch, key=lambda s: s.upper())  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType, reportUnknownLambdaType]
    numbers().concurrent_map(fetch, key=str.upper)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    numbers().concurrent_map(fetch, key=0)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    print(wrong)


def wrong_parameters() -> None:
    numbers(n="3")  # type: ignore[call-overload]  # pyright: ignore[reportArgumentType]
    numbers(m=3)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue]
    to_str(prefix=1)  # type: ignore[call-overload]  # pyright: ignore[reportArgumentType]
    double(times="x")  # type: ignore[call-overload]  # pyright: ignore[reportArgumentType]


def wrong_functions() -> None:
    @segment  # type: ignore[arg-type]  # pyright: ignore[reportCallIssue, reportArgumentType, reportUntypedFunctionDecorator]
    async def not_a_generator(items: AsyncIterator[int]) -> int:
        return 1

    @source  # type: ignore[arg-type]  # pyright: ignore[reportCallIssue, reportArgumentType, reportUntypedFunctionDecorator]
    def returns_a_list(n: int) -> list[int]:
        return [n]

    print(not_a_generator, returns_a_list)

