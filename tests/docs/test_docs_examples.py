"""Run every ```python block of docs/*.md on its own, one test per block and backend, named ``page.md:L<line>``.

Each block runs alone in a fresh Python process, in an empty temporary working directory, with no block run before
it and nothing shared with other blocks, under a timeout that kills its whole process group.  A block passes when
its process exits with status 0, prints something if it calls ``print``, and leaves no "Exception ignored" report
(an error swallowed in a finaliser) on stderr.  ``anyio.run`` inside a block defaults to the backend under test
(asyncio, uvloop, trio).  The line ``<!-- no-run: reason -->`` just before a fence opts a block out; such blocks are
listed in ``NO_RUN`` below and must still compile.  See tests/helpers/docs.py.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path

import pytest

from tests.conftest import BACKEND_NAMES, HAVE_UVLOOP
from tests.helpers.docs import (
    BACKEND_ARGS,
    DOCS,
    SERVERS,
    Block,
    Outcome,
    blocks_of,
    pages,
    prints,
    python_blocks,
    run_block,
    shows_something,
)
from tests.helpers.servers import nats_server, redis_server
from tests.helpers.talkpipe import require_talkpipe

#: a block's process is killed after this many seconds (below pytest-timeout's 60 s, so the test reports it)
BLOCK_TIMEOUT = 40.0

#: the blocks opted out with ``<!-- no-run: reason -->``, per page: keep this list short and each reason real
NO_RUN: dict[str, int] = {}

_STARTERS: dict[str, Callable[[], AbstractContextManager[str]]] = {
    "redis-server": redis_server,
    "nats-server": nats_server,
}

_ALL_BLOCKS: list[Block] = [b for page in pages() for b in python_blocks(page)]
_PYTHON_FENCE = re.compile(r"^[ \t]*(```+|~~~+)[ \t]*(python|py)\b", re.IGNORECASE | re.MULTILINE)


def _block_env(block: Block, stack: ExitStack) -> dict[str, str]:
    """The block's environment: ours, plus the URL of each server it requires, started for this block alone."""
    env = {k: v for k, v in os.environ.items() if k not in SERVERS.values()}
    env["PYTHONUNBUFFERED"] = "1"
    for need in block.requires:
        if need in SERVERS:
            env[SERVERS[need]] = stack.enter_context(_STARTERS[need]())  # skips here, fails in CI, when missing
    return env


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("block", _ALL_BLOCKS, ids=[b.test_id for b in _ALL_BLOCKS])
def test_docs_example(block: Block, backend: str, tmp_path: Path) -> None:
    if "asyncio" in block.requires and BACKEND_ARGS[backend][0] != "asyncio":
        pytest.skip(f"{block.test_id} runs on asyncio only (<!-- requires: asyncio -->)")
    if backend == "uvloop" and not HAVE_UVLOOP:
        pytest.skip("no uvloop")
    if "talkpipe" in block.requires:
        require_talkpipe()  # skipped here, a failure in CI, when TalkPipe 1.2 is missing
    with ExitStack() as stack:
        env = _block_env(block, stack)
        outcome = run_block(block, backend, tmp_path, env, BLOCK_TIMEOUT)
    where = f"docs/{block.test_id} on {backend}"
    if outcome.timed_out:
        pytest.fail(f"{where} did not end within {BLOCK_TIMEOUT} s: {outcome.describe()}", pytrace=False)
    if outcome.returncode != 0:
        pytest.fail(f"{where} failed: {outcome.describe()}", pytrace=False)
    if prints(block.code) and not outcome.stdout.strip():
        pytest.fail(f"{where} calls print but printed nothing: {outcome.describe()}", pytrace=False)
    if "Exception ignored" in outcome.stderr:
        pytest.fail(f"{where} swallowed an error: {outcome.describe()}", pytrace=False)


@pytest.mark.parametrize("block", _ALL_BLOCKS, ids=[b.test_id for b in _ALL_BLOCKS])
def test_docs_example_shows_something(block: Block) -> None:
    """Each runnable block asserts, prints or shows an exception, or only defines names (run alone: they import)."""
    assert shows_something(block.code), f"{block.test_id}: the example neither asserts nor prints anything"


