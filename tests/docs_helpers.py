"""Collect the ```python blocks of the docs pages, so that tests/test_docs_examples.py can run them.

Conventions (documented in docs/index.md, "Examples in these pages"):

- Every fenced block that opens with ```python is run, in page order, in one namespace per page: a block may use
  names defined by an earlier block of the same page.
- The line ``<!-- no-run -->`` (optionally ``<!-- no-run: reason -->``) just before the fence opts a block out.
  Use it only for fragments and for code that needs a service that cannot run locally.
- The line ``<!-- requires: asyncio, redis-server -->`` just before the fence runs the block only where each
  requirement holds: ``asyncio`` (skipped on trio: for asyncio-only client libraries), ``redis-server`` or
  ``nats-server`` (the test starts that server on 127.0.0.1 for the page and sets ``REDIS_URL`` / ``NATS_URL``; the
  block is skipped when the binary is not installed).  Examples read the URL with
  ``os.environ.get("REDIS_URL", "redis://localhost:6379/0")``.
- Top-level ``await`` is not Python: write ``async def main(): ...`` and ``anyio.run(main)``.  The test runs every
  page once per backend (asyncio, uvloop, trio) by giving ``anyio.run`` that backend as its default.
- A block must ``assert`` or ``print`` something, unless it only defines things (imports, functions, classes,
  assignments) that a later block uses.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"

_FENCE_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)\s*(?P<info>[^\s`]*)")
_NO_RUN = re.compile(r"^\s*<!--\s*no-run\b.*-->\s*$")
_REQUIRES = re.compile(r"^\s*<!--\s*requires:\s*(?P<names>[^>]*?)\s*-->\s*$")

#: the servers a block may require, and the environment variable that receives the server's URL
SERVERS = {"redis-server": "REDIS_URL", "nats-server": "NATS_URL"}
#: requirements that are not servers
BACKEND_REQUIREMENTS = {"asyncio"}


@dataclass(frozen=True)
class Block:
    """One fenced code block of a docs page."""

    page: str
    line: int  # 1-based line number of the opening fence
    language: str
    code: str
    no_run: bool
    requires: tuple[str, ...] = ()

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
        requires: tuple[str, ...] = ()
        prev = start - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        while prev >= 0 and lines[prev].lstrip().startswith("<!--"):  # markers, one a line, any order
            marker = lines[prev]
            no_run = no_run or bool(_NO_RUN.match(marker))
            m_req = _REQUIRES.match(marker)
            if m_req:
                requires += tuple(n.strip() for n in m_req.group("names").split(",") if n.strip())
            prev -= 1
        unknown = set(requires) - set(SERVERS) - BACKEND_REQUIREMENTS
        if unknown:
            raise ValueError(f"{path.name}:{start + 1}: unknown requirement(s) {sorted(unknown)}")
        blocks.append(Block(path.name, start + 1, info, "\n".join(body) + "\n", no_run, requires))
    return blocks


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of one page that are meant to run."""
    return [b for b in blocks_of(path) if b.language in ("python", "py") and not b.no_run]


def pages() -> list[Path]:
    """The docs pages, sorted by name."""
    return sorted(DOCS.glob("*.md"))


_DEFINITIONS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign,
                ast.AnnAssign)


def shows_something(code: str) -> bool:
    """True if the block asserts or prints, or only defines names (for a later block to use)."""
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert):
            return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            return True
        if isinstance(node, ast.Raise) or (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "raises"):
            return True
    return all(isinstance(node, _DEFINITIONS) or _is_docstring(node) for node in tree.body)


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
