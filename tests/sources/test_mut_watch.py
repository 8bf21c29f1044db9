"""The tail's directory watch (``sources/_watch.py``): inotify wake-ups and the log of files renamed away.

Pinned here, on real directories with real renames: a watcher's wait ends early on a change and says so, and runs
its full time otherwise; the blocking wait also ends on its stop descriptor, and reports which of the two ended it;
the rename log names, in rename order, every file renamed away from the followed name since the last look (also
when a newer file came and went meanwhile), follows a file through later renames, and drops a file moved out of the
directory, deleted or renamed over; renames whose other half never comes are kept to a bound; a directory inotify
cannot watch gives ``None``; closing twice is harmless.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

from talkpipe_async.sources import _watch
from talkpipe_async.sources._watch import (
    _MAX_PENDING,
    CHANGES,
    DirWatcher,
    RenameLog,
    open_rename_log,
    open_watcher,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")


@contextmanager
def watching(directory: str, mask: int = CHANGES) -> Iterator[DirWatcher]:
    """A watcher of *directory*, closed at the end of the block."""
    watcher = open_watcher(directory, mask)
    assert watcher is not None
    try:
        yield watcher
    finally:
        watcher.close()


@pytest.fixture
def stop_pipe() -> Iterator[tuple[int, int]]:
    """A blocking wait's stop descriptor and the end that stops it: nothing is written unless a test does."""
    read, write = os.pipe()
    yield read, write
    os.close(read)
    os.close(write)


def rename_log(path: Path) -> RenameLog:
    log = open_rename_log(str(path))
    assert log is not None
    return log


# ---------------------------------------------------------------- the watcher


def test_the_watched_changes_are_every_kind_of_change() -> None:
    assert CHANGES == 0x2 | 0x4 | 0x8 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800


@pytest.mark.anyio
async def test_a_change_ends_the_wait_early_and_is_consumed(tmp_path: Path) -> None:
    with watching(str(tmp_path)) as watcher:
        (tmp_path / "new.log").write_bytes(b"x\n")
        with anyio.fail_after(10):
            assert await watcher.wait(3600) is True
        assert await watcher.wait(0.01) is False  # the change was consumed: nothing new


@pytest.mark.anyio
async def test_many_changes_are_consumed_by_one_wait(tmp_path: Path) -> None:
    with watching(str(tmp_path)) as watcher:
        for n in range(3000):  # more events than one read of 64 KiB holds
            (tmp_path / f"f{n:05d}").touch()
        assert await watcher.wait(3600) is True
        assert await watcher.wait(0.01) is False


def test_the_blocking_wait_tells_a_change_from_its_stop(tmp_path: Path, stop_pipe: tuple[int, int]) -> None:
    stop_r, stop_w = stop_pipe
    with watching(str(tmp_path)) as watcher:
        assert watcher.wait_blocking(0.01, stop_r) is False  # nothing: the time ran out
        (tmp_path / "new.log").touch()
        assert watcher.wait_blocking(3600, stop_r) is True
        assert watcher.wait_blocking(0.01, stop_r) is True  # not consumed: the caller acts first, then drains
        watcher.drain()
        assert watcher.wait_blocking(0.01, stop_r) is False
        os.write(stop_w, b"x")
        assert watcher.wait_blocking(3600, stop_r) is False  # the stop ended it, at once


def test_a_wait_of_a_fraction_of_a_millisecond_does_not_block(tmp_path: Path, stop_pipe: tuple[int, int]) -> None:
    stop_r, _ = stop_pipe
    with watching(str(tmp_path)) as watcher:
        assert watcher.wait_blocking(0.0004, stop_r) is False
        assert watcher.wait_blocking(-1, stop_r) is False  # a deadline already past: no wait at all


