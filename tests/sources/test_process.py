"""Process sources: a subprocess's stdout lines (exit status, stderr, kill on early close) and stdin."""

from __future__ import annotations

import os
import sys

import anyio
import pytest

from talkpipe_async import Pipeline
from talkpipe_async.sources.process import ProcessFailed, process_lines, stdin_lines
from talkpipe_async.sources.sockets import LineTooLong

pytestmark = pytest.mark.anyio

PY = sys.executable


async def test_lines_of_stdout_and_last_partial_line() -> None:
    code = "import sys; sys.stdout.write('a\\nb\\r\\n' + 'c'*70000 + '\\nend')"
    got = await Pipeline(process_lines([PY, "-c", code])).collect()
    assert got == ["a", "b", "c" * 70000, "end"]


async def test_nonzero_exit_raises_with_stderr_tail() -> None:
    code = "import sys; print('out'); sys.stderr.write('x' * 100000 + 'the real reason'); sys.exit(3)"
    got: list[str] = []
    with pytest.raises(ProcessFailed) as info:
        async with Pipeline(process_lines([PY, "-c", code], stderr_bytes=1000)).stream() as items:
            async for line in items:
                got.append(line)
    assert got == ["out"]
    assert info.value.returncode == 3
    assert len(info.value.stderr) == 1000 and info.value.stderr.endswith(b"the real reason")
    assert "the real reason" in str(info.value)
    got = await Pipeline(process_lines([PY, "-c", code], check=False)).collect()
    assert got == ["out"]


async def test_early_close_kills_the_process(tmp_path: os.PathLike[str]) -> None:
    pid_file = os.path.join(os.fspath(tmp_path), "pid")
    code = f"import os\nopen({pid_file!r}, 'w').write(str(os.getpid()))\nwhile True:\n print('tick', flush=True)\n"
    async with Pipeline(process_lines([PY, "-c", code])).stream() as items:
        async for _ in items:
            break
    pid = int(open(pid_file).read())
    with pytest.raises(ProcessLookupError):  # killed and reaped, not a zombie
        os.kill(pid, 0)


async def test_shell_command_and_argument_checks() -> None:
    assert await Pipeline(process_lines("echo one; echo two", shell=True)).collect() == ["one", "two"]
    with pytest.raises(TypeError):
        process_lines("echo x")


async def test_overlong_line_from_a_process() -> None:
    code = "import sys; sys.stdout.write('y' * 300000)"
    with pytest.raises(LineTooLong):
        await Pipeline(process_lines([PY, "-c", code], max_line_bytes=100000)).collect()


async def test_stdin_lines_from_a_pipe_fd() -> None:
    r, w = os.pipe()
    try:
        os.write(w, b"first\nsecond\nthi")
        got: list[str] = []
        async with Pipeline(stdin_lines(r)).stream() as items:
            async for line in items:
                got.append(line)
                if line == "second":
                    os.write(w, b"rd\n")
                    os.close(w)
                    w = -1
        assert got == ["first", "second", "third"]
    finally:
        if w >= 0:
            os.close(w)
        os.close(r)


async def test_stdin_lines_reads_a_pipe_without_worker_threads() -> None:
    # A read abandoned in a worker thread would swallow the next input after the run ended (silent loss);
    # a pipe is waited on in the event loop instead: with every worker-thread token taken, it still reads,
    # and after a cancelled wait the next input stays in the pipe for the next reader.
    limiter = anyio.to_thread.current_default_thread_limiter()
    saved = limiter.total_tokens
    r, w = os.pipe()
    try:
        limiter.total_tokens = 1
        await limiter.acquire()
        try:
            os.write(w, b"only\n")
            waiting = anyio.Event()
            got: list[str] = []
            with anyio.fail_after(5):
                async with anyio.create_task_group() as tg:

                    async def consume() -> None:
                        async with Pipeline(stdin_lines(r)).stream() as items:
                            async for line in items:
                                got.append(line)
                                waiting.set()

                    tg.start_soon(consume)
                    await waiting.wait()
                    await anyio.wait_all_tasks_blocked()  # the source now waits for more input
                    tg.cancel_scope.cancel()
        finally:
            limiter.release()
        assert got == ["only"]
        os.write(w, b"next\n")
        os.set_blocking(r, False)
        assert os.read(r, 100) == b"next\n"
    finally:
        limiter.total_tokens = saved
        os.close(w)
        os.close(r)


async def test_stdin_lines_early_close_does_not_hang() -> None:
    r, w = os.pipe()
    try:
        os.write(w, b"only\n")
        got: list[str] = []
        read_one = anyio.Event()
        with anyio.fail_after(5):  # a bound only: the cancellation below must not wait for input
            async with anyio.create_task_group() as tg:

                async def consume() -> None:
                    async with Pipeline(stdin_lines(r)).stream() as items:
                        async for line in items:
                            got.append(line)
                            read_one.set()

                tg.start_soon(consume)
                await read_one.wait()
                await anyio.wait_all_tasks_blocked()  # the source now waits for input that never comes
                tg.cancel_scope.cancel()
        assert got == ["only"]
    finally:
        os.close(w)  # wakes the abandoned read, which sees EOF
        os.close(r)
