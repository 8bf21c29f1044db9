"""Sources, segments and the decorators that make them from generator functions."""

from __future__ import annotations

import inspect
from abc import abstractmethod
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Concatenate, Literal, NoReturn, ParamSpec, TypeVar, overload

from ._chain import Chain, In, Out
from ._fields import assign_field, extract_field
from ._metadata import Metadata

if TYPE_CHECKING:
    from typing_extensions import Never

    from ._factories import (
        AnyItemFieldSegmentDecorator,
        AnyItemMultiFieldSegmentDecorator,
        FieldSegmentDecorator,
        FieldSegmentFactory,
        ItemSegmentDecorator,
        MultiFieldSegmentDecorator,
        SegmentDecorator,
        SegmentFactory,
        SourceDecorator,
        SourceFactory,
    )
    from ._pipeline import Pipeline

    _NoInput = Never  # a source reads nothing: its pipelines are Pipeline[Never, Out]

T = TypeVar("T")
U = TypeVar("U")
V = TypeVar("V")
E = TypeVar("E")
P = ParamSpec("P")
if not TYPE_CHECKING:
    _NoInput = NoReturn  # the same type as Never (typing.Never is Python 3.11+)

__all__ = [
    "AbstractFieldSegment",
    "AbstractSegment",
    "AbstractSource",
    "CallableSegment",
    "PassThrough",
    "field_segment",
    "segment",
    "source",
    "wrap_callable",
]


class _Node:
    """What sources and segments share: a name, run options and ``|``."""

    process_metadata: bool = False
    blocking: bool = False
    emits_metadata: bool = True
    name: str = ""

    def _init_options(self, process_metadata: bool, blocking: bool) -> None:
        self.process_metadata = process_metadata
        self.blocking = blocking

    @property
    def is_sync(self) -> bool:
        """True when the stage is a plain (sync) generator: the sync mirror."""
        return not _is_async_callable(self._entry())

    def _entry(self) -> Callable[..., Any]:
        raise NotImplementedError

    @property
    def label(self) -> str:
        """The name used in errors and statistics."""
        return self.name or type(self).__name__

    if not TYPE_CHECKING:  # typed per kind of stage in AbstractSource and AbstractSegment

        def __or__(self, other: Any) -> Pipeline[Any, Any]:
            from ._pipeline import Pipeline

            return Pipeline(self, other)

        def __ror__(self, other: Any) -> Pipeline[Any, Any]:
            from ._pipeline import Pipeline

            return Pipeline(other, self)

    def __repr__(self) -> str:
        return f"<{self.label}>"


def _is_async_callable(fn: Callable[..., Any]) -> bool:
    return inspect.isasyncgenfunction(fn)


class AbstractSource(Chain[_NoInput, Out], _Node):
    """The start of a pipeline: ``generate()`` yields the items.

    Write ``generate`` as an ``async def`` generator; a plain ``def`` generator
    works too (it runs inline in the event loop, or in a worker thread when
    ``blocking=True``).  A source that never yields :class:`Metadata` may say
    so with ``emits_metadata=False``: the runner then installs no metadata
    plumbing after it.
    """

    def __init__(
        self, *, process_metadata: bool = False, blocking: bool = False, emits_metadata: bool | None = None
    ) -> None:
        self._init_options(process_metadata, blocking)
        if emits_metadata is not None:  # else the class attribute (True unless a subclass says otherwise)
            self.emits_metadata = emits_metadata

    @abstractmethod
    def generate(self) -> AsyncIterator[Out] | Iterator[Out]:
        """Yield the items of the stream."""

    @overload
    def __or__(self, other: PassThrough[Out]) -> Pipeline[Never, Out]: ...
    @overload
    def __or__(
        self, other: AbstractSegment[Out, V] | Pipeline[Out, V] | Callable[[Iterable[Out]], Iterable[V]]
    ) -> Pipeline[Never, V]: ...
    def __or__(self, other: Any) -> Pipeline[Never, Any]:
        """Chain this source with a segment or pipeline: a new :class:`Pipeline` that takes no input."""
        from ._pipeline import Pipeline

        return Pipeline(self, other)

    if TYPE_CHECKING:  # nothing goes before a source (Pipeline raises TypeError at run time)

        def __ror__(self, other: NoReturn) -> NoReturn: ...

    def _entry(self) -> Callable[..., Any]:
        return type(self).generate


