"""``talkpipe-async chatterlang SCRIPT``: a TalkPipe ChatterLang script compiled by TalkPipe, run here.

The script is compiled with :func:`talkpipe_async.interop.chatterlang.compile_chatterlang`
(TalkPipe's parser and registry) and run like ``talkpipe-async run``: the
filters and destinations of every sub-command apply, a script that does not
start with ``INPUT FROM`` reads standard input lines, Ctrl-C and SIGTERM stop
it cleanly.  A script that does not compile is exit 2 with TalkPipe's message.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .args import EXIT_BAD_ARGS, EXIT_ERROR

__all__ = ["compiled_script", "run_chatterlang_command"]

PROG = "talkpipe-async"
_compiled: list[Any] = []  # the one script this process runs (the run sub-command loads it by name)


def compiled_script() -> Any:
    """The compiled script of this command (``run`` loads it as ``MODULE:ATTRIBUTE``)."""
    return _compiled[-1]


def _script_text(args: argparse.Namespace) -> str | None:
    if args.file:
        with open(args.file, encoding="utf-8") as f:
            return f.read()
    return args.script  # type: ignore[no-any-return]


def run_chatterlang_command(args: argparse.Namespace) -> int:
    """Compile the script, then run it as ``talkpipe-async run`` runs a pipeline; return the exit code."""
    try:
        text = _script_text(args)
    except OSError as exc:
        print(f"{PROG}: cannot read the script: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGS
    if not text:
        print(f"{PROG}: chatterlang: give a script, or -f FILE", file=sys.stderr)
        return EXIT_BAD_ARGS
    try:
        from ..interop.chatterlang import compile_chatterlang  # TalkPipe loads only for this command

        pipeline = compile_chatterlang(text, blocking=args.blocking)
    except ImportError as exc:
        print(f'{PROG}: chatterlang needs TalkPipe 1.2 ({exc}): pip install "talkpipe-async[talkpipe-core]" '
              "&& pip install --no-deps talkpipe==1.2.0", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # TalkPipe's CompileError (and what its parser raises)
        print(f"{PROG}: bad script: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGS
    if args.discard:
        from ..operators import filter as filter_op  # lazy like every import of this command

        pipeline = pipeline | filter_op(lambda _: False, name="--discard")
    _compiled.append(pipeline)
    from .build import run_command

    args.command, args.target = "run", f"{__name__}:compiled_script"
    return run_command(args)
