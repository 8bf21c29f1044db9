"""Run every ```python block of docs/*.md, one test per block, named ``page.md:L<line>``.

A page's blocks run in order in one namespace (a block may build on the blocks before it), in a temporary working
directory of their own, once per backend (asyncio, uvloop, trio): ``anyio.run`` inside the blocks gets the backend
as its default.  The line
``<!-- no-run -->`` just before a fence opts the block out; such blocks must still compile.  See tests/docs_helpers.py.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from .docs_helpers import DOCS, SERVERS, Block, blocks_of, pages, python_blocks, shows_something
from .servers import nats_binary, nats_server, redis_binary, redis_server

BACKENDS = ["asyncio", "uvloop", "trio"]
_BACKEND_ARGS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "asyncio": ("asyncio", None),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", None),
}

_ALL_BLOCKS: list[Block] = [b for page in pages() for b in python_blocks(page)]


@dataclass
class _PageState:
    """What the blocks of one page share on one backend."""

    namespace: dict[str, Any]
    workdir: Path
    done: int = 0  # how many blocks of the page have run
    failed: str | None = None  # the id of the block that failed, if any
    blocks: list[Block] = field(default_factory=list)


_STATES: dict[tuple[str, str], _PageState] = {}


@pytest.fixture
def page_state(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., _PageState]:
    def get(page: str, backend: str) -> _PageState:
        key = (page, backend)
        if key not in _STATES:
            blocks = [b for b in _ALL_BLOCKS if b.page == page]
            workdir = tmp_path_factory.mktemp(f"docs-{page.removesuffix('.md')}-{backend}")
            _STATES[key] = _PageState({"__name__": "__docs__"}, workdir, blocks=blocks)
        return _STATES[key]

    return get


@pytest.fixture
def backend_default(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Make ``anyio.run`` default to the given backend while a block runs."""
    original = anyio.run

    def use(name: str) -> None:
        default_backend, default_options = _BACKEND_ARGS[name]

        def run(func: Any, *args: Any, backend: str | None = None, backend_options: Any = None) -> Any:
            if backend is None:
                backend, backend_options = default_backend, backend_options or default_options
            return original(func, *args, backend=backend, backend_options=backend_options)

        monkeypatch.setattr(anyio, "run", run)

    return use


_SERVER_STARTERS: dict[str, tuple[Callable[[], str | None], Callable[[], Any]]] = {
    "redis-server": (redis_binary, redis_server),
    "nats-server": (nats_binary, nats_server),
}


@pytest.fixture(scope="module")
def server_urls() -> Iterator[Callable[[str], str | None]]:
    """Start each server a block requires once for the module; None when it is not installed."""
    urls: dict[str, str | None] = {}
    with ExitStack() as stack:

        def get(name: str) -> str | None:
            if name not in urls:
                binary, start = _SERVER_STARTERS[name]
                urls[name] = stack.enter_context(start()) if binary() else None
            return urls[name]

        yield get


def _unmet(block: Block, backend: str, server_urls: Callable[[str], str | None]) -> str | None:
    """Why the block cannot run here, or None."""
    for need in block.requires:
        if need == "asyncio" and _BACKEND_ARGS[backend][0] != "asyncio":
            return f"{block.test_id} runs on asyncio only"
        if need in SERVERS and server_urls(need) is None:
            return f"{block.test_id} needs {need}, which is not installed"
    return None


@pytest.fixture
def in_dir() -> Iterator[Callable[[Path], None]]:
    old = Path.cwd()

    def enter(path: Path) -> None:
        os.chdir(path)

    yield enter
    os.chdir(old)


def _run(block: Block, namespace: dict[str, Any]) -> None:
    # Pad with blank lines so that tracebacks show the line numbers of the markdown file.
    code = compile("\n" * block.line + block.code, str(DOCS / block.page), "exec")
    exec(code, namespace)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("block", _ALL_BLOCKS, ids=[b.test_id for b in _ALL_BLOCKS])
def test_docs_example(
    block: Block,
    backend: str,
    page_state: Callable[..., _PageState],
    backend_default: Callable[[str], None],
    in_dir: Callable[[Path], None],
    server_urls: Callable[[str], str | None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = page_state(block.page, backend)
    index = state.blocks.index(block)
    backend_default(backend)
    in_dir(state.workdir)
    for need in {n for b in state.blocks for n in b.requires if n in SERVERS}:
        url = server_urls(need)
        if url is not None:
            monkeypatch.setenv(SERVERS[need], url)
    # Run the earlier blocks of the page first when this test runs on its own (pytest -k).
    while state.done < index:
        if state.failed:
            pytest.skip(f"an earlier block of {block.page} failed: {state.failed}")
        earlier = state.blocks[state.done]
        state.done += 1
        if _unmet(earlier, backend, server_urls):
            continue
        try:
            _run(earlier, state.namespace)
        except BaseException:
            state.failed = earlier.test_id
            raise
    if state.failed:
        pytest.skip(f"an earlier block of {block.page} failed: {state.failed}")
    state.done = index + 1
    reason = _unmet(block, backend, server_urls)
    if reason:
        pytest.skip(reason)
    try:
        _run(block, state.namespace)
    except BaseException:
        state.failed = block.test_id
        raise


@pytest.mark.parametrize("block", _ALL_BLOCKS, ids=[b.test_id for b in _ALL_BLOCKS])
def test_docs_example_shows_something(block: Block) -> None:
    """Each runnable block asserts or prints, or only defines names that a later block uses."""
    assert shows_something(block.code), f"{block.test_id}: the example neither asserts nor prints anything"


def test_no_run_blocks_still_compile() -> None:
    """Opted-out blocks are fragments, but they must still be valid Python (top-level ``await`` allowed)."""
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT | ast.PyCF_ONLY_AST
    checked = 0
    for page in pages():
        for block in blocks_of(page):
            if block.language in ("python", "py") and block.no_run:
                compile(block.code, f"docs/{block.page}:L{block.line}", "exec", flags=flags)
                checked += 1
    assert checked >= 0


def test_collector_finds_blocks(tmp_path: Path) -> None:
    """The collector: fences in lists, the opt-out marker, line numbers."""
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
    assert blocks[4].requires == ("asyncio", "redis-server")
    assert blocks[2].code == "assert x == 1\n"
    assert [b.line for b in python_blocks(page)] == [3, 14, 23]
    assert shows_something("import anyio\ndef f(): pass\nx = 1\n")
    assert not shows_something("f()\n")


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
