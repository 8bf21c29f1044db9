"""The names stages had before the naming convention keep their types, and the checkers mark them deprecated.

Each old name is typed as its new stage, marked ``@deprecated``: pyright in
strict mode reports every use (``reportDeprecated``, ignored line by line
here), mypy reports them when ``--enable-error-code deprecated`` is on (off
in this project's configuration, so the mypy side needs no ignore).
"""

from __future__ import annotations

from typing import Any

from typing_extensions import Never, assert_type

from talkpipe_async import Pipeline
from talkpipe_async.connectors import (
    JetStreamSink,  # pyright: ignore[reportDeprecated]
    RedisStreamSource,  # pyright: ignore[reportDeprecated]
    redis_stream_messages,
    to_jetstream,
)
from talkpipe_async.sinks import (
    http_post_batches,  # pyright: ignore[reportDeprecated]
    tcp_sink,  # pyright: ignore[reportDeprecated]
    to_http,
    to_tcp,
)
from talkpipe_async.sources import read_lines


def old_sinks_pass_their_items_on(lines: Pipeline[Never, str]) -> None:
    assert_type(lines.then(tcp_sink("127.0.0.1", 1)), Pipeline[Never, str])  # pyright: ignore[reportDeprecated]
    assert isinstance(tcp_sink("127.0.0.1", 1), to_tcp)  # pyright: ignore[reportDeprecated]
    post: to_http[Any] = http_post_batches("http://127.0.0.1:1/")  # pyright: ignore[reportDeprecated]
    assert_type(read_lines("in.txt").then(post), Pipeline[Never, Any])


def old_connector_stages_are_the_new_ones() -> None:
    source: redis_stream_messages = RedisStreamSource("s", "g", url="redis://127.0.0.1:1")  # pyright: ignore[reportDeprecated]
    sink: to_jetstream = JetStreamSink("subject", servers="nats://127.0.0.1:1")  # pyright: ignore[reportDeprecated]
    assert source.batch > 0 and sink is not None
