"""Sequence operators (``talkpipe_async.operators.sequence``): the names and limits the mutation run found unchecked.

Default stage names label stats, progress tables and error notes; the validation messages name the operator and
the bad value; the edges of ``pairwise``, ``take_last``/``skip_last`` and ``starmap`` (sync and async) are exact.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from talkpipe_async.operators import pairwise, skip_last, starmap, take_last, time_interval, timestamp
from talkpipe_async.sources import just

pytestmark = pytest.mark.anyio


def test_default_names_and_given_names() -> None:
    assert pairwise().label == "pairwise"
    assert take_last(2).label == "take_last"
    assert skip_last(2).label == "skip_last"
    assert timestamp().label == "timestamp"
    assert time_interval().label == "time_interval"
    for stage in (pairwise, timestamp, time_interval):
        assert stage(name="mine").label == "mine"
    assert take_last(1, name="tl").label == "tl" and skip_last(1, name="sl").label == "sl"


def test_validation_names_the_operator_and_the_value() -> None:
    with pytest.raises(ValueError, match=r"^take_last: n must be at least 0, not -1$"):
        take_last(-1)
    with pytest.raises(ValueError, match=r"^skip_last: n must be at least 0, not -2$"):
        skip_last(-2)
    assert take_last(0).n == 0 and skip_last(0).n == 0  # zero is allowed


async def test_edges_of_the_holding_operators(anyio_backend: Any) -> None:
    with anyio.fail_after(10):
        assert await (just(1) | pairwise()).collect() == []
        assert await (just() | pairwise()).collect() == []
        assert await (just(1, 2) | pairwise()).collect() == [(1, 2)]
        assert await (just(1, 2, 3) | take_last(0)).collect() == []
        assert await (just(1, 2, 3) | take_last(3)).collect() == [1, 2, 3]
        assert await (just(1, 2, 3) | skip_last(0)).collect() == [1, 2, 3]
        assert await (just(1, 2, 3) | skip_last(3)).collect() == []


async def test_starmap_spreads_each_item_over_the_arguments(anyio_backend: Any) -> None:
    async def join(*parts: Any) -> str:
        await anyio.lowlevel.checkpoint()
        return "-".join(map(str, parts))

    with anyio.fail_after(10):
        assert await (just((1, 2, 3), [4], ()) | starmap(join)).collect() == ["1-2-3", "4", ""]
        assert await (just((1, 2, 3), [4], ()) | starmap(lambda *p: len(p))).collect() == [3, 1, 0]
    assert starmap(join).label == "starmap(join)"
    assert starmap(join, name="j").label == "j"
    assert starmap(divmod).label == "starmap(divmod)" and starmap(divmod, name="dm").label == "dm"
