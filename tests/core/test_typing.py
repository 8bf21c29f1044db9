"""The typing promises, checked by the checkers themselves: mypy --strict and pyright strict.

tests/typing holds the cases: ``assert_type`` lines that must pass, and lines
that must fail, each with the ignore comment of the error it must raise.  An
ignore that is not needed is an error under both configurations (pyproject.toml),
so the cases are exact in both directions.  pyright comes from npm
(``npm install -g pyright``): without it these tests are skipped on a
developer's machine and fail in CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CASES = ROOT / "tests" / "typing"
IN_CI = os.environ.get("CI", "").lower() == "true"
MYPY_IGNORE = re.compile(r"  # type: ignore\[[^\]]*\]")
PYRIGHT_IGNORE = re.compile(r"  # pyright: ignore\[[^\]]*\]")

pytestmark = pytest.mark.timeout(600)
# mypy comes with the dev extra (CI's main run has it; the runs on other Pythons install only the test extra)
pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[dev]')")


def _pyright() -> str:
    found = shutil.which("pyright")
    if found is None:
        message = "pyright is not installed (npm install -g pyright)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=500, check=False)


def _mypy(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    # silent: the package itself is checked by `python3 -m mypy`; here only the cases report
    return _run([sys.executable, "-m", "mypy", "--follow-imports=silent", *args], cwd)


def _failing_lines(text: str, ignore: re.Pattern[str]) -> set[int]:
    return {n for n, line in enumerate(text.splitlines(), 1) if ignore.search(line)}


def test_mypy_strict_passes_the_cases() -> None:
    result = _mypy("tests/typing")
    assert result.returncode == 0, result.stdout + result.stderr


def test_pyright_strict_passes_the_cases() -> None:
    result = _run([_pyright(), "--pythonpath", sys.executable], ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 errors" in result.stdout


def _without(tmp_path: Path, ignore: re.Pattern[str]) -> tuple[Path, set[int]]:
    """A copy of the must-fail cases without one checker's ignore comments; the lines that must now fail."""
    text = (CASES / "cases_errors.py").read_text()
    expected = _failing_lines(text, ignore)
    copy = tmp_path / "errors_unignored.py"
    copy.write_text("\n".join(ignore.sub("", line) for line in text.splitlines()) + "\n")
    return copy, expected


def test_every_mistake_is_a_mypy_error(tmp_path: Path) -> None:
    copy, expected = _without(tmp_path, MYPY_IGNORE)
    result = _mypy("--strict", str(copy))
    reported = {int(n) for n in re.findall(r"errors_unignored\.py:(\d+): error", result.stdout)}
    assert len(expected) >= 15
    assert reported == expected, result.stdout


def test_every_mistake_is_a_pyright_error(tmp_path: Path) -> None:
    copy, expected = _without(tmp_path, PYRIGHT_IGNORE)
    config = {"typeCheckingMode": "strict", "enableTypeIgnoreComments": False, "extraPaths": [str(ROOT)]}
    (tmp_path / "pyrightconfig.json").write_text(json.dumps(config))
    result = _run([_pyright(), "--pythonpath", sys.executable, "--project", str(tmp_path), str(copy)], ROOT)
    reported = {int(n) for n in re.findall(r"errors_unignored\.py:(\d+):\d+ - error", result.stdout)}
    assert reported == expected, result.stdout


def _docs_typing_block() -> str:
    text = (ROOT / "docs" / "model.md").read_text()
    section = text.split("\n## Typing\n", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_docs_typing_example_checks(tmp_path: Path) -> None:
    example = tmp_path / "docs_typing.py"
    example.write_text(_docs_typing_block())
    mypy = _mypy("--strict", str(example))
    assert mypy.returncode == 0, mypy.stdout + mypy.stderr
    config = {"typeCheckingMode": "strict", "extraPaths": [str(ROOT)]}
    (tmp_path / "pyrightconfig.json").write_text(json.dumps(config))
    pyright = _run([_pyright(), "--pythonpath", sys.executable, "--project", str(tmp_path), str(example)], ROOT)
    assert pyright.returncode == 0, pyright.stdout + pyright.stderr


USER_PROJECT = textwrap.dedent(
    """
    from collections.abc import AsyncIterator

    from talkpipe_async import source, segment


    @source
    async def numbers(n: int = 10) -> AsyncIterator[int]:
        for i in range(n):
            yield i


    @segment
    async def to_str(items: AsyncIterator[int]) -> AsyncIterator[str]:
        async for x in items:
            yield str(x)


    async def main() -> list[str]:
        return await (numbers(n=3) | to_str()).collect()
    """
)


def test_a_users_project_sees_the_types(tmp_path: Path) -> None:
    """The README's install (`pip install -e .`) leaves a plain path in site-packages, which checkers follow."""
    probe = "import os, sys, talkpipe_async as t; print(os.path.dirname(os.path.dirname(t.__file__)) in sys.path)"
    on_path = _run([sys.executable, "-c", probe], tmp_path).stdout.strip() == "True"
    if not on_path:
        message = "talkpipe_async is installed through an import hook: run `pip install -e .` again"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    (tmp_path / "app.py").write_text(USER_PROJECT)
    mypy = _run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", "app.py"], tmp_path)
    assert mypy.returncode == 0, mypy.stdout + mypy.stderr
    pyright = _run([_pyright(), "--pythonpath", sys.executable, "app.py"], tmp_path)
    assert pyright.returncode == 0, pyright.stdout + pyright.stderr
