"""Build a :class:`~talkpipe_async.Pipeline` from parsed arguments, run it, map the outcome to an exit code.

Every item travels as a :class:`Record` (its text, its parsed JSON value,
and the tail :class:`~talkpipe_async.sources.Line` it came from, if any) so
that filters can read the JSON while the output keeps the original text,
and so that a tail checkpoint acknowledges a line only after every
destination wrote it.  Before the destinations, :func:`render` turns each
record (or batch of records) into an :class:`Output` whose ``str()`` is the
line to write.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import inspect
import json
import os
import re
import signal
import socket
import sys
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

from .._backoff import Backoff, Retries
from .._core._errors import TalkpipeAsyncError, error_context
from .._core._pipeline import Pipeline
from .._core._segment import AbstractSegment, AbstractSource
from ..observe import progress
from ..operators.batch import batch as batch_op
from ..operators.select import take
from ..operators.time import throttle
from ..operators.transform import filter as filter_op
from ..operators.transform import map as map_op
from ..sinks.files import write_lines
from ..sinks.net import DeliveryFailed, http_post_batches, stdout_sink, tcp_sink
from ..sources.files import read_lines
from ..sources.http import http_lines, http_ndjson
from ..sources.process import process_lines, stdin_lines
from ..sources.sockets import ConnectionLost, NetStats, tcp_lines, tcp_server_lines
from ..sources.sse import SSEError, SSEEvent, sse_events
from ..sources.tail import Line, tail_file
from .args import (
    EXIT_BAD_ARGS,
    EXIT_BROKEN_PIPE,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_UNREACHABLE,
    SinkSpec,
)
from .conditions import Condition

__all__ = ["BadTarget", "CliState", "Output", "Record", "build_pipeline", "describe_error", "exit_code_for",
           "load_target", "render", "run_command"]

PROG = "talkpipe-async"
DEFAULT_TIME_BATCH = 1000
MAX_BACKOFF = 5.0


class _NoValue:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<no value>"


NO_VALUE: Any = _NoValue()


class Record:
    """One item on its way through the command's pipeline.

    ``text``: the text as read (``None`` for structured items); ``value``:
    the JSON value (``NO_VALUE`` until parsed); ``line``: the tail line to
    acknowledge once written (or ``None``).
    """

    __slots__ = ("line", "text", "value")

    def __init__(self, text: str | None, value: Any = NO_VALUE, line: Line | None = None) -> None:
        self.text = text
        self.value = value
        self.line = line

    @property
    def payload(self) -> Any:
        """The JSON value when there is one, else the text."""
        return self.text if self.value is NO_VALUE else self.value

    def grep_text(self) -> str:
        """The text that ``--grep`` searches (compact JSON for structured items)."""
        if self.text is not None:
            return self.text
        return _dumps(self.value)

    def __repr__(self) -> str:
        return repr(self.text) if self.text is not None else repr(self.value)


class Output:
    """A rendered record or batch: ``str()`` is the line to write; ``payload`` the JSON value."""

    __slots__ = ("line", "payload", "text")

    def __init__(self, text: str, payload: Any, line: Line | None) -> None:
        self.text = text
        self.payload = payload
        self.line = line

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return repr(self.text)


@dataclass
class CliState:
    """What one command run counted: lines that were not JSON, the signal that stopped it."""

    bad_json: int = 0
    signal: int | None = None
    sources: list[Any] = field(default_factory=list)


class BadTarget(ValueError, TalkpipeAsyncError):
    """``run MODULE:ATTRIBUTE`` names nothing usable (exit code 2)."""


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def to_record(item: Any) -> Record:
    """Wrap a source's item: tail lines, text, SSE events (their data) and structured values."""
    if type(item) is Line:
        return Record(item.text, NO_VALUE, item)
    if isinstance(item, str):
        return Record(item)
    if isinstance(item, SSEEvent):
        return Record(item.data)
    if isinstance(item, (bytes, bytearray)):
        return Record(bytes(item).decode("utf-8", "replace"))
    return Record(None, item)


