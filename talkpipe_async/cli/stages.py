"""The command's sources and destinations, built from the parsed arguments."""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx

from .._backoff import Backoff, Retries
from .._core._segment import AbstractSource
from ..sinks.files import write_lines
from ..sinks.net import to_http, to_stdout, to_tcp
from ..sources.files import read_lines
from ..sources.http import http_lines, http_ndjson
from ..sources.process import process_lines
from ..sources.sockets import NetStats, tcp_lines, tcp_server_lines
from ..sources.sse import sse_events
from ..sources.tail import tail_file
from .args import SinkSpec
from .errors import is_unreachable
from .records import CliState, dumps

__all__ = ["DROP_COUNTERS", "MAX_BACKOFF", "PROG", "ConnectRetry", "make_sink", "make_source"]

PROG = "talkpipe-async"
MAX_BACKOFF = 5.0


class ConnectRetry(AbstractSource[Any]):
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
                if delivered or not is_unreachable(exc):
                    raise
                failure = exc
            finally:
                await gen.aclose()
            if not await retries.next_attempt():
                raise failure


def _fixed_backoff(retries: int, delay: float) -> Backoff:
    """``retries`` attempts after the first, ``delay`` seconds apart, doubling up to ``MAX_BACKOFF`` (no jitter)."""
    return Backoff(initial=delay, maximum=MAX_BACKOFF, jitter=False, max_attempts=retries + 1)


class _PostOutputs(to_http):
    """``to_http`` over :class:`Output` items: it posts their JSON payloads."""

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


DROP_COUNTERS = {
    "dropped_long": "over-long line(s) dropped",
    "decode_errors": "line(s) with invalid text replaced",
    "partial_discarded": "partial line(s) discarded by a truncation",
    "dropped_lines": "over-long line(s) dropped",
    "partial_dropped": "partial line(s) dropped by a disconnect",
    "malformed": "malformed record(s) skipped",
    "rejected": "connection(s) refused (--max-connections)",
    "idle_closed": "idle connection(s) closed",
}


def make_source(args: argparse.Namespace, state: CliState) -> Any:
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
        return ConnectRetry(inner, args.retries, args.retry_delay)
    if cmd == "tcp":
        host, port = args.address
        if args.reconnect:
            return tcp_lines(host, port, reconnect=True, backoff=_backoff(args), connect_timeout=5.0,
                             name=f"tcp {host}:{port}", stats=NetStats())
        inner_tcp = tcp_lines(host, port, connect_timeout=5.0, name=f"tcp {host}:{port}", stats=NetStats())
        return ConnectRetry(inner_tcp, args.retries, args.retry_delay)
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


def make_sink(spec: SinkSpec, args: argparse.Namespace, acking: bool) -> Any:
    """The destination stage of one ``--to`` (stdout when there is none)."""
    if spec.kind == "stdout":
        return to_stdout(flush_every=1, name="stdout")
    if spec.kind == "file":
        return write_lines(spec.target, flush_interval=0.2, emit="flushed" if acking else "written",
                           name=f"file:{spec.target}")
    if spec.kind == "tcp":
        return to_tcp(spec.target, spec.port, flush_every=1, connect_timeout=5.0, reconnect=True,
                        backoff=_fixed_backoff(args.retries, args.retry_delay), name=f"tcp:{spec.target}:{spec.port}")
    if spec.kind == "http":
        return _PostOutputs(spec.target, batch_size=args.post_batch, backoff=_backoff(args), timeout=10.0,
                            name=f"POST {spec.target}")
    if spec.kind == "redis":
        from ..connectors import to_redis_stream  # redis-py loads only for a redis: destination

        return to_redis_stream(spec.target, url=args.redis_url, encode=lambda o: dumps(o.payload),
                               retries=args.retries)
    if spec.kind == "nats":
        from ..connectors import to_jetstream  # nats-py loads only for a nats: destination

        return to_jetstream(spec.target, servers=args.nats_url, encode=lambda o: dumps(o.payload).encode(),
                             retries=args.retries)
    raise AssertionError(f"unknown destination {spec.kind!r}")  # pragma: no cover