def test_only_the_asked_changes_wake_the_watcher(tmp_path: Path, stop_pipe: tuple[int, int]) -> None:
    stop_r, _ = stop_pipe
    with watching(str(tmp_path), 0x100) as watcher:  # IN_CREATE only
        existing = tmp_path / "old.log"
        existing.touch()
        watcher.drain()
        existing.write_bytes(b"more\n")  # a modification: not asked for
        assert watcher.wait_blocking(0.01, stop_r) is False
        (tmp_path / "new.log").touch()
        assert watcher.wait_blocking(3600, stop_r) is True


def test_the_c_library_is_loaded_on_first_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a fresh process does: find libc, load it once, and watch with it."""
    monkeypatch.setattr(_watch, "_libc", None)
    with watching(str(tmp_path)):
        pass
    loaded = _watch._libc
    assert loaded is not None
    assert _watch._load_libc() is loaded  # once per process


def test_a_directory_inotify_cannot_watch_gives_none(tmp_path: Path) -> None:
    assert open_watcher(str(tmp_path / "missing")) is None
    assert open_rename_log(str(tmp_path / "missing" / "app.log")) is None


def test_an_empty_directory_name_is_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop_pipe: tuple[int, int]
) -> None:
    monkeypatch.chdir(tmp_path)
    stop_r, _ = stop_pipe
    with watching("") as watcher:
        (tmp_path / "here.log").touch()
        assert watcher.wait_blocking(3600, stop_r) is True


def test_closing_twice_is_harmless_and_releases_the_descriptor(tmp_path: Path) -> None:
    watcher = open_watcher(str(tmp_path))
    assert watcher is not None
    fd = watcher.fd
    watcher.close()
    assert watcher.fd == -1
    watcher.close()
    with pytest.raises(OSError):
        os.fstat(fd)
    log = rename_log(tmp_path / "app.log")
    fd = log.fd
    log.close()
    log.close()
    assert log.fd == -1
    with pytest.raises(OSError):
        os.fstat(fd)


# ---------------------------------------------------------------- the rename log


def test_files_renamed_away_are_named_in_rename_order(tmp_path: Path) -> None:
    app = tmp_path / "app.log"
    app.touch()
    log = rename_log(app)
    try:
        assert log.name == "app.log" and log.take() == []
        app.rename(tmp_path / "app.log.1")
        app.touch()  # a newer file came, and went in its turn before anyone looked
        app.rename(tmp_path / "app.log.2")
        assert log.take() == ["app.log.1", "app.log.2"]
        assert log.take() == []  # each is named once
    finally:
        log.close()


def test_a_file_renamed_away_is_followed_through_later_renames(tmp_path: Path) -> None:
    app = tmp_path / "app.log"
    app.touch()
    log = rename_log(app)
    try:
        app.rename(tmp_path / "app.log.1")
        (tmp_path / "app.log.1").rename(tmp_path / "app.log.2")  # the rotation shifts it on
        assert log.take() == ["app.log.2"]
    finally:
        log.close()


def test_a_file_renamed_again_after_it_was_taken_is_not_named_again(tmp_path: Path) -> None:
    app = tmp_path / "app.log"
    app.touch()
    log = rename_log(app)
    try:
        app.rename(tmp_path / "app.log.1")
        assert log.take() == ["app.log.1"]
        (tmp_path / "app.log.1").rename(tmp_path / "app.log.2")
        assert log.take() == []
    finally:
        log.close()


def test_names_are_taken_whole_whatever_they_end_with(tmp_path: Path) -> None:
    app = tmp_path / "app.X"
    app.touch()
    log = rename_log(app)
    try:
        app.rename(tmp_path / "app.X.XX")
        assert log.take() == ["app.X.XX"]
    finally:
        log.close()


def test_other_names_of_the_directory_are_not_logged(tmp_path: Path) -> None:
    app = tmp_path / "app.log"
    other = tmp_path / "other.log"
    app.touch()
    other.touch()
    log = rename_log(app)
    try:
        other.rename(tmp_path / "other.log.1")
        assert log.take() == []
    finally:
        log.close()


def test_a_file_moved_out_of_the_directory_deleted_or_renamed_over_is_dropped(tmp_path: Path) -> None:
    app = tmp_path / "app.log"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    log = rename_log(app)
    try:
        app.touch()
        app.rename(tmp_path / "gone.1")
        (tmp_path / "gone.1").rename(elsewhere / "gone.1")  # out of the watched directory
        app.touch()
        app.rename(tmp_path / "deleted.1")
        (tmp_path / "deleted.1").unlink()
        app.touch()
        app.rename(tmp_path / "over.1")
        (tmp_path / "newcomer").touch()
        (tmp_path / "newcomer").rename(tmp_path / "over.1")  # another file renamed over it
        app.touch()
        app.rename(tmp_path / "kept.1")
        assert log.take() == ["kept.1"]
    finally:
        log.close()


def test_renames_whose_other_half_never_comes_are_kept_to_a_bound(tmp_path: Path) -> None:
    app = tmp_path / "app.log"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    log = rename_log(app)
    try:
        spacer = tmp_path / "spacer"
        for n in range(_MAX_PENDING + 10):  # renamed out of the directory at once: no MOVED_TO ever comes
            app.touch()
            app.rename(elsewhere / f"{n}")
            spacer.touch()
            spacer.unlink()  # an event in between: the kernel merges identical consecutive ones
        assert log.take() == []
        assert len(log.pending) == _MAX_PENDING
        assert len(log.moved) == _MAX_PENDING  # the files still under way, no more
        app.touch()
        app.rename(tmp_path / "kept.1")
        assert log.take() == ["kept.1"]
    finally:
        log.close()


def test_a_busy_file_next_to_the_followed_one_does_not_flood_the_rename_log(tmp_path: Path) -> None:
    """The log asks the kernel for renames and deletions only: writes, however many, queue nothing."""
    app = tmp_path / "app.log"
    app.touch()
    log = rename_log(app)
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 20000:
        log.close()
        pytest.skip(f"the kernel queues {limit} events: too many to flood in a test")
    fds = [os.open(tmp_path / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND) for name in ("a.log", "b.log")]
    try:
        for n in range(limit + 10):
            os.write(fds[n % 2], b"x\n")  # two files in turn: the kernel does not merge the events
        app.rename(tmp_path / "app.log.1")
        assert log.take() == ["app.log.1"]
        assert log.overflowed is False
    finally:
        for fd in fds:
            os.close(fd)
        log.close()


def test_a_process_without_standard_input_watches_on_descriptor_0(tmp_path: Path) -> None:
    """A daemon closes its standard input: the kernel then hands out descriptor 0, which is a descriptor like any
    other (opened, watched, closed)."""
    code = textwrap.dedent(
        f"""
        import os
        os.close(0)
        from talkpipe_async.sources._watch import open_watcher, open_rename_log
        watcher = open_watcher({str(tmp_path)!r})
        assert watcher is not None and watcher.fd == 0, watcher
        watcher.close()
        assert watcher.fd == -1
        try:
            os.fstat(0)
        except OSError:
            pass
        else:
            raise AssertionError("descriptor 0 left open")
        log = open_rename_log({str(tmp_path / "app.log")!r})
        assert log is not None and log.fd == 0, log
        log.close()
        assert log.fd == -1
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr


def test_a_queue_overflow_is_reported(tmp_path: Path) -> None:
    app = tmp_path / "app.log"
    log = rename_log(app)
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 20000:
        log.close()
        pytest.skip(f"the kernel queues {limit} events: too many to overflow in a test")
    try:
        victim = tmp_path / "v"
        victim.touch()
        for n in range(limit // 2 + 10):  # two events per rename
            target = tmp_path / f"v{n % 2}"
            victim.rename(target)
            victim = target
        assert log.overflowed is False
        log.take()
        assert log.overflowed is True
    finally:
        log.close()
