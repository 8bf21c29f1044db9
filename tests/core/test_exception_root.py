"""Every exception the library raises itself has one root, and keeps its standard-library base."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import talkpipe_async
from talkpipe_async import TalkpipeAsyncError


def _library_exceptions() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(talkpipe_async.__path__, "talkpipe_async."):
        if info.name.endswith("__main__"):
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional client (redis, nats) that this Python does not have
            continue
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__.startswith("talkpipe_async")
                and not name.startswith("_")
            ):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


EXCEPTIONS = _library_exceptions()


def test_the_walk_finds_the_library_exceptions() -> None:
    names = {e.__name__ for e in EXCEPTIONS}
    assert {"ConnectionLost", "RecordError", "DrainTimeout", "StageTimeout", "BrokerUnavailable"} <= names


@pytest.mark.parametrize("exc", EXCEPTIONS, ids=lambda e: e.__name__)
def test_every_public_exception_has_the_root(exc: type[BaseException]) -> None:
    assert issubclass(exc, TalkpipeAsyncError), f"{exc.__module__}.{exc.__name__} lacks TalkpipeAsyncError"


@pytest.mark.parametrize(
    ("name", "stdlib"),
    [
        ("ConnectionLost", ConnectionError),
        ("DeliveryFailed", ConnectionError),
        ("BrokerUnavailable", ConnectionError),
        ("WebSocketClosed", ConnectionError),
        ("RecordError", ValueError),
        ("MalformedRecord", ValueError),
        ("LineTooLong", ValueError),
        ("StageTimeout", TimeoutError),
        ("EventLoopRunningError", RuntimeError),
        ("MissingClient", ImportError),
    ],
)
def test_the_standard_library_base_is_kept(name: str, stdlib: type[BaseException]) -> None:
    (exc,) = [e for e in EXCEPTIONS if e.__name__ == name]
    assert issubclass(exc, stdlib)


def test_a_connection_error_is_caught_by_either_base() -> None:
    from talkpipe_async.sources import ConnectionLost

    for base in (TalkpipeAsyncError, ConnectionError, OSError):
        with pytest.raises(base):
            raise ConnectionLost("peer went away")
    assert str(ConnectionLost("peer went away")) == "peer went away"
