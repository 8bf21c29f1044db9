"""Sinks: where pipelines deliver their items (files, sockets, stdout, HTTP, web responses).

``talkpipe_async.sinks.web`` (streaming HTTP responses) needs starlette and is imported on its own.
"""

from .basic import *  # noqa: F403
from .files import *  # noqa: F403
from .net import *  # noqa: F403
from .websocket import *  # noqa: F403
