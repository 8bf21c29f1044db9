"""What ``@source``, ``@segment`` and ``@field_segment`` make, as a type checker sees it.

At run time each decorator returns a class (a subclass of
:class:`AbstractSource`, :class:`AbstractSegment` or
:class:`AbstractFieldSegment`).  For the checker it is a *factory*: called
with the function's own parameters (kept with ``ParamSpec``) it returns a
stage whose item types come from the function's annotations::

    @source
    async def numbers(n: int = 10) -> AsyncIterator[int]: ...   # numbers(n=3): AbstractSource[int]

A call that also passes a stage option (``name``, ``process_metadata``,
``blocking``, ``emits_metadata``; ``field``, ``set_as``, ``multi_emit`` for a
field segment) is checked loosely: Python's typing cannot add keyword
parameters to a ``ParamSpec``, so such a call accepts any other arguments.
Nothing here exists per item; these protocols only describe the classes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, Protocol, TypeVar, overload

if TYPE_CHECKING:
    from ._segment import AbstractSegment, AbstractSource

P = ParamSpec("P")
In = TypeVar("In", contravariant=True)
Out = TypeVar("Out", covariant=True)
T = TypeVar("T")
U = TypeVar("U")
V = TypeVar("V")
E = TypeVar("E")

__all__ = [
    "AnyItemFieldSegmentDecorator",
    "AnyItemMultiFieldSegmentDecorator",
    "FieldSegmentDecorator",
    "FieldSegmentFactory",
    "ItemSegmentDecorator",
    "ItemSegmentFactory",
    "MultiFieldSegmentDecorator",
    "SegmentDecorator",
    "SegmentFactory",
    "SourceDecorator",
    "SourceFactory",
]


class SourceFactory(Protocol[P, Out]):
    """A class made by ``@source``: call it with the function's parameters for an ``AbstractSource[Out]``."""

    __name__: str

    @overload
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> AbstractSource[Out]: ...
    @overload
    def __call__(
        self,
        *args: Any,
        name: str | None,
        process_metadata: bool = ...,
        blocking: bool = ...,
        emits_metadata: bool | None = ...,
        **kwargs: Any,
    ) -> AbstractSource[Out]: ...
    @overload
    def __call__(
        self, *args: Any, process_metadata: bool, blocking: bool = ..., emits_metadata: bool | None = ..., **kwargs: Any
    ) -> AbstractSource[Out]: ...
    @overload
    def __call__(
        self, *args: Any, blocking: bool, emits_metadata: bool | None = ..., **kwargs: Any
    ) -> AbstractSource[Out]: ...
    @overload
    def __call__(self, *args: Any, emits_metadata: bool | None, **kwargs: Any) -> AbstractSource[Out]: ...


class SourceDecorator(Protocol):
    """``@source(...)`` with options: takes the generator function."""

    @overload
    def __call__(self, func: Callable[P, AsyncIterator[U]], /) -> SourceFactory[P, U]: ...
    @overload
    def __call__(self, func: Callable[P, Iterator[U]], /) -> SourceFactory[P, U]: ...


class SegmentFactory(Protocol[P, In, Out]):
    """A class made by ``@segment``: call it with the parameters after ``items`` for an ``AbstractSegment``."""

    __name__: str

    @overload
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> AbstractSegment[In, Out]: ...
    @overload
    def __call__(
        self, *args: Any, name: str | None, process_metadata: bool = ..., blocking: bool = ..., **kwargs: Any
    ) -> AbstractSegment[In, Out]: ...
    @overload
    def __call__(
        self, *args: Any, process_metadata: bool, blocking: bool = ..., **kwargs: Any
    ) -> AbstractSegment[In, Out]: ...
    @overload
    def __call__(self, *args: Any, blocking: bool, **kwargs: Any) -> AbstractSegment[In, Out]: ...


class SegmentDecorator(Protocol):
    """``@segment(...)`` with options: takes the generator function."""

    @overload
    def __call__(
        self, func: Callable[Concatenate[AsyncIterator[T], P], AsyncIterator[U]], /
    ) -> SegmentFactory[P, T, U]: ...
    @overload
    def __call__(self, func: Callable[Concatenate[Iterable[T], P], Iterator[U]], /) -> SegmentFactory[P, T, U]: ...


