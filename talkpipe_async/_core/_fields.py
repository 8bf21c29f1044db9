"""Dotted field paths: ``"a.b.0"`` reads ``item["a"]["b"][0]``; ``"_"`` is the item."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

__all__ = ["assign_field", "extract_field"]


def _step(obj: Any, part: str, path: str) -> Any:
    if isinstance(obj, Mapping):
        if part in obj:
            return obj[part]
    elif isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)):
        if part.lstrip("-").isdigit():
            return obj[int(part)]
    elif hasattr(obj, part):
        return getattr(obj, part)
    raise KeyError(f"field {path!r}: no {part!r} in {type(obj).__name__}")


def extract_field(item: Any, path: str | None) -> Any:
    """Return the value at the dotted *path* of *item* (``None`` or ``"_"``: the item).

    Mappings are read by key, sequences by integer index, other objects by
    attribute.  A missing part raises ``KeyError`` naming the path.
    """
    if path is None or path == "_":
        return item
    value = item
    for part in path.split("."):
        value = value if part == "_" else _step(value, part, path)
    return value


def assign_field(item: Any, path: str, value: Any) -> None:
    """Set the dotted *path* of *item* to *value* (mapping key or attribute)."""
    head, _, last = path.rpartition(".")
    target = extract_field(item, head) if head else item
    if isinstance(target, MutableMapping):
        target[last] = value
    elif isinstance(target, list) and last.lstrip("-").isdigit():
        target[int(last)] = value
    else:
        setattr(target, last, value)
