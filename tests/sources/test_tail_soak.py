"""tail_file under attack: a writer at high rate, a rotator, and GNU ``tail -F`` on the same files.

A child process writes numbered lines (one ``write`` per line) at ``RATE`` lines/s while a rotator thread in
the same child rotates the file every ``period`` seconds:

- ``create`` (logrotate's default): rename ``app.log`` to ``app.log.K``, create an empty ``app.log``; the
  writer keeps writing to the renamed file for ``LATE`` seconds, then reopens the path;
- ``copytruncate``: copy ``app.log`` to ``app.log.K``, then truncate ``app.log`` while the writer keeps
  appending to it.

Our tail runs ``tail_file(start="beginning", checkpoint=...) | write_lines(...) | acknowledge()`` and GNU
``tail -F -n +1`` runs on the same path.  Because the writer numbers lines in the order it writes them and
only switches files at a rotation, "every line once, in order within each file and in rotation order across
files" is exactly: the delivered numbers are strictly increasing; "nothing lost" is: they are 0..N-1.

Each soak runs ``TALKPIPE_SOAK_SECONDS`` seconds (default 6: five soaks keep CI under a minute); run a long
one by hand with e.g. ``TALKPIPE_SOAK_SECONDS=120 python3 -m pytest -q tests/sources/test_tail_soak.py -p no:randomly``.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from talkpipe_async.sinks import write_lines
from talkpipe_async.sources import FileStats, acknowledge, tail_file
from tests.conftest import die_with_parent
from tests.helpers.wait import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.soak]

GNU_TAIL = "/usr/bin/tail"
RATE = 10_000
LATE = 0.02
SECONDS = float(os.environ.get("TALKPIPE_SOAK_SECONDS", "6"))
# Each soak: the writing, then the tails catching up (a rotated file waits up to rotate_grace to be closed).
pytestmark.append(pytest.mark.timeout(SECONDS * 6 + 60))

_WRITER = textwrap.dedent(
    """
    import json, os, signal, sys, time

    path, rate, seconds, late, grace = sys.argv[1], *map(float, sys.argv[2:6])
    total = int(rate * seconds)
    pad = b" " + b"x" * 40 + b"\\n"
    reopen_at = None

    def on_hup(signum, frame):  # logrotate's postrotate: tell the writer to reopen its log
        global reopen_at
        reopen_at = time.monotonic() + late

    def open_log():
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    signal.signal(signal.SIGHUP, on_hup)
    fd = open_log()
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.monotonic()
    n = 0
    # Lines written to a rotated file more than rotate_grace after both the write before and the rename
    # (this process descheduled on a loaded machine): the tail may have closed the file before them.  The
    # file's ctime before a write is the later of the two; read against the clock after the write, the
    # pause is bounded from above, so no line the tail must read is counted here.
    risky, risky_from = [], None

    def at_path(ino):
        try:
            return os.stat(path).st_ino == ino
        except FileNotFoundError:  # between the rename and the create
            return False
    while n < total:
        now = time.monotonic()
        if reopen_at is not None and now >= reopen_at:
            reopen_at = None
            os.close(fd)
            fd = open_log()
            if risky_from is not None:
                risky.append((risky_from, n - 1))
                risky_from = None
        target = min(total, int((now - start) * rate) + 1)
        while n < target:
            st = os.fstat(fd)
            os.write(fd, b"%d" % n + pad)
            if risky_from is None and time.time() - st.st_ctime > grace and not at_path(st.st_ino):
                risky_from = n  # and every line after it in this file: the tail may have closed it
            n += 1
        time.sleep(0.0002)
    if risky_from is not None:
        risky.append((risky_from, n - 1))
    print("written", n, flush=True)
    print("risky", json.dumps(risky), flush=True)
    sys.stdin.readline()  # exit only once the rotator has stopped sending SIGHUP
    os.close(fd)
    """
)

# The rotator is its own process, as logrotate is: between the end of a copy and the truncate there is
# only what one process does between two system calls.
_ROTATOR = textwrap.dedent(
    """
    import os, select, shutil, signal, sys

    path, period, style, writer = sys.argv[1], float(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    k = 0
    while not select.select([sys.stdin], [], [], period)[0]:  # until the test closes our stdin
        k += 1
        if style == "create":
            os.rename(path, f"{path}.{k}")
            # Not O_EXCL: the writer, reopening after the previous rotation, may have created it in between.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
            os.kill(writer, signal.SIGHUP)
        else:
            shutil.copyfile(path, f"{path}.{k}")
            os.truncate(path, 0)
    print("rotations", k, flush=True)
    """
)


def numbers(data: bytes, below: int | None = None) -> list[int]:
    """The line numbers in a tail's output or a file (complete lines only; the end mark and after left out).

    A copy can end inside a line: the copy reads while the writer's ``write`` is between two pages, and the
    truncate that follows throws the rest of that line away.  Such a piece is no line on disk."""
    whole = data[: data.rfind(b"\n") + 1]
    out = [int(line.split(b" ", 1)[0]) for line in whole.split(b"\n") if line.strip()]
    return out if below is None else [n for n in out if n < below]


def holds_open(pid: int, path: Path) -> bool:
    """Whether process *pid* has *path* open (an exact signal that GNU tail has started following it)."""
    fd_dir = Path(f"/proc/{pid}/fd")
    for entry in fd_dir.iterdir():
        try:
            if os.readlink(entry) == str(path):
                return True
        except OSError:
            continue
    return False


@contextmanager
def gnu_tail(path: Path, out: Path) -> Iterator[subprocess.Popen[bytes]]:
    """GNU ``tail -F -n +1 path`` writing to *out*."""
    if not os.path.exists(GNU_TAIL):
        if os.environ.get("CI"):
            pytest.fail(f"{GNU_TAIL} (GNU coreutils) is needed for the comparison soak")
        pytest.skip(f"no {GNU_TAIL} (GNU coreutils) to compare with")
    with open(out, "wb") as sink:
        proc = subprocess.Popen([GNU_TAIL, "-F", "-n", "+1", str(path)], stdout=sink, stderr=subprocess.DEVNULL,
                                preexec_fn=die_with_parent)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def last_line_is(out: Path, last: int) -> bool:
    """Whether *out* ends with line number *last* (read from its end: cheap on a big file)."""
    with open(out, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - 256))
        tail = f.read()
    lines = [x for x in tail.split(b"\n") if x.strip()]
    return tail.endswith(b"\n") and bool(lines) and int(lines[-1].split(b" ", 1)[0]) == last


class Soak:
    """One soak: our pipeline and GNU tail on a writer + rotator child; results as line numbers."""

    def __init__(self, tmp_path: Path, style: str, period: float, rotate_grace: float) -> None:
        self.dir = tmp_path / "logs"
        self.dir.mkdir()
        self.log = self.dir / "app.log"
        self.style, self.period, self.rotate_grace = style, period, rotate_grace
        self.total = int(RATE * SECONDS)
        self.ours_out = tmp_path / "ours.out"
        self.gnu_out = tmp_path / "gnu.out"
        self.stats = FileStats()
        self.ours: list[int] = []
        self.gnu: list[int] = []
        self.rotations = 0
        self.thrown: set[int] = set()
        self.risky: set[int] = set()  # written to a rotated file after the writer paused > rotate_grace
        self.held_by: dict[int, str] = {}  # line number -> the file on disk that holds it after the soak
        self.file_lines: dict[str, list[int]] = {}  # file on disk -> its line numbers, in file order

    async def run(self) -> None:
        self.log.write_bytes(b"")
        tail = tail_file(
            self.log,
            start="beginning",
            checkpoint=self.dir.parent / "app.ckpt",
            rotate_grace=self.rotate_grace,
            stats=self.stats,
        )
        pipeline = tail | write_lines(self.ours_out, flush_interval=0.05) | acknowledge()
        last = self.total  # the end mark
        with gnu_tail(self.log, self.gnu_out) as gnu:
            await wait_until(lambda: holds_open(gnu.pid, self.log), 10, "GNU tail to open the file", interval=0.01)
            async with pipeline.stream() as items, anyio.create_task_group() as tg:
                tg.start_soon(self._consume, items, last)
                await wait_until(lambda: self.stats.files >= 1, 10, "our tail to open the file", interval=0.01)
                await self._write()
                await wait_until(
                    lambda: last_line_is(self.gnu_out, last), 30, "GNU tail to reach the last line", interval=0.01
                )
        self.ours = numbers(self.ours_out.read_bytes(), self.total)
        self.gnu = numbers(self.gnu_out.read_bytes(), self.total)
        for f in sorted(self.dir.iterdir()):
            if f.name.startswith("app.log"):
                self.file_lines[f.name] = numbers(f.read_bytes(), self.total)
                for n in self.file_lines[f.name]:
                    self.held_by.setdefault(n, f.name)
        # Lines the rotation itself threw away: written between the end of a copy and the truncate.
        self.thrown = set(range(self.total)) - self.held_by.keys()

    async def _consume(self, items: Any, last: int) -> None:
        with anyio.fail_after(SECONDS * 4 + 30):
            async for line in items:
                if line.text.startswith(f"{last} "):
                    break

    async def _write(self) -> None:
        await anyio.to_thread.run_sync(self._write_and_rotate)

    def _write_and_rotate(self) -> None:
        """Start the writer, then the rotator; stop the rotator when the writer has written every line."""
        py = sys.executable
        writer = subprocess.Popen(
            [py, "-c", _WRITER, str(self.log), str(RATE), str(SECONDS), str(LATE), str(self.rotate_grace)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=die_with_parent,
        )
        assert writer.stdin is not None and writer.stdout is not None
        rotator = None
        try:
            assert writer.stdout.readline() == "ready\n"
            rotator = subprocess.Popen(
                [py, "-c", _ROTATOR, str(self.log), str(self.period), self.style, str(writer.pid)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                preexec_fn=die_with_parent,
            )
            writer.stdin.write("go\n")
            writer.stdin.flush()
            assert writer.stdout.readline() == f"written {self.total}\n"
            for lo, hi in json.loads(writer.stdout.readline().split(" ", 1)[1]):
                self.risky.update(range(lo, hi + 1))
            out, _ = rotator.communicate("stop\n", timeout=30)
            assert rotator.returncode == 0
            self.rotations = int(out.split("rotations ")[1].split()[0])
            writer.communicate("exit\n", timeout=30)
            assert writer.returncode == 0
            # The end mark: one more line in the file at the path, which nothing rotates any more.
            with open(self.log, "ab") as f:
                f.write(b"%d end\n" % self.total)
        finally:
            for proc in (writer, rotator):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()

    def lost(self, got: list[int]) -> int:
        return self.total - len(set(got))

    def missing(self, got: list[int]) -> set[int]:
        return set(range(self.total)) - set(got)

    def report(self) -> str:
        thrown = (
            f"; thrown away by the rotation {len(self.thrown)}, of which read in time by tail_file "
            f"{len(self.thrown & set(self.ours))}, by GNU tail {len(self.thrown & set(self.gnu))}"
            if self.style == "copytruncate"
            else f"; written late after a writer pause > rotate_grace {len(self.risky)}, of which lost by "
            f"tail_file {len(self.risky - set(self.ours))} (at the end of a file it read {len(self.excused())})"
        )
        return (
            f"{self.style} every {self.period * 1000:.0f} ms, rotate_grace {self.rotate_grace} s, "
            f"{self.total} lines, {self.rotations} rotations: lost by tail_file {self.lost(self.ours)}, "
            f"by GNU tail -F {self.lost(self.gnu)}{thrown}; tail_file opened {self.stats.files} files "
            f"({self.stats.recovered} found after they left the path)"
        )

    def excused(self) -> set[int]:
        """The lost lines a rotate_grace shorter than the writer's pauses explains: written late after such a
        pause (``risky``), at the end of a file the tail read (it closed the file before them).  Lines of a
        file the tail delivered nothing of are never excused: the tail must find every file."""
        got = set(self.ours)
        out: set[int] = set()
        for nums in self.file_lines.values():
            read = [i for i, n in enumerate(nums) if n in got]
            if read:
                out.update(n for n in nums[read[-1] + 1 :] if n in self.risky)
        return out

    def diagnosis(self, got: list[int], allowed: set[int] | None = None) -> str:
        """A few lines saying what went wrong: lost and repeated numbers as ranges, where the lost ones are
        on disk, and the tail's counters against the rotator's (never the whole list)."""
        lost = sorted(self.missing(got) - (allowed or set()))
        counts: dict[int, int] = {}
        for n in got:
            counts[n] = counts.get(n, 0) + 1
        repeated = sorted(n for n, c in counts.items() if c > 1)
        out_of_order = sum(1 for a, b in itertools.pairwise(got) if a >= b)
        lines = [
            self.report(),
            f"tail_file: files opened {self.stats.files}, rotations seen {self.stats.rotations}, "
            f"recovered {self.stats.recovered} (rotator: {self.rotations} rotations), truncations seen "
            f"{self.stats.truncations}, cut partial lines {self.stats.partial_discarded}; out of order {out_of_order}",
            f"lost {len(lost)} in {len(ranges(lost))} ranges{' (not counting the allowed)' if allowed else ''}: "
            f"{self.where(lost)}",
            f"repeated {len(repeated)}: {shown_ranges(ranges(repeated))}",
            f"where in their files: {self.positions(lost)}",
        ]
        return "\n".join(lines)

    def where(self, lost: list[int]) -> str:
        """Each range of lost numbers with the files on disk that hold them (the first ranges only)."""
        per_file: dict[str, int] = {}
        for name in self.held_by.values():
            per_file[name] = per_file.get(name, 0) + 1
        lost_in: dict[str, int] = {}
        for n in lost:
            name = self.held_by.get(n, "no file")
            lost_in[name] = lost_in.get(name, 0) + 1
        parts = []
        for lo, hi in ranges(lost)[:MAX_RANGES]:
            files = sorted({self.held_by.get(n, "no file") for n in range(lo, hi + 1)}, key=file_order)
            shown = [
                f"{f} {'whole' if lost_in[f] == per_file.get(f) else f'{lost_in[f]} of {per_file.get(f, 0)}'}"
                for f in files
            ]
            parts.append(f"{span(lo, hi)} ({', '.join(shown)})")
        more = len(ranges(lost)) - MAX_RANGES
        return "; ".join(parts) + (f"; ... {more} more ranges" if more > 0 else "")

    def positions(self, lost: list[int]) -> str:
        """The first lost ranges placed in their files (line K of N): a boundary of a file or its middle."""
        parts = []
        for lo, hi in ranges(lost)[:MAX_RANGES]:
            name = self.held_by.get(lo)
            if name is not None:
                nums = self.file_lines.get(name, [])
                at = nums.index(lo) + 1 if lo in nums else 0
                parts.append(f"{span(lo, hi)} from line {at} of {len(nums)} in {name}")
        return "; ".join(parts) or "-"


MAX_RANGES = 8


def ranges(numbers_: list[int]) -> list[tuple[int, int]]:
    """Sorted numbers as (first, last) runs of consecutive numbers."""
    out: list[tuple[int, int]] = []
    for n in numbers_:
        if out and n == out[-1][1] + 1:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return out


def span(lo: int, hi: int) -> str:
    return f"{lo}" if lo == hi else f"{lo}-{hi} ({hi - lo + 1})"


def shown_ranges(runs: list[tuple[int, int]]) -> str:
    more = len(runs) - MAX_RANGES
    return ", ".join(span(lo, hi) for lo, hi in runs[:MAX_RANGES]) + (f", ... {more} more" if more > 0 else "")


def file_order(name: str) -> tuple[int, str]:
    """app.log.K by K (app.log itself last: it is the newest)."""
    suffix = name.rsplit(".", 1)[-1]
    return (int(suffix), name) if suffix.isdigit() else (1 << 30, name)


def test_the_diagnosis_is_a_few_lines(tmp_path: Path) -> None:
    """A failing soak says what was lost and where, in a few lines, whatever the size of the run."""
    soak = Soak(tmp_path, "create", 0.1, 0.05)
    soak.total, soak.rotations = 60_000, 59
    soak.held_by = {n: f"app.log.{n // 1000 + 1}" for n in range(soak.total)}
    for n, name in soak.held_by.items():
        soak.file_lines.setdefault(name, []).append(n)
    got = [n for n in range(soak.total) if not 12_000 <= n < 13_000 and n != 30_500] + [59_999]
    text = soak.diagnosis(got)
    assert len(text.splitlines()) == 5 and len(text) < 1000
    assert "lost 1001 in 2 ranges: 12000-12999 (1000) (app.log.13 whole); 30500 (app.log.31 1 of 1000)" in text
    assert "repeated 1: 59999" in text
    assert "out of order 1" in text
    assert "where in their files: 12000-12999 (1000) from line 1 of 1000 in app.log.13; 30500 from line 501" in text


def test_a_piece_of_a_line_is_no_line() -> None:
    """A copy that ends inside a line holds no number for it: its rest was thrown away by the truncate."""
    assert numbers(b"1 x\n2 x\n3 x") == [1, 2]
    assert numbers(b"1 x\n2 x\n") == [1, 2]
    assert numbers(b"") == []


def in_order(got: list[int]) -> bool:
    """Strictly increasing: no duplicate, order within each file and rotation order across files."""
    return all(a < b for a, b in itertools.pairwise(got))


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, object]]:
    """A soak runs once (on asyncio): the per-backend paths are covered by tests/sources/test_tail.py."""
    return ("asyncio", {})


@pytest.mark.parametrize(("period", "grace"), [(1.0, 1.0), (0.1, 1.0), (0.1, 0.05)])
async def test_create_rotation_loses_nothing(tmp_path: Path, period: float, grace: float) -> None:
    """Rename-and-create rotation down to 100 ms, with a grace longer and shorter than the period."""
    soak = Soak(tmp_path, "create", period, grace)
    await soak.run()
    print(soak.report())
    assert soak.rotations >= SECONDS / period / 2
    excused = soak.excused()
    assert in_order(soak.ours), soak.diagnosis(soak.ours, excused)
    # Nothing is lost but the last lines of a rotated file, written after the writer paused longer than
    # rotate_grace (descheduled on a loaded machine): the grace is how long a quiet rotated file is waited for.
    only_excused = soak.missing(soak.ours) <= excused  # compared apart: pytest would print both sets
    assert only_excused, soak.diagnosis(soak.ours, excused)


@pytest.mark.parametrize("period", [1.0, 0.1])
async def test_copytruncate_loses_only_what_the_rotation_threw_away(tmp_path: Path, period: float) -> None:
    """copytruncate has an inherent race: lines written between the end of the copy and the truncate are in
    no file afterwards, and a tail keeps them only if it read them in that instant.  Every other line is
    on disk, in the copy or in the truncated file: tail_file delivers all of those, once and in order
    (GNU tail -F, which never reads the copy, loses those it had not read when the copy was made)."""
    soak = Soak(tmp_path, "copytruncate", period, 1.0)
    await soak.run()
    print(soak.report())
    assert soak.rotations >= SECONDS / period / 2
    assert in_order(soak.ours), soak.diagnosis(soak.ours, soak.thrown)
    only_thrown = soak.missing(soak.ours) <= soak.thrown  # compared apart: pytest would print both sets
    assert only_thrown, soak.diagnosis(soak.ours, soak.thrown)


def test_gnu_tail_is_coreutils() -> None:
    """The comparison is against GNU coreutils' tail (inotify-based -F)."""
    if not os.path.exists(GNU_TAIL):
        pytest.skip("no GNU tail")
    out = subprocess.run([GNU_TAIL, "--version"], capture_output=True, text=True, check=True).stdout
    assert "GNU coreutils" in out
    assert shutil.which("tail") is not None
