"""The reading side of :class:`~talkpipe_async.sources.tail_file`: a chain of held files, polled in order.

Every file that appears at the followed path is opened as soon as it is
seen (by a poll, or by the scout thread that wakes on every arrival in the
directory) and kept open in :attr:`_Tailer.chain`, in the order it appeared.
Polls read only the first file of the chain.  When that file has left the
path (a newer file is held, or the path is gone), it is drained to its end
and closed once no change has been seen on it for ``rotate_grace`` seconds;
the next file is then read from where it started.  Every held file that
has left the path is watched for changes at every poll, so the grace
periods of a fast rotation run side by side instead of one after another.

A file can come and go at the path between two looks (a fast rotation on a
starved machine): on Linux the kernel's rename events say where every file
renamed away from the path went, and each one the tail never held is held
by its new name before the file found at the path (``_recover``).

Copytruncate: when the file being read is truncated, the bytes not yet read
may still be in the copy the rotator made; a file in the same directory
that starts with the same fingerprint and has the same bytes just before
the read offset is read from that offset first.
"""

from __future__ import annotations

import logging
import os
import stat as stat_module
import threading
import time
from typing import TYPE_CHECKING, Any

from ._file_lines import DROPPED, LineDecoder, Splitter
from ._tail_files import (
    CHECKPOINT_VERSION,
    MARK_BYTES,
    Gen,
    Held,
    directory_files,
    end_position,
    find_copy,
    head,
    open_matching,
    open_unseen,
    read_checkpoint,
    take_ahead,
    write_json_atomically,
)
from ._tail_items import Line, TailEvent
from ._watch import DirWatcher, RenameLog, open_rename_log, open_watcher

if TYPE_CHECKING:
    from .tail import tail_file

log = logging.getLogger("talkpipe_async.sources.tail")


