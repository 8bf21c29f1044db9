"""Sources and segments, and the decorators that make them (``talkpipe_async._core._segment``).

Pinned from what a user relies on: the options a stage is built with (``process_metadata``, ``blocking``,
``emits_metadata``, ``name``) are the ones it runs with, decorator keyword arguments are defaults the constructor
overrides, constructor arguments reach the function in order, a wrong argument fails at construction naming the
function, a decorated class reads like the function (name, doc, module, qualified name), ``|`` keeps the stages in
the order written, and a field segment reads its field, writes ``set_as`` and fans out under ``multi_emit`` as
documented.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import pytest

from talkpipe_async import (
    AbstractFieldSegment,
    AbstractSegment,
    AbstractSource,
    Flush,
    Metadata,
    Pipeline,
    field_segment,
    segment,
    source,
)
from talkpipe_async._core._segment import CallableSegment, wrap_callable

pytestmark = pytest.mark.anyio


# ----------------------------------------------------------------- stages used below
# Each test makes its own stage classes (the decorators run when the fixture does).


@pytest.fixture(name="count")
def _count_stage() -> Any:
    @source
    async def count(n: int = 3, start: int = 0) -> AsyncIterator[int]:
        """Count up from start."""
        for i in range(start, start + n):
            yield i

    return count


@pytest.fixture(name="sync_count")
def _sync_count_stage() -> Any:
    @source
    def sync_count(n: int = 3) -> Iterator[int]:
        yield from range(n)

    return sync_count


@pytest.fixture(name="add")
def _add_stage() -> Any:
    @segment
    async def add(items: AsyncIterator[int], n: int = 1, m: int = 0) -> AsyncIterator[int]:
        """Add n (and m) to each item."""
        async for x in items:
            yield x + n + m

    return add


@pytest.fixture(name="double")
def _double_stage() -> Any:
    @segment
    def double(items: Iterable[int]) -> Iterator[int]:
        for x in items:
            yield 2 * x

    return double


@pytest.fixture(name="where")
def _where_stage() -> Any:
    @segment
    def where(items: Iterable[Any], log: list[int]) -> Iterator[Any]:
        for x in items:
            log.append(threading.get_ident())
            yield x

    return where


@pytest.fixture(name="seen")
def _seen_stage() -> Any:
    @segment(process_metadata=True)
    async def seen(items: AsyncIterator[Any], log: list[Any]) -> AsyncIterator[Any]:
        async for x in items:
            log.append(x)
            yield x

    return seen


# ----------------------------------------------------------------- decorators


def test_the_decorated_class_reads_like_the_function(add: Any, count: Any) -> None:
    """The class ``@source`` / ``@segment`` makes carries the function's name, doc, module and qualified name, and
    the generate / transform method carries its doc; the stage's name is the function's.  The class keeps the
    function as ``_original_func``, where TalkPipe's documentation extraction looks for it."""
    for cls, kind in ((count, AbstractSource), (add, AbstractSegment)):
        assert isinstance(cls, type) and issubclass(cls, kind)
        assert cls.__module__ == __name__
    assert count.__name__ == "count" and count.__qualname__ == "_count_stage.<locals>.count"
    assert add.__name__ == "add" and add.__qualname__ == "_add_stage.<locals>.add"
    assert count.__doc__ == "Count up from start."
    assert add.__doc__ == "Add n (and m) to each item."
    assert count.generate.__doc__ == "Count up from start."
    assert add.transform.__doc__ == "Add n (and m) to each item."
    assert count._original_func.__name__ == "count"
    assert add._original_func.__name__ == "add"
    assert count().name == "count" and add().name == "add"
    assert repr(add()) == "<add>" and count().label == "count"


def test_a_function_without_a_docstring_gets_one_naming_the_kind_of_stage(double: Any, sync_count: Any) -> None:
    """Without a docstring the class says what it was made from, with the decorator bare or given options."""
    assert sync_count.__doc__ == "Source made from sync_count."
    assert double.__doc__ == "Segment made from double."

    @source(n=1)
    def ones(n: int) -> Iterator[int]:
        yield from [1] * n

    @segment(name="same")
    def same(items: Iterable[Any]) -> Iterator[Any]:
        yield from items

    assert ones.__doc__ == "Source made from ones."
    assert same.__doc__ == "Segment made from same."


