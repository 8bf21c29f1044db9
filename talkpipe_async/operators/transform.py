"""Transform operators: map, filter, flat_map, scan, enumerate, fields, cast, distinct.

``map``, ``filter``, ``flat_map``/``flatten``, ``get_field`` and ``set_field``
are *fusable*: consecutive fusable operators run as one stage whose loop is
generated code (one ``async for`` over the upstream, the steps inlined with
local names), so ``map(f) | filter(g) | map(h)`` costs one async generator
per item, not three.  The pipeline core asks a stage to fuse with the next
one through :meth:`_Fusable.fuse_with`.

None of these operators processes metadata: it goes past them in order.
"""

from __future__ import annotations

import builtins
import inspect
import linecache
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable, Sequence
from types import CodeType, TracebackType
from typing import Any, Generic, Literal, TypeVar, overload

from .._core._errors import add_note
from .._core._fields import assign_field, extract_field
from .._core._segment import AbstractSegment, PassThrough

__all__ = [
    "accumulate",
    "cast",
    "distinct",
    "enumerate",
    "filter",
    "flat_map",
    "flatten",
    "get_field",
    "map",
    "scan",
    "set_field",
]

T = TypeVar("T")
U = TypeVar("U")
D = TypeVar("D")
R = TypeVar("R")
K = TypeVar("K", bound=Hashable)

log = logging.getLogger("talkpipe_async.operators")


def is_async_callable(fn: Any) -> bool:
    """True when calling *fn* returns an awaitable (``async def`` or async ``__call__``)."""
    if inspect.iscoroutinefunction(fn):
        return True
    return inspect.iscoroutinefunction(type(fn).__call__)


def _fn_name(fn: Any) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


# --------------------------------------------------------------------------- fusion

# A step: (kind, function, label).  Kinds: map, amap (async), filter, afilter,
# flat (fn returns an iterable; fn None: the item itself), aflat (async fn
# returns an iterable), agen (fn returns an async iterable).
_Step = tuple[str, Any, str]

_COMPILED: dict[tuple[str, ...], tuple[Callable[..., Any], CodeType, dict[int, int]]] = {}


def _generate(kinds: tuple[str, ...]) -> tuple[Callable[..., Any], CodeType, dict[int, int]]:
    """Build ``async def _fused(items, _where, f0, f1, ...)`` for these step kinds."""
    params = "".join(f", f{i}" for i in range(len(kinds)))
    lines = [f"async def _fused(items, _where{params}):", "    try:", "        async for x in items:"]
    indent = "            "
    where: dict[int, int] = {}
    for i, kind in builtins.enumerate(kinds):
        where[len(lines) + 1] = i  # 1-based line number of the line appended next
        if kind == "map":
            lines.append(f"{indent}x = f{i}(x)")
        elif kind == "amap":
            lines.append(f"{indent}x = await f{i}(x)")
        elif kind == "filter":
            lines.append(f"{indent}if not f{i}(x): continue")
        elif kind == "afilter":
            lines.append(f"{indent}if not await f{i}(x): continue")
        elif kind == "flat":
            lines.append(f"{indent}for x in (x if f{i} is None else f{i}(x)):")
            indent += "    "
        elif kind == "aflat":
            lines.append(f"{indent}for x in await f{i}(x):")
            indent += "    "
        elif kind == "agen":
            lines.append(f"{indent}async for x in f{i}(x):")
            indent += "    "
        else:  # pragma: no cover - kinds come from this module only
            raise ValueError(f"unknown step kind {kind!r}")
    lines.append(f"{indent}yield x")
    lines += ["    except Exception as exc:", "        _where(exc)", "        raise"]
    source = "\n".join(lines) + "\n"
    filename = f"<talkpipe_async fused {'+'.join(kinds)}>"
    # Registered so that tracebacks show the generated lines and error context finds the item.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    code = builtins.compile(source, filename, "exec")
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    func = namespace["_fused"]
    return func, func.__code__, where


def _compiled(kinds: tuple[str, ...]) -> tuple[Callable[..., Any], CodeType, dict[int, int]]:
    entry = _COMPILED.get(kinds)
    if entry is None:
        entry = _COMPILED[kinds] = _generate(kinds)
    return entry


