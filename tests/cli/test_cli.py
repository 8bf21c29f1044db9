"""The ``talkpipe-async`` command: the real command as a subprocess against real local feeds; the --where grammar."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from talkpipe_async.cli import Condition, ConditionError, parse_condition
from talkpipe_async.cli.conditions import MAX_DEPTH, MAX_LENGTH
from tests.conftest import BACKEND_NAMES, die_with_parent
from tests.helpers.cli import SIGINT, SIGTERM, TIMEOUT, cli, run_cli, serve_http, serve_tcp
from tests.helpers.servers import nats_binary, nats_server, redis_binary, redis_server
from tests.helpers.wait import wait_until_sync

QUICK = ["--retries", "2", "--retry-delay", "0.05"]


def _append(path: Path, *lines: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")


def _one_error_line(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# ---------------------------------------------------------------------------------------------- arguments


def test_help_on_every_subcommand() -> None:
    top = run_cli("--help")
    assert top.returncode == 0 and "exit codes" in top.stdout
    for cmd in ("tail", "read", "http", "tcp", "listen", "exec", "run", "demo"):
        done = run_cli(cmd, "--help")
        assert done.returncode == 0, (cmd, done.stderr)
        assert f"usage: talkpipe-async {cmd}" in done.stdout


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["nosuch"],
        ["read"],
        ["read", "x", "--where", 'level = "error"'],
        ["read", "x", "--where", '__import__("os").system("touch /tmp/pwned")'],
        ["read", "x", "--grep", "("],
        ["read", "x", "--to", "ftp:somewhere"],
        ["read", "x", "--limit", "0"],
        ["tcp", "nohostport"],
        ["tail", "x", "--durable"],
        ["exec"],
        ["run", "no_colon"],
        ["http", "http://x", "--header", "novalue"],
        ["read", "x", "--backend", "trio", "--to", "redis:s"],
    ],
)
def test_bad_arguments_exit_2(args: list[str]) -> None:
    done = run_cli(*args)
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr
    assert "error" in done.stderr


def test_bad_run_target_exit_2(tmp_path: Path) -> None:
    (tmp_path / "plain.py").write_text("value = 42\n")
    for target in ("no_such_module_xyz:p", "plain:missing", "plain:value"):
        done = run_cli("run", target, cwd=tmp_path)
        assert done.returncode == 2, (target, done.stderr)
        assert _one_error_line(done.stderr).startswith("talkpipe-async: error: BadTarget")


# ---------------------------------------------------------------------------------------------- files


def test_read_filters_formats_and_file_sink(tmp_path: Path) -> None:
    src = tmp_path / "in.log"
    _append(
        src,
        '{"level":"error","latency_ms":250,"user":{"name":"ann"}}',
        "not json at all",
        '{"level":"info","latency_ms":20,"user":{"name":"bob"}}',
        '{"level":"error","latency_ms":50,"user":{"name":"al"},"trace":"t1"}',
    )
    done = run_cli("read", str(src), "--where", 'level == "error"', "--where", "latency_ms > 200")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ['{"level":"error","latency_ms":250,"user":{"name":"ann"}}']
    assert "skipped 1 line(s) that were not valid JSON" in done.stderr  # counted, never silent

    done = run_cli("read", str(src), "--where", 'user.name ~ "^a" and not trace exists', "--format", "json")
    assert [json.loads(x)["user"]["name"] for x in done.stdout.splitlines()] == ["ann"]

    done = run_cli("read", str(src), "--grep", "error", "--grep-v", "t1")
    assert done.stdout.splitlines() == ['{"level":"error","latency_ms":250,"user":{"name":"ann"}}']

    out = tmp_path / "out.jsonl"
    out.write_text("existing\n")
    done = run_cli("read", str(src), "--json", "--batch", "2", "--to", f"file:{out}")
    assert done.returncode == 0 and done.stdout == ""
    lines = out.read_text().splitlines()
    assert lines[0] == "existing"  # appended
    assert [len(json.loads(x)) for x in lines[1:]] == [2, 1]

    done = run_cli("read", str(src), "--json", "--bad-json", "fail")
    assert done.returncode == 1
    assert "not JSON" in _one_error_line(done.stderr) and "'not json at all'" in done.stderr


def test_reader_closing_stdout_stops_quietly(tmp_path: Path) -> None:
    src = tmp_path / "many.txt"
    src.write_text("".join(f"{i}\n" for i in range(200_000)))
    with cli("read", str(src)) as c:
        assert c.line() == "0"
        assert c.proc.stdout is not None
        c.proc.stdout.close()  # like `| head -1`
        assert c.wait() == 141
        assert c.drain_stderr() == []


def test_dropped_lines_are_reported(tmp_path: Path) -> None:
    src = tmp_path / "long.txt"
    src.write_bytes(b"short\n" + b"x" * (1_100_000) + b"\nafter\n")
    done = run_cli("read", str(src))
    assert done.returncode == 0 and done.stdout.splitlines() == ["short", "after"]
    assert "talkpipe-async: read_lines: 1 over-long line(s) dropped" in done.stderr


def test_tail_follows_appended_lines(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    _append(log, '{"level":"error","n":0}')
    with cli("tail", str(log), "--from-start", "--where", 'level == "error"', "--rate", "1000") as c:
        assert json.loads(c.line())["n"] == 0  # the tail is running
        _append(log, '{"level":"info","n":1}', '{"level":"error","n":2}', "garbage", '{"level":"error","n":3}')
        assert [json.loads(x)["n"] for x in c.lines(2)] == [2, 3]
        log.rename(tmp_path / "app.log.1")  # rotation: follow the name
        _append(log, '{"level":"error","n":4}')
        assert json.loads(c.line())["n"] == 4
        c.signal(SIGINT)
        assert c.wait() == 130, c.drain_stderr()
        assert c.rest() == []
        assert "skipped 1 line(s)" in "\n".join(c.drain_stderr())


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_sigint_flushes_and_checkpoint_resumes_exactly(tmp_path: Path, backend: str) -> None:
    log = tmp_path / "feed.log"
    ck = tmp_path / "feed.ck"
    _append(log, *(f"line {i}" for i in range(5)))
    with cli("tail", str(log), "--from-start", "--checkpoint", str(ck), "--backend", backend) as c:
        assert c.lines(5) == [f"line {i}" for i in range(5)]
        _append(log, "line 5", "line 6")
        assert c.lines(2) == ["line 5", "line 6"]
        c.signal(SIGINT)
        assert c.wait() == 130, c.drain_stderr()
        assert c.rest() == []
    state = json.loads(ck.read_text())
    assert state["offset"] == log.stat().st_size  # every printed line is acknowledged, nothing more
    # Lines written while the command was down are not lost; acknowledged ones are not repeated.
    _append(log, "line 7", "line 8")
    with cli("tail", str(log), "--checkpoint", str(ck), "--limit", "2", "--backend", backend) as c:
        assert c.lines(2) == ["line 7", "line 8"]
        assert c.wait() == 0
    assert json.loads(ck.read_text())["offset"] == log.stat().st_size


def test_sigterm_stops_cleanly(tmp_path: Path) -> None:
    log = tmp_path / "t.log"
    _append(log, "hello")
    out = tmp_path / "copy.log"
    with cli("tail", str(log), "--from-start", "--to", "stdout", "--to", f"file:{out}") as c:
        assert c.line() == "hello"
        c.signal(SIGTERM)
        assert c.wait() == 143
    assert out.read_text() == "hello\n"  # the file sink was closed and flushed


# ---------------------------------------------------------------------------------------------- network


def _sse(request: str, body: bytes, conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
    for i in range(5):
        data = json.dumps({"n": i, "kind": "odd" if i % 2 else "even"})
        conn.sendall(f"id: {i}\nevent: tick\ndata: {data}\n\n".encode())
    conn.sendall(b": keep-alive comment\n\n")
    conn.settimeout(10)
    conn.recv(1)  # keep the stream open until the command (ended by --limit) disconnects


def test_http_sse_source_with_where_and_limit() -> None:
    with serve_http(_sse) as port:
        done = run_cli(
            "http",
            f"http://127.0.0.1:{port}/events",
            "--as",
            "sse",
            "--where",
            'kind == "even"',
            "--limit",
            "2",
            *QUICK,
        )
    assert done.returncode == 0, done.stderr
    assert [json.loads(x)["n"] for x in done.stdout.splitlines()] == [0, 2]


def test_http_ndjson_to_to_http() -> None:
    posted: list[bytes] = []

    def respond(request: str, body: bytes, conn: socket.socket) -> None:
        if request.startswith("GET"):
            records = b"".join(json.dumps({"id": i, "latency_ms": i * 100}).encode() + b"\n" for i in range(6))
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (len(records), records)
            )
        else:
            posted.append(body)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    with serve_http(respond) as port:
        done = run_cli(
            "http",
            f"http://127.0.0.1:{port}/feed",
            "--as",
            "ndjson",
            "--where",
            "latency_ms >= 200",
            "--to",
            f"http://127.0.0.1:{port}/ingest",
            "--post-batch",
            "3",
            "--to",
            "stdout",
            *QUICK,
        )
    assert done.returncode == 0, done.stderr
    assert [json.loads(b) for b in posted] == [
        [{"id": 2, "latency_ms": 200}, {"id": 3, "latency_ms": 300}, {"id": 4, "latency_ms": 400}],
        [{"id": 5, "latency_ms": 500}],
    ]
    assert [json.loads(x)["id"] for x in done.stdout.splitlines()] == [2, 3, 4, 5]


def test_tcp_client_source_and_to_tcp() -> None:
    received: list[bytes] = []
    got_all = threading.Event()

    def feed(conn: socket.socket) -> None:
        conn.sendall(b"alpha\nskip me\nbeta\r\ngamma")  # unterminated last line is delivered at EOF

    def collect(conn: socket.socket) -> None:
        while chunk := conn.recv(65536):
            received.append(chunk)
        got_all.set()

    with serve_tcp(feed) as src_port, serve_tcp(collect) as dst_port:
        done = run_cli("tcp", f"127.0.0.1:{src_port}", "--grep-v", "skip", "--to", f"tcp:127.0.0.1:{dst_port}", *QUICK)
        assert done.returncode == 0, done.stderr
        assert got_all.wait(10)
    assert b"".join(received) == b"alpha\nbeta\ngamma\n"


def test_listen_server_source() -> None:
    with cli("listen", "127.0.0.1:0", "--limit", "3") as c:
        line = c.err_line()
        assert line.startswith("talkpipe-async: listening on 127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as a, socket.create_connection(("127.0.0.1", port)) as b:
            a.sendall(b"from a 1\n")
            assert c.line() == "from a 1"
            b.sendall(b"from b\n")
            assert c.line() == "from b"
            a.sendall(b"from a 2\n")
            assert c.line() == "from a 2"
            assert c.wait() == 0


def test_unreachable_exits_3_after_the_bounded_retries() -> None:
    """Nothing listens: each kind of endpoint gives up after --retries with exit 3 and one line naming the problem.

    That the retries are bounded is shown by the process ending at all (run_cli's timeout fails the test otherwise);
    how many attempts and how long they wait is checked exactly, in virtual time, by the next test.
    """
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for args in (
        ["tcp", f"127.0.0.1:{port}"],
        ["http", f"http://127.0.0.1:{port}/x"],
        ["http", f"http://127.0.0.1:{port}/x", "--as", "sse"],
        ["read", "/dev/null", "--to", f"tcp:127.0.0.1:{port}"],
    ):
        done = run_cli(*args, *QUICK)
        assert done.returncode == 3, (args, done.stderr)
        assert _one_error_line(done.stderr).startswith("talkpipe-async: unreachable:"), (args, done.stderr)


def test_connect_retries_are_counted_and_spaced_in_virtual_time() -> None:
    """--retries 2 --retry-delay 0.05: three attempts, 0.05 s then 0.1 s apart (trio's MockClock: exact, instant)."""
    from trio.testing import MockClock

    from talkpipe_async import source
    from talkpipe_async.cli.stages import ConnectRetry

    attempts: list[float] = []

    @source
    async def refused() -> AsyncIterator[str]:
        attempts.append(anyio.current_time())
        raise ConnectionRefusedError(111, "Connection refused")
        yield "never"  # an async generator

    async def main() -> None:
        with pytest.raises(ConnectionRefusedError):
            await ConnectRetry(refused(), retries=2, delay=0.05).collect()

    anyio.run(main, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)})
    assert [round(t - attempts[0], 9) for t in attempts] == [0.0, 0.05, 0.15]


