"""The built-in sources give their item types, and the sinks pass the types on.

A source's items follow its options where they decide the type (``mode=``,
``text=``, ``with_address=``, ``header=``, ``decode=``); ``Any`` is left only
for untyped JSON.  A sink is a segment from its items to the same items: the
checker solves its type from the stage before it, through ``|`` (a sink is a
``PassThrough``, which ``|`` types by its left side) or ``.then(sink)``.  The
last function holds mistakes the checkers must report.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import anyio
from typing_extensions import Never, assert_type

from talkpipe_async import Pipeline, segment
from talkpipe_async.sinks import (
    callback,
    print_items,
    to_http,
    to_queue,
    to_stdout,
    to_tcp,
    to_unix,
    to_websocket,
    write_jsonl,
    write_lines,
)
from talkpipe_async.sources import (
    Line,
    SSEEvent,
    acknowledge,
    http_bytes,
    http_lines,
    http_ndjson,
    http_poll,
    process_lines,
    read_chunks,
    read_csv,
    read_jsonl,
    read_lines,
    sse_events,
    stdin_lines,
    tail_file,
    tcp_bytes,
    tcp_lines,
    tcp_server_lines,
    udp_datagrams,
    unix_bytes,
    unix_lines,
    unix_server_lines,
    websocket_messages,
)


@segment
async def upper(items: AsyncIterator[str]) -> AsyncIterator[str]:
    async for x in items:
        yield x.upper()


@segment
async def size(items: AsyncIterator[bytes]) -> AsyncIterator[int]:
    async for x in items:
        yield len(x)


async def files() -> None:
    assert_type(await read_lines("a.log").collect(), list[str])
    assert_type(await read_chunks("a.bin").collect(), list[bytes])
    assert_type(await read_jsonl("a.jsonl").collect(), list[Any])  # JSON: untyped
    assert_type(await read_csv("a.csv").collect(), list[dict[str, str]])
    assert_type(await read_csv("a.csv", fieldnames=["a", "b"]).collect(), list[dict[str, str]])
    assert_type(await read_csv("a.csv", header=False).collect(), list[list[str]])
    assert_type(await tail_file("a.log").collect(), list[Line])
    assert_type(await tail_file("a.log", text=True).collect(), list[str])
    assert_type(tail_file("a.log").then(acknowledge()), Pipeline[Never, Line])
    assert_type(read_lines("a.log") | upper(), Pipeline[Never, str])


async def network() -> None:
    assert_type(await tcp_lines("127.0.0.1", 1).collect(), list[str])
    assert_type(await tcp_bytes("127.0.0.1", 1).collect(), list[bytes])
    assert_type(await unix_lines("/tmp/s").collect(), list[str])
    assert_type(await unix_bytes("/tmp/s").collect(), list[bytes])
    assert_type(await tcp_server_lines().collect(), list[str])
    assert_type(await unix_server_lines("/tmp/s").collect(), list[str])
    assert_type(await udp_datagrams().collect(), list[bytes])
    assert_type(await udp_datagrams(with_address=True).collect(), list[tuple[bytes, tuple[str, int]]])
    assert_type(tcp_bytes("127.0.0.1", 1) | size(), Pipeline[Never, int])
    assert_type(await http_bytes("http://127.0.0.1:1/").collect(), list[bytes])
    assert_type(await http_lines("http://127.0.0.1:1/").collect(), list[str])
    assert_type(await http_ndjson("http://127.0.0.1:1/").collect(), list[Any])  # JSON: untyped
    assert_type(await http_poll("http://127.0.0.1:1/", 1.0).collect(), list[Any])  # JSON by default
    assert_type(await http_poll("http://127.0.0.1:1/", 1.0, decode="text").collect(), list[str])
    assert_type(await http_poll("http://127.0.0.1:1/", 1.0, decode="bytes").collect(), list[bytes])
    assert_type(await sse_events("http://127.0.0.1:1/").collect(), list[SSEEvent])
    assert_type(await websocket_messages("ws://127.0.0.1:1/").collect(), list[str])
    assert_type(await websocket_messages("ws://127.0.0.1:1/", mode="bytes").collect(), list[bytes])
    assert_type(await websocket_messages("ws://127.0.0.1:1/", mode="json").collect(), list[Any])


async def processes() -> None:
    assert_type(await process_lines(["echo", "x"]).collect(), list[str])
    assert_type(await stdin_lines().collect(), list[str])


async def sinks_pass_their_items_on(queue: asyncio.Queue[Any]) -> None:
    lines = read_lines("a.log")
    assert_type(lines.then(write_lines("b.log")), Pipeline[Never, str])
    assert_type(lines.then(write_jsonl("b.jsonl")), Pipeline[Never, str])
    assert_type(lines.then(to_tcp("127.0.0.1", 1)), Pipeline[Never, str])
    assert_type(lines.then(to_unix("/tmp/s")), Pipeline[Never, str])
    assert_type(lines.then(to_stdout()), Pipeline[Never, str])
    assert_type(lines.then(to_http("http://127.0.0.1:1/")), Pipeline[Never, str])
    assert_type(lines.then(to_websocket("ws://127.0.0.1:1/")), Pipeline[Never, str])
    assert_type(lines.then(to_queue(queue)), Pipeline[Never, str])
    assert_type(lines.then(to_queue(asyncio.Queue[str]())), Pipeline[Never, str])
    assert_type(lines.then(to_queue(asyncio.Queue[object]())), Pipeline[Never, str])  # a wider queue takes str
    assert_type(lines.then(to_queue(asyncio.PriorityQueue[str]())), Pipeline[Never, str])
    assert_type(to_queue(asyncio.Queue[int]()), to_queue[int])
    assert_type(lines.then(print_items()), Pipeline[Never, str])
    assert_type(lines.then(callback(print)), Pipeline[Never, str])
    assert_type(await lines.then(write_lines("b.log")).collect(), list[str])
    assert_type(lines | write_lines("b.log"), Pipeline[Never, str])
    assert_type(lines | to_tcp("127.0.0.1", 1) | to_stdout(), Pipeline[Never, str])
    assert_type(lines | to_queue(queue), Pipeline[Never, str])
    assert_type(tail_file("a.log") | acknowledge(), Pipeline[Never, Line])
    piped: Pipeline[Never, str] = lines | write_lines("b.log")  # `|` with an annotated target: both checkers
    assert_type(piped | upper(), Pipeline[Never, str])


async def mistakes() -> None:
    tcp_bytes("127.0.0.1", 1) | upper()  # type: ignore[operator]  # pyright: ignore[reportOperatorIssue, reportUnusedExpression]
    read_lines("a.log") | size()  # type: ignore[operator]  # pyright: ignore[reportOperatorIssue, reportUnusedExpression]
    udp_datagrams() | upper()  # type: ignore[operator]  # pyright: ignore[reportOperatorIssue, reportUnusedExpression]
    tail_file("a.log") | upper()  # type: ignore[operator]  # pyright: ignore[reportOperatorIssue, reportUnusedExpression]
    websocket_messages("ws://127.0.0.1:1/", mode="bytes") | upper()  # type: ignore[operator]  # pyright: ignore[reportOperatorIssue, reportUnusedExpression]
    http_bytes("http://127.0.0.1:1/").then(upper())  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    read_lines("a.log").then(write_lines("b.log")).then(size())  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    rows: list[dict[str, str]] = await read_csv("a.csv", header=False).collect()  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    read_lines("a.log").then(to_queue(asyncio.Queue[int]()))  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    tcp_lines("127.0.0.1", 1, reconect=True)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    tcp_server_lines(buffer="64")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    read_lines("a.log") | to_queue(asyncio.Queue[int]())  # type: ignore[arg-type]  # pyright: ignore[reportOperatorIssue, reportUnusedExpression]
    read_lines("a.log") | write_lines("b.log") | size()  # type: ignore[operator]  # pyright: ignore[reportOperatorIssue, reportUnusedExpression]
    send, _ = anyio.create_memory_object_stream[str](1)
    # a memory send stream has no put(): it goes to to_stream
    to_queue(send)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    print(rows)