class _Fusable(AbstractSegment[T, U]):
    """A stateless per-item operator that can merge with the next one into one stage.

    The stage runs a generated loop over its step list.  An error raised by a
    step gets a note naming the step (``in step filter(is_valid)``) besides
    the stage context the runner adds.
    """

    _steps: tuple[_Step, ...]

    def __init__(self, steps: tuple[_Step, ...], name: str | None) -> None:
        super().__init__()
        self._steps = steps
        self.name = name or " | ".join(label for _, _, label in steps)

    @property
    def is_sync(self) -> bool:
        """Always False: the fused loop is an async generator."""
        return False

    def fuse_with(self, nxt: Any) -> AbstractSegment[Any, Any] | None:
        """Return one stage doing ``self`` then *nxt*, or ``None`` if *nxt* cannot fuse.

        Neither operand changes; the result is a new stage.  Only plain
        fusable operators (not blocking, not metadata-aware) fuse.
        """
        if not isinstance(nxt, _Fusable) or self.blocking or nxt.blocking:
            return None
        if self.process_metadata or nxt.process_metadata:
            return None
        return _Fusable(self._steps + nxt._steps, f"{self.label} | {nxt.label}")

    def transform(self, items: AsyncIterator[T]) -> AsyncIterator[U]:
        """Run the generated loop over *items*."""
        steps = self._steps
        func, code, where = _compiled(tuple(kind for kind, _, _ in steps))

        def locate(exc: BaseException) -> None:
            tb: TracebackType | None = exc.__traceback__
            line = None
            while tb is not None:
                if tb.tb_frame.f_code is code:
                    line = tb.tb_lineno
                tb = tb.tb_next
            index = where.get(line) if line is not None else None
            if index is not None and len(steps) > 1:
                add_note(exc, f"in step {steps[index][2]} of fused stage {self.label!r}")

        result: AsyncIterator[U] = func(items, locate, *(fn for _, fn, _ in steps))
        return result


def fuse_stages(stages: Sequence[Any]) -> list[Any]:
    """Merge runs of fusable neighbours in *stages* (what the core does when it flattens)."""
    out: list[Any] = []
    for stage in stages:
        if out:
            hook = getattr(out[-1], "fuse_with", None)
            merged = hook(stage) if hook is not None else None
            if merged is not None:
                out[-1] = merged
                continue
        out.append(stage)
    return out


# --------------------------------------------------------------------------- map / filter / flat_map


class map(_Fusable[T, U]):
    """Apply *fn* to each item; *fn* may be ``def`` or ``async def``.

    ::

        await (map(str.upper) | map(len)).collect(["a", "bc"])   # [1, 2]

    Holds nothing between items.  Fuses with neighbouring map/filter stages.
    """

    @overload
    def __init__(self, fn: Callable[[T], Awaitable[U]], *, name: str | None = None) -> None: ...
    @overload
    def __init__(self, fn: Callable[[T], U], *, name: str | None = None) -> None: ...
    def __init__(self, fn: Callable[[T], Any], *, name: str | None = None) -> None:
        kind = "amap" if is_async_callable(fn) else "map"
        super().__init__(((kind, fn, f"map({_fn_name(fn)})"),), name)


class filter(_Fusable[T, T], PassThrough[T]):
    """Keep the items for which *pred* is true; *pred* may be ``def`` or ``async def``.

    ::

        await filter(lambda x: x % 2 == 0).collect(range(5))   # [0, 2, 4]

    Holds nothing between items.  Fuses with neighbouring map/filter stages.
    """

    def __init__(self, pred: Callable[[T], Any], *, name: str | None = None) -> None:
        kind = "afilter" if is_async_callable(pred) else "filter"
        super().__init__(((kind, pred, f"filter({_fn_name(pred)})"),), name)


class flat_map(_Fusable[T, U]):
    """Yield every element of ``fn(item)``.

    *fn* may return an iterable, be an ``async def`` returning an iterable,
    or be an async generator function (its items are yielded as they come)::

        await flat_map(str.split).collect(["a b", "c"])   # ["a", "b", "c"]

    Holds only the iterable being expanded.  Fuses with neighbouring stages.
    """

    def __init__(
        self,
        fn: Callable[[T], Iterable[U]] | Callable[[T], Awaitable[Iterable[U]]] | Callable[[T], AsyncIterator[U]],
        *,
        name: str | None = None,
    ) -> None:
        if inspect.isasyncgenfunction(fn):
            kind = "agen"
        elif is_async_callable(fn):
            kind = "aflat"
        else:
            kind = "flat"
        super().__init__(((kind, fn, f"flat_map({_fn_name(fn)})"),), name)


