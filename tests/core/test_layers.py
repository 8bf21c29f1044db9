"""The package's layers, checked on the source (AST only, nothing imported).

From the bottom up:

- ``_core``: the engine; imports only the standard library, anyio (and what anyio itself stands on: sniffio,
  trio, the exceptiongroup backport) and its own modules;
- ``_net`` and the top-level private helpers (``_backoff``, ``_loops``, ``_blocking``, ...): import ``_core``
  and each other, never a stage package;
- the stage packages and the other public modules (``operators``, ``sources``, ``sinks``, ``connectors``,
  ``interop``, ``testing``, ``observe``, ...): import ``_core``, ``_net``, the helpers, and only public names
  of each other (no underscore module, no underscore name);
- the command line (``cli``, with ``_live_demo``, started by ``__main__``): on top, imported by nobody else.

A rule is about module-level imports (``if TYPE_CHECKING:`` blocks included).  An import inside a function
that crosses from one package to another is a deliberate exception: it carries a comment saying why, and is
listed in :data:`ALLOWED_DEFERRED`.  Module-level imports that break a rule today are listed, each with the
reason, in :data:`ALLOWED`.  Every violation is reported with its module and line.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "talkpipe_async"
PACKAGE = "talkpipe_async"

CORE = "_core"
#: the command line's modules: one layer, on top
APP = frozenset({"cli", "_live_demo", "__main__"})
FACADE = ""  # talkpipe_async/__init__.py
#: third-party modules the core may import: anyio and what anyio itself stands on
CORE_THIRD_PARTY = frozenset({"anyio", "sniffio", "trio", "exceptiongroup"})

#: module-level imports that break a rule today: (importer, imported module) -> why it stays
ALLOWED: dict[tuple[str, str], str] = {
    ("talkpipe_async._core._pipeline", "talkpipe_async._blocking"): (
        "type annotations only (TYPE_CHECKING): Pipeline's blocking methods return the blocking wrapper's types"
    ),
    ("talkpipe_async._core._chain", "talkpipe_async._blocking"): (
        "type annotations only (TYPE_CHECKING): the chain's blocking methods return the blocking wrapper's types"
    ),
    ("talkpipe_async._core._segment", "typing_extensions"): (
        "type annotations only (TYPE_CHECKING): Never on Python 3.10; typing_extensions is a development dependency"
    ),
}

#: imports inside a function that cross from one package to another: (importer, imported module) -> why
ALLOWED_DEFERRED: dict[tuple[str, str], str] = {
    ("talkpipe_async._core._pipeline", "talkpipe_async._blocking"): (
        "Pipeline.run_blocking() and friends: the blocking wrapper stands on the core, so the core reaches up "
        "to it only when a caller asks for it"
    ),
    ("talkpipe_async._core._chain", "talkpipe_async.operators.transform"): (
        "the chain's .map()/.filter()/... shortcuts build operator stages on demand"
    ),
    ("talkpipe_async._core._chain", "talkpipe_async.operators.concurrency"): (
        "the chain's .concurrent_map() shortcut builds an operator stage on demand"
    ),
    ("talkpipe_async.interop.chatterlang", "talkpipe_async.operators"): (
        "ChatterLang's names resolve to this library's stages only when a script is compiled"
    ),
    ("talkpipe_async.interop.chatterlang", "talkpipe_async.sources"): (
        "ChatterLang's names resolve to this library's stages only when a script is compiled"
    ),
    ("talkpipe_async.operators.concurrency", "talkpipe_async._core._wakeup"): (
        "the Ctrl-C wakeup for worker threads (signal, socket) loads with the first thread_map run"
    ),
    ("talkpipe_async.operators.processes", "talkpipe_async._core._wakeup"): (
        "the Ctrl-C wakeup for worker threads (signal, socket) loads with the first process_map run"
    ),
    ("talkpipe_async.cli.worker", "talkpipe_async._core._pipeline"): "the worker command's imports stay lazy",
    ("talkpipe_async.cli.worker", "talkpipe_async.connectors"): (
        "the broker connectors (and their client libraries) load only for the worker command"
    ),
    ("talkpipe_async.cli.chatterlang", "talkpipe_async.interop.chatterlang"): (
        "the ChatterLang compiler loads only for the chatterlang command"
    ),
    ("talkpipe_async.cli.chatterlang", "talkpipe_async.operators"): "loaded only for the chatterlang command",
    ("talkpipe_async.cli.stages", "talkpipe_async.connectors"): (
        "the broker connectors (and their client libraries) load only for a redis: or nats: destination"
    ),
}


@dataclass(frozen=True)
class Import:
    """One import statement's dependency on a module of the package."""

    importer: str
    line: int
    target: str  # the imported module
    names: tuple[str, ...]  # the names taken from it ("" for a plain ``import``)
    deferred: bool
    commented: bool


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def layer(module: str) -> str:
    """The top-level package (or module) of the library that *module* belongs to; "" for the facade.

    The command line's modules (``cli``, ``_live_demo``, ``__main__``) are one layer, "cli".
    """
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else FACADE
    return "cli" if top in APP else top


