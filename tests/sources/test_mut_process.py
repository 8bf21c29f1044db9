"""The process sources' exact promises, on real subprocesses and real descriptors.

``process_lines``: what the process is given (the argument list or shell string, the directory, the environment,
an empty standard input rather than the caller's), what is counted, the exact stderr tail and error text on a
non-zero exit, and a process that stops reading or writing is killed, not waited for, when the pipeline stops
early.  ``stdin_lines``: every kind of descriptor a program's standard input can be (a pipe, a regular file, a
socket, ``/dev/null``) is read to its end, counted, and its last unterminated line kept.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

from talkpipe_async import Pipeline
from talkpipe_async.sources import process
from talkpipe_async.sources.process import ProcessFailed, process_lines, stdin_lines
from talkpipe_async.sources.sockets import LineTooLong, NetStats
from tests.helpers.cli import run_cli

pytestmark = pytest.mark.anyio

PY = sys.executable


# --- process_lines -----------------------------------------------------------------------------------------------


async def test_the_process_gets_its_directory_environment_and_an_empty_standard_input(tmp_path: Path) -> None:
    """The arguments are passed as given (no shell), in the given directory with the given environment, and the
    process reads an empty standard input, never the caller's (here a pipe holding text)."""
    code = "import os, sys; print(sys.argv[1]); print(os.getcwd()); print(os.environ['ONLY'])\n"
    code += "print(repr(sys.stdin.read()))"
    saved = os.dup(0)
    r, w = os.pipe()
    try:
        os.write(w, b"the caller's input\n")
        os.close(w)
        os.dup2(r, 0)
        got = await Pipeline(process_lines([PY, "-c", code, "a b; $HOME"], cwd=tmp_path, env={"ONLY": "x"})).collect()
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(r)
    assert got == ["a b; $HOME", str(tmp_path), "x", "''"]


async def test_lines_and_bytes_are_counted_in_the_given_stats() -> None:
    stats = NetStats()
    code = "import sys; sys.stdout.write('one\\ntwo\\n' + 'z' * 70000 + '\\ntail')"
    got = await Pipeline(process_lines([PY, "-c", code], stats=stats)).collect()
    assert got == ["one", "two", "z" * 70000, "tail"]
    assert (stats.items, stats.bytes_received) == (4, 8 + 70001 + 4)


async def test_a_failure_names_the_command_status_and_the_exact_stderr_tail() -> None:
    """The error is a ``CalledProcessError`` with the command, the status, and the last ``stderr_bytes`` bytes of
    stderr, whose length its message states; a failure with nothing on stderr has the plain message."""
    command = [PY, "-c", "import sys; sys.stderr.write('0123456789ABCDEFGHIJ  \\n'); sys.exit(2)"]
    with pytest.raises(ProcessFailed) as info:
        await Pipeline(process_lines(command, stderr_bytes=13)).collect()
    error = info.value
    assert isinstance(error, subprocess.CalledProcessError)
    assert (error.returncode, error.cmd, error.stderr) == (2, command, b"ABCDEFGHIJ  \n")
    assert str(error) == f"Command '{command}' returned non-zero exit status 2.\nstderr (last 13 chars):\nABCDEFGHIJ"
    quiet = [PY, "-c", "raise SystemExit(5)"]
    with pytest.raises(ProcessFailed) as info:
        await Pipeline(process_lines(quiet)).collect()
    assert str(info.value) == f"Command '{quiet}' returned non-zero exit status 5."
    assert await Pipeline(process_lines(quiet, check=False)).collect() == []


def test_a_failure_built_with_text_stderr_shows_the_text() -> None:
    error = ProcessFailed(1, ["tool"], stderr="it broke\n")
    assert str(error) == "Command '['tool']' returned non-zero exit status 1.\nstderr (last 9 chars):\nit broke"