def test_connect_retry_does_not_repeat_a_source_that_delivered() -> None:
    """A connection lost after the first item is raised at once: retrying would deliver the items again."""
    from talkpipe_async import source
    from talkpipe_async.cli.stages import ConnectRetry

    opened = 0

    @source
    async def drops() -> AsyncIterator[str]:
        nonlocal opened
        opened += 1
        yield "first"
        raise ConnectionRefusedError(111, "Connection refused")

    got: list[str] = []

    async def main() -> None:
        with pytest.raises(ConnectionRefusedError):
            async with ConnectRetry(drops(), retries=5, delay=0.05).stream() as items:
                async for item in items:
                    got.append(item)

    anyio.run(main)
    assert (opened, got) == (1, ["first"])


def test_http_status_error_is_exit_1_without_retries() -> None:
    requests: list[str] = []

    def respond(request: str, body: bytes, conn: socket.socket) -> None:
        requests.append(request)
        conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    with serve_http(respond) as port:
        done = run_cli("http", f"http://127.0.0.1:{port}/missing", *QUICK)
    assert done.returncode == 1
    assert "404" in _one_error_line(done.stderr)
    assert len(requests) == 1  # a status error is not a connection problem: no retry


# ---------------------------------------------------------------------------------------------- processes, run


def test_exec_source_and_failure() -> None:
    done = run_cli("exec", "--", sys.executable, "-c", "print('one'); print('two')")
    assert done.returncode == 0 and done.stdout.splitlines() == ["one", "two"]
    done = run_cli("exec", "--shell", "echo partial; echo boom >&2; exit 4")
    assert done.returncode == 1
    assert done.stdout.splitlines() == ["partial"]  # output already written stays
    err = _one_error_line(done.stderr)
    assert "ProcessFailed" in err and "exit status 4" in err and "boom" in err and "process_lines" in err