def test_a_qualified_name_of_a_nested_function_is_kept() -> None:
    """A stage defined inside a function keeps that function's qualified name (as in tracebacks and reprs)."""

    @segment
    async def inner(items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for x in items:
            yield x

    assert inner.__qualname__.endswith("test_a_qualified_name_of_a_nested_function_is_kept.<locals>.inner")  # type: ignore[attr-defined]
    assert inner.__name__ == "inner"


async def test_constructor_arguments_reach_the_function_in_order(add: Any, count: Any) -> None:
    """Positional and keyword constructor arguments are the function's parameters after ``items`` (a segment) or
    all of them (a source)."""
    assert await add(10).collect([1]) == [11]
    assert await add(10, 100).collect([1]) == [111]
    assert await add(n=10, m=100).collect([1]) == [111]
    assert await add(10, m=100).collect([1]) == [111]
    assert await count(2, 5).collect() == [5, 6]
    assert await count(start=5, n=2).collect() == [5, 6]
    assert await count().collect() == [0, 1, 2]


async def test_decorator_keywords_are_defaults_the_constructor_overrides() -> None:
    """``@segment(n=5)``: 5 unless the constructor says otherwise; options and defaults mix in one call."""

    @segment(n=5, name="plus")
    async def plus(items: AsyncIterator[int], n: int = 1) -> AsyncIterator[int]:
        async for x in items:
            yield x + n

    @source(n=2, blocking=True)
    def twos(n: int) -> Iterator[int]:
        yield from [2] * n

    assert await plus().collect([1]) == [6]
    assert await plus(n=7).collect([1]) == [8]
    assert plus().name == "plus" and plus(name="other").name == "other"
    assert await twos().collect() == [2, 2]  # type: ignore[call-overload]
    assert await twos(n=3).collect() == [2, 2, 2]
    assert twos().blocking is True and twos(blocking=False).blocking is False  # type: ignore[call-overload]


async def test_a_positional_constructor_argument_overrides_a_decorator_default() -> None:
    """A decorator default is overridden by the constructor argument given by position as by keyword, for
    ``@segment``, ``@source`` and ``@field_segment``; the same parameter given twice in the constructor is still an
    error naming the function."""

    @segment(n=5)
    async def plus(items: AsyncIterator[int], n: int = 1, m: int = 0) -> AsyncIterator[int]:
        async for x in items:
            yield x + n + m

    @source(n=2, start=10)
    def run_of(n: int, start: int = 0) -> Iterator[int]:
        yield from range(start, start + n)

    @field_segment(extra=5, field="v")
    def grow(value: int, extra: int = 0) -> int:
        return value + extra

    assert await plus(7).collect([1]) == [8]
    assert await plus(7, 100).collect([1]) == [108]
    assert await run_of(3).collect() == [10, 11, 12]
    assert await run_of(1, 0).collect() == [0]
    assert await grow(1).collect([{"v": 1}]) == [2]
    assert await grow().collect([{"v": 1}]) == [6]
    with pytest.raises(TypeError, match=r"^plus: multiple values for argument 'n'$"):
        plus(7, n=8)  # type: ignore[call-overload]


def test_options_default_to_off_and_are_kept_as_given(add: Any, count: Any, double: Any) -> None:
    """``process_metadata`` and ``blocking`` are False unless given, to the decorator or the constructor; a source
    emits metadata unless ``emits_metadata=False``; ``name`` defaults to the function's name."""
    for stage in (add(), count(), double()):
        assert stage.process_metadata is False and stage.blocking is False
    assert count().emits_metadata is True
    s = add(process_metadata=True, blocking=True, name="x")
    assert (s.process_metadata, s.blocking, s.name) == (True, True, "x")
    s = add(process_metadata=True)
    assert (s.process_metadata, s.blocking) == (True, False)
    s = add(blocking=True)
    assert (s.process_metadata, s.blocking) == (False, True)
    src = count(emits_metadata=False, process_metadata=True, blocking=True, name="c")
    assert (src.emits_metadata, src.process_metadata, src.blocking, src.name) == (False, True, True, "c")
    assert count(name="").name == "count", "an empty name falls back to the function's"

    @source(emits_metadata=False)
    async def quiet() -> AsyncIterator[int]:
        yield 1

    assert quiet().emits_metadata is False
    assert quiet(emits_metadata=True).emits_metadata is True


def test_a_wrong_argument_fails_at_construction_naming_the_function(add: Any, count: Any, where: Any) -> None:
    """An unknown or missing parameter raises TypeError when the stage is built, naming the function, with
    Python's own message and no chained traceback."""
    with pytest.raises(TypeError, match=r"^add: got an unexpected keyword argument 'k'$") as info:
        add(k=1)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(TypeError, match=r"^add: too many positional arguments$"):
        add(1, 2, 3)
    with pytest.raises(TypeError, match=r"^where: missing a required argument: 'log'$"):
        where()
    with pytest.raises(TypeError, match=r"^count: too many positional arguments$"):
        count(1, 2, 3)
    count(1, 2)  # a source's function has no items parameter: two positional arguments fit
    add(1, 2)


def test_the_decorators_take_keyword_arguments_only() -> None:
    """A positional argument other than the function is refused, with the decorator's name."""
    with pytest.raises(TypeError, match=r"^@segment takes keyword arguments only$"):
        segment(3)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"^@source takes keyword arguments only$"):
        source("x")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"^@segment takes keyword arguments only$"):
        segment(lambda items: items, name="x")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"^@source takes keyword arguments only$"):
        source(lambda: iter(()), 2)  # type: ignore[call-overload]