async def test_an_early_stop_kills_a_process_that_neither_reads_nor_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that printed one line and then sleeps is killed when the pipeline stops after that line: the run
    does not wait for it to end by itself (the cleanup bound is an hour here; the test's guard is far shorter)."""
    monkeypatch.setattr(process, "KILL_TIMEOUT", 3600.0)
    pid_file = tmp_path / "pid"
    code = f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
    code += "print('up', flush=True)\ntime.sleep(3600)"
    with anyio.fail_after(30):
        async with Pipeline(process_lines([PY, "-c", code])).stream() as items:
            async for line in items:
                assert line == "up"
                break
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(int(pid_file.read_text()), 0)


async def test_a_shell_command_runs_in_the_shell() -> None:
    assert await Pipeline(process_lines("printf 'a\\nb' | tr ab xy", shell=True)).collect() == ["x", "y"]


def test_the_command_form_must_match_the_shell_setting() -> None:
    with pytest.raises(TypeError, match=r"^shell=True needs the command as one string$"):
        process_lines(["echo", "x"], shell=True)
    with pytest.raises(TypeError, match=r"^give the command as a list of arguments, or pass shell=True$"):
        process_lines("echo x")
    given = process_lines(("echo", "x"))
    assert (given.command, given.shell, given.check, given.stderr_bytes) == (("echo", "x"), False, True, 65536)


async def test_invalid_text_is_replaced_by_default_and_the_error_text_survives_it() -> None:
    """Bytes that are not UTF-8, in a whole line, in the last unterminated one and on stderr, become U+FFFD by
    default rather than ending the run with a decoding error."""
    code = "import sys; sys.stdout.buffer.write(b'ok \\xff\\nend \\xfe')\n"
    code += "sys.stderr.buffer.write(b'bad \\xff'); sys.exit(1)"
    source = process_lines([PY, "-c", code])
    assert (source.encoding, source.errors) == ("utf-8", "replace")
    got: list[str] = []
    with pytest.raises(ProcessFailed) as info:
        async with Pipeline(source).stream() as items:
            async for line in items:
                got.append(line)
    assert got == ["ok \ufffd", "end \ufffd"]
    assert str(info.value).endswith("stderr (last 5 chars):\nbad \ufffd")


async def test_an_overlong_line_names_the_stage_or_is_skipped_and_counted() -> None:
    code = "import sys; sys.stdout.write('short\\n' + 'y' * 300 + '\\nafter\\n')"
    with pytest.raises(LineTooLong, match=r"^feed: line longer than 100 bytes"):
        await Pipeline(process_lines([PY, "-c", code], max_line_bytes=100, name="feed")).collect()
    stats = NetStats()
    skipping = process_lines([PY, "-c", code], max_line_bytes=100, on_overlong="skip", stats=stats)
    assert await Pipeline(skipping).collect() == ["short", "after"]
    assert (stats.dropped_lines, stats.dropped_bytes, stats.items) == (1, 301, 2)  # the line with its end


# --- stdin_lines: every kind of standard input ---------------------------------------------------------------------


async def test_stdin_from_dev_null_is_an_empty_input() -> None:
    """``< /dev/null`` (a service manager's, cron's or ``nohup``'s standard input) ends at once with no lines: the
    event loop cannot wait on that device, so it is read like a file."""
    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        stats = NetStats()
        assert await Pipeline(stdin_lines(fd, stats=stats)).collect() == []
        assert (stats.items, stats.bytes_received) == (0, 0)
    finally:
        os.close(fd)


def test_the_command_line_reads_dev_null_as_empty_input(tmp_path: Path) -> None:
    """A pipeline with no source, run by the command line with its standard input on ``/dev/null``: no lines, a
    clean exit."""
    (tmp_path / "mypipes.py").write_text("from talkpipe_async.operators import map\nupper = map(str.upper)\n")
    done = subprocess.run(
        [PY, "-m", "talkpipe_async", "run", "mypipes:upper"], stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=60, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert run_cli("run", "mypipes:upper", cwd=tmp_path, stdin="a\nb").stdout.splitlines() == ["A", "B"]


async def test_stdin_from_a_regular_file_counts_lines_and_bytes(tmp_path: Path) -> None:
    """``< file``: every line, the last unterminated one too, with the bytes and lines counted."""
    data = b"one\ntwo\r\n" + b"x" * 70000 + b"\nlast"
    path = tmp_path / "input.txt"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        stats = NetStats()
        got = await Pipeline(stdin_lines(fd, stats=stats)).collect()
        assert got == ["one", "two", "x" * 70000, "last"]
        assert (stats.items, stats.bytes_received) == (4, len(data))
    finally:
        os.close(fd)


async def test_stdin_from_a_socket_is_read_to_its_end() -> None:
    """A socket as standard input (inetd style): read in the event loop until the peer shuts its side."""
    ours, theirs = socket.socketpair()
    try:
        ours.sendall(b"a\nb")
        ours.shutdown(socket.SHUT_WR)
        stats = NetStats()
        assert await Pipeline(stdin_lines(theirs.fileno(), stats=stats)).collect() == ["a", "b"]
        assert (stats.items, stats.bytes_received) == (2, 3)
    finally:
        ours.close()
        theirs.close()


async def test_stdin_defaults_to_the_process_standard_input(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a descriptor, ``sys.stdin``'s is read (whatever the host replaced ``sys.stdin`` with)."""
    with pipe_holding(b"from stdin\n") as fd, open(fd, closefd=False) as fake:
        monkeypatch.setattr(sys, "stdin", fake)
        assert await Pipeline(stdin_lines()).collect() == ["from stdin"]


async def test_a_terminal_is_waited_on_in_the_event_loop_and_ends_at_ctrl_d() -> None:
    """A terminal is read in the event loop, like a pipe (no worker thread is free here, and the lines still
    come), and end of input typed as Ctrl-D ends the source."""
    controller, terminal = os.openpty()
    limiter = anyio.to_thread.current_default_thread_limiter()
    saved = limiter.total_tokens
    try:
        os.write(controller, b"a\nb\n\x04")
        limiter.total_tokens = 1
        await limiter.acquire()
        try:
            with anyio.fail_after(10):
                assert await Pipeline(stdin_lines(terminal)).collect() == ["a", "b"]
        finally:
            limiter.release()
    finally:
        limiter.total_tokens = saved
        os.close(controller)
        os.close(terminal)


@contextmanager
def pipe_holding(data: bytes) -> Iterator[int]:
    """The read end of a pipe holding *data* (at most a pipe's buffer), its write end already closed."""
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    try:
        yield r
    finally:
        os.close(r)


async def test_stdin_replaces_invalid_text_by_default() -> None:
    with pipe_holding(b"ok \xff\nend \xfe") as fd:
        lines = stdin_lines(fd)
        assert (lines.encoding, lines.errors) == ("utf-8", "replace")
        assert await Pipeline(lines).collect() == ["ok \ufffd", "end \ufffd"]


async def test_stdin_names_itself_in_an_overlong_error_or_skips_and_counts() -> None:
    data = b"short\n" + b"y" * 300 + b"\nafter\n"
    with pipe_holding(data) as fd, pytest.raises(LineTooLong, match=r"^input: line longer than 100 bytes"):
        await Pipeline(stdin_lines(fd, max_line_bytes=100, name="input")).collect()
    stats = NetStats()
    with pipe_holding(data) as fd:
        source = stdin_lines(fd, max_line_bytes=100, on_overlong="skip", stats=stats)
        assert await Pipeline(source).collect() == ["short", "after"]
    assert (stats.dropped_lines, stats.dropped_bytes, stats.items) == (1, 301, 2)


async def test_the_given_error_handler_decodes_every_line() -> None:
    """``errors`` applies to whole lines and to the last unterminated one, of a process and of standard input."""
    code = "import sys; sys.stdout.buffer.write(b'ok \\xff\\nend \\xfe')"
    assert await Pipeline(process_lines([PY, "-c", code], errors="ignore")).collect() == ["ok ", "end "]
    with pipe_holding(b"ok \xff\nend \xfe") as fd:
        assert await Pipeline(stdin_lines(fd, errors="ignore")).collect() == ["ok ", "end "]
