"""What ``tail_file`` yields: each ``Line`` carries its text, the path it was read from and its end offset.

Pinned here: ``line.text``/``str(line)``, ``line.path`` (the followed path, as a string), ``line.offset`` (the byte
just after its newline) and the ``repr`` that names all three, for lines of one file and across a rotation.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from talkpipe_async.sources import Line, tail_file
from tests.sources.test_tail import append, take

pytestmark = pytest.mark.anyio


async def test_a_line_names_its_text_path_and_end_offset(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, b"first\nsecond line\n")
    async with tail_file(log, start="beginning", poll_min=0.001, poll_max=0.01).stream() as items:
        lines = await take(items, 2)
    assert all(isinstance(line, Line) for line in lines)
    assert [(line.text, str(line), line.path, line.offset) for line in lines] == [
        ("first", "first", str(log), 6),
        ("second line", "second line", str(log), 18),
    ]
    assert repr(lines[1]) == f"Line('second line', path={str(log)!r}, offset=18)"


async def test_lines_after_a_rotation_name_the_followed_path_and_offsets_in_the_new_file(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    append(log, b"old\n")
    async with tail_file(log, start="beginning", poll_min=0.001, poll_max=0.01, rotate_grace=0).stream() as items:
        assert [str(x) for x in await take(items, 1)] == ["old"]
        log.rename(tmp_path / "app.log.1")
        append(log, b"new\n")
        (line,) = await take(items, 1)
    assert (line.text, line.path, line.offset) == ("new", str(log), 4)
