"""The type variable of the items a sink writes and passes on.

A sink's output items are its input items, so its class is generic in one
variable, solved from the stage before it (``read_lines(...) |
write_lines(...)`` passes ``str`` on).  Unsolved (a sink on its own, or
named bare in an annotation or a base class) it is ``Any``: that default
(PEP 696) comes from ``typing_extensions``, imported by type checkers only,
so importing a sink costs nothing more at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import TypeVar

    T = TypeVar("T", default=Any)
else:
    from typing import TypeVar

    T = TypeVar("T")

__all__ = ["T"]
