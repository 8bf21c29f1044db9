"""The files a tail holds and the checkpoint that names them.

A tail reads a *chain* of open files: every file that was ever at the
followed path, in the order it appeared there.  Each one is a :class:`Held`
(descriptor plus reading state) whose identity is a :class:`Gen` (device,
inode, first bytes).  The checkpoint names the file of the last
acknowledged line with its offset, and the files that came after it
(``next``), so that a restarted tail reads the same chain in the same order.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from typing import Any

from ._file_lines import Splitter

#: Bytes at the start of a file that identify its content (truncate-and-regrow guard, checkpoints).
FINGERPRINT_BYTES = 256
#: Bytes just before the read offset kept to recognise a copy of the file (copytruncate).
MARK_BYTES = 64
CHECKPOINT_VERSION = 2


class Gen:
    """One generation of one file: identity, first bytes, and the offset its reading started at."""

    __slots__ = ("dev", "fp", "ino", "path", "start")

    def __init__(self, dev: int, ino: int, fp: bytes, path: str, start: int = 0) -> None:
        self.dev = dev
        self.ino = ino
        self.fp = fp
        self.path = path
        self.start = start

    def record(self) -> dict[str, Any]:
        """The checkpoint entry of this generation (without an offset)."""
        return {"dev": self.dev, "ino": self.ino, "fp_len": len(self.fp), "fp": fp_hash(self.fp)}


class Held:
    """A file descriptor being read (or waiting its turn in the chain), with its reading state."""

    __slots__ = (
        "ahead",
        "ahead_len",
        "announce",
        "cut",
        "discard_partial",
        "fd",
        "gen",
        "lock",
        "mark",
        "mtime",
        "pos",
        "q_mtime",
        "q_size",
        "quiet_since",
        "size",
        "splitter",
    )

    def __init__(self, fd: int, gen: Gen, pos: int, splitter: Splitter, st: os.stat_result) -> None:
        self.fd = fd
        self.gen = gen
        self.pos = pos
        self.splitter = splitter
        self.size = st.st_size
        self.mtime = st.st_mtime_ns
        self.mark = b""
        self.announce = False  # emit "rotated" when reading reaches this file
        # Bytes the scout read ahead of the consumer: they cover [pos, pos + ahead_len).  ``lock`` guards
        # them, ``pos`` and every read of the descriptor.
        self.lock = threading.Lock()
        self.ahead: list[bytes] = []
        self.ahead_len = 0
        # Truncated (copytruncate): no byte at or after ``pos + ahead_len`` in the descriptor belongs to this
        # generation any more; the next generation of the same file is held right after this one.
        self.cut = False
        self.discard_partial = False  # an unterminated last line was cut short: count it, do not emit it
        # Once the file has left the path: when a change was last seen (monotonic) and what it was.
        self.quiet_since: float | None = None
        self.q_size = -1
        self.q_mtime = -1

    @property
    def ident(self) -> tuple[int, int]:
        """(device, inode)."""
        return (self.gen.dev, self.gen.ino)


def fp_hash(data: bytes) -> str:
    """A short hash of a fingerprint."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def head(fd: int) -> bytes:
    """The first bytes of an open file."""
    return os.pread(fd, FINGERPRINT_BYTES, 0)


