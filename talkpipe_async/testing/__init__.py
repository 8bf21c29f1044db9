"""Testing kit for pipelines: run a stage and compare its output, virtual time, marble diagrams, scripted feeds.

Works under pytest-asyncio (strict or auto mode) and under anyio's pytest
plugin (asyncio and trio); see docs/testing.md::

    from talkpipe_async.operators import batch
    from talkpipe_async.testing import assert_emits, assert_marbles

    await assert_emits(batch(2), [1, 2, 3], [[1, 2], [3]])
    await assert_marbles(batch(2), "-a-b-c|", "---x--(y|)", {"x": ["a", "b"], "y": ["c"]})

Virtual time: :class:`VirtualClockLoop` (asyncio) and trio's
``MockClock(autojump_threshold=0)`` advance the clock to the next timer as
soon as every task waits; :func:`virtual_backend` gives the
``anyio_backend`` value, :class:`VirtualClockPolicy` the pytest-asyncio
policy, :func:`in_virtual_time` runs a coroutine function in virtual time
from any test.
"""

from ._clock import VirtualClockLoop, VirtualClockPolicy, clock_is_virtual, in_virtual_time, virtual_backend
from ._feeds import Cut, ScriptedFeed, Stall, ndjson, scripted_transport, split_every, sse
from ._marbles import (
    DEFAULT_UNIT,
    MarbleError,
    MarbleEvent,
    assert_marbles,
    marble_source,
    parse_marbles,
    record_marbles,
)
from ._run import StageTimedOut, assert_emits, describe_difference, run_stage

__all__ = [
    "DEFAULT_UNIT",
    "Cut",
    "MarbleError",
    "MarbleEvent",
    "ScriptedFeed",
    "Stall",
    "StageTimedOut",
    "VirtualClockLoop",
    "VirtualClockPolicy",
    "assert_emits",
    "assert_marbles",
    "clock_is_virtual",
    "describe_difference",
    "in_virtual_time",
    "marble_source",
    "ndjson",
    "parse_marbles",
    "record_marbles",
    "run_stage",
    "scripted_transport",
    "split_every",
    "sse",
    "virtual_backend",
]

from .._core._public import show_as_public

show_as_public(globals())
