"""``python -m talkpipe_async`` and the ``talkpipe-async`` command (see ``docs/cli.md``).

Sub-commands: ``tail``, ``read``, ``http``, ``tcp``, ``listen``, ``exec``,
``run`` (a Pipeline from ``module:attribute``) and ``demo`` (the built-in
live demo).  The implementation lives in :mod:`talkpipe_async.cli`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``talkpipe-async`` command; returns the exit code."""
    from .cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
