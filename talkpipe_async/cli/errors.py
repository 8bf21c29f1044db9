"""What the command's errors mean: the exit code (3: unreachable after the retries) and the one-line message."""

from __future__ import annotations

import errno
import os
import socket
import sys

import httpx

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

from .._core._errors import error_context
from ..sinks.net import DeliveryFailed
from ..sources.sockets import ConnectionLost
from ..sources.sse import SSEError
from .args import EXIT_BAD_ARGS, EXIT_ERROR, EXIT_UNREACHABLE
from .records import BadTarget

__all__ = ["describe_error", "exit_code_for", "is_unreachable", "innermost", "quiet_stdout", "stdout_broken"]


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


def is_unreachable(exc: BaseException) -> bool:
    """True when *exc* (or what caused it) says an endpoint could not be reached after the retries."""
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


def innermost(exc: BaseException) -> BaseException:
    """The first error inside nested exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def exit_code_for(exc: BaseException) -> int:
    """3 when an endpoint was unreachable after the retries, 2 for a bad ``run`` target, else 1."""
    if isinstance(innermost(exc), BadTarget):
        return EXIT_BAD_ARGS
    return EXIT_UNREACHABLE if is_unreachable(exc) else EXIT_ERROR


def describe_error(exc: BaseException) -> str:
    """One line: the error's type and message, and the stage (and item) it came from."""
    inner = innermost(exc)
    text = " / ".join(part.strip() for part in str(inner).splitlines() if part.strip())
    message = f"{type(inner).__name__}: {text}" if text else type(inner).__name__
    ctx = error_context(inner) or error_context(exc)
    if ctx is not None:
        segment = ctx.segment
        for note in getattr(inner, "__notes__", None) or []:
            if isinstance(note, str) and note.startswith("in step "):
                segment = note[len("in step "):].split(" of fused stage")[0]
        where = f" [in stage {segment!r}"
        if ctx.item is not None:
            where += f" while processing item {ctx.item}"
        message += where + "]"
    return message


def stdout_broken(exc: BaseException) -> bool:
    """True when *exc* is the stdout destination's broken pipe."""
    inner = innermost(exc)
    if not isinstance(inner, BrokenPipeError):
        return False
    ctx = error_context(inner) or error_context(exc)
    return ctx is not None and ctx.segment == "stdout"


def quiet_stdout() -> None:
    """Point stdout at /dev/null: its reader went away, and nothing more must be written (or fail) there."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