class AbstractSegment(Chain[In, Out], _Node):
    """A stage: ``transform(items)`` reads the upstream items and yields its own.

    Write ``transform`` as an ``async def`` generator over ``items`` (an async
    iterator); a plain ``def`` generator over a sync iterable works too (the
    sync mirror).  Segments never see :class:`Metadata` unless
    ``process_metadata=True``.
    """

    def __init__(self, *, process_metadata: bool = False, blocking: bool = False) -> None:
        self._init_options(process_metadata, blocking)

    @abstractmethod
    def transform(self, items: Any) -> AsyncIterator[Out] | Iterator[Out]:
        """Read *items* and yield the output items."""

    @overload
    def __or__(self, other: PassThrough[Out]) -> Pipeline[In, Out]: ...
    @overload
    def __or__(
        self, other: AbstractSegment[Out, V] | Pipeline[Out, V] | Callable[[Iterable[Out]], Iterable[V]]
    ) -> Pipeline[In, V]: ...
    def __or__(self, other: Any) -> Pipeline[In, Any]:
        """Chain this segment with the next stage: a new :class:`Pipeline`.

        The next stage must read what this one yields: ``Segment[int, str] |
        Segment[bytes, X]`` is a type error.
        """
        from ._pipeline import Pipeline

        return Pipeline(self, other)

    def __ror__(self, other: Callable[[Iterable[Any]], Iterable[In]]) -> Pipeline[Any, Out]:
        """A TalkPipe-style callable segment before this one: a new :class:`Pipeline`."""
        from ._pipeline import Pipeline

        return Pipeline(other, self)

    def _entry(self) -> Callable[..., Any]:
        return type(self).transform


class PassThrough(AbstractSegment[T, T]):
    """A segment whose output items are its input items (a filter, a sink that passes items on, a delay).

    Subclass it instead of ``AbstractSegment[T, T]``: ``|`` then types the
    stage by what comes before it, even where a type checker cannot solve
    ``T`` from the stage's own arguments (``numbers() | take(3)`` is a
    pipeline of ``int`` under pyright as under mypy).  At run time it is an
    :class:`AbstractSegment` like any other.
    """


class CallableSegment(AbstractSegment[Any, Any]):
    """A segment around any callable that takes an iterable and returns an iterator.

    This is TalkPipe's own segment protocol, so an existing TalkPipe segment
    instance drops into an async pipeline unchanged.
    """

    def __init__(
        self,
        func: Callable[[Iterable[Any]], Iterable[Any]],
        *,
        name: str | None = None,
        process_metadata: bool = False,
        blocking: bool = False,
    ) -> None:
        super().__init__(process_metadata=process_metadata, blocking=blocking)
        self.func = func
        self.name = name or getattr(func, "__name__", None) or type(func).__name__

    def transform(self, items: Iterable[Any]) -> Iterator[Any]:
        """Call the wrapped function on the sync iterable of items."""
        return iter(self.func(items))

    def _entry(self) -> Callable[..., Any]:
        return self.func


def wrap_callable(obj: Any) -> AbstractSegment[Any, Any] | AbstractSource[Any]:
    """Return *obj* if it is a source or segment, else wrap a callable segment."""
    if isinstance(obj, (AbstractSegment, AbstractSource)):
        return obj
    from ._talkpipe import adapt_talkpipe  # a TalkPipe object: by class name, TalkPipe is not imported here

    adapted = adapt_talkpipe(obj)
    if adapted is not None:
        return adapted
    if callable(obj):
        return CallableSegment(obj)
    raise TypeError(f"cannot use {obj!r} in a pipeline: not a source, segment or callable")


_OPTIONS = ("process_metadata", "blocking", "name", "emits_metadata")


def _split_options(defaults: dict[str, Any], given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    merged = {**defaults, **given}
    options = {k: merged.pop(k) for k in _OPTIONS if k in merged}
    return options, merged


def _positional_names(func: Callable[..., Any], skip: int) -> list[str]:
    """The parameters of *func* a positional argument fills, in order, after the first *skip*."""
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # no signature to read: no default is dropped
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in parameters if p.kind in kinds][skip:]


