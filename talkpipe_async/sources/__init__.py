"""Sources: where pipelines get their items (files, HTTP, sockets, processes, ...)."""

from .._core._public import show_as_public
from .files import *  # noqa: F403
from .http import *  # noqa: F403
from .process import *  # noqa: F403
from .small import *  # noqa: F403
from .sockets import *  # noqa: F403
from .sse import *  # noqa: F403
from .tail import *  # noqa: F403
from .websocket import *  # noqa: F403

show_as_public(globals())