async def test_decorators_with_empty_parentheses() -> None:
    """``@source()`` and ``@segment()`` are the bare decorators."""

    @source()
    async def one() -> AsyncIterator[int]:
        yield 1

    @segment()
    def neg(items: Iterable[int]) -> Iterator[int]:
        for x in items:
            yield -x

    assert isinstance(one(), AbstractSource) and isinstance(neg(), AbstractSegment)
    assert await (one() | neg()).collect() == [-1]


def test_is_sync_follows_the_function(add: Any, count: Any, double: Any, sync_count: Any) -> None:
    """A ``def`` generator makes a sync stage, an ``async def`` one an async stage, for decorated and class-based
    sources and segments alike."""
    assert sync_count().is_sync is True and count().is_sync is False
    assert double().is_sync is True and add().is_sync is False

    class SyncSrc(AbstractSource[int]):
        def generate(self) -> Iterator[int]:
            yield 1

    class AsyncSrc(AbstractSource[int]):
        async def generate(self) -> AsyncIterator[int]:
            yield 1

    class SyncSeg(AbstractSegment[int, int]):
        def transform(self, items: Any) -> Iterator[int]:
            yield from items

    class AsyncSeg(AbstractSegment[int, int]):
        async def transform(self, items: Any) -> AsyncIterator[int]:
            async for x in items:
                yield x

    assert SyncSrc().is_sync is True and AsyncSrc().is_sync is False
    assert SyncSeg().is_sync is True and AsyncSeg().is_sync is False
    assert (sync_count() | double()).is_sync is True
    assert list((sync_count() | double()).iter_sync()) == [0, 2, 4]
    assert repr(SyncSeg()) == "<SyncSeg>"


def test_class_based_stages_keep_their_options() -> None:
    """The keyword options of ``AbstractSource`` and ``AbstractSegment`` are stored; a source's class may say it
    emits no metadata, which holds unless the constructor says otherwise."""

    class Src(AbstractSource[int]):
        async def generate(self) -> AsyncIterator[int]:
            yield 1

    class Quiet(Src):
        emits_metadata = False

    class Seg(AbstractSegment[int, int]):
        async def transform(self, items: Any) -> AsyncIterator[int]:
            async for x in items:
                yield x

    assert (Src().process_metadata, Src().blocking, Src().emits_metadata) == (False, False, True)
    s = Src(process_metadata=True, blocking=True, emits_metadata=False)
    assert (s.process_metadata, s.blocking, s.emits_metadata) == (True, True, False)
    assert Src(emits_metadata=True).emits_metadata is True
    assert Quiet().emits_metadata is False and Quiet(emits_metadata=None).emits_metadata is False
    assert Quiet(emits_metadata=True).emits_metadata is True
    assert (Seg().process_metadata, Seg().blocking) == (False, False)
    g = Seg(process_metadata=True, blocking=True)
    assert (g.process_metadata, g.blocking) == (True, True)
    g = Seg(blocking=True)
    assert (g.process_metadata, g.blocking) == (False, True)


