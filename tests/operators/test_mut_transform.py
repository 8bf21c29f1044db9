"""Transform operators (``talkpipe_async.operators.transform``): what the first mutation run found unchecked.

Default and given stage names (they label stats, progress tables and error notes), ``enumerate``'s default start,
``distinct``'s validation message, and ``distinct`` on the items themselves (no key) with and without a window.
"""

from __future__ import annotations

import re
from typing import Any

import anyio
import pytest

from talkpipe_async import source
from talkpipe_async.operators import (
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
from talkpipe_async.sources import just

pytestmark = pytest.mark.anyio


def test_default_and_given_names() -> None:
    assert get_field("a.b").label == "get_field('a.b')" and get_field("a", name="g").label == "g"
    assert set_field("n", len).label == "set_field('n')" and set_field("n", len, name="s").label == "s"
    assert enumerate().label == "enumerate" and enumerate(name="e").label == "e"
    assert distinct().label == "distinct" and distinct(name="d").label == "d"


def test_distinct_validation() -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError, match=r"^distinct: window must be at least 1$"):
            distinct(window=bad)
    assert distinct(window=1).window == 1


async def test_enumerate_counts_from_zero_by_default(anyio_backend: Any) -> None:
    with anyio.fail_after(10):
        assert await (just("a", "b") | enumerate()).collect() == [(0, "a"), (1, "b")]
        assert await (just("a", "b") | enumerate(start=5)).collect() == [(5, "a"), (6, "b")]


async def test_distinct_without_a_key_compares_the_items(anyio_backend: Any) -> None:
    with anyio.fail_after(10):
        assert await (just(1, 2, 1, 3, 2) | distinct()).collect() == [1, 2, 3]
        assert await (just(1, 1, 2, 1) | distinct(window=1)).collect() == [1, 2, 1]
        assert await (just(1, 2, 1, 3, 1, 2) | distinct(window=2)).collect() == [1, 2, 3, 2]


# -- fusion: which neighbours merge into one stage, and what the merged stage reports ------------------------------


def _double(x: int) -> int:
    return x * 2


def _is_even(x: int) -> bool:
    return x % 2 == 0


def _boom(x: int) -> int:
    raise ValueError(f"bad {x}")


def test_fuse_stages_merges_each_run_of_fusable_neighbours() -> None:
    """``fuse_stages`` merges neighbouring map/filter/flat_map stages into one labelled with theirs, keeps other
    stages where they are, and starts a new run after each of them."""
    from talkpipe_async.operators.transform import fuse_stages

    s = scan(lambda a, b: a + b, initial=0)
    out = fuse_stages([map(_double), filter(_is_even), s, map(_double), flat_map(lambda x: [x]), map(str)])
    assert [st.label for st in out] == [
        "map(_double) | filter(_is_even)",
        s.label,
        "map(_double) | flat_map(<lambda>) | map(str)",
    ]
    assert out[1] is s
    assert fuse_stages([]) == [] and len(fuse_stages([s, map(str)])) == 2


def test_blocking_or_metadata_aware_stages_do_not_fuse() -> None:
    """A stage that runs in a thread (``blocking``) or sees metadata keeps its own stage: fusing would move its
    neighbour into the thread, or show it metadata."""
    for attr in ("blocking", "process_metadata"):
        first, second = map(_double), map(str)
        setattr(first, attr, True)
        assert first.fuse_with(second) is None and second.fuse_with(first) is None
    assert map(_double).fuse_with(scan(lambda a, b: a + b)) is None
    merged = map(_double).fuse_with(filter(_is_even))
    assert merged is not None and merged.label == "map(_double) | filter(_is_even)"
    named = map(_double, name="twice").fuse_with(filter(_is_even, name="even"))
    assert named is not None and named.label == "twice | even"  # the given names, not the steps' own labels


def test_a_callable_without_a_name_is_labelled_by_its_type() -> None:
    import functools

    assert map(functools.partial(_double)).label == "map(partial)"


def test_given_names_label_the_fusable_stages() -> None:
    assert [map(_double, name="m").label, filter(_is_even, name="f").label] == ["m", "f"]
    assert [flat_map(list, name="fm").label, flatten(name="fl").label] == ["fm", "fl"]
    assert [flat_map(list).label, flatten().label] == ["flat_map(list)", "flatten"]


