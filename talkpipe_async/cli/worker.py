"""``talkpipe-async worker MODULE:ATTRIBUTE``: a broker pipeline as a worker process (see ``docs/scale-out.md``)."""

from __future__ import annotations

import argparse
import inspect
import sys
from typing import Any

from .args import EXIT_BAD_ARGS, EXIT_ERROR, EXIT_UNREACHABLE

__all__ = ["run_worker_command"]

PROG = "talkpipe-async"


async def _build(obj: Any, target: str) -> Any:
    from .._core._pipeline import Pipeline  # lazy like every import of the worker command
    from .build import BadTarget

    if not isinstance(obj, Pipeline) and callable(obj):
        obj = obj()
        if inspect.isawaitable(obj):
            obj = await obj
    if not isinstance(obj, Pipeline):
        raise BadTarget(f"{target} is a {type(obj).__name__}, not a Pipeline (or a factory of one)")
    return obj


def run_worker_command(args: argparse.Namespace) -> int:
    """Load the target and run it with :func:`talkpipe_async.connectors.serve`; return the exit code."""
    import anyio

    from ..connectors import BrokerUnavailable, serve  # the brokers' client libraries load only for this command
    from .build import BadTarget, load_target

    async def main() -> int:
        pipeline = await _build(load_target(args.target), args.target)
        result = await serve(pipeline, drain_timeout=args.drain_timeout)
        print(f"{PROG}: worker: handled {result.handled}, stopped by {result.stopped_by or 'end of feed'}, "
              f"clean={result.clean}", file=sys.stderr, flush=True)
        return result.exit_code

    options = {"use_uvloop": True} if args.uvloop else {}
    try:
        code: int = anyio.run(main, backend="asyncio", backend_options=options)
    except BadTarget as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_ARGS
    except BrokerUnavailable as exc:
        print(f"{PROG}: unreachable: {exc}", file=sys.stderr, flush=True)
        return EXIT_UNREACHABLE
    except Exception as exc:
        print(f"{PROG}: error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    return code