# ----------------------------------------------------------------- the options at run time


async def test_blocking_runs_a_sync_stage_in_a_worker_thread_and_not_otherwise(sync_count: Any, where: Any) -> None:
    """``blocking=True`` moves a sync segment off the event loop's thread; without it, fed a plain iterable or a
    sync source, the segment runs inline in the loop's thread."""
    loop_thread = threading.get_ident()
    inline: list[int] = []
    threaded: list[int] = []
    assert await where(log=inline).collect([0, 1, 2]) == [0, 1, 2]
    assert await (sync_count() | where(log=inline)).collect() == [0, 1, 2]
    assert await where(log=threaded, blocking=True).collect([0, 1, 2]) == [0, 1, 2]
    assert await (sync_count() | where(log=threaded, blocking=True)).collect() == [0, 1, 2]
    assert inline == [loop_thread] * 6
    assert len(threaded) == 6 and loop_thread not in threaded


async def test_process_metadata_lets_a_segment_see_metadata(seen: Any) -> None:
    """A segment built with ``process_metadata=True`` sees the metadata in the stream, in place; without it, it
    sees the data only."""
    f = Flush(n=1)
    log: list[Any] = []
    assert await seen(log=log).collect([1, f, 2], metadata=True) == [1, f, 2]
    assert log == [1, f, 2]
    log = []
    assert await seen(log=log, process_metadata=False).collect([1, f, 2], metadata=True) == [1, f, 2]
    assert log == [1, 2]


# ----------------------------------------------------------------- | and callables


async def test_pipe_keeps_the_stages_in_the_order_written(add: Any, count: Any, double: Any) -> None:
    """``a | b`` runs a then b, for a source, a segment and a TalkPipe-style callable on either side."""

    def triple(items: Iterable[int]) -> Iterator[int]:
        for x in items:
            yield 3 * x

    p = count() | add(n=1)
    assert [s.label for s in p.stages] == ["count", "add"]
    assert await p.collect() == [1, 2, 3]
    p2 = add(n=1) | double()
    assert [s.label for s in p2.stages] == ["add", "double"]
    assert await p2.collect([1]) == [4]
    p3 = triple | add(n=1)
    assert [s.label for s in p3.stages] == ["triple", "add"]
    assert await p3.collect([1]) == [4]
    p4 = add(n=1) | triple
    assert await p4.collect([1]) == [6]
    assert await (count() | triple).collect() == [0, 3, 6]
    assert isinstance(p, Pipeline) and p.has_source and not p2.has_source


async def test_a_callable_becomes_a_segment_named_after_it() -> None:
    """``wrap_callable`` wraps a callable (TalkPipe's segment protocol) in a segment named after the function, or
    after its class when it has no ``__name__``; a given name wins; the options are kept."""

    def halve(items: Iterable[int]) -> Iterator[int]:
        for x in items:
            yield x // 2

    class Negate:
        def __call__(self, items: Iterable[int]) -> list[int]:
            return [-x for x in items]

    seg = wrap_callable(halve)
    assert isinstance(seg, CallableSegment) and seg.name == "halve" and seg.func is halve
    assert seg.is_sync is True
    assert await seg.collect([4, 6]) == [2, 3]
    neg = CallableSegment(Negate())
    assert neg.name == "Negate"
    assert await neg.collect([1, 2]) == [-1, -2], "a list result is iterated"
    assert list(neg.transform([3])) == [-3]
    named = CallableSegment(halve, name="h", process_metadata=True, blocking=True)
    assert (named.name, named.process_metadata, named.blocking) == ("h", True, True)
    plain = CallableSegment(halve)
    assert (plain.process_metadata, plain.blocking) == (False, False)
    assert CallableSegment(halve, blocking=True).process_metadata is False
    assert CallableSegment(halve, process_metadata=True).blocking is False