def render(fmt: str) -> Callable[[Any], Output]:
    """The function that turns a :class:`Record` (or a list of them) into an :class:`Output`."""

    def one(rec: Record) -> Output:
        if fmt == "json":
            return Output(_dumps(rec.payload), rec.payload, rec.line)
        text = rec.text if rec.text is not None else _dumps(rec.value)
        return Output(text, rec.payload, rec.line)

    def any_(item: Any) -> Output:
        if isinstance(item, list):
            payload = [r.payload for r in item]
            line = next((r.line for r in reversed(item) if r.line is not None), None)
            return Output(_dumps(payload), payload, line)
        return one(item)

    return any_


def _json_parser(state: CliState, policy: str) -> Callable[[Record], bool]:
    loads = json.loads

    def parse(rec: Record) -> bool:
        if rec.value is not NO_VALUE:
            return True
        try:
            rec.value = loads(rec.text or "")
        except ValueError as exc:
            if policy == "fail":
                raise ValueError(f"not JSON ({exc}): {rec.text!r:.200}") from None
            state.bad_json += 1
            return False
        return True

    parse.__name__ = parse.__qualname__ = "--json"
    return parse


def _grep(patterns: list[str], ignore_case: bool, keep: bool) -> Callable[[Record], bool]:
    flags = re.IGNORECASE if ignore_case else 0
    compiled = [re.compile(p, flags) for p in patterns]
    if len(compiled) == 1:
        search = compiled[0].search
        if keep:
            return lambda rec: search(rec.grep_text()) is not None
        return lambda rec: search(rec.grep_text()) is None
    if keep:
        return lambda rec: any(c.search(rec.grep_text()) for c in compiled)
    return lambda rec: not any(c.search(rec.grep_text()) for c in compiled)


def _where(cond: Condition) -> Callable[[Record], bool]:
    def where(rec: Record) -> bool:
        return cond(rec.value)

    where.__name__ = where.__qualname__ = f"--where {cond.text}"
    return where


class _ConnectRetry(AbstractSource[Any]):
    """Run another source's generator; retry it (with backoff) only while it failed before its first item.

    Connection errors after data has flowed are raised: re-requesting would
    repeat what was already delivered.
    """

    def __init__(self, inner: AbstractSource[Any], retries: int, delay: float) -> None:
        super().__init__()
        self.inner = inner
        self.retries = retries
        self.backoff = _fixed_backoff(retries, delay)
        self.name = inner.label

    async def generate(self) -> AsyncIterator[Any]:
        """Yield the inner source's items."""
        retries = Retries(self.backoff)  # never opened(): every failure before the first item counts
        while True:
            delivered = False
            gen: Any = self.inner.generate()
            try:
                async for item in gen:
                    delivered = True
                    yield item
                return
            except (OSError, httpx.TransportError) as exc:
                if delivered or not _is_unreachable(exc):
                    raise
                failure = exc
            finally:
                await gen.aclose()
            if not await retries.next_attempt():
                raise failure


def _fixed_backoff(retries: int, delay: float) -> Backoff:
    """``retries`` attempts after the first, ``delay`` seconds apart, doubling up to ``MAX_BACKOFF`` (no jitter)."""
    return Backoff(initial=delay, maximum=MAX_BACKOFF, jitter=False, max_attempts=retries + 1)


class _PostOutputs(http_post_batches):
    """``http_post_batches`` over :class:`Output` items: it posts their JSON payloads."""

    def _body(self, batch: list[Any]) -> tuple[bytes, str]:
        return super()._body([x.payload for x in batch])


def _backoff(args: argparse.Namespace) -> Backoff:
    return Backoff(initial=args.retry_delay, maximum=MAX_BACKOFF, max_attempts=args.retries + 1)


def _headers(args: argparse.Namespace) -> dict[str, str]:
    out: dict[str, str] = {}
    for header in args.header:
        name, _, value = header.partition(":")
        out[name.strip()] = value.strip()
    return out


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


_DROP_COUNTERS = {
    "dropped_long": "over-long line(s) dropped",
    "decode_errors": "line(s) with invalid text replaced",
    "partial_discarded": "partial line(s) discarded by a truncation",
    "dropped_lines": "over-long line(s) dropped",
    "partial_dropped": "partial line(s) dropped by a disconnect",
    "malformed": "malformed record(s) skipped",
    "rejected": "connection(s) refused (--max-connections)",
    "idle_closed": "idle connection(s) closed",
}


