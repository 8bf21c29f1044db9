"""Collect the ```python blocks of the docs pages and run each one on its own, for tests/docs/test_docs_examples.py.

Conventions (documented in docs/index.md, "Examples in these pages", and docs/contributing.md):

- Every fenced block that opens with ```python runs ON ITS OWN: in a fresh Python process, in an empty temporary
  working directory, with nothing from the blocks before it.  A block carries its own imports and definitions.
- The line ``<!-- no-run: reason -->`` just before the fence opts a block out; the reason is required, the block
  must still compile, and tests/docs/test_docs_examples.py keeps the explicit list of such blocks per page.
- The line ``<!-- requires: asyncio, redis-server -->`` just before the fence runs the block only where each
  requirement holds: ``asyncio`` (skipped on trio: for asyncio-only client libraries), ``redis-server`` or
  ``nats-server`` (the test starts that server on 127.0.0.1 for the block and sets ``REDIS_URL`` / ``NATS_URL``;
  without the binary the block is skipped on a developer's machine and fails in CI).  Examples read the URL with
  ``os.environ.get("REDIS_URL", "redis://localhost:6379/0")``.
- Top-level ``await`` is not Python: write ``async def main(): ...`` and ``anyio.run(main)``.  The test runs every
  block once per backend (asyncio, uvloop, trio) by giving ``anyio.run`` that backend as its default.
- A block must ``assert``, ``print`` or show an exception being raised; a block that prints must print something.
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import die_with_parent

DOCS = Path(__file__).resolve().parents[2] / "docs"

_FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)\s*(?P<info>[^\s`]*)")
_NO_RUN = re.compile(r"^\s*<!--\s*no-run\b(?::\s*(?P<reason>.*?))?\s*-->\s*$")
_REQUIRES = re.compile(r"^\s*<!--\s*requires:\s*(?P<names>[^>]*?)\s*-->\s*$")

#: the servers a block may require, and the environment variable that receives the server's URL
SERVERS = {"redis-server": "REDIS_URL", "nats-server": "NATS_URL"}
#: requirements that are not servers (``talkpipe``: the real TalkPipe 1.2 package, installed by .ci/run)
BACKEND_REQUIREMENTS = {"asyncio", "talkpipe"}


@dataclass(frozen=True)
class Block:
    """One fenced code block of a docs page."""

    page: str
    line: int  # 1-based line number of the opening fence
    language: str
    code: str
    no_run: bool
    requires: tuple[str, ...] = ()
    no_run_reason: str = ""

    @property
    def test_id(self) -> str:
        """``page.md:L<line>``: the pytest id of the block."""
        return f"{self.page}:L{self.line}"


def blocks_of(path: Path) -> list[Block]:
    """Every fenced block of one markdown file, in order (indented fences inside lists included)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE_OPEN.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = m.group("indent"), m.group("fence"), m.group("info").lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            line = lines[i]
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            i += 1
        i += 1  # the closing fence
        no_run = False
        reason = ""
        requires: tuple[str, ...] = ()
        prev = start - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        while prev >= 0 and lines[prev].lstrip().startswith("<!--"):  # markers, one a line, any order
            marker = lines[prev]
            m_no = _NO_RUN.match(marker)
            if m_no:
                no_run, reason = True, (m_no.group("reason") or "").strip()
            m_req = _REQUIRES.match(marker)
            if m_req:
                requires += tuple(n.strip() for n in m_req.group("names").split(",") if n.strip())
            prev -= 1
        unknown = set(requires) - set(SERVERS) - BACKEND_REQUIREMENTS
        if unknown:
            raise ValueError(f"{path.name}:{start + 1}: unknown requirement(s) {sorted(unknown)}")
        blocks.append(Block(path.name, start + 1, info, "\n".join(body) + "\n", no_run, requires, reason))
    return blocks


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of one page that are meant to run."""
    return [b for b in blocks_of(path) if b.language in ("python", "py") and not b.no_run]


def pages() -> list[Path]:
    """The docs pages, sorted by name."""
    return sorted(DOCS.glob("*.md"))


def _calls(tree: ast.AST, name: str) -> bool:
    """True if *tree* calls ``name(...)`` or ``something.name(...)``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if (isinstance(func, ast.Name) and func.id == name) or getattr(func, "attr", "") == name:
                return True
    return False


def prints(code: str) -> bool:
    """True if the block calls ``print``: then running it must print something."""
    return _calls(ast.parse(code), "print")


_DEFINITIONS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign,
                ast.AnnAssign)


def shows_something(code: str) -> bool:
    """True if the block asserts, prints or shows an exception (``raise``, ``pytest.raises``), or only defines names.

    A block that only defines things (a segment, a source, a configuration) is checked by running it alone: its
    imports resolve and its definitions execute.
    """
    tree = ast.parse(code)
    if any(isinstance(node, (ast.Assert, ast.Raise)) for node in ast.walk(tree)):
        return True
    if _calls(tree, "print") or _calls(tree, "raises"):
        return True
    return all(isinstance(node, _DEFINITIONS) or _is_docstring(node) for node in tree.body)


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


#: how ``anyio.run`` inside a block gets its default backend: (backend, backend_options)
BACKEND_ARGS: dict[str, tuple[str, dict[str, bool] | None]] = {
    "asyncio": ("asyncio", None),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", None),
}

# Run in the block's own process: argv is backend, the file holding the block, the page, the fence's line.
# The block is padded with blank lines so that a traceback shows the line numbers of the markdown page.
_BOOTSTRAP = f"""
import sys
backend, code_path, page, line = sys.argv[1:5]
sys.argv = [page]
import anyio
_original = anyio.run
_default = {BACKEND_ARGS!r}[backend]
def _run(func, *args, backend=None, backend_options=None):
    if backend is None:
        backend, backend_options = _default[0], backend_options or _default[1]
    return _original(func, *args, backend=backend, backend_options=backend_options)
anyio.run = _run
with open(code_path, encoding="utf-8") as f:
    code = compile("\\n" * int(line) + f.read(), page, "exec")
del backend, code_path, page, line, f
exec(code, {{"__name__": "__main__", "__builtins__": __builtins__}})
"""


@dataclass(frozen=True)
class Outcome:
    """How one block's process ended."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool

    def describe(self) -> str:
        """The exit status and both outputs, for an assertion message."""
        status = "timed out (killed)" if self.timed_out else f"exit status {self.returncode}"
        return f"{status}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def run_block(block: Block, backend: str, root: Path, env: dict[str, str], timeout: float) -> Outcome:
    """Run *block* alone: a fresh interpreter, cwd an empty directory under *root*, killed after *timeout* s.

    The block runs in a session of its own so that on timeout the whole process group (the servers or commands it
    started included) is killed.
    """
    code_file = root / "block.py"
    code_file.write_text(block.code, encoding="utf-8")
    workdir = root / "work"
    workdir.mkdir()
    args = [sys.executable, "-c", _BOOTSTRAP, backend, str(code_file), str(DOCS / block.page), str(block.line)]
    proc = subprocess.Popen(args, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=die_with_parent)
    try:
        out, err = proc.communicate(timeout=timeout)
        return Outcome(proc.returncode, out, err, timed_out=False)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # a process the block started in a session of its own holds the pipes
            proc.kill()
            proc.wait()
            out, err = "", "(no output: the pipes are still held by a process the block started)"
        return Outcome(proc.returncode, out, err, timed_out=True)
    finally:
        if proc.poll() is None:  # the test itself is being torn down (KeyboardInterrupt)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
