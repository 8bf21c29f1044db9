"""What ``@source``, ``@segment`` and ``@field_segment`` make, as a type checker sees it (``_core/_factories.py``).

The typing cases of ``tests/typing`` check the plain calls and some of the stage options; these cases check the
forms they leave out, each of which has its own overload: ``process_metadata=`` and ``blocking=`` given at
construction, the options of a ``set_as`` segment, and the decorators with options (``@field_segment(name=...)``,
``field=``, ``multi_emit=``) over ``def`` and ``async def`` functions.  The checker itself is the judge: mypy
``--strict`` must pass the ``assert_type`` lines, and report the mistake (an unused ignore comment fails the check).
pyright strict, when installed, checks the same file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(600)
pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[dev]')")

CASES = textwrap.dedent(
    """
    from __future__ import annotations

    from collections.abc import AsyncIterator, Iterable, Iterator
    from typing import Any

    from typing_extensions import assert_type

    from talkpipe_async import AbstractSegment, AbstractSource, field_segment, segment, source


    @source
    async def numbers(n: int = 10) -> AsyncIterator[int]:
        for i in range(n):
            yield i


    @source
    def letters(word: str) -> Iterator[str]:
        yield from word


    @segment
    async def to_str(items: AsyncIterator[int]) -> AsyncIterator[str]:
        async for x in items:
            yield str(x)


    @segment
    def add(items: Iterable[int], k: int = 1) -> Iterator[int]:
        for x in items:
            yield x + k


    @field_segment
    def domain(email: str) -> str:
        return email.split("@")[1]


    @field_segment(set_as="n")
    def count_chars(text: str) -> int:
        return len(text)


    @field_segment(set_as="n")
    def count_scaled(text: str, scale: int = 1) -> int:
        return len(text) * scale


    @field_segment(name="length")
    def length(text: str) -> int:
        return len(text)


    @field_segment(name="slow length")
    async def slow_length(text: str) -> int:
        return len(text)


    @field_segment(field="user.name")
    async def slow_upper(name: str) -> str:
        return name.upper()


    @field_segment(multi_emit=True)
    async def slow_words(text: str) -> list[str]:
        return text.split()


    @field_segment(multi_emit=True, field="text")
    def tokens(text: str) -> list[str]:
        return text.split()


    def stage_options_at_construction() -> None:
        assert_type(numbers(n=3, process_metadata=True), AbstractSource[int])
        assert_type(letters("ab", process_metadata=True, blocking=True), AbstractSource[str])
        assert_type(to_str(blocking=True), AbstractSegment[int, str])
        assert_type(add(k=2, blocking=True), AbstractSegment[int, int])
        assert_type(domain(process_metadata=True), AbstractSegment[str, str])
        assert_type(domain(blocking=True), AbstractSegment[str, str])


    async def set_as_segments_yield_their_items() -> None:
        items = letters("ab")
        assert_type(await items.then(count_chars(field="_")).collect(), list[str])
        assert_type(await items.then(count_chars(name="count")).collect(), list[str])
        assert_type(await items.then(count_chars(process_metadata=True)).collect(), list[str])
        assert_type(await items.then(count_chars(blocking=True)).collect(), list[str])
        assert_type(await items.then(count_chars(multi_emit=False)).collect(), list[str])
        assert_type(await items.then(count_scaled(scale=2)).collect(), list[str])


    def decorators_with_options() -> None:
        assert_type(length(), AbstractSegment[str, int])
        assert_type(slow_length(), AbstractSegment[str, int])
        assert_type(slow_upper(), AbstractSegment[Any, str])
        assert_type(slow_words(), AbstractSegment[str, str])
        assert_type(tokens(), AbstractSegment[Any, str])


    def mistakes() -> None:
        count_scaled(scale="2")  # type: ignore[call-overload]  # pyright: ignore[reportArgumentType]
        length(unknown=1)  # type: ignore[call-overload]  # pyright: ignore[reportCallIssue]
    """
)


def _write(tmp_path: Path) -> Path:
    path = tmp_path / "factory_cases.py"
    path.write_text(CASES)
    return path


def test_mypy_checks_every_factory_form(tmp_path: Path) -> None:
    """mypy --strict infers each form's item types and reports each mistake (no unused ignore)."""
    cases = _write(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", str(cases)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,  # inside the test's own 60 s bound
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_pyright_checks_every_factory_form(tmp_path: Path) -> None:
    """pyright strict agrees (skipped where pyright is not installed)."""
    pyright = shutil.which("pyright")
    if pyright is None:
        pytest.skip("pyright is not installed (npm install -g pyright)")
    cases = _write(tmp_path)
    config = {
        "typeCheckingMode": "strict",
        "extraPaths": [str(ROOT)],
        "enableTypeIgnoreComments": False,  # only the pyright ignores count here
        "reportUnnecessaryTypeIgnoreComment": "error",
    }
    (tmp_path / "pyrightconfig.json").write_text(json.dumps(config))
    result = subprocess.run(
        [pyright, "--pythonpath", sys.executable, "--project", str(tmp_path), str(cases)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,  # inside the test's own 60 s bound
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
