"""Transform operators (``talkpipe_async.operators.transform``): what the first mutation run found unchecked.

Default and given stage names (they label stats, progress tables and error notes), ``enumerate``'s default start,
``distinct``'s validation message, and ``distinct`` on the items themselves (no key) with and without a window.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from talkpipe_async.operators import distinct, enumerate, get_field, set_field
from talkpipe_async.sources import just

pytestmark = pytest.mark.anyio


def test_default_and_given_names() -> None:
    assert get_field("a.b").label == "get_field('a.b')" and get_field("a", name="g").label == "g"
    assert set_field("n", len).label == "set_field('n')" and set_field("n", len, name="s").label == "s"
    assert enumerate().label == "enumerate" and enumerate(name="e").label == "e"
    assert distinct().label == "distinct" and distinct(name="d").label == "d"


def test_distinct_validation() -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError, match=r"^distinct: window must be at least 1$"):
            distinct(window=bad)
    assert distinct(window=1).window == 1


async def test_enumerate_counts_from_zero_by_default(anyio_backend: Any) -> None:
    with anyio.fail_after(10):
        assert await (just("a", "b") | enumerate()).collect() == [(0, "a"), (1, "b")]
        assert await (just("a", "b") | enumerate(start=5)).collect() == [(5, "a"), (6, "b")]


async def test_distinct_without_a_key_compares_the_items(anyio_backend: Any) -> None:
    with anyio.fail_after(10):
        assert await (just(1, 2, 1, 3, 2) | distinct()).collect() == [1, 2, 3]
        assert await (just(1, 1, 2, 1) | distinct(window=1)).collect() == [1, 2, 1]
        assert await (just(1, 2, 1, 3, 1, 2) | distinct(window=2)).collect() == [1, 2, 3, 2]