RUN_MODULE = """
from talkpipe_async import Pipeline, segment, source
from talkpipe_async.operators import map

@source
async def numbers(n: int = 5):
    for i in range(n):
        yield {"i": i, "even": i % 2 == 0}

@segment
async def explode(items):
    async for item in items:
        if item["i"] == 3:
            raise RuntimeError("cannot handle three")
        yield item

pipeline = numbers(n=5) | map(lambda x: x)

def factory():
    return numbers(n=3) | map(lambda x: x["i"] * 10)

failing = numbers() | explode()
upper = map(str.upper)
"""


def test_run_module_attribute(tmp_path: Path) -> None:
    (tmp_path / "mypipes.py").write_text(RUN_MODULE)
    done = run_cli("run", "mypipes:pipeline", "--where", "even == true", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [json.loads(x)["i"] for x in done.stdout.splitlines()] == [0, 2, 4]
    done = run_cli("run", "mypipes:factory", "--backend", "trio", cwd=tmp_path)
    assert done.stdout.splitlines() == ["0", "10", "20"]
    done = run_cli("run", "mypipes:upper", cwd=tmp_path, stdin="a\nb\n")  # no source: stdin lines
    assert done.stdout.splitlines() == ["A", "B"]
    done = run_cli("run", "mypipes:failing", cwd=tmp_path)
    assert done.returncode == 1
    assert [json.loads(x)["i"] for x in done.stdout.splitlines()] == [0, 1, 2]
    err = _one_error_line(done.stderr)
    assert "RuntimeError: cannot handle three" in err and "explode" in err and "'i': 3" in err
    debug = run_cli("run", "mypipes:failing", "--debug", cwd=tmp_path)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_demo_still_runs() -> None:
    done = run_cli("demo", "--count", "2")
    assert done.returncode == 0, done.stderr
    assert "done: 2 events" in done.stdout


def test_uvloop_backend(tmp_path: Path) -> None:
    src = tmp_path / "x.txt"
    _append(src, "a", "b")
    done = run_cli("read", str(src), "--backend", "uvloop")
    assert done.returncode == 0 and done.stdout.splitlines() == ["a", "b"]


def test_checkpoint_file_appears(tmp_path: Path) -> None:
    """--durable writes the checkpoint before each line is passed on."""
    log = tmp_path / "d.log"
    ck = tmp_path / "d.ck"
    _append(log, "x")
    with cli("tail", str(log), "--from-start", "--checkpoint", str(ck), "--durable") as c:
        assert c.line() == "x"
        wait_until_sync(
            lambda: ck.exists() and json.loads(ck.read_text())["offset"] == 2,
            time.monotonic() + TIMEOUT,
            "the checkpoint at offset 2",
        )
        c.signal(SIGINT)
        assert c.wait() == 130


# ---------------------------------------------------------------------------------------------- brokers


@pytest.mark.skipif(redis_binary() is None, reason="redis-server is not installed")
def test_redis_stream_destination(tmp_path: Path) -> None:
    import redis

    src = tmp_path / "r.jsonl"
    _append(src, '{"a": 1}', '{"a": 2}', "plain")
    with redis_server() as url:
        done = run_cli("read", str(src), "--json", "--to", "redis:events", "--redis-url", url)
        assert done.returncode == 0, done.stderr
        client = redis.Redis.from_url(url)
        try:
            entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange("events")  # type: ignore[assignment]
        finally:
            client.close()
    assert [json.loads(fields[b"data"]) for _, fields in entries] == [{"a": 1}, {"a": 2}]
    assert "skipped 1 line(s)" in done.stderr
    done = run_cli("read", str(src), "--to", "redis:events", "--redis-url", url, "--retries", "1")
    assert done.returncode == 3  # the server is gone now
    assert _one_error_line(done.stderr).startswith("talkpipe-async: unreachable: BrokerUnavailable")


@pytest.mark.skipif(nats_binary() is None, reason="nats-server is not installed")
def test_nats_subject_destination(tmp_path: Path) -> None:
    import asyncio

    import nats

    src = tmp_path / "n.txt"
    _append(src, "one", "two")

    async def setup(url: str) -> None:
        nc = await nats.connect(url)
        try:
            await nc.jetstream().add_stream(name="CLI", subjects=["cli.>"])
        finally:
            await nc.close()

    async def fetch(url: str) -> list[bytes]:
        nc = await nats.connect(url)
        try:
            sub = await nc.jetstream().pull_subscribe("cli.out", durable="check")
            msgs = await sub.fetch(2, timeout=5)
            return [m.data for m in msgs]
        finally:
            await nc.close()

    with nats_server() as url:
        asyncio.run(setup(url))
        done = run_cli("read", str(src), "--to", "nats:cli.out", "--nats-url", url)
        assert done.returncode == 0, done.stderr
        assert [json.loads(d) for d in asyncio.run(fetch(url))] == ["one", "two"]


# ---------------------------------------------------------------------------------------------- the grammar

DOC = {
    "level": "error",
    "latency_ms": 250,
    "ratio": 0.5,
    "ok": True,
    "none": None,
    "user": {"name": "ann", "tags": ["a", "b"]},
    "items": [{"id": 7}],
    "dash-key": 1,
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('level == "error"', True),
        ("level == 'error'", True),
        ('level != "error"', False),
        ("latency_ms > 200", True),
        ("latency_ms >= 250 and latency_ms <= 250", True),
        ("latency_ms < 1e3", True),
        ("ratio == 0.5", True),
        ("latency_ms > -1", True),
        ('latency_ms > "200"', False),  # number vs string: false, never an error
        ('level > "a"', True),
        ("ok == true", True),
        ("ok == 1", False),  # true is not 1
        ("none == null", True),
        ("none exists", True),
        ("absent exists", False),
        ("absent missing", True),
        ("absent == 1", False),
        ("absent != 1", False),
        ('user.name ~ "^a"', True),
        ('user.name !~ "^a"', False),
        ('latency_ms ~ "2"', False),  # not a string
        ("user.tags.1 == 'b'", True),
        ("user.tags.9 exists", False),
        ("items.0.id == 7", True),
        ("dash-key == 1", True),
        ("user.__class__ exists", False),  # lookups never touch attributes
        ('not level == "info"', True),
        ('(level == "info" or latency_ms > 200) and user exists', True),
        ('level == "info" or level == "debug"', False),
        ('user.name == "a\\"b"', False),
    ],
)
def test_condition_semantics(text: str, expected: bool) -> None:
    assert parse_condition(text)(DOC) is expected


