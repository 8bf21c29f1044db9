"""Sinks: where pipelines deliver their items (files, sockets, stdout, HTTP, web responses, a live fan-out hub).

``talkpipe_async.sinks.web`` (streaming HTTP responses) needs starlette and is imported on its own.
"""

from .._core._public import show_as_public
from .basic import *  # noqa: F403
from .files import *  # noqa: F403
from .hub import *  # noqa: F403
from .net import *  # noqa: F403
from .websocket import *  # noqa: F403

show_as_public(globals())
