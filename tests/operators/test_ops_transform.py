"""Transform operators: map, filter, flat_map, flatten, scan, enumerate, fields, cast, distinct; fusion."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from talkpipe_async import Flush, Pipeline, segment
from talkpipe_async.operators import (
    accumulate,
    cast,
    distinct,
    enumerate,
    filter,
    flat_map,
    flatten,
    get_field,
    map,
    scan,
    set_field,
)
from talkpipe_async.operators.transform import _Fusable, fuse_stages
from tests.helpers.ops_a import LOOPS, items_of, run_collect

pytestmark = pytest.mark.anyio

PROPS = settings(max_examples=50, deadline=None)
ints = st.lists(st.integers(-50, 50), max_size=40)


# ----------------------------------------------------------------- properties against plain Python


@pytest.mark.parametrize("loop", LOOPS)
@PROPS
@given(xs=ints, k=st.integers(1, 5))
def test_map_filter_flat_match_python(loop: Any, xs: list[int], k: int) -> None:
    out = run_collect(loop, map(lambda x: x * k) | filter(lambda x: x % 3 != 0) | flat_map(lambda x: [x] * (x % 3)), xs)
    assert out == [y for x in xs for y in [x * k] * ((x * k) % 3) if (x * k) % 3 != 0]


# Random chains of fusable steps: fused and unfused runs equal the plain-Python result.
STEPS: dict[str, Any] = {
    "inc": (lambda: map(lambda x: x + 1), lambda xs: [x + 1 for x in xs]),
    "double": (lambda: map(lambda x: x * 2), lambda xs: [x * 2 for x in xs]),
    "odd": (lambda: filter(lambda x: x % 2), lambda xs: [x for x in xs if x % 2]),
    "not3": (lambda: filter(lambda x: x % 3), lambda xs: [x for x in xs if x % 3]),
    "dup": (lambda: flat_map(lambda x: (x, -x)), lambda xs: [y for x in xs for y in (x, -x)]),
    "wrap_flat": (lambda: map(lambda x: [x, x]) | flatten(), lambda xs: [y for x in xs for y in (x, x)]),
}


async def _amul(x: int) -> int:
    await anyio.lowlevel.checkpoint()
    return x * 3


async def _apos(x: int) -> bool:
    return x > 0


async def _arange(x: int) -> list[int]:
    return list(range(x % 4))


async def _agen(x: int) -> Any:
    for i in range(x % 3):
        yield i + x


STEPS.update(
    {
        "amul": (lambda: map(_amul), lambda xs: [x * 3 for x in xs]),
        "apos": (lambda: filter(_apos), lambda xs: [x for x in xs if x > 0]),
        "arange": (lambda: flat_map(_arange), lambda xs: [y for x in xs for y in range(x % 4)]),
        "agen": (lambda: flat_map(_agen), lambda xs: [i + x for x in xs for i in range(x % 3)]),
    }
)


@pytest.mark.parametrize("loop", LOOPS)
@PROPS
@given(xs=ints, names=st.lists(st.sampled_from(sorted(STEPS)), min_size=1, max_size=6))
def test_fused_chain_matches_python_and_unfused(loop: Any, xs: list[int], names: list[str]) -> None:
    chain: Pipeline[Any, Any] = Pipeline(*(STEPS[n][0]() for n in names))
    expected = xs
    for n in names:
        expected = STEPS[n][1](expected)
    fused = Pipeline(*fuse_stages(chain.stages))
    assert len(fused.stages) == 1
    assert run_collect(loop, fused, xs) == expected
    unfused = Pipeline(*(Pipeline(s) for s in chain.stages))
    assert run_collect(loop, unfused, xs) == expected


@pytest.mark.parametrize("loop", LOOPS)
@PROPS
@given(xs=ints, initial=st.one_of(st.none(), st.integers(-5, 5)))
def test_scan_matches_itertools_accumulate(loop: Any, xs: list[int], initial: int | None) -> None:
    op = scan(lambda a, b: a - b) if initial is None else accumulate(lambda a, b: a - b, initial=initial)
    expected = list(itertools.accumulate(xs, lambda a, b: a - b, initial=initial))
    assert run_collect(loop, op, xs) == expected


@pytest.mark.parametrize("loop", LOOPS)
@PROPS
@given(xs=ints, start=st.integers(-3, 3))
def test_enumerate_matches_builtin(loop: Any, xs: list[int], start: int) -> None:
    import builtins

    assert run_collect(loop, enumerate(start=start), xs) == list(builtins.enumerate(xs, start))


@pytest.mark.parametrize("loop", LOOPS)
@PROPS
@given(xs=st.lists(st.integers(0, 8), max_size=40), window=st.one_of(st.none(), st.integers(1, 6)))
def test_distinct_matches_reference(loop: Any, xs: list[int], window: int | None) -> None:
    def key(x: int) -> int:
        return x % 5

    expected = []
    for i, x in builtins_enumerate(xs):
        before = xs[:i] if window is None else xs[max(0, i - window) : i]
        if key(x) not in {key(y) for y in before}:
            expected.append(x)
    assert run_collect(loop, distinct(key, window=window), xs) == expected


def builtins_enumerate(xs: list[int]) -> Any:
    import builtins

    return builtins.enumerate(xs)


@pytest.mark.parametrize("loop", LOOPS)
@PROPS
@given(xs=st.lists(st.one_of(st.integers(-9, 9).map(str), st.sampled_from(["x", "", "1.5"])), max_size=30))
def test_cast_policies_match_reference(loop: Any, xs: list[str]) -> None:
    def ok(s: str) -> bool:
        try:
            int(s)
            return True
        except ValueError:
            return False

    assert run_collect(loop, cast(int, on_error="skip"), xs) == [int(s) for s in xs if ok(s)]
    assert run_collect(loop, cast("int", on_error="replace", default=-1), xs) == [int(s) if ok(s) else -1 for s in xs]


# ----------------------------------------------------------------- behaviour, on the three backends


async def test_map_async_function_and_callable_object() -> None:
    class Triple:
        async def __call__(self, x: int) -> int:
            await anyio.lowlevel.checkpoint()
            return 3 * x

    async def plus(x: int) -> int:
        return x + 1

    assert await (map(plus) | map(Triple())).collect([1, 2]) == [6, 9]


async def test_metadata_passes_fused_stage_in_order() -> None:
    data: list[Any] = [1, Flush(), 2, 3, Flush()]
    chain = Pipeline(*fuse_stages((map(lambda x: x * 10) | filter(lambda x: x != 20)).stages))
    out = await (items_of(data) | chain).collect(metadata=True)
    assert out == [10, Flush(), 30, Flush()]


async def test_fuse_with_leaves_operands_unchanged() -> None:
    a, b = map(lambda x: x + 1), filter(lambda x: x > 1)
    fused = a.fuse_with(b)
    assert isinstance(fused, _Fusable) and fused is not a and fused is not b
    assert len(a._steps) == 1 and len(b._steps) == 1
    assert await Pipeline(a).collect([0, 1]) == [1, 2]
    assert await Pipeline(fused).collect([0, 1]) == [2]
    assert a.fuse_with(scan()) is None
    assert fused.label == "map(<lambda>) | filter(<lambda>)"


async def test_error_in_fused_step_names_the_step() -> None:
    def bad(x: int) -> int:
        return 10 // x

    chain = Pipeline(*fuse_stages((map(lambda x: x - 1) | map(bad, name="bad") | filter(bool)).stages))
    with pytest.raises(ZeroDivisionError) as info:
        await chain.collect([3, 2, 1])
    notes = " ".join(getattr(info.value, "__notes__", []))
    assert "map(bad)" in notes


async def test_fields_get_and_set() -> None:
    rows = [{"user": {"name": "ada"}, "text": "hello"}]
    assert await get_field("user.name").collect(rows) == ["ada"]

    async def shout(s: str) -> str:
        return s.upper()

    out = await (set_field("n", len, field="text") | set_field("loud", shout, field="user.name")).collect(rows)
    assert out == [{"user": {"name": "ada"}, "text": "hello", "n": 5, "loud": "ADA"}]
    with pytest.raises(KeyError, match="missing"):
        await get_field("missing").collect([{"a": 1}])


async def test_cast_raise_default_and_field(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ValueError):
        await cast(int).collect(["1", "x"])
    op = cast(float, on_error="skip", field="v", set_as="v")
    with caplog.at_level(logging.WARNING, logger="talkpipe_async.operators"):
        out = await op.collect([{"v": "1.5"}, {"v": "nope"}])
    assert out == [{"v": 1.5}]
    assert op.skipped == 1
    assert "nope" in caplog.text and "cast(float)" in caplog.text
    with pytest.raises(ValueError, match="unknown type name"):
        cast("decimal")


async def test_flatten_strings_and_generators() -> None:
    assert await flatten().collect(["ab", (1, 2), []]) == ["a", "b", 1, 2]


async def test_early_break_closes_upstream() -> None:
    closed = anyio.Event()

    @segment
    async def guarded(items: Any) -> Any:
        try:
            async for x in items:
                yield x
        finally:
            closed.set()

    async def aneg(x: int) -> int:
        return -x

    pipeline = items_of(list(range(100))) | guarded() | map(aneg) | filter(lambda x: x % 2 == 0) | scan()
    async with pipeline.stream() as items:
        async for _x in items:
            break
    assert closed.is_set()


async def test_error_in_fused_stage_names_the_item() -> None:
    from talkpipe_async import error_context
    from talkpipe_async.operators import filter as keep
    from talkpipe_async.operators import map as apply

    with pytest.raises(ZeroDivisionError) as info:
        await (apply(lambda x: x - 3, name="shift") | keep(lambda x: x != 1) | apply(lambda x: 1 / x)).collect(
            [4, 5, 3, 6]
        )
    ctx = error_context(info.value)
    assert ctx is not None and ctx.item == "0"
