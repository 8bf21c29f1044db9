"""pytest plugin of talkpipe_async.testing (registered through the ``pytest11`` entry point).

It only offers fixtures a test asks for by name; nothing runs unless a test
uses one, and it adds no options:

- ``virtual_event_loop_policy``: a :class:`VirtualClockPolicy`, for
  pytest-asyncio (``event_loop_policy`` fixture returning it).
- ``virtual_anyio_backend``: factory ``name -> anyio_backend value`` with a
  fresh virtual clock, for an ``anyio_backend`` fixture of your own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ._clock import VirtualClockPolicy, virtual_backend


@pytest.fixture
def virtual_event_loop_policy() -> VirtualClockPolicy:
    """An event loop policy whose loops run on a virtual clock (return it from ``event_loop_policy``)."""
    return VirtualClockPolicy()


@pytest.fixture
def virtual_anyio_backend() -> Callable[[str], tuple[str, dict[str, Any]]]:
    """``virtual_anyio_backend("asyncio" | "trio")``: an ``anyio_backend`` value with a fresh virtual clock."""
    return virtual_backend