@pytest.mark.parametrize("value", [None, 3, "text", [1, 2], {"level": 5}])
def test_condition_never_raises_on_other_values(value: object) -> None:
    cond = Condition('level == "error" or level > 3 or level ~ "x" or level.deep exists')
    assert cond(value) in (True, False)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "level",
        'level = "error"',
        "level ==",
        '== "error"',
        '__import__("os").system("id")',
        "open('/etc/passwd').read()",
        "level == error",  # a bare word is not a value
        "a == 1 b == 2",
        "(a == 1",
        "a == 1)",
        'a ~ "("',
        "a ~ 3",
        "a < true",
        "a == [1]",
        "a == 1; import os",
        "lambda: 1",
        "a == 1abc",
        "a == 'unterminated",
        "a.b. == 1",
        "(" * (MAX_DEPTH + 1) + "a exists" + ")" * (MAX_DEPTH + 1),
        "not " * (MAX_DEPTH + 1) + "a exists",
        "a exists or " * (MAX_LENGTH // 10) + "a exists",
        'a == "\\ud800\\x"',
    ],
)
def test_condition_rejects_hostile_or_broken_input(text: str) -> None:
    with pytest.raises(ConditionError):
        parse_condition(text)


def test_condition_errors_point_at_the_column() -> None:
    with pytest.raises(ConditionError, match="column 7"):
        parse_condition('level = "error"')
    with pytest.raises(ConditionError, match="expected a value"):
        parse_condition("level == error")


