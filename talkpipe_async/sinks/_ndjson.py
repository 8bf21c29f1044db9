"""JSON text that survives line readers: U+2028 and U+2029 escaped, everything else left as UTF-8.

JSON allows LINE SEPARATOR and PARAGRAPH SEPARATOR raw inside strings, but
many line readers (httpx's ``aiter_lines``, Python's ``str.splitlines``,
older JavaScript) end a line there, so an NDJSON record holding one would be
split in two.  Outside strings JSON allows neither character, so replacing
them by their ``\\u`` escapes keeps every document equal to what was written.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["escape_separators", "ndjson_dumps"]


def escape_separators(text: str) -> str:
    """*text* with U+2028 and U+2029 written as ``\\u2028`` and ``\\u2029`` (JSON escapes)."""
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def ndjson_dumps(value: Any, *, compact: bool = False) -> str:
    """``json.dumps(value, ensure_ascii=False)`` with the two line separators escaped."""
    if compact:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    else:
        text = json.dumps(value, ensure_ascii=False)
    return escape_separators(text)
