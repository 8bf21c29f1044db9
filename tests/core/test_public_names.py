"""Public objects show their public module in reprs and tracebacks, and still pickle."""

from __future__ import annotations

import importlib
import inspect
import pickle
import traceback

import pytest

PACKAGES = [
    "talkpipe_async",
    "talkpipe_async.operators",
    "talkpipe_async.sources",
    "talkpipe_async.sinks",
    "talkpipe_async.connectors",
    "talkpipe_async.testing",
]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_exported_name_shows_a_private_module(package: str) -> None:
    module = importlib.import_module(package)
    shown = []
    names = getattr(module, "__all__", None) or [name for name in vars(module) if not name.startswith("_")]
    for name in names:
        obj = getattr(module, name)
        if getattr(obj, "__qualname__", None) != name:
            continue  # an alias, or a name imported for the package's own use
        if inspect.isclass(obj) or inspect.isfunction(obj):
            shown.append((name, obj.__module__))
    private = [(name, home) for name, home in shown if any(p.startswith("_") for p in home.split("."))]
    assert shown and not private


def test_the_core_names_its_package() -> None:
    import talkpipe_async

    assert repr(talkpipe_async.Pipeline) == "<class 'talkpipe_async.Pipeline'>"
    assert talkpipe_async.BlockingStream.__module__ == "talkpipe_async"  # loaded on first use


def test_a_traceback_names_the_public_module_and_the_exception_pickles() -> None:
    from talkpipe_async.sources import ConnectionLost

    try:
        raise ConnectionLost("peer went away")
    except ConnectionLost as exc:
        text = "".join(traceback.format_exception_only(type(exc), exc))
        copy = pickle.loads(pickle.dumps(exc))
    assert text.startswith("talkpipe_async.sources.ConnectionLost: peer went away")
    assert type(copy) is ConnectionLost and copy.args == ("peer went away",)


def test_metadata_pickles_by_its_public_name() -> None:
    from talkpipe_async import Flush

    assert type(pickle.loads(pickle.dumps(Flush()))) is Flush