def test_every_python_fence_is_collected() -> None:
    """The collector finds every ```python fence of every page; exactly the listed ones are opted out."""
    fences = 0
    for page in pages():
        on_page = len(_PYTHON_FENCE.findall(page.read_text(encoding="utf-8")))
        collected = [b for b in blocks_of(page) if b.language in ("python", "py")]
        assert len(collected) == on_page, f"{page.name}: {on_page} python fences, {len(collected)} collected"
        fences += on_page
    assert fences > 0
    assert len(_ALL_BLOCKS) == fences - sum(NO_RUN.values())


def test_no_run_blocks_are_listed_justified_and_compile() -> None:
    """Opted-out blocks are the ones in NO_RUN, each marker gives a reason, and each block is valid Python."""
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT | ast.PyCF_ONLY_AST
    per_page: dict[str, int] = {}
    checked = 0
    for page in pages():
        for block in blocks_of(page):
            if block.language in ("python", "py") and block.no_run:
                assert block.no_run_reason, f"{block.test_id}: write <!-- no-run: why it cannot run -->"
                compile(block.code, f"docs/{block.test_id}", "exec", flags=flags)
                per_page[block.page] = per_page.get(block.page, 0) + 1
                checked += 1
    assert per_page == NO_RUN
    assert checked == sum(NO_RUN.values())


def test_collector_finds_blocks(tmp_path: Path) -> None:
    """The collector: fences in lists, the opt-out marker and its reason, requirements, line numbers."""
    page = tmp_path / "p.md"
    page.write_text(
        "# t\n\n```python\nx = 1\n```\n\n<!-- no-run: needs a server -->\n```python\nawait f()\n```\n\n"
        "- item\n\n    ```python\n    assert x == 1\n    ```\n\n```sh\nls\n```\n"
        "\n<!-- requires: asyncio, redis-server -->\n```python\nprint(1)\n```\n"
    )
    blocks = blocks_of(page)
    assert [(b.line, b.language, b.no_run) for b in blocks] == [
        (3, "python", False),
        (8, "python", True),
        (14, "python", False),
        (18, "sh", False),
        (23, "python", False),
    ]
    assert blocks[1].no_run_reason == "needs a server"
    assert blocks[4].requires == ("asyncio", "redis-server")
    assert blocks[2].code == "assert x == 1\n"
    assert [b.line for b in python_blocks(page)] == [3, 14, 23]
    assert shows_something("import pytest\nwith pytest.raises(ValueError):\n    int('x')\n")
    assert shows_something("import anyio\ndef f(): pass\nx = 1\n")
    assert not shows_something("f()\n")
    assert prints("def f():\n    print(1)\n") and not prints("x = 1\n")


def _run_text(tmp_path: Path, body: str, backend: str = "asyncio", timeout: float = BLOCK_TIMEOUT) -> Outcome:
    """Run the one block of a small page the way test_docs_example runs a docs block."""
    page = tmp_path / "p.md"
    page.write_text(f"# t\n\n```python\n{body}```\n")
    (block,) = python_blocks(page)
    root = tmp_path / "run"
    root.mkdir()
    return run_block(block, backend, root, dict(os.environ), timeout)


def test_runner_runs_a_block_alone_on_the_backend(tmp_path: Path) -> None:
    """The runner: a fresh namespace, an empty working directory, anyio.run on the chosen backend."""
    body = ("import os, sniffio, anyio\nasync def main():\n    print(sniffio.current_async_library())\n"
            "print(sorted(os.listdir('.')), 'backend' in globals())\nanyio.run(main)\n")
    outcome = _run_text(tmp_path, body, backend="trio")
    assert (outcome.returncode, outcome.stdout) == (0, "[] False\ntrio\n"), outcome.describe()


def test_runner_names_the_page_line_of_an_error(tmp_path: Path) -> None:
    outcome = _run_text(tmp_path, "x = 1\nraise ValueError(x)\n")
    assert outcome.returncode != 0 and not outcome.timed_out, outcome.describe()
    assert 'p.md", line 5' in outcome.stderr and "ValueError: 1" in outcome.stderr, outcome.describe()


def test_runner_kills_a_block_that_hangs(tmp_path: Path) -> None:
    outcome = _run_text(tmp_path, "print('started', flush=True)\nimport time\ntime.sleep(3600)\n", timeout=2.0)
    assert outcome.timed_out and outcome.returncode == -9 and outcome.stdout == "started\n", outcome.describe()


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed (the dev extra)")
def test_site_builds_strict(tmp_path: Path) -> None:
    """``mkdocs build --strict``: no warning (broken links or anchors, a page missing from the nav, ...)."""
    root = DOCS.parent
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=root, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "index.html").exists()