def _source(args: argparse.Namespace, state: CliState) -> Any:
    """The source stage for the sub-command (its counters are reported at exit)."""
    src = _make_source(args)
    state.sources.append(src)
    return src


def _make_source(args: argparse.Namespace) -> Any:
    cmd = args.command
    if cmd == "tail":
        return tail_file(
            args.path,
            start="beginning" if args.from_start else "end",
            poll_max=args.poll,
            checkpoint=args.checkpoint,
            checkpoint_interval=1.0,
            events=False,
        )
    if cmd == "read":
        return read_lines(args.paths if len(args.paths) > 1 else args.paths[0])
    if cmd == "http":
        headers = _headers(args)
        if args.mode == "sse":
            return sse_events(args.url, headers=headers, read_timeout=args.read_timeout, connect_timeout=5.0,
                              backoff=_backoff(args), stats=NetStats())
        kind = http_ndjson if args.mode == "ndjson" else http_lines
        inner = kind(args.url, headers=headers, read_timeout=args.read_timeout, connect_timeout=5.0,
                     stats=NetStats())
        return _ConnectRetry(inner, args.retries, args.retry_delay)
    if cmd == "tcp":
        host, port = args.address
        if args.reconnect:
            return tcp_lines(host, port, reconnect=True, backoff=_backoff(args), connect_timeout=5.0,
                             name=f"tcp {host}:{port}", stats=NetStats())
        inner_tcp = tcp_lines(host, port, connect_timeout=5.0, name=f"tcp {host}:{port}", stats=NetStats())
        return _ConnectRetry(inner_tcp, args.retries, args.retry_delay)
    if cmd == "listen":
        host, port = args.address

        def listening(address: Any) -> None:
            print(f"{PROG}: listening on {address[0]}:{address[1]}", file=sys.stderr, flush=True)

        return tcp_server_lines(host, port, max_connections=args.max_connections, idle_timeout=args.idle_timeout,
                                on_listening=listening, stats=NetStats())
    if cmd == "exec":
        command: Any = args.argv[0] if args.shell else list(args.argv)
        return process_lines(command, shell=args.shell, check=not args.no_check, stats=NetStats())
    raise AssertionError(f"unknown command {cmd!r}")  # pragma: no cover


def _sink(spec: SinkSpec, args: argparse.Namespace, acking: bool) -> Any:
    if spec.kind == "stdout":
        return stdout_sink(flush_every=1, name="stdout")
    if spec.kind == "file":
        return write_lines(spec.target, flush_interval=0.2, emit="flushed" if acking else "written",
                           name=f"file:{spec.target}")
    if spec.kind == "tcp":
        return tcp_sink(spec.target, spec.port, flush_every=1, connect_timeout=5.0, reconnect=True,
                        backoff=_fixed_backoff(args.retries, args.retry_delay), name=f"tcp:{spec.target}:{spec.port}")
    if spec.kind == "http":
        return _PostOutputs(spec.target, batch_size=args.post_batch, backoff=_backoff(args), timeout=10.0,
                            name=f"POST {spec.target}")
    if spec.kind == "redis":
        from ..connectors import RedisStreamSink  # redis-py loads only for a redis: destination

        return RedisStreamSink(spec.target, url=args.redis_url, encode=lambda o: _dumps(o.payload),
                               retries=args.retries)
    if spec.kind == "nats":
        from ..connectors import JetStreamSink  # nats-py loads only for a nats: destination

        return JetStreamSink(spec.target, servers=args.nats_url, encode=lambda o: _dumps(o.payload).encode(),
                             retries=args.retries)
    raise AssertionError(f"unknown destination {spec.kind!r}")  # pragma: no cover


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
    stages: list[Any] = [head if head is not None else _source(args, state), map_op(to_record, name="record")]
    if args.grep:
        stages.append(filter_op(_grep(args.grep, args.ignore_case, True), name="--grep"))
    if args.grep_v:
        stages.append(filter_op(_grep(args.grep_v, args.ignore_case, False), name="--grep-v"))
    if args.json or args.where:
        stages.append(filter_op(_json_parser(state, args.bad_json), name="--json"))
    for cond in args.where:
        stages.append(filter_op(_where(cond), name=f"--where {cond.text}"))
    if args.rate:
        stages.append(throttle(args.rate, args.burst, name="--rate"))
    if args.limit:
        stages.append(take(args.limit, name="--limit"))
    if args.batch or args.batch_time:
        stages.append(batch_op(args.batch or DEFAULT_TIME_BATCH, args.batch_time, name="--batch"))
    stages.append(map_op(render(args.format), name="render"))
    acking = args.command == "tail" and args.checkpoint is not None
    for spec in args.to or [SinkSpec("stdout", "")]:
        stages.append(_sink(spec, args, acking))
    if acking:
        stages.append(map_op(_commit if args.durable else _ack, name="acknowledge"))
    return Pipeline(*stages)


