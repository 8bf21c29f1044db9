"""Fixtures of the core tests."""

from __future__ import annotations

import pytest

from talkpipe_async._core import _threads


@pytest.fixture
def no_latency_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    """Thread stages hand over only full batches (or when they wait): batch edges no longer depend on timing."""
    monkeypatch.setattr(_threads, "DEFAULT_LATENCY", 3600.0)
