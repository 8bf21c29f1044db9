"""Sources: where pipelines get their items (files, HTTP, sockets, processes, ...)."""

from .http import *  # noqa: F403
from .process import *  # noqa: F403
from .sockets import *  # noqa: F403
from .sse import *  # noqa: F403