class flatten(_Fusable[Iterable[U], U]):
    """Yield the elements of each item (an iterable), TalkPipe's ``flatten``.

    ::

        await flatten().collect([[1, 2], [], [3]])   # [1, 2, 3]

    Strings are iterables too: ``"ab"`` becomes ``"a", "b"``.
    """

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__((("flat", None, "flatten"),), name)


class get_field(_Fusable[Any, Any]):
    """Yield the value at a dotted *path* of each item (``"user.name"``, ``"rows.0"``).

    ::

        await get_field("a.b").collect([{"a": {"b": 1}}])   # [1]

    A missing field raises ``KeyError`` naming the path.
    """

    def __init__(self, path: str, *, name: str | None = None) -> None:
        def get(item: Any) -> Any:
            return extract_field(item, path)

        super().__init__((("map", get, f"get_field({path!r})"),), name)


class set_field(_Fusable[T, T]):
    """Set the dotted *path* of each item to ``fn(value)`` and yield the item.

    ``value`` is the whole item, or the value at ``field`` when given.  *fn*
    may be ``def`` or ``async def``.  The item is changed in place::

        await set_field("n", len, field="text").collect([{"text": "abc"}])   # [{"text": "abc", "n": 3}]
    """

    def __init__(
        self, path: str, fn: Callable[[Any], Any], *, field: str | None = None, name: str | None = None
    ) -> None:
        if is_async_callable(fn):

            async def aset(item: Any) -> Any:
                assign_field(item, path, await fn(extract_field(item, field)))
                return item

            step: _Step = ("amap", aset, f"set_field({path!r})")
        else:

            def set_(item: Any) -> Any:
                assign_field(item, path, fn(extract_field(item, field)))
                return item

            step = ("map", set_, f"set_field({path!r})")
        super().__init__((step,), name)


# --------------------------------------------------------------------------- stateful, per run


class _Missing:
    """Marks "no initial value given" (never an item in the stream)."""


_MISSING = _Missing()