def _make_class(
    func: Callable[..., Any], base: type[Any], method: str, defaults: dict[str, Any], suffix: str
) -> type[Any]:
    signature = inspect.signature(func)
    positional = _positional_names(func, 1 if method == "transform" else 0)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        filled = positional[: len(args)]  # a decorator default these arguments give is overridden
        options, merged = _split_options({k: v for k, v in defaults.items() if k not in filled}, kwargs)
        base.__init__(
            self,
            process_metadata=options.get("process_metadata", False),
            blocking=options.get("blocking", False),
        )
        if "emits_metadata" in options:
            self.emits_metadata = options["emits_metadata"]
        self.name = options.get("name") or func.__name__
        self._args = args
        self._kwargs = merged
        leading = (None,) if method == "transform" else ()
        try:
            signature.bind(*leading, *args, **merged)
        except TypeError as exc:
            raise TypeError(f"{func.__name__}: {exc}") from None

    def call(self: Any, *items: Any) -> Any:
        return func(*items, *self._args, **self._kwargs)

    call.__doc__ = func.__doc__
    namespace = {
        "__init__": __init__,
        method: call,
        "_entry": lambda self: func,
        "__doc__": func.__doc__ or f"{suffix} made from {func.__name__}.",
        "__module__": func.__module__,
        "__qualname__": func.__qualname__,
        "_original_func": func,
    }
    return type(func.__name__, (base,), namespace)