class _Tailer:
    """The per-run state of a tail.  ``poll`` and the checkpoint run in worker threads, the scout in its own."""

    def __init__(self, src: tail_file) -> None:
        self.src = src
        self.path = src.path
        self.stats = src.stats
        self.checkpoint = src.checkpoint
        self.skip = {os.path.abspath(self.checkpoint)} if self.checkpoint is not None else set()
        self.chain: list[Held] = []
        # (device, inode) of every file held in this run: a file renamed away from the path that is none of
        # them left it before the tail could open it there (see ``_recover``).
        self.seen: set[tuple[int, int]] = set()
        self.renames: RenameLog | None = None
        self.warned_overflow = False
        self.chain_lock = threading.Lock()  # the chain, ``at_path`` and ``done``
        self.at_path: tuple[int, int] | None = None  # (device, inode) at the path at the last look
        self.done: list[Gen] = []  # finished generations a checkpoint may still have to name
        self.first = True
        self.missing_reported = False
        self.seq = 0
        self.acked: tuple[Gen, int, int] | None = None  # (generation, offset, seq)
        self.ack_lock = threading.Lock()
        self.written_seq = 0
        # Bumped at every change of the chain: a checkpoint names the files after the acknowledged one, so
        # a change is written out (at the next poll) even when no new line was acknowledged.
        self.chain_version = 0
        self.written_version = 0
        self.last_write = 0.0
        self.lock = threading.Lock()  # checkpoint writes
        self.decoder = LineDecoder(src.label, self.path, src.encoding, src.errors, src.strip_cr, src.stats)
        self.warned_long = False
        self.scout_thread: threading.Thread | None = None
        self.scout_error: BaseException | None = None
        self.stopping = threading.Event()
        self.stop_fds: tuple[int, int] | None = None  # wakes the scout's inotify wait
        self.wake_fds: tuple[int, int] | None = None

    # -- acknowledgement and checkpoints -------------------------------------------------

    def ack(self, line: Line) -> None:
        with self.ack_lock:
            acked = self.acked
            if acked is None or line._seq > acked[2]:
                self.acked = (line._gen, line.offset, line._seq)

    def write_checkpoint(self) -> None:
        """Write the last acknowledged position and the files after it atomically (temp file, fsync, rename)."""
        with self.lock:
            acked = self.acked
            if self.checkpoint is None or acked is None:
                return
            if acked[2] <= self.written_seq and self.chain_version == self.written_version:
                return
            gen, offset, seq = acked
            version = self.chain_version
            data = {
                "version": CHECKPOINT_VERSION,
                "path": self.path,
                **gen.record(),
                "offset": offset,
                "next": [{**g.record(), "start": g.start} for g in self._after(gen)],
            }
            write_json_atomically(self.checkpoint, data)
            self.written_seq, self.written_version = seq, version
            self.last_write = time.monotonic()
            self.stats.checkpoints += 1

    def _after(self, gen: Gen) -> list[Gen]:
        """The generations read after *gen*, in order (and forget the finished ones before it)."""
        with self.chain_lock:
            order = self.done + [h.gen for h in self.chain]
            for i, g in enumerate(order):
                if g is gen:
                    del self.done[: min(i, len(self.done))]
                    return order[i + 1 :]
        return [h.gen for h in self.chain if h.gen is not gen]

    def load_checkpoint(self) -> None:
        """Open the chain the checkpoint names: the acknowledged file at its offset, then the files after it."""
        if self.checkpoint is None:
            return
        label = self.src.label
        try:
            entries = read_checkpoint(self.checkpoint)
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable checkpoint %s (%s): reading from the beginning", label, self.checkpoint, exc)
            self.first = False  # a new file: read it whole rather than lose lines
            return
        if entries is None:
            return
        self.first = False  # with a checkpoint, an unknown file is read from its start
        files = directory_files(self.path, self.skip)
        for i, (entry, offset) in enumerate(entries):
            name = files.get((entry["dev"], entry["ino"]))
            opened = open_matching(name, entry, offset) if name is not None else None
            if name is None or opened is None:
                what = "the checkpointed file" if i == 0 else "a file rotated after it"
                log.warning("%s: %s is gone or changed; its unread lines cannot be read", label, what)
                continue
            fd, st, first = opened
            if self._holds((st.st_dev, st.st_ino)):  # a later generation of a file read on from its older offset
                os.close(fd)
                continue
            held = Held(fd, Gen(st.st_dev, st.st_ino, first, name, offset), offset, self._splitter(), st)
            held.announce = bool(self.chain)
            self.chain.append(held)
            self.seen.add(held.ident)
            self.stats.files += 1
            if name != self.path:
                log.info("%s: resuming in rotated file %s at offset %d", label, name, offset)
        if not self.chain:
            log.warning("%s: nothing the checkpoint names is left; reading %s from the beginning", label, self.path)

    # -- finding files ---------------------------------------------------------------------

    def _splitter(self) -> Splitter:
        return Splitter(self.src.max_line_bytes)

    def _at_path(self, h: Held) -> bool:
        """Whether *h* is what the path names now (so it is still written to, not drained)."""
        return not h.cut and h.ident == self.at_path

    def _holds(self, ident: tuple[int, int]) -> bool:
        return any(h.ident == ident for h in self.chain)

    def discover(self) -> None:
        """Look at the path; hold a file that is not held yet at the end of the chain.  Under ``chain_lock``."""
        self._recover()  # first: what left the path before the file there now arrived comes before it
        try:
            st = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            self.at_path = None
            return
        if self._holds((st.st_dev, st.st_ino)):
            self.at_path = (st.st_dev, st.st_ino)
            return
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            self.at_path = None
            return
        try:
            fst = os.fstat(fd)
            if stat_module.S_ISDIR(fst.st_mode):
                raise IsADirectoryError(f"{self.path} is a directory")
            ident = (fst.st_dev, fst.st_ino)
            known = self._holds(ident)
            first = b"" if known else head(fd)
        except BaseException:
            os.close(fd)
            raise
        self.at_path = ident
        if known:
            os.close(fd)
            return
        try:
            self._recover()  # again: a file renamed away between the stat and the open comes before this one
        except BaseException:
            os.close(fd)
            raise
        splitter = self._splitter()
        pos = end_position(fd, fst.st_size, splitter) if self.first and self.src.start == "end" else 0
        held = Held(fd, Gen(fst.st_dev, fst.st_ino, first, self.path, pos), pos, splitter, fst)
        held.announce = not self.first
        self.first = False
        self.missing_reported = False
        self.chain.append(held)
        self.seen.add(ident)
        self.chain_version += 1
        self.stats.files += 1

    def _recover(self) -> None:
        """Hold the files renamed away from the path that were never held: each was at the path for less
        time than the tail needed to open it there (a rotation on a starved machine).  Under ``chain_lock``.

        The inotify rename events name them (in rename order, followed through later renames); a name whose
        file is one the tail held is skipped.  Only after the first look at the path: what left it before
        belongs to no run.
        """
        if self.renames is None:
            return
        names = self.renames.take()
        if self.renames.overflowed and not self.warned_overflow:
            self.warned_overflow = True
            log.warning(
                "%s: the inotify queue overflowed: a file at the path for less time than it took to "
                "open it may not be read",
                self.src.label,
            )
        if self.first:
            return
        directory = os.path.dirname(self.path)
        for name in names:
            held = open_unseen(os.path.join(directory, name), self.seen, self._splitter())
            if held is None:
                continue
            held.announce = True
            self.chain.append(held)
            self.seen.add(held.ident)
            self.chain_version += 1
            self.stats.files += 1
            self.stats.recovered += 1
            log.warning(
                "%s: %s left the path before it could be opened there; reading it from %s",
                self.src.label,
                self.path,
                held.gen.path,
            )

    def _report_missing(self, out: list[Any]) -> None:
        self.first = False  # a file that appears later is read from its start
        if not self.missing_reported:
            self.missing_reported = True
            self.stats.missing += 1
            log.warning("%s: %s does not exist (yet); waiting for it", self.src.label, self.path)
            out.append(TailEvent("missing", self.path))

    def _track_quiet(self) -> None:
        """Note when each held file that left the path last changed (its grace runs from then)."""
        for h in self.chain:
            if h.cut or self._at_path(h):
                continue
            st = os.fstat(h.fd)
            if h.quiet_since is None or st.st_size != h.q_size or st.st_mtime_ns != h.q_mtime:
                # The clock is read after the fstat: the grace never starts before the change it follows.
                h.quiet_since, h.q_size, h.q_mtime = time.monotonic(), st.st_size, st.st_mtime_ns

    # -- the scout: holds new files while the consumer is busy ----------------------------

    def watch_renames(self) -> None:
        """Follow the renames away from the path (inotify), so that a file the tail never saw there is read."""
        self.renames = open_rename_log(self.path)

    def start_scout(self, watch: bool) -> DirWatcher | None:
        """Start the thread that holds each new file as soon as it arrives and reads ahead of the consumer.

        Returns what the run waits on between polls: a wake-up pipe the scout writes to after each change
        it saw in the directory (inotify), or None where there is no inotify (the run then just sleeps).
        """
        watcher = open_watcher(os.path.dirname(os.path.abspath(self.path))) if watch else None
        if watcher is not None:
            self.watch_renames()
        waker = None
        if watcher is not None:
            self.stop_fds = os.pipe()
            self.wake_fds = os.pipe()
            for fd in self.wake_fds:
                os.set_blocking(fd, False)
            waker = DirWatcher(self.wake_fds[0])
        interval = self.src.poll_max if watcher is not None else self.src.poll_min
        self.scout_thread = threading.Thread(
            target=self._scout, args=(watcher, interval), name=f"{self.src.label} scout", daemon=True
        )
        self.scout_thread.start()
        return waker

    def _scout(self, watcher: DirWatcher | None, interval: float) -> None:
        ahead = self.src.read_ahead > 0
        try:
            while not self.stopping.is_set():
                with self.chain_lock:
                    self.discover()
                    last = self.chain[-1] if self.chain else None
                target = last if ahead and last is not None and self._at_path(last) else None
                if target is not None:
                    self._read_ahead(target)
                self._wake()
                while True:
                    changed = self._wait(watcher, interval)
                    if changed and target is not None:
                        self._read_ahead(target)  # first: a copytruncate may be under way
                    if changed and watcher is not None:
                        watcher.drain()
                        if target is not None:
                            self._read_ahead(target)  # what was written while the events were drained
                        self._wake()
                    if not changed or target is None or target.cut or not self._same_file(target):
                        break
        except BaseException as exc:  # raised by the next poll, in the run
            self.scout_error = exc
            self._wake()
        finally:
            if watcher is not None:
                watcher.close()

    def _wait(self, watcher: DirWatcher | None, interval: float) -> bool:
        """Wait for a change in the directory (True) or the end of *interval* or a stop (False)."""
        if watcher is not None and self.stop_fds is not None:
            return watcher.wait_blocking(interval, self.stop_fds[0]) and not self.stopping.is_set()
        self.stopping.wait(interval)
        return False

    def _wake(self) -> None:
        """End the run's wait (a byte in the wake-up pipe; a full pipe already says so)."""
        if self.wake_fds is not None:
            try:
                os.write(self.wake_fds[1], b"\0")
            except BlockingIOError:
                pass

    def stop_scout(self) -> None:
        """Stop and join the scout thread."""
        self.stopping.set()
        if self.stop_fds is not None:
            os.write(self.stop_fds[1], b"x")
        if self.scout_thread is not None:
            self.scout_thread.join()
            self.scout_thread = None
        for fd in (*(self.stop_fds or ()), *(self.wake_fds or ())):
            os.close(fd)
        self.stop_fds = self.wake_fds = None

    def _same_file(self, h: Held) -> bool:
        """Whether *h* is still the file at the path."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == h.ident

    def _read_ahead(self, h: Held) -> None:
        """Read what was appended to the file at the path now, before a copytruncate can take it away.

        Sizes only shrink by truncation: a file shorter after the read than what the read returned was
        truncated after it, so the bytes are good.  A file that no longer starts with its fingerprint may
        have been truncated and regrown before the read: those bytes are dropped (the copy has the old
        ones, the next generation starts at 0).  Either way the generation is cut.
        """
        with h.lock:
            if h.cut:
                return
            end = h.pos + h.ahead_len
            room = self.src.read_ahead - sum(x.ahead_len for x in list(self.chain))  # a bound for all files
            data = os.pread(h.fd, room, end) if room > 0 else b""
            size = os.fstat(h.fd).st_size
            if size < end + len(data):
                self._cut(h)  # truncated after the read: the bytes read are good
            elif data:
                first = head(h.fd)
                fp = h.gen.fp
                if len(first) < len(fp) or first[: len(fp)] != fp:
                    self._cut(h)
                    return
                if len(first) > len(fp):
                    h.gen.fp = first
            if data:
                h.ahead.append(data)
                h.ahead_len += len(data)

    def _check_truncation(self, cur: Held) -> bool:
        """Whether *cur*'s file was truncated (then it is cut).  Under ``cur.lock``."""
        st = os.fstat(cur.fd)
        if st.st_size == cur.size and st.st_mtime_ns == cur.mtime:
            return False
        cur.size, cur.mtime = st.st_size, st.st_mtime_ns
        truncated = st.st_size < cur.pos
        if not truncated:
            first = head(cur.fd)
            fp = cur.gen.fp
            if len(first) < len(fp) or first[: len(fp)] != fp:
                truncated = True
            elif len(first) > len(fp):
                cur.gen.fp = first
        if truncated:
            self._cut(cur)
        return truncated

    def _cut(self, h: Held) -> None:
        """*h*'s file was truncated: end its generation and hold the next one (same file, from 0) after it.

        Under ``h.lock``, by whichever of the poll and the scout saw it first.
        """
        h.cut = True
        h.quiet_since = float("-inf")
        fd = os.dup(h.fd)
        try:
            st = os.fstat(fd)
            first = head(fd)
        except BaseException:
            os.close(fd)
            raise
        nxt = Held(fd, Gen(st.st_dev, st.st_ino, first, h.gen.path, 0), 0, self._splitter(), st)
        with self.chain_lock:
            at = next(i for i, x in enumerate(self.chain) if x is h)
            self.chain.insert(at + 1, nxt)
            self.chain_version += 1

    def _end_generation(self, cur: Held, out: list[Any]) -> None:
        """The poll read all of a cut generation: close it; read its unread rest from a copy, if one is found."""
        self.stats.truncations += 1
        # Looked for at offset 0 too: a file held before any of it was read holds only unread lines, and a
        # truncation is seen there only by a change of its first bytes, so the copy must start with them.
        copy = find_copy(cur, self.path, self.skip)
        fields: dict[str, Any] = {}
        rest = None
        if copy is not None:
            fd, cst, name = copy
            rest = Held(fd, Gen(cst.st_dev, cst.st_ino, cur.gen.fp, name, cur.pos), cur.pos, cur.splitter, cst)
            rest.mark, rest.quiet_since, rest.discard_partial = cur.mark, float("-inf"), True
            rest.q_size, rest.q_mtime = cst.st_size, cst.st_mtime_ns
            fields = {"recovered_from": name, "recovered_bytes": cst.st_size - cur.pos}
        elif cur.splitter.buf:
            self.stats.partial_discarded += 1
        self._drop(cur, rest)
        log.info("%s: %s was truncated at offset %d; reading from 0", self.src.label, cur.gen.path, cur.pos)
        out.append(TailEvent("truncated", cur.gen.path, offset=cur.pos, **fields))

    def _drop(self, cur: Held, replacement: Held | None = None) -> None:
        """Take the first file of the chain out (in its place: *replacement*) and close it."""
        with self.chain_lock:
            self.chain.pop(0)
            if replacement is not None:
                self.chain.insert(0, replacement)
            self.chain_version += 1
            if self.checkpoint is not None:
                self.done.append(cur.gen)
        with cur.lock:
            cur.cut = True  # the scout may still hold it as its target: it reads no more
            if os.fstat(cur.fd).st_nlink == 0 and not self._holds(cur.ident):
                self.seen.discard(cur.ident)  # deleted: its inode may come back as a new file
            os.close(cur.fd)

    def _lines(self, cur: Held, data: bytes, start: int) -> list[Any]:
        sp = cur.splitter
        before = sp.dropped
        raws = sp.split(data)
        if sp.dropped != before:
            self.stats.dropped_long += sp.dropped - before
            if not self.warned_long:
                self.warned_long = True
                log.warning(
                    "%s: dropped a line longer than %d bytes in %s (counted in stats.dropped_long)",
                    self.src.label,
                    sp.max_line,
                    self.path,
                )
        if sp.high_water > self.stats.buffer_high_water:
            self.stats.buffer_high_water = sp.high_water
        out: list[Any] = []
        idx = -1
        find = data.find
        decode = self.decoder.decode
        gen = cur.gen
        path = gen.path
        for raw in raws:
            idx = find(b"\n", idx + 1)
            if raw is DROPPED:
                continue
            end = start + idx + 1
            self.seq += 1
            out.append(Line(decode(raw, None, end - len(raw) - 1), path, end, gen, self.seq, self))
        return out

    def _finish(self, cur: Held, out: list[Any]) -> None:
        """The first file of the chain left the path and has been quiet: emit its last partial line, close it."""
        rest = cur.splitter.partial
        if rest and cur.discard_partial:
            self.stats.partial_discarded += 1
        elif rest:
            self.stats.unterminated += 1
            self.seq += 1
            text = self.decoder.decode(rest, None, cur.pos - len(rest))
            out.append(Line(text, cur.gen.path, cur.pos, cur.gen, self.seq, self))
        self._drop(cur)

    def poll(self) -> tuple[list[Any], bool]:
        """One poll: returns the new items (lines and events) and whether more data is waiting."""
        src = self.src
        out: list[Any] = []
        if self.scout_error is not None:
            error, self.scout_error = self.scout_error, None
            raise error
        if self.checkpoint is not None and self.acked is not None:
            if self.chain_version != self.written_version or (
                self.acked[2] > self.written_seq and time.monotonic() - self.last_write >= src.checkpoint_interval
            ):
                self.write_checkpoint()
        with self.chain_lock:
            self.discover()
            # Counted once the path was looked at: a poll counted here has fixed where start="end" begins.
            self.stats.polls += 1
            if not self.chain:
                self._report_missing(out)
                return out, False
            self._track_quiet()
        while True:
            cur = self.chain[0]
            # Read before the file's end is looked for: a write after that read is more than rotate_grace
            # after the change before it however long this thread is held up before closing the file.
            now = time.monotonic()
            if cur.announce:
                cur.announce = False
                self.stats.rotations += 1
                out.append(TailEvent("rotated", self.path))
            with cur.lock:
                ahead = cur.ahead_len > 0
                if ahead:
                    data = take_ahead(cur, src.chunk_size)
                elif cur.cut:
                    data = b""  # what the descriptor holds now is the next generation's
                elif self._check_truncation(cur):
                    continue
                else:
                    data = os.pread(cur.fd, src.chunk_size, cur.pos)
                start = cur.pos
                cur.pos += len(data)
            if data:
                cur.mark = data[-MARK_BYTES:] if len(data) >= MARK_BYTES else (cur.mark + data)[-MARK_BYTES:]
                self.stats.bytes += len(data)
                out.extend(self._lines(cur, data, start))
                return out, ahead or len(data) == src.chunk_size
            if cur.cut:
                self._end_generation(cur, out)
                continue
            if self._at_path(cur):
                return out, False
            quiet = cur.quiet_since
            if quiet is None or now - quiet < src.rotate_grace:
                return out, False
            self._finish(cur, out)
            if not self.chain:
                out.append(TailEvent("deleted", cur.gen.path))
                return out, False

    def due(self) -> float | None:
        """Seconds until a poll is needed whatever the file system says (a rotated file's grace), or None."""
        if not self.chain:
            return None
        cur = self.chain[0]
        if self._at_path(cur):
            return None
        if cur.quiet_since is None:
            return 0.0
        return max(0.0, self.src.rotate_grace - (time.monotonic() - cur.quiet_since))

    def close(self) -> None:
        """Stop the scout, write the last checkpoint and close every held descriptor."""
        try:
            self.stop_scout()
        finally:
            try:
                self.write_checkpoint()
            finally:
                with self.chain_lock:
                    held, self.chain = self.chain, []
                    if self.renames is not None:
                        self.renames.close()
                        self.renames = None
                for h in held:
                    os.close(h.fd)
