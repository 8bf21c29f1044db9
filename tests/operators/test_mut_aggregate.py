"""Aggregates (``minimum``, ``maximum``, ``mean`` and the running forms): the promises a mutation run found unchecked.

The stage names (they label stats, progress tables and error notes), the exact texts of the empty-stream errors,
the sinks' ``input`` argument, ties keeping the first item, ``running_count``'s ``start``, the types ``mean`` gives,
and metadata passing each running form in order while the sinks never see it.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Any

import anyio
import pytest

from talkpipe_async import Flush
from talkpipe_async.operators import (
    map,
    maximum,
    mean,
    minimum,
    running_count,
    running_max,
    running_mean,
    running_min,
)
from talkpipe_async.sources import just

pytestmark = pytest.mark.anyio


def first(p: tuple[int, str]) -> int:
    return p[0]


def test_default_and_given_names() -> None:
    """Each running form is labelled by its own name unless given one."""
    assert running_min().label == "running_min"
    assert running_max().label == "running_max"
    assert running_mean().label == "running_mean"
    assert running_count().label == "running_count"
    assert running_min(first, name="low").label == "low"
    assert running_max(first, name="peak").label == "peak"
    assert running_mean(name="avg").label == "avg"
    assert running_count(name="n", start=3).label == "n"


async def test_an_empty_stream_raises_a_text_naming_the_sink_or_returns_the_default(anyio_backend: Any) -> None:
    """Exactly ``<sink>: the stream had no items (pass default= for that case)``; a default is returned as is."""
    with anyio.fail_after(10):
        sinks: list[Any] = [minimum, maximum, mean]
        for sink in sinks:
            text = rf"^{sink.__name__}: the stream had no items \(pass default= for that case\)$"
            with pytest.raises(ValueError, match=text):
                await sink(just())
            with pytest.raises(ValueError, match=text):
                await sink(map(float), [])
            marker = object()
            assert await sink(just(), default=marker) is marker
            assert await sink(just(), default=None) is None
            assert await sink(just(4), default=marker) == 4  # a default is only for the empty stream


async def test_the_sinks_read_the_given_input(anyio_backend: Any) -> None:
    """A pipeline that starts with a segment reads ``input`` (an iterable or an async iterable)."""

    async def agen() -> Any:
        for x in (5, 2, 8):
            yield x

    with anyio.fail_after(10):
        double: Any = map(lambda x: 2 * x)
        assert await minimum(double, [5, 2, 8]) == 4
        assert await maximum(double, [5, 2, 8]) == 16
        assert await mean(double, [5, 2, 8]) == 10.0
        assert await minimum(double, agen()) == 4
        assert await maximum(double, agen()) == 16
        assert await mean(double, agen()) == 10.0
        assert await maximum(just(1) | double) == 2  # a pipeline with its own source
        assert await minimum(double, [3, 1], key=lambda x: -x) == 6
        assert await maximum(double, [3, 1], key=lambda x: -x) == 2


async def test_ties_keep_the_first_item_and_the_key_decides(anyio_backend: Any) -> None:
    """As the built-in ``min`` and ``max``: by ``key(item)`` when given, the first of equal keys is kept."""
    xs = [(2, "a"), (1, "b"), (3, "c"), (1, "d"), (3, "e")]
    Pair = tuple[int, str]
    with anyio.fail_after(10):
        assert await minimum(just(*xs), key=first) == (1, "b") == min(xs, key=first)
        assert await maximum(just(*xs), key=first) == (3, "c") == max(xs, key=first)
        assert await minimum(just(*xs), key=lambda p: p[1]) == (2, "a")
        assert await maximum(just(*xs), key=lambda p: p[1]) == (3, "e")
        assert await minimum(just(3, 1, 2)) == 1 and await maximum(just(3, 1, 2)) == 3
        assert await running_min[Pair](first).collect(xs) == [(2, "a"), (1, "b"), (1, "b"), (1, "b"), (1, "b")]
        assert await running_max[Pair](first).collect(xs) == [(2, "a"), (2, "a"), (3, "c"), (3, "c"), (3, "c")]
        assert await running_min[int]().collect([3, 1, 2]) == [3, 1, 1]
        assert await running_max[int]().collect([1, 3, 2]) == [1, 3, 3]


async def test_running_count_counts_from_start(anyio_backend: Any) -> None:
    """``start + 1``, ``start + 2``, ... one per item; ``start`` is 0 unless given."""
    with anyio.fail_after(10):
        assert await running_count().collect("abc") == [1, 2, 3]
        assert await running_count(start=10).collect("abc") == [11, 12, 13]
        assert await running_count(start=-2).collect("ab") == [-1, 0]


async def test_mean_types_and_exact_sums(anyio_backend: Any) -> None:
    """``int`` and ``float`` give ``float``; ``Decimal`` and ``Fraction`` keep their type; integers sum exactly."""
    with anyio.fail_after(10):
        m = await mean(just(1, 2))
        assert m == 1.5 and type(m) is float
        m = await mean(just(3))
        assert m == 3.0 and type(m) is float
        big = 10**20
        assert await mean(just(big + 1, big + 3)) == (2 * big + 4) / 2
        f = await mean(just(Fraction(1, 3), Fraction(2, 3), Fraction(1, 2)))
        assert f == Fraction(1, 2) and type(f) is Fraction
        d = await mean(just(Decimal("0.1"), Decimal("0.2")))
        assert d == Decimal("0.15") and type(d) is Decimal
        assert await running_mean().collect([1, 3, 8]) == [1.0, 2.0, 4.0]
        assert await running_mean().collect([Fraction(1, 3), Fraction(2, 3)]) == [Fraction(1, 3), Fraction(1, 2)]
        assert await running_mean().collect([-4, 2]) == [-4.0, -1.0]


async def test_metadata_passes_each_running_form_in_order_and_the_sinks_never_see_it(anyio_backend: Any) -> None:
    """A Flush leaves a running form where it came, without changing the aggregate; a sink ignores it."""
    flush = Flush()
    with anyio.fail_after(10):
        for stage, out in (
            (running_min(), [4, flush, 2, 2]),
            (running_max(), [4, flush, 4, 6]),
            (running_mean(), [4.0, flush, 3.0, 4.0]),
            (running_count(start=5), [6, flush, 7, 8]),
        ):
            assert await (just(4, flush, 2, 6) | stage).collect(metadata=True) == out
            assert await (just(4, flush, 2, 6) | stage).collect() == [x for x in out if x is not flush]
        assert await minimum(just(4, flush, 2)) == 2
        assert await maximum(just(4, flush, 6)) == 6
        with_flush: Any = just(4, flush, 2)
        assert await mean(with_flush) == 3.0
        with pytest.raises(ValueError, match=r"^mean: the stream had no items"):
            await mean(just[Any](flush))


async def test_an_error_in_a_key_names_the_running_stage(anyio_backend: Any) -> None:
    """A key that fails ends the run with a note naming the stage."""

    def bad(x: Any) -> Any:
        raise LookupError("no key")

    with anyio.fail_after(10):
        for stage, label in ((running_min(bad), "running_min"), (running_max(bad, name="peak"), "peak")):
            with pytest.raises(LookupError) as info:
                await (just(1, 2) | stage).collect()
            assert label in "".join(getattr(info.value, "__notes__", []))