def test_wrap_callable_keeps_stages_and_refuses_other_objects(add: Any, count: Any) -> None:
    """A source or segment is used as it is; an object that is none of source, segment, callable or TalkPipe stage
    is refused with a message naming it."""
    a, c = add(), count()
    assert wrap_callable(a) is a and wrap_callable(c) is c
    with pytest.raises(TypeError, match=r"^cannot use 42 in a pipeline: not a source, segment or callable$"):
        wrap_callable(42)


def test_a_talkpipe_object_that_registered_one_of_our_stages_is_that_stage(add: Any) -> None:
    """A TalkPipe object carrying one of our stages (as ChatterLang registers them) stands for that stage."""
    ours = add(n=2)
    tp_segment = type("AbstractSegment", (), {"__module__": "talkpipe.pipe.core"})
    thing = tp_segment()
    thing.talkpipe_async_stage = ours
    assert wrap_callable(thing) is ours


# ----------------------------------------------------------------- field segments


@pytest.fixture(name="length")
def _length_stage() -> Any:
    @field_segment
    def length(value: Any, extra: int = 0) -> int:
        """The length of the value, plus extra."""
        return len(value) + extra

    return length


@pytest.fixture(name="alength")
def _alength_stage() -> Any:
    @field_segment
    async def alength(value: Any, extra: int = 0) -> int:
        return len(value) + extra

    return alength


@pytest.fixture(name="each")
def _each_stage() -> Any:
    @field_segment(field="xs", multi_emit=True)
    def each(value: list[Any]) -> list[Any]:
        return value

    return each


async def test_a_field_segment_reads_the_whole_item_by_default(alength: Any, length: Any) -> None:
    """No ``field``: the function gets the whole item and the result is yielded in its place; extra constructor
    arguments, positional or keyword, reach the function after the value; sync or async alike."""
    assert await length().collect(["ab", "abc"]) == [2, 3]
    assert await length(10).collect(["ab"]) == [12]
    assert await length(extra=10).collect(["ab"]) == [12]
    assert await alength().collect(["ab", "abc"]) == [2, 3]
    assert await alength(10).collect(["ab"]) == [12]
    assert await alength(extra=10).collect(["ab"]) == [12]
    assert await length(field="_").collect(["ab"]) == [2]


async def test_field_and_set_as(alength: Any, length: Any) -> None:
    """``field`` picks the value, ``set_as`` writes the result onto the item and yields that same item."""
    item = {"name": "abc"}
    out = await length(field="name", set_as="n").collect([item])
    assert out == [{"name": "abc", "n": 3}] and out[0] is item
    assert await alength(field="name", set_as="n", extra=1).collect([{"name": "ab"}]) == [{"name": "ab", "n": 3}]
    assert await length(field="name").collect([{"name": "abcd"}]) == [4]


async def test_multi_emit_yields_one_output_per_result(each: Any) -> None:
    """``multi_emit``: one output per element of the result; with ``set_as`` each output is a shallow copy of the
    item carrying its own result, and the input item is left as it was."""
    item = {"xs": [1, 2]}
    out = await each(set_as="x").collect([item])
    assert out == [{"xs": [1, 2], "x": 1}, {"xs": [1, 2], "x": 2}]
    assert out[0] is not out[1] and item == {"xs": [1, 2]}
    assert await each().collect([{"xs": [1, 2]}, {"xs": []}, {"xs": [3]}]) == [1, 2, 3]
    assert await each(multi_emit=False).collect([{"xs": [1, 2]}]) == [[1, 2]], "the constructor overrides"


async def test_multi_emit_is_off_by_default() -> None:
    """Without ``multi_emit`` a list result is one output."""

    @field_segment
    def pair(value: int) -> list[int]:
        return [value, value]

    assert await pair().collect([1]) == [[1, 1]]
    assert await pair(multi_emit=True).collect([1]) == [1, 1]


