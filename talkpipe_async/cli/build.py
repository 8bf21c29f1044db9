"""Build a :class:`~talkpipe_async.Pipeline` from parsed arguments, run it, map the outcome to an exit code.

The items are :class:`Record` on the way in and :class:`Output` on the way
out (``records``); the sources and destinations are built in ``stages``; the
exit code and the one-line error message come from ``errors``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import signal
import sys
import traceback
from typing import Any

import anyio

from .._core._pipeline import Pipeline
from .._core._segment import AbstractSegment, AbstractSource
from ..observe import progress
from ..operators.batch import batch as batch_op
from ..operators.select import take
from ..operators.time import throttle
from ..operators.transform import filter as filter_op
from ..operators.transform import map as map_op
from ..sources.process import stdin_lines
from .args import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, EXIT_UNREACHABLE, SinkSpec
from .errors import describe_error, exit_code_for, quiet_stdout, stdout_broken
from .records import BadTarget, CliState, Output, Record, grep_filter, json_parser, render, to_record, where_filter
from .stages import DROP_COUNTERS, PROG, make_sink, make_source

__all__ = ["BadTarget", "CliState", "Output", "Record", "build_pipeline", "describe_error", "exit_code_for",
           "load_target", "render", "run_command"]

DEFAULT_TIME_BATCH = 1000


def load_target(target: str) -> Any:
    """Import ``module:attribute`` (dotted attribute allowed) and return its pipeline.

    The attribute may be a :class:`Pipeline`, a source or segment, or a
    callable with no arguments returning one of those (or an awaitable of
    one: see :func:`_resolve`).  The current directory is importable.
    """
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise BadTarget(f"expected MODULE:ATTRIBUTE, got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise BadTarget(f"cannot import module {module_name!r}: {exc}") from None
        raise
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise BadTarget(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj  # resolved (called, awaited, checked) inside the event loop by _resolve


async def _resolve(obj: Any, target: str) -> Pipeline[Any, Any]:
    if not isinstance(obj, (Pipeline, AbstractSource, AbstractSegment)) and callable(obj):
        try:
            inspect.signature(obj).bind()
        except TypeError:
            raise BadTarget(f"{target} must be a Pipeline or take no arguments") from None
        except ValueError:  # no signature available: just call it
            pass
        obj = obj()
        if inspect.isawaitable(obj):
            obj = await obj
    if isinstance(obj, (AbstractSource, AbstractSegment)):
        obj = Pipeline(obj)
    if not isinstance(obj, Pipeline):
        raise BadTarget(f"{target} is a {type(obj).__name__}, not a Pipeline (or a factory of one)")
    pipeline: Pipeline[Any, Any] = obj if obj.has_source else Pipeline(stdin_lines(), obj)
    return pipeline


async def _ack(out: Output) -> Output:
    if out.line is not None:
        out.line.ack()
    return out


async def _commit(out: Output) -> Output:
    if out.line is not None:
        await out.line.commit()
    return out


def build_pipeline(
    args: argparse.Namespace, state: CliState, head: Pipeline[Any, Any] | None = None
) -> Pipeline[Any, Any]:
    """The command's pipeline: source | records | filters | rate | limit | batch | render | sinks | ack."""
    stages: list[Any] = [head if head is not None else make_source(args, state), map_op(to_record, name="record")]
    if args.grep:
        stages.append(filter_op(grep_filter(args.grep, args.ignore_case, True), name="--grep"))
    if args.grep_v:
        stages.append(filter_op(grep_filter(args.grep_v, args.ignore_case, False), name="--grep-v"))
    if args.json or args.where:
        stages.append(filter_op(json_parser(state, args.bad_json), name="--json"))
    for cond in args.where:
        stages.append(filter_op(where_filter(cond), name=f"--where {cond.text}"))
    if args.rate:
        stages.append(throttle(args.rate, args.burst, name="--rate"))
    if args.limit:
        stages.append(take(args.limit, name="--limit"))
    if args.batch or args.batch_time:
        stages.append(batch_op(args.batch or DEFAULT_TIME_BATCH, args.batch_time, name="--batch"))
    stages.append(map_op(render(args.format), name="render"))
    acking = args.command == "tail" and args.checkpoint is not None
    for spec in args.to or [SinkSpec("stdout", "")]:
        stages.append(make_sink(spec, args, acking))
    if acking:
        stages.append(map_op(_commit if args.durable else _ack, name="acknowledge"))
    return Pipeline(*stages)


async def _drain(pipeline: Pipeline[Any, Any], show_progress: bool = False) -> None:
    options: dict[str, Any] = {}
    # The best display installed (rich, tqdm, a plain line); nothing, and no statistics, when stderr is no terminal.
    display = progress(sys.stderr) if show_progress else None
    if display is not None and display.backend is not None:
        options = {"stats_every": 0.5, "on_stats": display}
    try:
        async with pipeline.stream(**options) as items:
            async for _ in items:
                pass
    finally:
        if display is not None:
            display.close()  # a run stopped by a signal is cancelled from outside and sends no final snapshot


async def _run(args: argparse.Namespace, state: CliState) -> None:
    head = None
    if args.command == "run":
        head = await _resolve(load_target(args.target), args.target)
    pipeline = build_pipeline(args, state, head)
    async with anyio.create_task_group() as tg:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

            async def watch() -> None:
                async for signum in signals:
                    state.signal = int(signum)
                    tg.cancel_scope.cancel()
                    return

            tg.start_soon(watch)
            await _drain(pipeline, getattr(args, "progress", False))
            tg.cancel_scope.cancel()


def _backend(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    if args.backend == "uvloop":
        return "asyncio", {"use_uvloop": True}
    return args.backend, {}


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed pipeline command; print errors as one line on stderr; return the exit code."""
    state = CliState()
    backend, options = _backend(args)
    try:
        anyio.run(_run, args, state, backend=backend, backend_options=options)
    except KeyboardInterrupt:
        state.signal = signal.SIGINT
    except Exception as exc:  # BaseExceptionGroup of Exceptions included
        if stdout_broken(exc):
            quiet_stdout()  # the reader of our stdout went away (e.g. `| head`): quiet, like other tools
            return EXIT_BROKEN_PIPE
        code = exit_code_for(exc)
        if args.debug:
            traceback.print_exception(exc)
        kind = "unreachable" if code == EXIT_UNREACHABLE else "error"
        print(f"{PROG}: {kind}: {describe_error(exc)}", file=sys.stderr, flush=True)
        _report(state)
        return code
    finally:
        try:
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):
            quiet_stdout()
    _report(state)
    if state.signal == signal.SIGTERM:
        return EXIT_TERMINATED
    if state.signal is not None:
        return EXIT_INTERRUPTED
    return EXIT_OK


def _report(state: CliState) -> None:
    for src in state.sources:
        stats = getattr(src, "stats", None)
        if stats is None:
            stats = getattr(getattr(src, "inner", None), "stats", None)
        for name, what in DROP_COUNTERS.items():
            count = getattr(stats, name, 0)
            if isinstance(count, int) and count:
                print(f"{PROG}: {src.label}: {count} {what}", file=sys.stderr, flush=True)
    if state.bad_json:
        print(f"{PROG}: skipped {state.bad_json} line(s) that were not valid JSON", file=sys.stderr, flush=True)