def _walk(exc: BaseException, depth: int = 0) -> list[BaseException]:
    """*exc*, the members of exception groups, and the causes/contexts (bounded)."""
    if depth > 8:
        return []
    out = [exc]
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            out.extend(_walk(inner, depth + 1))
    for linked in (exc.__cause__, exc.__context__):
        if linked is not None:
            out.extend(_walk(linked, depth + 1))
    return out


_UNREACHABLE_ERRNOS = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT,
                       errno.EADDRNOTAVAIL}


def _is_unreachable(exc: BaseException) -> bool:
    for e in _walk(exc):
        if isinstance(e, (ConnectionRefusedError, socket.gaierror, httpx.ConnectError, httpx.ConnectTimeout)):
            return True
        if isinstance(e, OSError) and e.errno in _UNREACHABLE_ERRNOS:
            return True
        if isinstance(e, OSError) and str(e) == "All connection attempts failed":
            return True
        if type(e).__name__ == "BrokerUnavailable":
            return True
        if isinstance(e, (SSEError, ConnectionLost)) and "gave up after" in str(e):
            return True
        if isinstance(e, DeliveryFailed) and ": HTTP " not in str(e):
            return True
    return False


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def exit_code_for(exc: BaseException) -> int:
    """3 when an endpoint was unreachable after the retries, 2 for a bad ``run`` target, else 1."""
    if isinstance(_leaf(exc), BadTarget):
        return EXIT_BAD_ARGS
    return EXIT_UNREACHABLE if _is_unreachable(exc) else EXIT_ERROR


def describe_error(exc: BaseException) -> str:
    """One line: the error's type and message, and the stage (and item) it came from."""
    leaf = _leaf(exc)
    text = " / ".join(part.strip() for part in str(leaf).splitlines() if part.strip())
    message = f"{type(leaf).__name__}: {text}" if text else type(leaf).__name__
    ctx = error_context(leaf) or error_context(exc)
    if ctx is not None:
        segment = ctx.segment
        for note in getattr(leaf, "__notes__", None) or []:
            if isinstance(note, str) and note.startswith("in step "):
                segment = note[len("in step "):].split(" of fused stage")[0]
        where = f" [in stage {segment!r}"
        if ctx.item is not None:
            where += f" while processing item {ctx.item}"
        message += where + "]"
    return message


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
        if _stdout_broken(exc):
            _quiet_stdout()  # the reader of our stdout went away (e.g. `| head`): quiet, like other tools
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
            _quiet_stdout()
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
        for name, what in _DROP_COUNTERS.items():
            count = getattr(stats, name, 0)
            if isinstance(count, int) and count:
                print(f"{PROG}: {src.label}: {count} {what}", file=sys.stderr, flush=True)
    if state.bad_json:
        print(f"{PROG}: skipped {state.bad_json} line(s) that were not valid JSON", file=sys.stderr, flush=True)


def _stdout_broken(exc: BaseException) -> bool:
    """True when *exc* is the stdout destination's broken pipe."""
    leaf = _leaf(exc)
    if not isinstance(leaf, BrokenPipeError):
        return False
    ctx = error_context(leaf) or error_context(exc)
    return ctx is not None and ctx.segment == "stdout"


def _quiet_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
