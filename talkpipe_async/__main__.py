"""``python -m talkpipe_async``: the command line (``demo`` runs the built-in demo)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import anyio

from ._demo import run_demo

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``talkpipe-async`` command; returns the exit code."""
    parser = argparse.ArgumentParser(prog="talkpipe-async", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a demo pipeline on an embedded feed (no external service)")
    demo.add_argument("--count", type=int, default=20, help="how many items to show (default 20)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        anyio.run(run_demo, args.count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
