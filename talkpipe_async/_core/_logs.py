"""The library's loggers, fetched on first use.

``logging`` brings ``traceback``, ``string`` and ``textwrap`` with it (about
7 ms at start-up); a run only logs when something went wrong, so
``import talkpipe_async`` does not load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import logging

__all__ = ["logger"]


def logger(name: str = "talkpipe_async") -> logging.Logger:
    """The logger *name* (``logging.getLogger``), importing ``logging`` the first time."""
    import logging

    return logging.getLogger(name)