class FieldSegmentFactory(Protocol[P, In, Out]):
    """A class made by ``@field_segment``: a segment from ``In`` items to the function's results.

    ``set_as=`` gives back the items themselves (their type comes from the
    items upstream), ``field=`` reads any item, ``multi_emit=True`` yields the
    elements of each result.
    """

    __name__: str

    @overload
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> AbstractSegment[In, Out]: ...
    @overload
    def __call__(
        self,
        *args: Any,
        set_as: str,
        field: str | None = ...,
        multi_emit: bool = ...,
        name: str | None = ...,
        process_metadata: bool = ...,
        blocking: bool = ...,
        **kwargs: Any,
    ) -> AbstractSegment[T, T]: ...
    @overload
    def __call__(
        self: FieldSegmentFactory[P, In, Iterable[E]],
        *args: Any,
        multi_emit: Literal[True],
        field: str | None = ...,
        name: str | None = ...,
        process_metadata: bool = ...,
        blocking: bool = ...,
        **kwargs: Any,
    ) -> AbstractSegment[Any, E]: ...
    @overload
    def __call__(
        self,
        *args: Any,
        field: str | None,
        multi_emit: Literal[False] = ...,
        name: str | None = ...,
        process_metadata: bool = ...,
        blocking: bool = ...,
        **kwargs: Any,
    ) -> AbstractSegment[Any, Out]: ...
    @overload
    def __call__(
        self, *args: Any, name: str | None, process_metadata: bool = ..., blocking: bool = ..., **kwargs: Any
    ) -> AbstractSegment[In, Out]: ...
    @overload
    def __call__(
        self, *args: Any, process_metadata: bool, blocking: bool = ..., **kwargs: Any
    ) -> AbstractSegment[In, Out]: ...
    @overload
    def __call__(self, *args: Any, blocking: bool, **kwargs: Any) -> AbstractSegment[In, Out]: ...


class ItemSegmentFactory(Protocol[P]):
    """A class made by ``@field_segment(set_as=...)``: its segments yield the items they read."""

    __name__: str

    @overload
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> AbstractSegment[T, T]: ...
    @overload
    def __call__(
        self,
        *args: Any,
        set_as: str | None,
        field: str | None = ...,
        multi_emit: bool = ...,
        name: str | None = ...,
        process_metadata: bool = ...,
        blocking: bool = ...,
        **kwargs: Any,
    ) -> AbstractSegment[Any, Any]: ...
    @overload
    def __call__(
        self,
        *args: Any,
        field: str | None,
        multi_emit: bool = ...,
        name: str | None = ...,
        process_metadata: bool = ...,
        blocking: bool = ...,
        **kwargs: Any,
    ) -> AbstractSegment[T, T]: ...
    @overload
    def __call__(
        self, *args: Any, name: str | None, process_metadata: bool = ..., blocking: bool = ..., **kwargs: Any
    ) -> AbstractSegment[T, T]: ...
    @overload
    def __call__(
        self, *args: Any, process_metadata: bool, blocking: bool = ..., **kwargs: Any
    ) -> AbstractSegment[T, T]: ...
    @overload
    def __call__(self, *args: Any, blocking: bool, **kwargs: Any) -> AbstractSegment[T, T]: ...
    @overload
    def __call__(self, *args: Any, multi_emit: bool, **kwargs: Any) -> AbstractSegment[T, T]: ...


class FieldSegmentDecorator(Protocol):
    """``@field_segment(...)`` with options (no ``field``, ``set_as`` or ``multi_emit``): the items are the values."""

    @overload
    def __call__(
        self, func: Callable[Concatenate[V, P], Coroutine[Any, Any, U]], /
    ) -> FieldSegmentFactory[P, V, U]: ...
    @overload
    def __call__(self, func: Callable[Concatenate[V, P], U], /) -> FieldSegmentFactory[P, V, U]: ...


class AnyItemFieldSegmentDecorator(Protocol):
    """``@field_segment(field=...)``: the value is read from a field, so any item goes in."""

    @overload
    def __call__(
        self, func: Callable[Concatenate[Any, P], Coroutine[Any, Any, U]], /
    ) -> FieldSegmentFactory[P, Any, U]: ...
    @overload
    def __call__(self, func: Callable[Concatenate[Any, P], U], /) -> FieldSegmentFactory[P, Any, U]: ...


class MultiFieldSegmentDecorator(Protocol):
    """``@field_segment(multi_emit=True)``: the function returns an iterable; its elements are the items."""

    @overload
    def __call__(
        self, func: Callable[Concatenate[V, P], Coroutine[Any, Any, Iterable[E]]], /
    ) -> FieldSegmentFactory[P, V, E]: ...
    @overload
    def __call__(self, func: Callable[Concatenate[V, P], Iterable[E]], /) -> FieldSegmentFactory[P, V, E]: ...


class AnyItemMultiFieldSegmentDecorator(Protocol):
    """``@field_segment(multi_emit=True, field=...)``: any item goes in; the result's elements come out."""

    @overload
    def __call__(
        self, func: Callable[Concatenate[Any, P], Coroutine[Any, Any, Iterable[E]]], /
    ) -> FieldSegmentFactory[P, Any, E]: ...
    @overload
    def __call__(self, func: Callable[Concatenate[Any, P], Iterable[E]], /) -> FieldSegmentFactory[P, Any, E]: ...


class ItemSegmentDecorator(Protocol):
    """``@field_segment(set_as=...)``: takes the value function; the segments yield their items."""

    def __call__(self, func: Callable[Concatenate[Any, P], Any], /) -> ItemSegmentFactory[P]: ...
