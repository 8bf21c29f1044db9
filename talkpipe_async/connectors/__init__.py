"""Scale-out connectors: run N instances of a pipeline on one shared feed, at least once.

* :class:`RedisStreamSource` / :class:`RedisStreamSink`: Redis Streams
  consumer groups (``pip install "talkpipe-async[redis]"``).
* :class:`JetStreamSource` / :class:`JetStreamSink`: NATS JetStream durable
  pull consumers (``pip install "talkpipe-async[nats]"``).

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

from .._aio import BackendNotSupported
from ._base import (
    Ack,
    AckToken,
    BatchWriter,
    BrokerSession,
    BrokerSink,
    BrokerSource,
    BrokerUnavailable,
    ConnectorStats,
    FilterData,
    MapData,
    Message,
    MissingClient,
    ack,
    consume,
    filter_data,
    map_data,
    messages_in,
)
from ._outage import DEFAULT_OUTAGE_BUDGET
from ._partitions import partition_for
from ._worker import WorkerResult, run_worker, serve
from .nats import JetStreamSink, JetStreamSource, connect_nats
from .redis import RedisStreamSink, RedisStreamSource, connect_redis, ensure_group

__all__ = [
    "DEFAULT_OUTAGE_BUDGET",
    "Ack",
    "AckToken",
    "BackendNotSupported",
    "BatchWriter",
    "BrokerSession",
    "BrokerSink",
    "BrokerSource",
    "BrokerUnavailable",
    "ConnectorStats",
    "FilterData",
    "JetStreamSink",
    "JetStreamSource",
    "MapData",
    "Message",
    "MissingClient",
    "RedisStreamSink",
    "RedisStreamSource",
    "WorkerResult",
    "ack",
    "connect_nats",
    "connect_redis",
    "consume",
    "ensure_group",
    "filter_data",
    "map_data",
    "messages_in",
    "partition_for",
    "run_worker",
    "serve",
]

from .._core._public import show_as_public

show_as_public(globals())
