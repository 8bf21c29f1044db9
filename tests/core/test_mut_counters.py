"""The one meaning of a stage's ``stats``: ``as_dict()`` is a snapshot of its counters.

Pinned here: ``as_dict()`` gives every field by name, and a snapshot taken before a run does not change when the
run counts on (its lists are copies); a counters type that is not a dataclass is told so by name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from talkpipe_async import segment
from talkpipe_async._core._counters import Counters
from talkpipe_async.operators import fork
from talkpipe_async.operators.fanout import ForkStats


@segment
async def same(items: AsyncIterator[int]) -> AsyncIterator[int]:
    async for x in items:
        yield x

pytestmark = pytest.mark.anyio


async def test_a_snapshot_does_not_move_when_the_stage_counts_on() -> None:
    stats = ForkStats()
    pipe = fork(same(), same(), stats=stats)
    assert sorted(await pipe.collect(range(3))) == [0, 0, 1, 1, 2, 2]
    before = stats.as_dict()
    assert before == {"delivered": [3, 3], "dropped": [0, 0]}
    assert sorted(await pipe.collect(range(3))) == [0, 0, 1, 1, 2, 2]
    assert stats.as_dict() == {"delivered": [6, 6], "dropped": [0, 0]}  # counted on, over both runs
    assert before == {"delivered": [3, 3], "dropped": [0, 0]}  # the snapshot kept its values
    before["delivered"].append(99)
    assert stats.delivered == [6, 6]


def test_a_counters_type_must_be_a_dataclass() -> None:
    class Loose(Counters):
        pass

    @dataclass
    class Tight(Counters):
        n: int = 0

    with pytest.raises(AssertionError, match=r"^Loose must be a dataclass"):
        Loose().as_dict()
    assert Tight(3).as_dict() == {"n": 3}
