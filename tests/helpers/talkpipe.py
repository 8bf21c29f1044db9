"""The real TalkPipe package for the interop tests: skipped outside CI when missing, a failure in CI."""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

import pytest

INSTALL = 'pip install -e ".[talkpipe-core]" && pip install --no-deps talkpipe==1.2.0'


def require_talkpipe() -> ModuleType:
    """Import TalkPipe 1.2 or skip the module (outside CI) / fail it (CI=true) with how to install it."""
    if sys.version_info < (3, 11):
        pytest.skip("TalkPipe 1.2 needs Python 3.11 or later", allow_module_level=True)
    try:
        return importlib.import_module("talkpipe")
    except ImportError as exc:
        message = f"the real TalkPipe package is needed for these tests ({exc}); install it: {INSTALL}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message, allow_module_level=True)