class scan(AbstractSegment[T, U]):
    """Running accumulation, as :func:`itertools.accumulate`: yield ``acc = fn(acc, item)``.

    Without *initial* the first item starts the accumulator (and is
    yielded); with *initial* it is yielded first.  *fn* may be ``async def``::

        await scan(lambda a, b: a + b).collect([1, 2, 3])   # [1, 3, 6]

    Holds one accumulator.
    """

    @overload
    def __init__(
        self: scan[T, U], fn: Callable[[U, T], Awaitable[U]], *, initial: U, name: str | None = None
    ) -> None: ...
    @overload
    def __init__(self: scan[T, U], fn: Callable[[U, T], U], *, initial: U, name: str | None = None) -> None: ...
    @overload
    def __init__(self: scan[T, T], fn: Callable[[T, T], Awaitable[T]], *, name: str | None = None) -> None: ...
    @overload
    def __init__(self: scan[T, T], fn: Callable[[T, T], T] | None = None, *, name: str | None = None) -> None: ...
    def __init__(
        self,
        fn: Callable[[Any, T], Any] | None = None,
        *,
        initial: Any = _MISSING,
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.fn = fn if fn is not None else (lambda a, b: a + b)
        self.initial = initial
        self.name = name or f"scan({_fn_name(self.fn)})"

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[U]:
        """Yield the running accumulation."""
        fn = self.fn
        is_async = is_async_callable(fn)
        acc: Any = self.initial
        if acc is not _MISSING:
            yield acc
        async for x in items:
            if acc is _MISSING:
                acc = x
            elif is_async:
                acc = await fn(acc, x)
            else:
                acc = fn(acc, x)
            yield acc


accumulate = scan


class enumerate(AbstractSegment[T, tuple[int, T]]):
    """Yield ``(index, item)`` pairs, counting from *start*.

    ::

        await enumerate(start=1).collect("ab")   # [(1, "a"), (2, "b")]
    """

    def __init__(self, start: int = 0, *, name: str | None = None) -> None:
        super().__init__()
        self.start = start
        self.name = name or "enumerate"

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[tuple[int, T]]:
        """Yield the numbered items."""
        i = self.start
        async for x in items:
            yield (i, x)
            i += 1


_CAST_NAMES: dict[str, Callable[[Any], Any]] = {
    "int": int,
    "float": float,
    "str": str,
    "bool": bool,
    "bytes": bytes,
    "list": list,
    "tuple": tuple,
    "dict": dict,
}


class cast(AbstractSegment[T, U], Generic[T, U]):
    """Convert each item with *to* (a type, a function, or a name like ``"int"``).

    ``on_error`` says what happens when the conversion raises:

    * ``"raise"`` (default): the error propagates (the runner names the stage and item);
    * ``"skip"``: the item is left out; ``skipped`` counts such items (over
      every run of this instance) and each one is logged at WARNING with the
      stage, the item and the error;
    * ``"replace"``: ``default`` is yielded instead (counted in ``replaced``).

    ::

        await cast(int, on_error="skip").collect(["1", "x", "3"])   # [1, 3]

    ``field`` / ``set_as`` convert one field and write it back (TalkPipe style).
    """

    @overload
    def __init__(
        self: cast[Any, U],
        to: Callable[[Any], U],
        *,
        on_error: Literal["raise", "skip"] = ...,
        field: str | None = ...,
        name: str | None = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: cast[Any, R | D],
        to: Callable[[Any], R],
        *,
        on_error: Literal["replace"],
        default: D,
        field: str | None = ...,
        name: str | None = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: cast[T, T],
        to: Callable[[Any], Any] | str,
        *,
        on_error: Literal["raise", "skip", "replace"] = ...,
        default: Any = ...,
        field: str | None = ...,
        set_as: str,
        name: str | None = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: cast[Any, Any],
        to: Callable[[Any], Any] | str,
        *,
        on_error: Literal["raise", "skip", "replace"] = ...,
        default: Any = ...,
        field: str | None = ...,
        set_as: str | None = ...,
        name: str | None = ...,
    ) -> None: ...
    def __init__(
        self,
        to: Callable[[Any], Any] | str,
        *,
        on_error: Literal["raise", "skip", "replace"] = "raise",
        default: Any = None,
        field: str | None = None,
        set_as: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(to, str):
            if to not in _CAST_NAMES:
                raise ValueError(f"cast: unknown type name {to!r} (known: {', '.join(_CAST_NAMES)})")
            to = _CAST_NAMES[to]
        if on_error not in ("raise", "skip", "replace"):
            raise ValueError(f"cast: on_error must be 'raise', 'skip' or 'replace', not {on_error!r}")
        self.to = to
        self.on_error = on_error
        self.default = default
        self.field = field
        self.set_as = set_as
        self.skipped = 0
        self.replaced = 0
        self.name = name or f"cast({_fn_name(to)})"

    async def transform(self, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Yield the converted items."""
        to, policy, field, set_as = self.to, self.on_error, self.field, self.set_as
        async for item in items:
            try:
                value = to(extract_field(item, field) if field is not None else item)
            except Exception as exc:
                if policy == "raise":
                    raise
                if policy == "skip":
                    self.skipped += 1
                    log.warning("%s: skipped item %r: %s: %s", self.label, item, type(exc).__name__, exc)
                    continue
                self.replaced += 1
                value = self.default
            if set_as is not None:
                assign_field(item, set_as, value)
                yield item
            else:
                yield value


class distinct(PassThrough[T], Generic[T, K]):
    """Leave out items whose key was seen before.

    ``key`` (default: the item) must return a hashable value.  With
    ``window=None`` every key ever seen is remembered: memory grows with the
    number of *distinct* keys (use it for bounded key spaces).  With
    ``window=n`` an item is left out only if its key occurred among the
    previous *n* input items: memory is bounded by *n* keys::

        await distinct().collect([1, 2, 1, 3])            # [1, 2, 3]
        await distinct(window=1).collect([1, 1, 2, 1])    # [1, 2, 1]
    """

    def __init__(
        self, key: Callable[[T], K] | None = None, *, window: int | None = None, name: str | None = None
    ) -> None:
        super().__init__()
        if window is not None and window < 1:
            raise ValueError("distinct: window must be at least 1")
        self.key = key
        self.window = window
        self.name = name or "distinct"

    async def transform(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """Yield the first item of each key (within the window)."""
        key = self.key
        if self.window is None:
            seen: set[Any] = set()
            async for x in items:
                k = key(x) if key is not None else x
                if k not in seen:
                    seen.add(k)
                    yield x
            return
        recent: deque[Any] = deque()
        counts: dict[Any, int] = {}
        window = self.window
        async for x in items:
            k = key(x) if key is not None else x
            fresh = k not in counts
            recent.append(k)
            counts[k] = counts.get(k, 0) + 1
            if len(recent) > window:
                old = recent.popleft()
                left = counts[old] - 1
                if left:
                    counts[old] = left
                else:
                    del counts[old]
            if fresh:
                yield x