def write_json_atomically(target: str, data: dict[str, Any]) -> None:
    """Write *data* to *target* through a temp file, fsync and rename, then fsync the directory."""
    tmp = f"{target}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    try:
        dir_fd = os.open(os.path.dirname(os.path.abspath(target)), os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dir_fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(dir_fd)


def read_checkpoint(target: str) -> list[tuple[dict[str, Any], int]] | None:
    """The chain a checkpoint names: (entry, offset to resume at) per file, in order; None if there is none.

    Raises ValueError (or OSError) when the file exists but cannot be used.
    """
    try:
        with open(target, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    try:
        chain = [(_entry(data), int(data["offset"]))]
        chain.extend((_entry(e), int(e.get("start", 0))) for e in data.get("next", []))
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed checkpoint: {exc!r}") from exc
    return chain


def _entry(data: dict[str, Any]) -> dict[str, Any]:
    return {"dev": int(data["dev"]), "ino": int(data["ino"]), "fp_len": int(data["fp_len"]), "fp": str(data["fp"])}


def directory_files(path: str, skip: set[str]) -> dict[tuple[int, int], str]:
    """(device, inode) -> name of the regular files in *path*'s directory (the path itself included)."""
    out: dict[tuple[int, int], str] = {}
    apath = os.path.abspath(path)
    directory = os.path.dirname(apath)
    if apath not in skip:
        try:
            st = os.stat(path)
            out[(st.st_dev, st.st_ino)] = path
        except OSError:
            pass
    try:
        with os.scandir(directory) as entries:
            for e in entries:
                if e.path in skip or not e.is_file(follow_symlinks=False):
                    continue
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                out.setdefault((st.st_dev, st.st_ino), e.path)
    except OSError:
        pass
    return out


def open_matching(name: str, entry: dict[str, Any], min_size: int) -> tuple[int, os.stat_result, bytes] | None:
    """Open *name* if it is the file *entry* names (inode and fingerprint) and holds *min_size* bytes."""
    try:
        fd = os.open(name, os.O_RDONLY)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        first = head(fd)
    except OSError:
        os.close(fd)
        return None
    fp_len = entry["fp_len"]
    same = (st.st_dev, st.st_ino) == (entry["dev"], entry["ino"])
    if same and len(first) >= fp_len and fp_hash(first[:fp_len]) == entry["fp"] and st.st_size >= min_size:
        return fd, st, first
    os.close(fd)
    return None


def find_copy(held: Held, path: str, skip: set[str]) -> tuple[int, os.stat_result, str] | None:
    """A copy of *held*'s file made before it was truncated (copytruncate) that holds bytes not read yet.

    A copy is in the same directory, its name starts with the file's name (``app.log.1``,
    ``app.log-20261203``), it starts with the same fingerprint and has the same bytes just before
    the read offset; of several, the longest wins.  Returns (descriptor, stat, name) or None.
    """
    pos, fp, mark = held.pos, held.gen.fp, held.mark
    prefix = os.path.basename(path)
    best: tuple[int, os.stat_result, str] | None = None
    for ident, name in directory_files(path, skip | {os.path.abspath(path)}).items():
        if ident == held.ident or not os.path.basename(name).startswith(prefix):
            continue
        try:
            fd = os.open(name, os.O_RDONLY)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            ok = (
                st.st_size > pos
                and (best is None or st.st_size > best[1].st_size)
                and os.pread(fd, len(fp), 0) == fp
                and os.pread(fd, len(mark), pos - len(mark)) == mark
            )
        except OSError:
            ok = False
        if not ok:
            os.close(fd)
            continue
        if best is not None:
            os.close(best[0])
        best = (fd, st, name)
    return best


def open_unseen(name: str, seen: set[tuple[int, int]], splitter: Splitter) -> Held | None:
    """*name* held from its start, if it is a regular file whose (device, inode) is not in *seen*."""
    try:
        fd = os.open(name, os.O_RDONLY)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in seen:
            os.close(fd)
            return None
        return Held(fd, Gen(st.st_dev, st.st_ino, head(fd), name, 0), 0, splitter, st)
    except BaseException:
        os.close(fd)
        raise


def end_position(fd: int, size: int, splitter: Splitter) -> int:
    """Where ``start="end"`` starts: after the last complete line (the line being written is read whole)."""
    window = min(size, splitter.max_line + 1)
    tail = os.pread(fd, window, size - window)
    nl = tail.rfind(b"\n")
    if nl >= 0:
        return size - window + nl + 1
    if size <= splitter.max_line:
        return 0
    splitter.dropping = True  # an over-long partial line: skip to its newline
    splitter.dropped += 1
    return size


def take_ahead(h: Held, limit: int) -> bytes:
    """Up to *limit* bytes the scout read ahead (a poll's batch stays ``chunk_size``).  Under ``h.lock``."""
    parts: list[bytes] = []
    n = 0
    while h.ahead and n < limit:
        chunk = h.ahead[0]
        if n + len(chunk) <= limit:
            del h.ahead[0]
        else:
            h.ahead[0] = chunk[limit - n :]
            chunk = chunk[: limit - n]
        parts.append(chunk)
        n += len(chunk)
    h.ahead_len -= n
    return b"".join(parts)