async def test_field_segment_options_defaults_and_names(alength: Any, each: Any, length: Any) -> None:
    """The field segment's options default to off (``field`` and ``set_as`` None, ``multi_emit``,
    ``process_metadata``, ``blocking`` False), may be given to the decorator or the constructor, and the class
    reads like the function; the options are not handed to the function."""
    s = length()
    assert (s.field, s.set_as, s.multi_emit, s.process_metadata, s.blocking) == (None, None, False, False, False)
    assert s.name == "length" and repr(s) == "<length>"
    s = length(field="a", set_as="b", multi_emit=True, process_metadata=True, blocking=True, name="L")
    assert (s.field, s.set_as, s.multi_emit, s.process_metadata, s.blocking, s.name) == (
        "a",
        "b",
        True,
        True,
        True,
        "L",
    )
    out = await length(field="a", set_as="b", process_metadata=True, blocking=True, name="L").collect([{"a": "xy"}])
    assert out == [{"a": "xy", "b": 2}]
    e = each()
    assert (e.field, e.multi_emit) == ("xs", True)
    assert isinstance(s, AbstractFieldSegment)
    assert (
        length.__name__ == "length"
        and length.__qualname__ == "_length_stage.<locals>.length"
        and length.__module__ == __name__
    )
    assert length.__doc__ == "The length of the value, plus extra."
    assert alength.__doc__ == "Field segment made from alength."
    assert length._original_func.__name__ == "length", "read by TalkPipe's documentation extraction"

    @field_segment(name="custom", blocking=True, process_metadata=True)
    def f(value: Any) -> Any:
        return value

    assert (f().name, f().blocking, f().process_metadata) == ("custom", True, True)
    assert f(name="other").name == "other"

    @field_segment()
    def g(value: Any) -> Any:
        return value

    assert g().name == "g" and g().set_as is None  # type: ignore[attr-defined]


async def test_a_field_segment_passes_metadata_through_when_it_takes_it(length: Any) -> None:
    """With ``process_metadata=True`` the metadata in the stream passes a field segment unchanged, in place, and is
    not given to the function."""
    f, m = Flush(n=1), Metadata(kind="mark")
    assert await length(process_metadata=True).collect(["a", f, "bb", m], metadata=True) == [1, f, 2, m]


async def test_a_class_based_field_segment() -> None:
    """``AbstractFieldSegment`` takes ``field``, ``set_as`` and ``multi_emit`` in that order; ``process_value`` may
    be sync or ``async``."""

    class Upper(AbstractFieldSegment):
        def process_value(self, value: Any) -> Any:
            return value.upper()

    class AUpper(AbstractFieldSegment):
        async def process_value(self, value: Any) -> Any:
            return value.upper()

    u = Upper("a", "b", True, process_metadata=True, blocking=True)
    assert (u.field, u.set_as, u.multi_emit, u.process_metadata, u.blocking) == ("a", "b", True, True, True)
    u = Upper()
    assert (u.field, u.set_as, u.multi_emit, u.process_metadata, u.blocking) == (None, None, False, False, False)
    for cls in (Upper, AUpper):
        assert await cls().collect(["ab"]) == ["AB"]
        assert await cls("k", "v").collect([{"k": "ab"}]) == [{"k": "ab", "v": "AB"}]
        assert await cls("k", "v", True).collect([{"k": "ab"}]) == [{"k": "ab", "v": "A"}, {"k": "ab", "v": "B"}]


async def test_a_builtin_without_a_signature_can_be_a_field_function() -> None:
    """A function Python cannot read a signature from (``max``) still makes a field segment, with or without
    decorator defaults."""
    biggest: Any = field_segment(max)
    assert await biggest().collect([[1, 3, 2]]) == [3]
    assert await biggest(field="xs", set_as="top").collect([{"xs": [4, 5]}]) == [{"xs": [4, 5], "top": 5}]
    keyed: Any = field_segment(key=abs)(max)
    assert await keyed().collect([[1, -3, 2]]) == [-3]