def _decorator(base: type[Any], method: str, suffix: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return _make_class(args[0], base, method, {}, suffix)
    if args:
        raise TypeError(f"@{suffix.lower()} takes keyword arguments only")
    return lambda func: _make_class(func, base, method, kwargs, suffix)


@overload
def source(func: Callable[P, AsyncIterator[U]], /) -> SourceFactory[P, U]: ...
@overload
def source(func: Callable[P, Iterator[U]], /) -> SourceFactory[P, U]: ...
@overload
def source(
    *,
    name: str | None = None,
    process_metadata: bool = False,
    blocking: bool = False,
    emits_metadata: bool | None = None,
    **defaults: Any,
) -> SourceDecorator: ...
def source(*args: Any, **kwargs: Any) -> Any:
    """Turn a generator function (``async def`` or ``def``) into a source class.

    The class's constructor takes the function's parameters; keyword
    arguments given to the decorator are defaults that constructor arguments
    override.  ``process_metadata``, ``blocking`` and ``name`` are options,
    accepted in either place::

        @source
        async def numbers(n: int = 10):
            for i in range(n):
                yield i

        pipeline = numbers(n=5) | ...
    """
    return _decorator(AbstractSource, "generate", "Source", args, kwargs)


@overload
def segment(func: Callable[Concatenate[AsyncIterator[T], P], AsyncIterator[U]], /) -> SegmentFactory[P, T, U]: ...
@overload
def segment(func: Callable[Concatenate[Iterable[T], P], Iterator[U]], /) -> SegmentFactory[P, T, U]: ...
@overload
def segment(
    *, name: str | None = None, process_metadata: bool = False, blocking: bool = False, **defaults: Any
) -> SegmentDecorator: ...
def segment(*args: Any, **kwargs: Any) -> Any:
    """Turn a generator function over ``items`` into a segment class.

    The first parameter receives the upstream items (an async iterator for an
    ``async def`` generator, a sync iterable for a ``def`` generator); the
    other parameters become constructor parameters::

        @segment
        async def add(items, n: int = 1):
            async for x in items:
                yield x + n

        pipeline = add(n=2) | add()
    """
    return _decorator(AbstractSegment, "transform", "Segment", args, kwargs)


class AbstractFieldSegment(AbstractSegment[Any, Any]):
    """A segment that computes a value from one field of each item.

    ``field`` is a dotted path (``None`` or ``"_"``: the whole item);
    ``set_as`` writes the result onto the item and yields the item instead of
    the result; ``multi_emit`` treats the result as an iterable of results
    (one output per result; with ``set_as`` each output is a shallow copy).
    ``process_value`` may be sync or ``async``.
    """

    def __init__(
        self,
        field: str | None = None,
        set_as: str | None = None,
        multi_emit: bool = False,
        *,
        process_metadata: bool = False,
        blocking: bool = False,
    ) -> None:
        super().__init__(process_metadata=process_metadata, blocking=blocking)
        self.field = field
        self.set_as = set_as
        self.multi_emit = multi_emit

    @abstractmethod
    def process_value(self, value: Any) -> Any:
        """Compute the result for one field value (may be a coroutine function)."""

    def _results(self, item: Any, processed: Any) -> Iterator[Any]:
        if not self.multi_emit:
            processed = (processed,)
        for result in processed:
            if self.set_as is None:
                yield result
            else:
                out = item.copy() if self.multi_emit else item
                assign_field(out, self.set_as, result)
                yield out

    async def transform(self, items: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Yield the result (or the updated item) for each input item."""
        is_async = inspect.iscoroutinefunction(self.process_value)
        field = self.field
        async for item in items:
            if isinstance(item, Metadata):  # TalkPipe's metadata is converted to ours at its stages
                yield item
                continue
            value = extract_field(item, field)
            processed = await self.process_value(value) if is_async else self.process_value(value)
            for out in self._results(item, processed):
                yield out


@overload
def field_segment(func: Callable[Concatenate[T, P], Coroutine[Any, Any, U]], /) -> FieldSegmentFactory[P, T, U]: ...
@overload
def field_segment(func: Callable[Concatenate[T, P], U], /) -> FieldSegmentFactory[P, T, U]: ...
@overload
def field_segment(
    *,
    set_as: str,
    field: str | None = None,
    multi_emit: bool = False,
    name: str | None = None,
    process_metadata: bool = False,
    blocking: bool = False,
    **defaults: Any,
) -> ItemSegmentDecorator: ...
@overload
def field_segment(
    *,
    field: None = None,
    multi_emit: Literal[False] = False,
    name: str | None = None,
    process_metadata: bool = False,
    blocking: bool = False,
    **defaults: Any,
) -> FieldSegmentDecorator: ...
@overload
def field_segment(
    *,
    field: str,
    multi_emit: Literal[False] = False,
    name: str | None = None,
    process_metadata: bool = False,
    blocking: bool = False,
    **defaults: Any,
) -> AnyItemFieldSegmentDecorator: ...
@overload
def field_segment(
    *,
    multi_emit: Literal[True],
    field: None = None,
    name: str | None = None,
    process_metadata: bool = False,
    blocking: bool = False,
    **defaults: Any,
) -> MultiFieldSegmentDecorator: ...
@overload
def field_segment(
    *,
    multi_emit: Literal[True],
    field: str,
    name: str | None = None,
    process_metadata: bool = False,
    blocking: bool = False,
    **defaults: Any,
) -> AnyItemMultiFieldSegmentDecorator: ...
def field_segment(*args: Any, **kwargs: Any) -> Any:
    """Turn a function of one value into an :class:`AbstractFieldSegment` class.

    ``field``, ``set_as`` and ``multi_emit`` may be given to the decorator
    (defaults) or to the constructor; other keyword arguments go to the
    function.  The function may be ``def`` or ``async def``::

        @field_segment(field="email")
        def domain(email: str) -> str:
            return email.split("@")[1]

        pipeline = domain(set_as="domain")
    """

    def decorate(func: Callable[..., Any]) -> type[AbstractFieldSegment]:
        is_async = inspect.iscoroutinefunction(func)
        positional = _positional_names(func, 1)

        def __init__(self: Any, *init_args: Any, **init_kwargs: Any) -> None:
            filled = positional[: len(init_args)]  # a decorator default these arguments give is overridden
            merged = {**{k: v for k, v in kwargs.items() if k not in filled}, **init_kwargs}
            AbstractFieldSegment.__init__(
                self,
                field=merged.pop("field", None),
                set_as=merged.pop("set_as", None),
                multi_emit=merged.pop("multi_emit", False),
                process_metadata=merged.pop("process_metadata", False),
                blocking=merged.pop("blocking", False),
            )
            self.name = merged.pop("name", None) or func.__name__
            self._args = init_args
            self._kwargs = merged

        if is_async:

            async def process_value(self: Any, value: Any) -> Any:
                return await func(value, *self._args, **self._kwargs)

        else:

            def process_value(self: Any, value: Any) -> Any:  # type: ignore[misc]
                return func(value, *self._args, **self._kwargs)

        namespace = {
            "__init__": __init__,
            "process_value": process_value,
            "__doc__": func.__doc__ or f"Field segment made from {func.__name__}.",
            "__module__": func.__module__,
            "__qualname__": func.__qualname__,
            "_original_func": func,
        }
        return type(func.__name__, (AbstractFieldSegment,), namespace)

    if len(args) == 1 and callable(args[0]) and not kwargs:
        return decorate(args[0])
    return decorate
