"""Sinks: where pipelines deliver their items (files, sockets, stdout, HTTP, web responses, a live fan-out hub).

A sink is named for where its items go: ``to_<destination>`` (``to_tcp``,
``to_http``, ``to_queue``); file writers mirror the file readers
(``write_lines``, ``write_jsonl``).  The names these stages had before
(``tcp_sink``, ``unix_sink``, ``stdout_sink``, ``websocket_send``,
``http_post_batches``) still work for one release, with a ``DeprecationWarning``.

``talkpipe_async.sinks.web`` (streaming HTTP responses) needs starlette and is imported on its own.
"""

from typing import TYPE_CHECKING, Any

from .._core._public import show_as_public
from .._renamed import old_name
from . import basic, files, hub, net, websocket
from .basic import *  # noqa: F403
from .files import *  # noqa: F403
from .hub import *  # noqa: F403
from .net import *  # noqa: F403
from .websocket import *  # noqa: F403

__all__: list[str] = []
__all__ += basic.__all__
__all__ += files.__all__
__all__ += hub.__all__
__all__ += net.__all__
__all__ += websocket.__all__

show_as_public(globals())

if TYPE_CHECKING:
    from .net import http_post_batches as http_post_batches
    from .net import stdout_sink as stdout_sink
    from .net import tcp_sink as tcp_sink
    from .net import unix_sink as unix_sink
    from .websocket import websocket_send as websocket_send
else:
    _RENAMED = {
        "tcp_sink": ("to_tcp", to_tcp),  # noqa: F405
        "unix_sink": ("to_unix", to_unix),  # noqa: F405
        "stdout_sink": ("to_stdout", to_stdout),  # noqa: F405
        "http_post_batches": ("to_http", to_http),  # noqa: F405
        "websocket_send": ("to_websocket", to_websocket),  # noqa: F405
    }

    def __getattr__(name: str) -> Any:
        return old_name(__name__, name, _RENAMED)
