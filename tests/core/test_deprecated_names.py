"""The names stages had before the naming convention still work for one release, and say what to use instead.

Each old name is the renamed object itself (so ``isinstance`` and ``is`` hold),
reading it warns ``DeprecationWarning`` naming the new name, and only the new
names are exported (``__all__``, ``from ... import *``).
"""

from __future__ import annotations

import importlib
import re
import warnings

import pytest

# (module, old name, new name): the packages users import from, and the modules that define the stages
RENAMED = [
    ("talkpipe_async.sinks", "tcp_sink", "to_tcp"),
    ("talkpipe_async.sinks", "unix_sink", "to_unix"),
    ("talkpipe_async.sinks", "stdout_sink", "to_stdout"),
    ("talkpipe_async.sinks", "http_post_batches", "to_http"),
    ("talkpipe_async.sinks", "websocket_send", "to_websocket"),
    ("talkpipe_async.sinks.net", "tcp_sink", "to_tcp"),
    ("talkpipe_async.sinks.net", "unix_sink", "to_unix"),
    ("talkpipe_async.sinks.net", "stdout_sink", "to_stdout"),
    ("talkpipe_async.sinks.net", "http_post_batches", "to_http"),
    ("talkpipe_async.sinks.websocket", "websocket_send", "to_websocket"),
    ("talkpipe_async.connectors", "RedisStreamSource", "redis_stream_messages"),
    ("talkpipe_async.connectors", "RedisStreamSink", "to_redis_stream"),
    ("talkpipe_async.connectors", "JetStreamSource", "jetstream_messages"),
    ("talkpipe_async.connectors", "JetStreamSink", "to_jetstream"),
    ("talkpipe_async.connectors.redis", "RedisStreamSource", "redis_stream_messages"),
    ("talkpipe_async.connectors.redis", "RedisStreamSink", "to_redis_stream"),
    ("talkpipe_async.connectors.nats", "JetStreamSource", "jetstream_messages"),
    ("talkpipe_async.connectors.nats", "JetStreamSink", "to_jetstream"),
]

PACKAGES = ["talkpipe_async.sinks", "talkpipe_async.connectors"]
OLD_IN_PACKAGE = sorted({(m, old) for m, old, _ in RENAMED if m in PACKAGES} | {
    ("talkpipe_async.connectors", "MapData"),
    ("talkpipe_async.connectors", "FilterData"),
})


def _warning_names(new: str) -> str:
    return rf"deprecated .*use {re.escape(new)}\b"


@pytest.mark.parametrize(("module_name", "old", "new"), RENAMED)
def test_an_old_name_is_the_new_stage_and_warns_naming_it(module_name: str, old: str, new: str) -> None:
    module = importlib.import_module(module_name)
    with pytest.warns(DeprecationWarning, match=_warning_names(new)) as caught:
        value = getattr(module, old)
    assert value is getattr(module, new)
    assert value.__name__ == new
    assert all(w.filename == __file__ for w in caught)  # the warning points at the code that used the old name


@pytest.mark.parametrize(("module_name", "old", "new"), [r for r in RENAMED if r[0] in PACKAGES])
def test_an_old_name_imports_with_a_warning(module_name: str, old: str, new: str) -> None:
    with pytest.warns(DeprecationWarning, match=_warning_names(new)):
        namespace: dict[str, object] = {}
        exec(f"from {module_name} import {old}", namespace)
    assert namespace[old] is getattr(importlib.import_module(module_name), new)


@pytest.mark.parametrize(("old", "new"), [("MapData", "map_data"), ("FilterData", "filter_data")])
def test_the_data_stage_classes_are_what_the_lowercase_names_build(old: str, new: str) -> None:
    connectors = importlib.import_module("talkpipe_async.connectors")
    with pytest.warns(DeprecationWarning, match=_warning_names(new)):
        cls = getattr(connectors, old)
    assert isinstance(getattr(connectors, new)(str), cls)


def test_an_old_stage_still_runs_under_its_new_name() -> None:
    import io

    from talkpipe_async.sinks import to_stdout

    with pytest.warns(DeprecationWarning, match=_warning_names("to_stdout")):
        from talkpipe_async.sinks import stdout_sink
    out = io.StringIO()
    stage = stdout_sink(file=out)
    assert isinstance(stage, to_stdout) and repr(stage) == "<to_stdout>" and stage.label == "to_stdout"


@pytest.mark.parametrize(("module_name", "old"), OLD_IN_PACKAGE)
def test_only_the_new_names_are_exported(module_name: str, old: str) -> None:
    module = importlib.import_module(module_name)
    assert old not in module.__all__
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a star import must not touch an old name
        namespace: dict[str, object] = {}
        exec(f"from {module_name} import *", namespace)
    assert old not in namespace


@pytest.mark.parametrize("module_name", PACKAGES)
def test_the_new_names_are_exported(module_name: str) -> None:
    module = importlib.import_module(module_name)
    new = {n for m, _, n in RENAMED if m == module_name}
    assert new <= set(module.__all__)
    assert all(hasattr(module, name) for name in module.__all__)


def test_an_unknown_name_is_still_an_attribute_error() -> None:
    import talkpipe_async.connectors
    import talkpipe_async.sinks

    with pytest.raises(AttributeError, match="no attribute 'tcp_sinks'"):
        talkpipe_async.sinks.tcp_sinks  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'RedisSource'"):
        talkpipe_async.connectors.RedisSource  # noqa: B018
