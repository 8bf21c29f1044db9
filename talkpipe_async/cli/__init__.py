"""The ``talkpipe-async`` command line: sources, filters and destinations without writing Python.

``main(argv)`` parses the arguments (:mod:`.args`), builds a pipeline from
the existing sources, operators and sinks (:mod:`.build`) and runs it.
``--where`` conditions use a small safe grammar (:mod:`.conditions`).  See
``docs/cli.md`` for every sub-command, the options and the exit codes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .args import (
    EXIT_BAD_ARGS,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_UNREACHABLE,
    build_parser,
    parse_args,
)
from .conditions import Condition, ConditionError, parse_condition

__all__ = [
    "EXIT_BAD_ARGS",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_UNREACHABLE",
    "Condition",
    "ConditionError",
    "build_parser",
    "main",
    "parse_condition",
]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with *argv* (default ``sys.argv[1:]``) and return its exit code."""
    try:
        args = parse_args(argv)
    except KeyboardInterrupt:  # pragma: no cover - Ctrl-C while parsing
        return EXIT_INTERRUPTED
    if args.command == "demo":
        import anyio

        from .._live_demo import run_live_demo  # the demo's server and pipeline load only for this command

        try:
            anyio.run(run_live_demo, args.count)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        return EXIT_OK
    if args.command == "chatterlang":
        from .chatterlang import run_chatterlang_command

        return run_chatterlang_command(args)
    if args.command == "worker":
        from .worker import run_worker_command

        return run_worker_command(args)
    from .build import run_command

    return run_command(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
