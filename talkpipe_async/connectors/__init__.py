"""Scale-out connectors: run N instances of a pipeline on one shared feed, at least once.

* :class:`redis_stream_messages` / :class:`to_redis_stream`: Redis Streams
  consumer groups (``pip install "talkpipe-async[redis]"``).
* :class:`jetstream_messages` / :class:`to_jetstream`: NATS JetStream durable
  pull consumers (``pip install "talkpipe-async[nats]"``).

The stages are named as every other stage: a source for what it yields and
from where, a sink ``to_<destination>``.  Their names before
(``RedisStreamSource``, ``RedisStreamSink``, ``JetStreamSource``,
``JetStreamSink``, and the classes ``MapData`` / ``FilterData`` that
:func:`map_data` / :func:`filter_data` build) still work for one release,
with a ``DeprecationWarning``.

Sources yield :class:`Message` items (``.data`` plus an acknowledgement
token); end the pipeline with :func:`ack` (or run it with :func:`consume`)
so each message is acknowledged after it has been fully handled.
Partitioned by key: a sink given ``key=`` and ``partitions=n`` sends each
item to the partition :func:`partition_for` names, and a source given
``partitions=n`` reads partitions it owns, each in order.
:func:`run_worker` / :func:`serve` run such a pipeline as a worker process
that stops cleanly on SIGTERM / SIGINT.  The client
libraries are imported only when a stage runs, with a clear error when
missing.  They are asyncio libraries: these stages run on asyncio or uvloop,
not on trio (:class:`BackendNotSupported`).  See ``docs/scale-out.md``.
"""

from typing import TYPE_CHECKING, Any

from .._aio import BackendNotSupported
from .._core._public import show_as_public
from .._renamed import old_name
from . import _base, _worker
from ._base import *  # noqa: F403
from ._outage import DEFAULT_OUTAGE_BUDGET
from ._partitions import partition_for
from ._worker import *  # noqa: F403
from .nats import connect_nats, jetstream_messages, to_jetstream
from .redis import connect_redis, ensure_group, redis_stream_messages, to_redis_stream

__all__ = [
    "DEFAULT_OUTAGE_BUDGET",
    "BackendNotSupported",
    "connect_nats",
    "connect_redis",
    "ensure_group",
    "jetstream_messages",
    "partition_for",
    "redis_stream_messages",
    "to_jetstream",
    "to_redis_stream",
]
__all__ += _base.__all__
__all__ += _worker.__all__

show_as_public(globals())

if TYPE_CHECKING:
    from ._base import FilterData as FilterData
    from ._base import MapData as MapData
    from .nats import JetStreamSink as JetStreamSink
    from .nats import JetStreamSource as JetStreamSource
    from .redis import RedisStreamSink as RedisStreamSink
    from .redis import RedisStreamSource as RedisStreamSource
else:
    _RENAMED = {
        "RedisStreamSource": ("redis_stream_messages", redis_stream_messages),
        "RedisStreamSink": ("to_redis_stream", to_redis_stream),
        "JetStreamSource": ("jetstream_messages", jetstream_messages),
        "JetStreamSink": ("to_jetstream", to_jetstream),
        # the classes map_data and filter_data build: isinstance checks keep working
        "MapData": ("map_data", _base.MapData),
        "FilterData": ("filter_data", _base.FilterData),
    }

    def __getattr__(name: str) -> Any:
        return old_name(__name__, name, _RENAMED)
