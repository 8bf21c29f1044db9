"""The line framer and counters of the network stages, as this package names them.

They live in the private transport layer (``talkpipe_async._net.framing``);
the public names are :class:`talkpipe_async.sources.LineFramer` and
:class:`talkpipe_async.sources.NetStats`.
"""

from __future__ import annotations

from .._net.framing import DEFAULT_MAX_LINE as DEFAULT_MAX_LINE
from .._net.framing import READ_SIZE as READ_SIZE
from .._net.framing import ConnectionLost as ConnectionLost
from .._net.framing import LineFramer as LineFramer
from .._net.framing import LineTooLong as LineTooLong
from .._net.framing import NetStats as NetStats
from .._net.framing import Overlong as Overlong

__all__ = ["DEFAULT_MAX_LINE", "READ_SIZE", "ConnectionLost", "LineFramer", "LineTooLong", "NetStats", "Overlong"]
