"""Type variables of the sources' items, with the type a checker takes when a call does not fix it.

Some sources share one body between a text and a bytes variant
(``tcp_lines`` and its subclass ``tcp_bytes``): their class is generic in
``Text``, which is ``str`` unless a subclass says ``bytes``.  Others give a
different item type per option (``mode=``, ``with_address=``, ``text=``):
overloads of their ``__init__`` fix the variable, whose default serves a
bare annotation.  The defaults (PEP 696) come from ``typing_extensions``,
imported by type checkers only, so a source costs nothing more at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import TypeVar

    Text = TypeVar("Text", default=str)
    Item = TypeVar("Item", default=Any)
else:
    from typing import TypeVar

    Text = TypeVar("Text")
    Item = TypeVar("Item")

__all__ = ["Item", "Text"]