def is_stage(top: str) -> bool:
    """True for the public packages and modules (``operators``, ``sources``, ``observe``, ...).

    The other layers are ``_core``, the private layers and helpers (``_net``, ``_backoff``, ...: any other
    underscore name), the facade and the command line.
    """
    return top not in (FACADE, "cli") and not top.startswith("_")


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base.pop()
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _has_comment(lines: list[str], lineno: int) -> bool:
    here = lines[lineno - 1]
    above = lines[lineno - 2].strip() if lineno >= 2 else ""
    return "#" in here or above.startswith("#")


def imports_of(module: str, path: Path, known: dict[str, Path]) -> list[Import]:
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, deferred: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append(Import(module, child.lineno, alias.name, ("",), inner,
                                        _has_comment(lines, child.lineno)))
            elif isinstance(child, ast.ImportFrom):
                target = _resolve(module, is_package, child)
                names = tuple(alias.name for alias in child.names)
                commented = _has_comment(lines, child.lineno)
                plain = tuple(n for n in names if f"{target}.{n}" not in known)
                for n in names:
                    if f"{target}.{n}" in known:  # ``from . import module``: a dependency on that module
                        found.append(Import(module, child.lineno, f"{target}.{n}", ("",), inner, commented))
                if plain or not names:
                    found.append(Import(module, child.lineno, target, plain, inner, commented))
            visit(child, inner)

    visit(tree, False)
    return found


def _private_path(target: str) -> bool:
    """True when *target* is an underscore module below a package (``talkpipe_async.sources._framing``)."""
    return any(part.startswith("_") for part in target.split(".")[2:])


def rule_broken(imp: Import) -> str | None:
    """What rule *imp* breaks, or None."""
    if imp.target != PACKAGE and not imp.target.startswith(PACKAGE + "."):
        if layer(imp.importer) == CORE:
            top = imp.target.split(".")[0]
            if top not in sys.stdlib_module_names and top not in CORE_THIRD_PARTY:
                return f"_core imports the third-party module {imp.target}"
        return None
    mine, theirs = layer(imp.importer), layer(imp.target)
    if mine == theirs or mine == "cli":
        return None
    if theirs == "cli":
        return f"only the command line imports {imp.target}"
    if mine == FACADE:
        return None
    if mine == CORE:
        return f"_core imports {imp.target}, above it"
    if theirs == FACADE:
        return f"imports the package facade {imp.target}"
    if is_stage(theirs) and not is_stage(mine):
        return f"a lower layer imports the stage package {imp.target}"
    if is_stage(theirs):
        if _private_path(imp.target):
            return f"imports the private module {imp.target} of another package"
        private = [n for n in imp.names if n.startswith("_")]
        if private:
            return f"imports the private name(s) {', '.join(private)} of {imp.target}"
    return None


def violations() -> list[str]:
    known = all_modules()
    out: list[str] = []
    for module, path in known.items():
        for imp in imports_of(module, path, known):
            where = f"{path.relative_to(ROOT.parent)}:{imp.line} ({module})"
            key = (imp.importer, imp.target)
            crosses = imp.target.startswith(PACKAGE + ".") and layer(imp.target) != layer(module)
            if imp.deferred and crosses:
                if key not in ALLOWED_DEFERRED:
                    out.append(f"{where}: imports {imp.target} inside a function; not in ALLOWED_DEFERRED")
                elif not imp.commented:
                    out.append(f"{where}: deferred import of {imp.target} without a comment saying why")
                continue
            problem = rule_broken(imp)
            if problem is not None and key not in ALLOWED:
                out.append(f"{where}: {problem}")
    return out


def test_layers_hold() -> None:
    found = violations()
    assert not found, "layer violations:\n" + "\n".join(found)


def test_allow_lists_name_real_imports() -> None:
    """An entry that no longer matches any import is stale: remove it."""
    known = all_modules()
    seen = {(imp.importer, imp.target) for m, p in known.items() for imp in imports_of(m, p, known)}
    stale = sorted(set(ALLOWED) - seen) + sorted(set(ALLOWED_DEFERRED) - seen)
    assert not stale, f"allow-list entries that match no import: {stale}"


def test_the_checker_sees_a_private_import(tmp_path: Path) -> None:
    """The checker itself: a stage importing another package's underscore name is reported with its line."""
    bad = Import("talkpipe_async.sinks.net", 7, "talkpipe_async.sources.http", ("_client_for",), False, False)
    assert rule_broken(bad) == "imports the private name(s) _client_for of talkpipe_async.sources.http"
    up = Import("talkpipe_async._core._run", 3, "talkpipe_async.sources", ("tcp_lines",), False, False)
    assert rule_broken(up) == "_core imports talkpipe_async.sources, above it"
    cli = Import("talkpipe_async.sinks.net", 3, "talkpipe_async.cli.build", ("run_command",), False, False)
    assert rule_broken(cli) == "only the command line imports talkpipe_async.cli.build"
    ok = Import("talkpipe_async.sinks.net", 3, "talkpipe_async._net.connect", ("connect_tcp",), False, False)
    assert rule_broken(ok) is None
    source = tmp_path / "talkpipe_async" / "sinks" / "x.py"
    source.parent.mkdir(parents=True)
    source.write_text("def f():\n    from ..sources.http import _client_for\n")
    found = imports_of("talkpipe_async.sinks.x", source, {})
    assert [(i.line, i.target, i.deferred) for i in found] == [(2, "talkpipe_async.sources.http", True)]
