"""Three small core pieces: the asyncio-only check (``_aio``), the library's logger (``_core._logs``) and the public
names of exported objects (``_core._public``).

``require_asyncio`` lets a stage run on asyncio (plain or uvloop) and refuses trio with one error type and a message
naming the stage, what needs asyncio and what to do instead; ``QUEUE_END`` shows as ``QUEUE_END``. ``logger()`` is
the ``talkpipe_async`` logger, ``logger(name)`` any other. ``show_as_public`` renames the home module of the classes
and functions a public module exports from a private module of the package, and of nothing else: not aliases, not
instances, not objects of other packages or of public modules, not names outside ``__all__`` (or, without
``__all__``, names starting with ``_``), and never into a private module. The package's own import-time use is
checked in ``tests/core/test_public_names.py``; here it is called on namespaces built by the test.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from talkpipe_async._aio import QUEUE_END, BackendNotSupported, require_asyncio
from talkpipe_async._core._logs import logger
from talkpipe_async._core._public import present, show_as_public

PRIVATE = "talkpipe_async._core._thing"


async def test_require_asyncio_passes_on_asyncio_and_refuses_trio_with_advice(anyio_backend: Any) -> None:
    """On asyncio (plain or uvloop) the check passes; on trio it raises ``BackendNotSupported`` naming the stage and
    the reason, with the given alternative or, without one, the advice to run on asyncio."""
    if anyio_backend[0] == "asyncio":
        require_asyncio("to_queue", "an asyncio.Queue")  # no error
        require_asyncio("redis", "the redis client", "a broker stage")
        return
    with pytest.raises(BackendNotSupported) as info:
        require_asyncio("to_queue", "an asyncio.Queue")
    assert str(info.value) == (
        "to_queue: an asyncio.Queue can only be awaited under asyncio, not trio; "
        "run this pipeline on asyncio (plain or uvloop)"
    )
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(BackendNotSupported) as info:
        require_asyncio("from_queue", "an asyncio.Queue", "anyio memory streams")
    assert str(info.value) == (
        "from_queue: an asyncio.Queue can only be awaited under asyncio, not trio; use anyio memory streams instead"
    )
    await anyio.lowlevel.checkpoint()


def test_queue_end_shows_its_name() -> None:
    assert repr(QUEUE_END) == "QUEUE_END"
    assert str(QUEUE_END) == "QUEUE_END"


def test_logger_is_the_library_logger_by_default() -> None:
    """``logger()`` is ``logging.getLogger("talkpipe_async")``; a name gives that logger."""
    assert logger() is logging.getLogger("talkpipe_async")
    assert logger().name == "talkpipe_async"
    assert logger("talkpipe_async.sources") is logging.getLogger("talkpipe_async.sources")


def homed(module: str) -> tuple[type, Callable[[], None]]:
    """A class ``Thing`` and a function ``helper`` that say they live in *module*."""

    class Thing:
        pass

    def helper() -> None:
        pass

    Thing.__qualname__ = "Thing"
    helper.__qualname__ = "helper"
    Thing.__module__ = helper.__module__ = module
    return Thing, helper


def test_exported_classes_and_functions_of_a_private_module_show_the_public_one() -> None:
    """Both a class and a function named in ``__all__`` take the exporting module's name."""
    thing, helper = homed(PRIVATE)
    show_as_public({"__name__": "talkpipe_async.sources", "__all__": ["Thing", "helper"], "Thing": thing,
                    "helper": helper})
    assert (thing.__module__, helper.__module__) == ("talkpipe_async.sources", "talkpipe_async.sources")


def test_only_names_in_all_are_renamed() -> None:
    """With ``__all__``, a public-looking name left out of it keeps its home; a name of ``__all__`` that the module
    does not hold is skipped."""
    thing, helper = homed(PRIVATE)
    show_as_public({"__name__": "talkpipe_async", "__all__": ["Thing", "Missing"], "Thing": thing, "helper": helper})
    assert (thing.__module__, helper.__module__) == ("talkpipe_async", PRIVATE)


def test_without_all_the_names_not_starting_with_an_underscore_are_renamed() -> None:
    thing, helper = homed(PRIVATE)
    hidden, _ = homed(PRIVATE)
    hidden.__qualname__ = "_Hidden"
    show_as_public({"__name__": "talkpipe_async", "Thing": thing, "helper": helper, "_Hidden": hidden})
    assert (thing.__module__, helper.__module__, hidden.__module__) == ("talkpipe_async", "talkpipe_async", PRIVATE)


def test_an_alias_keeps_its_home() -> None:
    """An object exported under another name than its own (an alias) is left as it is."""
    thing, helper = homed(PRIVATE)
    show_as_public({"__name__": "talkpipe_async", "__all__": ["Alias", "other"], "Alias": thing, "other": helper})
    assert (thing.__module__, helper.__module__) == (PRIVATE, PRIVATE)


def test_instances_and_outside_objects_keep_their_home() -> None:
    """Only classes and functions are renamed (a constant without a ``__qualname__`` is skipped); objects from another
    package, or from a public module of this one, are left alone."""

    class Value:
        pass

    value = Value()
    value.__module__ = PRIVATE
    value.__qualname__ = "value"  # type: ignore[attr-defined]
    foreign, foreign_fn = homed("anyio._core._streams")
    public, public_fn = homed("talkpipe_async.sources")
    top, _ = homed("talkpipe_async_extras._x")
    top.__qualname__ = "Top"
    show_as_public({"__name__": "talkpipe_async", "value": value, "Thing": foreign, "helper": foreign_fn, "LIMIT": 107})
    show_as_public({"__name__": "talkpipe_async", "Thing": public, "helper": public_fn, "Top": top})
    assert value.__module__ == PRIVATE
    assert (foreign.__module__, foreign_fn.__module__) == ("anyio._core._streams", "anyio._core._streams")
    assert (public.__module__, public_fn.__module__) == ("talkpipe_async.sources", "talkpipe_async.sources")
    assert top.__module__ == "talkpipe_async_extras._x"


def test_nothing_is_renamed_into_a_private_module() -> None:
    thing, helper = homed(PRIVATE)
    show_as_public({"__name__": "talkpipe_async._core", "Thing": thing, "helper": helper})
    assert (thing.__module__, helper.__module__) == (PRIVATE, PRIVATE)


def test_present_renames_one_object() -> None:
    """``present`` on its own: a private class or function gets the public module; with no home module, nothing."""
    thing, helper = homed("talkpipe_async.sources._files")
    present(thing, "talkpipe_async.sources")
    present(helper, "talkpipe_async.sources")
    assert (thing.__module__, helper.__module__) == ("talkpipe_async.sources", "talkpipe_async.sources")
    nowhere, _ = homed(PRIVATE)
    nowhere.__module__ = None  # type: ignore[assignment]
    present(nowhere, "talkpipe_async")
    assert nowhere.__module__ is None
