"""Argument parsing for the ``talkpipe-async`` command (argparse, one sub-command per source)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .conditions import Condition, ConditionError

__all__ = ["EXIT_BAD_ARGS", "EXIT_BROKEN_PIPE", "EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_TERMINATED",
           "EXIT_UNREACHABLE", "SinkSpec", "build_parser", "parse_args"]

EXIT_OK = 0
"""Success: the source ended (or ``--limit`` was reached) and every item was written."""
EXIT_ERROR = 1
"""The pipeline failed (a stage raised); one line on stderr names the error and the stage."""
EXIT_BAD_ARGS = 2
"""Bad arguments (argparse errors, a bad ``--where`` or ``--grep``, an unknown ``--to``)."""
EXIT_UNREACHABLE = 3
"""A source or sink endpoint could not be reached after the bounded retries."""
EXIT_INTERRUPTED = 130
"""Stopped by Ctrl-C (SIGINT) after a clean shutdown."""
EXIT_TERMINATED = 143
"""Stopped by SIGTERM after a clean shutdown."""
EXIT_BROKEN_PIPE = 141
"""Standard output was closed by its reader (``| head``): stopped quietly, as a shell tool killed by SIGPIPE."""

EPILOG = """\
exit codes: 0 success, 1 pipeline error, 2 bad arguments, 3 source or sink unreachable
after retries, 130 interrupted (Ctrl-C), 141 stdout closed by its reader, 143 terminated
(SIGTERM).  See docs/cli.md."""


@dataclass(frozen=True)
class SinkSpec:
    """One parsed ``--to`` destination: ``kind`` is stdout, file, tcp, http, redis or nats."""

    kind: str
    target: str
    port: int = 0


def _host_port(text: str, *, default_host: str | None = None) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        if default_host is None:
            raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
        host, port = default_host, text
    host = host.strip("[]") or (default_host or "")
    if not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"bad port in {text!r}")
    return host, int(port)


def host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` for argparse."""
    return _host_port(text)


def listen_address(text: str) -> tuple[str, int]:
    """``[HOST:]PORT`` for argparse (host defaults to 127.0.0.1)."""
    return _host_port(text, default_host="127.0.0.1")


def sink_spec(text: str) -> SinkSpec:
    """Parse a ``--to`` value: ``stdout``/``-``, ``file:PATH``, ``tcp:HOST:PORT``, ``http(s)://URL``,
    ``redis:STREAM`` or ``nats:SUBJECT``."""
    if text in ("-", "stdout"):
        return SinkSpec("stdout", "")
    if text.startswith(("http://", "https://")):
        return SinkSpec("http", text)
    kind, sep, rest = text.partition(":")
    if not sep or not rest:
        raise argparse.ArgumentTypeError(
            f"unknown destination {text!r}: use stdout, file:PATH, tcp:HOST:PORT, http://URL, "
            "redis:STREAM or nats:SUBJECT"
        )
    if kind == "file":
        return SinkSpec("file", rest)
    if kind == "tcp":
        host, port = _host_port(rest)
        return SinkSpec("tcp", host, port)
    if kind in ("redis", "nats"):
        return SinkSpec(kind, rest)
    raise argparse.ArgumentTypeError(f"unknown destination kind {kind!r} in {text!r}")


