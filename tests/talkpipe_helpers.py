"""The real TalkPipe package for the interop tests: skipped outside CI when missing, a failure in CI."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

INSTALL = 'pip install --no-deps talkpipe==1.2.0 parsy greenlet pydantic  (or: pip install "talkpipe-async[talkpipe]")'


def require_talkpipe() -> ModuleType:
    """Import TalkPipe 1.2 or skip the module (outside CI) / fail it (CI=true) with how to install it."""
    try:
        return importlib.import_module("talkpipe")
    except ImportError as exc:
        message = f"the real TalkPipe package is needed for these tests ({exc}); install it: {INSTALL}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message, allow_module_level=True)