def test_progress_display_on_a_terminal_only(tmp_path: Path) -> None:
    import os
    import pty
    import re
    import subprocess

    data = tmp_path / "in.txt"
    data.write_text("".join(f"{i}\n" for i in range(500)))
    out = tmp_path / "o"
    command = [sys.executable, "-m", "talkpipe_async", "read", str(data), "--progress", "--to", f"file:{out}"]
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            command, stderr=follower, stdout=subprocess.DEVNULL, timeout=30, check=False, preexec_fn=die_with_parent
        )
        os.close(follower)
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(leader)
    assert done.returncode == 0
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", seen.decode())
    try:
        import rich  # noqa: F401  (the best display installed is the one shown: rich's table, else a status line)
    except ImportError:  # pragma: no cover - rich is in the test extra
        assert "500 items" in text, seen
    else:
        final = text[text.rindex(" stage ") :].splitlines()  # the last table drawn
        assert final[0].split() == ["stage", "in", "out", "/s", "errors", "buffer"], seen
        assert final[2].split()[:3] == ["read_lines", "0", "500"], seen
        assert final[-1].strip().endswith(" s, done"), seen
        assert seen.endswith(b"\x1b[?25h"), seen  # the cursor is shown again at the end
    piped = subprocess.run(command, capture_output=True, timeout=30, check=False, preexec_fn=die_with_parent)
    assert piped.returncode == 0 and b"items" not in piped.stderr and b"\x1b[" not in piped.stderr
