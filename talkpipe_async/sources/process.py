"""Process sources: the lines of a subprocess's standard output, and of standard input."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import anyio

from .._core._errors import TalkpipeAsyncError
from .._core._run import current_run
from .._net.framing import DEFAULT_MAX_LINE, READ_SIZE, NetStats, Overlong
from ._framing import FramedSource

__all__ = ["ProcessFailed", "process_lines", "stdin_lines"]

KILL_TIMEOUT = 5.0


class ProcessFailed(subprocess.CalledProcessError, TalkpipeAsyncError):
    """The process exited with a non-zero status; ``stderr`` holds (the end of) its error output."""

    def __str__(self) -> str:
        text = super().__str__()
        err = self.stderr
        if err:
            tail = err.decode(errors="replace") if isinstance(err, bytes) else str(err)
            text += f"\nstderr (last {len(tail)} chars):\n{tail.rstrip()}"
        return text


class process_lines(FramedSource[str]):
    """The lines (str) a subprocess writes to stdout.

    ``command`` is an argument list (no shell) or, with ``shell=True``, a
    string.  stdout is read 64 KiB at a time and split (``max_line_bytes``
    cap as :class:`LineFramer`); the pipeline pulls, so a slow pipeline
    blocks the process on a full pipe.  stderr is drained by a task into a
    bounded buffer (the last ``stderr_bytes`` bytes).  At the end the exit
    status is checked: non-zero raises :class:`ProcessFailed` with the
    stderr tail (``check=False`` disables it).  If the pipeline stops early
    the process is killed and reaped before the run ends.
    """

    def __init__(
        self,
        command: str | Sequence[str],
        *,
        shell: bool = False,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        stderr_bytes: int = 64 * 1024,
        max_line_bytes: int = DEFAULT_MAX_LINE,
        on_overlong: Overlong = "raise",
        encoding: str = "utf-8",
        errors: str = "replace",
        stats: NetStats | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(max_line_bytes, on_overlong, encoding, errors, stats, name)
        if shell and not isinstance(command, str):
            raise TypeError("shell=True needs the command as one string")
        if not shell and isinstance(command, str):
            raise TypeError("give the command as a list of arguments, or pass shell=True")
        self.command = command
        self.shell = shell
        self.cwd = cwd
        self.env = env
        self.check = check
        self.stderr_bytes = stderr_bytes

    async def generate(self) -> AsyncIterator[str]:
        """Start the process, yield its stdout lines, check its exit status."""
        stats = self.stats if self.stats is not None else NetStats()
        command: Any = self.command if self.shell else list(self.command)
        process = await anyio.open_process(command, stdin=subprocess.DEVNULL, cwd=self.cwd, env=self.env)
        err_tail = bytearray()
        err_done = anyio.Event()
        limit = self.stderr_bytes

        async def drain_stderr() -> None:
            try:
                assert process.stderr is not None
                async for chunk in process.stderr:
                    err_tail.extend(chunk)
                    if len(err_tail) > limit:
                        del err_tail[: len(err_tail) - limit]
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass
            finally:
                err_done.set()

        finished = False
        try:
            current_run().start_soon(drain_stderr)
            assert process.stdout is not None
            framer = self._framer(self.label, stats)
            while True:
                try:
                    data = await process.stdout.receive(READ_SIZE)
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    break
                stats.bytes_received += len(data)
                lines = framer.feed_text(data, self.encoding, self.errors)
                if lines:
                    stats.items += len(lines)
                    for line in lines:
                        yield line
            tail = framer.finish()
            if tail is not None:
                stats.items += 1
                yield tail.decode(self.encoding, self.errors)
            code = await process.wait()
            await err_done.wait()
            finished = True
            if code != 0 and self.check:
                raise ProcessFailed(code, self.command, stderr=bytes(err_tail))
        finally:
            if not finished:
                with anyio.CancelScope(shield=True) as scope:
                    scope.deadline = anyio.current_time() + KILL_TIMEOUT
                    if process.returncode is None:
                        try:
                            process.kill()
                        except ProcessLookupError:
                            pass
                        await process.wait()
            with anyio.CancelScope(shield=True) as scope:
                scope.deadline = anyio.current_time() + KILL_TIMEOUT
                await process.aclose()


def _pollable(fd: int) -> bool:
    """Whether the event loop can wait for *fd* (a pipe, terminal or socket on Unix).

    Other character devices are not: epoll refuses ``/dev/null``, the standard input of services, cron jobs and
    ``nohup``; those are read like files.
    """
    if sys.platform == "win32":
        return False
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or (stat.S_ISCHR(mode) and os.isatty(fd))


class stdin_lines(FramedSource[str]):
    """Lines of standard input (or of any readable file descriptor ``fd``).

    Reads up to 64 KiB at a time and splits lines in Python.  A pipe,
    terminal or socket (Unix) is waited on in the event loop and read only
    once data is there, so ending the run leaves no read behind that would
    take the next input; a regular file (``< file``), another device (``<
    /dev/null``), or any descriptor on Windows, is read in a worker thread
    (one hop per chunk).  Works on every
    backend; the descriptor is never closed here.
    """

    def __init__(
        self,
        fd: int | None = None,
        *,
        max_line_bytes: int = DEFAULT_MAX_LINE,
        on_overlong: Overlong = "raise",
        encoding: str = "utf-8",
        errors: str = "replace",
        stats: NetStats | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(max_line_bytes, on_overlong, encoding, errors, stats, name)
        self.fd = fd

    async def generate(self) -> AsyncIterator[str]:
        """Yield each line until end of input."""
        stats = self.stats if self.stats is not None else NetStats()
        fd = self.fd if self.fd is not None else sys.stdin.fileno()
        framer = self._framer(self.label, stats)
        pollable = _pollable(fd)
        while True:
            if pollable:
                await anyio.wait_readable(fd)
                data = os.read(fd, READ_SIZE)  # data (or the end) is there: returns at once
            else:
                data = await anyio.to_thread.run_sync(os.read, fd, READ_SIZE)
            if not data:
                break
            stats.bytes_received += len(data)
            lines = framer.feed_text(data, self.encoding, self.errors)
            stats.items += len(lines)
            for line in lines:
                yield line
        tail = framer.finish()
        if tail is not None:
            stats.items += 1
            yield tail.decode(self.encoding, self.errors)