def condition(text: str) -> Condition:
    """A ``--where`` condition for argparse (see :mod:`talkpipe_async.cli.conditions`)."""
    try:
        return Condition(text)
    except ConditionError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def regex(text: str) -> str:
    """A regular expression for argparse (checked here, compiled later with the -i flag)."""
    try:
        re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"bad regular expression {text!r}: {exc}") from None
    return text


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """A number > 0 (``5``, ``0.5``; a rate may be written ``100/s``)."""
    cleaned = text[:-2] if text.endswith("/s") else text
    try:
        value = float(cleaned)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _common(debug_only: bool = False) -> argparse.ArgumentParser:
    """Options shared by every pipeline sub-command."""
    p = argparse.ArgumentParser(add_help=False)
    general = p.add_argument_group("general")
    general.add_argument("--debug", action="store_true", help="print full tracebacks on errors")
    general.add_argument(
        "--progress",
        action="store_true",
        help="show live progress on stderr: items, rate, errors, buffer fill (a table of the stages when rich is "
        "installed); only when stderr is a terminal",
    )
    general.add_argument(
        "--backend",
        choices=["asyncio", "uvloop", "trio"],
        default="asyncio",
        help="event loop (default asyncio; redis and nats destinations need asyncio or uvloop)",
    )
    if debug_only:
        return p
    general.add_argument("--retries", type=non_negative_int, default=3, metavar="N",
                         help="connection retries before giving up with exit code 3 (default 3)")
    general.add_argument("--retry-delay", type=positive_float, default=0.2, metavar="SECONDS",
                         help="first wait between connection attempts; doubles up to 5 s (default 0.2)")

    filters = p.add_argument_group("filters (applied in this order)")
    filters.add_argument("--grep", action="append", type=regex, default=[], metavar="REGEX",
                         help="keep items whose text matches REGEX (repeat: any of them)")
    filters.add_argument("--grep-v", action="append", type=regex, default=[], metavar="REGEX",
                         help="drop items whose text matches REGEX (repeat: any of them)")
    filters.add_argument("-i", "--ignore-case", action="store_true", help="--grep/--grep-v ignore case")
    filters.add_argument("--json", action="store_true",
                         help="parse every line as JSON (implied by --where); output keeps the original text")
    filters.add_argument("--bad-json", choices=["skip", "fail"], default="skip",
                         help="a line that is not JSON: skip it (counted, reported on stderr) or fail (exit 1)")
    filters.add_argument("--where", action="append", type=condition, default=[], metavar="CONDITION",
                         help="keep JSON items satisfying CONDITION, e.g. 'level == \"error\"', "
                              "'latency_ms > 200', 'user.name ~ \"^a\"', 'trace exists' (repeat: all of them)")
    filters.add_argument("--rate", type=positive_float, metavar="PER_SECOND",
                         help="at most this many items per second (waits, never drops)")
    filters.add_argument("--burst", type=positive_int, default=1, metavar="N",
                         help="items allowed at once after a pause with --rate (default 1)")
    filters.add_argument("--limit", type=positive_int, metavar="N", help="stop after N items (exit 0)")
    filters.add_argument("--batch", type=positive_int, metavar="N",
                         help="group items into batches of N (each batch is written as one JSON array)")
    filters.add_argument("--batch-time", type=positive_float, metavar="SECONDS",
                         help="emit a partial batch SECONDS after its first item (alone: batches of up to 1000)")

    out = p.add_argument_group("destinations")
    out.add_argument("--to", action="append", type=sink_spec, default=[], metavar="DEST",
                     help="where to write (repeatable; default stdout): stdout, file:PATH (append), "
                          "tcp:HOST:PORT, http://URL (POST JSON batches), redis:STREAM, nats:SUBJECT")
    out.add_argument("--format", choices=["lines", "json"], default="lines",
                     help="lines: text as read, structured items as compact JSON; json: every item as JSON")
    out.add_argument("--post-batch", type=positive_int, default=100, metavar="N",
                     help="items per HTTP POST (default 100; also sent at the end)")
    out.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", metavar="URL",
                     help="Redis server for redis:STREAM (default redis://127.0.0.1:6379/0)")
    out.add_argument("--nats-url", default="nats://127.0.0.1:4222", metavar="URL",
                     help="NATS server for nats:SUBJECT (JetStream; default nats://127.0.0.1:4222)")
    return p


