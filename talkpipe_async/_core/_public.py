"""Public objects name their public module, as anyio's and httpx's do.

A class or function defined in a private module (``talkpipe_async._core._pipeline``) and exported by a public
package (``talkpipe_async``) shows the package in reprs, tracebacks and ``help()``: ``talkpipe_async.Pipeline``.
Pickle still finds it, since the package holds it under the same name.
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["show_as_public"]


def _is_private_path(module: str) -> bool:
    return any(part.startswith("_") for part in module.split("."))


def present(obj: Any, module: str) -> None:
    """Name *module* as *obj*'s home when *obj* is a class or function of a private module of this package."""
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        return
    home = getattr(obj, "__module__", None) or ""
    if home.startswith("talkpipe_async.") and _is_private_path(home) and not _is_private_path(module):
        try:
            obj.__module__ = module
        except (AttributeError, TypeError):  # a type from the C extension keeps its own name
            pass


def show_as_public(namespace: dict[str, Any]) -> None:
    """Present every exported class and function of the module whose globals are *namespace* as its own."""
    module = namespace["__name__"]
    names = namespace.get("__all__") or [name for name in namespace if not name.startswith("_")]
    for name in names:
        obj = namespace.get(name)
        if obj is not None and getattr(obj, "__qualname__", None) == name:
            present(obj, module)