async def test_an_error_in_a_fused_step_keeps_its_type_and_names_its_step(anyio_backend: Any) -> None:
    """The fused loop re-raises a step's error as it is, with a note naming the step that raised it (whichever its
    place in the run), and the traceback shows the generated line of that step."""
    import traceback

    for pipeline, step in (
        (map(_boom) | filter(_is_even) | map(_double), "map(_boom)"),
        (map(_double) | filter(_is_even) | map(_boom), "map(_boom)"),
        (map(_double) | flat_map(lambda x: [x, x]) | map(_boom), "map(_boom)"),
    ):
        with anyio.fail_after(10), pytest.raises(ValueError, match=r"^bad ") as err:
            await (just(1, 2) | pipeline).collect()
        assert f"in step {step}" in "\n".join(getattr(err.value, "__notes__", []))
        text = "".join(traceback.format_exception(err.value))
        assert re.search(r"<talkpipe_async fused (map|filter|flat)(\+(map|filter|flat))+>", text)  # named by its kinds
        assert "x = f" in text
    with anyio.fail_after(10), pytest.raises(ValueError) as err:
        await (just(1) | map(_double) | map(_boom)).collect()  # two steps: the note names the second
    assert "in step map(_boom) of fused stage 'map(_double) | map(_boom)'" in err.value.__notes__
    with anyio.fail_after(10), pytest.raises(ValueError) as err:
        await (just(1) | map(_boom)).collect()  # one step: the stage itself is the step, no note about steps
    assert not any("in step" in note for note in getattr(err.value, "__notes__", []))

    @source
    async def failing() -> Any:
        yield 1
        raise KeyError("upstream")

    with anyio.fail_after(10), pytest.raises(KeyError) as err:
        await (failing() | map(_double) | filter(_is_even)).collect()  # not raised by a step: no step named
    assert not any("in step" in note for note in getattr(err.value, "__notes__", []))


# -- scan and cast -------------------------------------------------------------------------------------------------


async def _add_async(a: str, b: str) -> str:
    return a + b


async def test_scan_default_is_a_running_sum_and_an_async_fn_gets_the_accumulator_first(anyio_backend: Any) -> None:
    with anyio.fail_after(10):
        assert await (just(1, 2, 3) | scan()).collect() == [1, 3, 6]
        assert await (just("a", "b", "c") | scan(_add_async)).collect() == ["a", "ab", "abc"]
        # with an initial value, it comes first (as itertools.accumulate gives it)
        assert await (just("b", "c") | scan(_add_async, initial="a")).collect() == ["a", "ab", "abc"]
    assert scan().label == "scan(<lambda>)" and scan(_add_async).label == "scan(_add_async)"
    assert scan(_add_async, name="s").label == "s"


def test_cast_validation_messages() -> None:
    with pytest.raises(ValueError) as err:
        cast("decimal")
    assert (
        str(err.value) == "cast: unknown type name 'decimal' (known: int, float, str, bool, bytes, list, tuple, dict)"
    )
    with pytest.raises(ValueError) as err:
        cast(int, on_error="ignore")  # type: ignore[call-overload]
    assert str(err.value) == "cast: on_error must be 'raise', 'skip' or 'replace', not 'ignore'"
    assert cast(int).on_error == "raise" and (cast(int).skipped, cast(int).replaced) == (0, 0)


async def test_cast_raises_by_default_and_counts_what_it_skips_or_replaces(
    anyio_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with anyio.fail_after(10):
        with pytest.raises(ValueError):
            await (just("1", "x") | cast(int)).collect()
        skip = cast(int, on_error="skip")
        with caplog.at_level("WARNING", logger="talkpipe_async"):
            assert await (just("1", "x", "y") | skip).collect() == [1]
        assert skip.skipped == 2
        messages = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert messages[0] == "cast(int): skipped item 'x': ValueError: invalid literal for int() with base 10: 'x'"
        replace = cast(int, on_error="replace", default=-1)
        assert await (just("x", "2", "y") | replace).collect() == [-1, 2, -1]
        assert replace.replaced == 2
