"""``python -m talkpipe_async``: the command line (``demo`` runs the built-in demo)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import anyio

from ._live_demo import run_live_demo

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``talkpipe-async`` command; returns the exit code."""
    parser = argparse.ArgumentParser(prog="talkpipe-async", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="run a live demo: a local SSE feed on 127.0.0.1 and a pipeline over it (no external service)"
    )
    demo.add_argument("--count", type=int, default=12, help="how many events the feed sends (default 12)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        anyio.run(run_live_demo, args.count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
