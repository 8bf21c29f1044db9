"""Stage names kept for one release after a rename: reading one warns, then hands over the renamed object.

A module that renamed stages keeps a table ``{old: (new, object)}`` and a
module-level ``__getattr__`` that calls :func:`old_name`; the old names are
not in its ``__all__``, so ``from module import *`` and the docs show only the
new ones.  The object handed over is the renamed one itself, so ``isinstance``
and ``is`` see one class under both names.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

__all__ = ["old_name"]


def old_name(module: str, name: str, renamed: Mapping[str, tuple[str, Any]]) -> Any:
    """The object *name* now goes by in *module*, after a ``DeprecationWarning`` naming its new name.

    Raises ``AttributeError`` (as a module does) when *name* is not an old name.
    """
    found = renamed.get(name)
    if found is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    new, value = found
    warnings.warn(
        f"{module}.{name} is deprecated and will be removed in the next release: use {new}, its new name",
        DeprecationWarning,
        stacklevel=3,  # the code that named it: past this function and the module's __getattr__
    )
    return value