def build_parser() -> argparse.ArgumentParser:
    """The full parser: ``tail``, ``read``, ``http``, ``tcp``, ``listen``, ``exec``, ``run``, ``chatterlang``,
    ``worker``, ``demo``."""
    parser = argparse.ArgumentParser(
        prog="talkpipe-async",
        description="Run streaming pipelines from the command line: read a source, filter, write to destinations.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = [_common()]

    def add(name: str, help: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=common, help=help, description=description, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    tail = add("tail", "follow a file like tail -F",
               "Follow a file by name across rotation, truncation and re-creation, printing new lines.")
    tail.add_argument("path", help="the file to follow (it may not exist yet)")
    tail.add_argument("--from-start", action="store_true",
                      help="read the existing content first (default: new lines only)")
    tail.add_argument("--checkpoint", metavar="FILE",
                      help="resume after the last line written to every destination (the offset is kept in FILE)")
    tail.add_argument("--durable", action="store_true",
                      help="with --checkpoint: fsync the checkpoint after every line (slower, survives a crash)")
    tail.add_argument("--poll", type=positive_float, default=0.25, metavar="SECONDS",
                      help="longest wait between polls while idle (default 0.25)")

    read = add("read", "read files (or globs) once",
               "Read the lines of files (globs allowed) from start to end.")
    read.add_argument("paths", nargs="+", help="files or glob patterns")

    http = add("http", "stream an HTTP URL as lines, NDJSON or Server-Sent Events",
               "Stream an HTTP response body. Connection failures are retried (--retries), then exit 3.")
    http.add_argument("url")
    http.add_argument("--as", dest="mode", choices=["lines", "ndjson", "sse"], default="lines",
                      help="lines (default), ndjson (one JSON record per line) or sse (the data of each event)")
    http.add_argument("--header", action="append", default=[], metavar="NAME:VALUE", help="request header (repeatable)")
    http.add_argument("--read-timeout", type=positive_float, default=60.0, metavar="SECONDS",
                      help="longest silence before the connection counts as broken (default 60)")

    tcp = add("tcp", "connect to a TCP server and read its lines",
              "Connect to HOST:PORT and read lines until the server closes the connection.")
    tcp.add_argument("address", type=host_port, metavar="HOST:PORT")
    tcp.add_argument("--reconnect", action="store_true",
                     help="reconnect after the connection closes (forever; failed attempts are bounded by --retries)")

    listen = add("listen", "listen on a TCP port; read the lines of every client",
                 "Accept TCP connections and merge the lines every client sends. Prints 'listening on HOST:PORT' "
                 "to stderr once bound (PORT 0 picks a free port).")
    listen.add_argument("address", type=listen_address, metavar="[HOST:]PORT")
    listen.add_argument("--max-connections", type=positive_int, default=100, metavar="N",
                        help="clients served at once; more are refused (default 100)")
    listen.add_argument("--idle-timeout", type=positive_float, metavar="SECONDS", help="close silent clients")

    exe = add("exec", "run a command and read its standard output",
              "Run a command (no shell unless --shell) and read the lines it prints. A non-zero exit is exit 1.")
    exe.add_argument("--shell", action="store_true", help="run COMMAND through /bin/sh (give it as one string)")
    exe.add_argument("--no-check", action="store_true", help="ignore the command's exit status")
    exe.add_argument("argv", nargs=argparse.REMAINDER, metavar="COMMAND [ARG ...]",
                     help="the command (put -- before it when it has options of its own)")

    run = add("run", "run a Pipeline defined in Python (module:attribute)",
              "Import MODULE and take ATTRIBUTE: a Pipeline, or a callable with no arguments returning one "
              "(or an awaitable of one). A pipeline that does not start with a source reads standard input lines. "
              "The current directory is importable.")
    run.add_argument("target", metavar="MODULE:ATTRIBUTE")

    chatter = add("chatterlang", "run a TalkPipe ChatterLang script (needs TalkPipe 1.2)",
                  "Compile a ChatterLang script with TalkPipe's own compiler and run it here (see docs/migration.md). "
                  "Its output items go to the destinations; a script that does not start with INPUT FROM reads "
                  "standard input lines. Our stages are available as async_<name>. A bad script is exit 2.")
    chatter.add_argument("script", nargs="?", help="the script (or give -f FILE)")
    chatter.add_argument("-f", "--file", metavar="FILE", help="read the script from FILE")
    chatter.add_argument("--blocking", action="store_true", help="run TalkPipe's stages in worker threads")
    chatter.add_argument("--discard", action="store_true",
                         help="write none of the output items (for a script that ends with print)")

    worker = sub.add_parser(
        "worker", help="run a broker pipeline (module:attribute) as a worker; stop cleanly on SIGTERM/SIGINT",
        description="Import MODULE and take ATTRIBUTE: a Pipeline starting with a Redis Streams or JetStream "
                    "source, or a callable with no arguments returning one. Each output is acknowledged. On "
                    "SIGTERM/SIGINT the worker stops fetching, hands back what it fetched but had not started, "
                    "finishes and acknowledges what is in progress, and exits 0; a second signal or "
                    "--drain-timeout cuts the drain short (exit 143).")
    worker.add_argument("target", metavar="MODULE:ATTRIBUTE")
    worker.add_argument("--drain-timeout", type=positive_float, default=30.0, metavar="SECONDS",
                        help="longest time to finish what is in progress after a stop signal (default 30)")
    worker.add_argument("--uvloop", action="store_true", help="run on uvloop (default: asyncio)")

    demo = sub.add_parser("demo",
                          help="run a live demo: a local SSE feed on 127.0.0.1 and a pipeline over it "
                               "(no external service)",
                          description="Run a live demo: a local SSE feed on 127.0.0.1 and a pipeline over it.")
    demo.add_argument("--count", type=int, default=12, help="how many events the feed sends (default 12)")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse *argv*; argparse exits with code 2 (and a usage line) on bad arguments."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "exec":
        argv_ = list(args.argv)
        if argv_ and argv_[0] == "--":
            argv_ = argv_[1:]
        if not argv_:
            parser.error("exec: give the command to run")
        if args.shell and len(argv_) != 1:
            parser.error("exec --shell: give the command as one string")
        args.argv = argv_
    if args.command == "http":
        for header in args.header:
            name, sep, _ = header.partition(":")
            if not sep or not name.strip():
                parser.error(f"--header: expected NAME:VALUE, got {header!r}")
    if args.command == "worker" and ":" not in args.target:
        parser.error(f"worker: expected MODULE:ATTRIBUTE, got {args.target!r}")
    if args.command not in ("demo", "worker"):
        if args.command == "tail" and args.durable and not args.checkpoint:
            parser.error("--durable needs --checkpoint")
        if args.backend == "trio" and any(s.kind in ("redis", "nats") for s in args.to):
            parser.error("redis and nats destinations need --backend asyncio or uvloop")
        if args.command == "run" and ":" not in args.target:
            parser.error(f"run: expected MODULE:ATTRIBUTE, got {args.target!r}")
    return args
