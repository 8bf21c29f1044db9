"""Run mutmut's mutants of a module in one pytest session: much faster than a process per mutant.

mutmut 3 forks one pytest run per mutant; for a module whose tests take seconds to collect and start (real files,
threads, servers) that is most of the time.  This driver collects the named tests once, then for each mutant sets
``MUTANT_UNDER_TEST`` (the switch mutmut's trampolines read) and runs the collected tests in order until one fails.

Usage, from a scratch copy of the tree in which ``mutmut run`` has generated ``mutants/`` (stop it once the first
mutant is tried; see docs/contributing.md)::

    python tools/mutants.py --module talkpipe_async/sources/tail.py --log tail.log tests/sources/test_mut_tail.py

(pytest options among the tests go after ``--``: ``... --log tail.log -- tests/x.py -k "not trio"``.)

It writes one line per mutant to ``--log``: ``name 1`` (killed), ``name 0`` (survived) or ``name T`` (the session
ended inside the mutant: pytest-timeout's hard stop, or an error that broke pytest itself; counted as killed), and
prints the survivors at the end.  A log that already names a mutant is not run again, so an interrupted run
resumes.  ``--only`` limits the run to mutants whose name contains a text (a function, or the survivors of an
earlier log with ``--survivors-of``).

The tests run with the pure-Python twins of the C steps (``TALKPIPE_ASYNC_NO_EXTENSIONS=1``), which mutmut can
mutate.  The code that only hands arguments to the C steps is then never reached: run those mutants again with
``--extensions``, after copying the built ``_speedups`` module into ``mutants/talkpipe_async/_core/`` (``git archive``
does not carry it).

Mutants whose effect lives in a cache built once per process (a compiled loop, for example) must each run in a
fresh process: use mutmut's own runner for those.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

DONE = 3  # the child's exit status when every mutant is logged


def mutant_names(module: str) -> list[str]:
    """The mutants mutmut generated for *module* (a path such as ``talkpipe_async/sources/tail.py``)."""
    meta = Path("mutants") / f"{module}.meta"
    if not meta.exists():
        sys.exit(f"{meta} not found: run `mutmut run` in this tree first (it generates mutants/)")
    return list(json.loads(meta.read_text())["exit_code_by_key"])


def logged(log: Path) -> dict[str, str]:
    """What the log holds so far: mutant name -> ``1``, ``0`` or ``T``."""
    if not log.exists():
        return {}
    return dict(line.split() for line in log.read_text().splitlines() if line.strip())


class _Driver:
    """A pytest plugin that replaces the test loop: every mutant against the collected tests."""

    def __init__(self, todo: list[str], log: Path) -> None:
        self.todo = todo
        self.log = log
        self.failed = False

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.failed:
            self.failed = True

    def pytest_runtestloop(self, session: Any) -> bool:
        current = self.log.with_suffix(".current")
        for name in self.todo:
            current.write_text(name)
            os.environ["MUTANT_UNDER_TEST"] = name
            self.failed = False
            for item in session.items:
                item.ihook.pytest_runtest_protocol(item=item, nextitem=None)
                if self.failed:
                    break
            with self.log.open("a") as f:
                f.write(f"{name} {int(self.failed)}\n")
        os.environ["MUTANT_UNDER_TEST"] = ""
        return True


def child(todo_file: Path, log: Path, tests: list[str]) -> int:
    """One pytest session over the mutants of *todo_file* not yet in *log* (run inside ``mutants/``)."""
    import pytest

    sys.path.insert(0, os.getcwd())
    import talkpipe_async

    if "mutants" not in Path(talkpipe_async.__file__).parts:
        sys.exit(f"talkpipe_async comes from {talkpipe_async.__file__}, not from mutants/")
    done = logged(log)
    todo = [n for n in todo_file.read_text().split() if n not in done]
    if not todo:
        return DONE
    pytest.main(
        ["-q", "-p", "no:randomly", "-p", "no:cacheprovider", "-o", "timeout=20", *tests],
        plugins=[_Driver(todo, log)],
    )
    # A session that ended early without dying (a mutant broke pytest itself: an INTERNALERROR) left mutants
    # unlogged: not done, so that the parent counts the current one and starts a session for the rest.
    logged_now = logged(log)
    return DONE if all(n in logged_now for n in todo) else 1


def main() -> int:
    """Parse the command line; run child sessions until every mutant is logged; print the survivors."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", required=True, help="the mutated module's path, as in only_mutate")
    parser.add_argument("--log", required=True, type=Path, help="one line per mutant: name 1|0|T")
    parser.add_argument("--only", default="", help="run only mutants whose name contains this text")
    parser.add_argument("--survivors-of", type=Path, help="run only the mutants this log says survived")
    parser.add_argument(
        "--extensions",
        action="store_true",
        help="keep the C steps on (copy the built _speedups module into mutants/ first): for the code that hands "
        "arguments to them, which the pure-Python run never reaches",
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("tests", nargs="+", help="the tests to run against each mutant")
    args = parser.parse_args()
    log = args.log.resolve()
    if args.child:
        return child(args.child, log, args.tests)
    names = [n for n in mutant_names(args.module) if args.only in n]
    if args.survivors_of:
        survived = {n for n, r in logged(args.survivors_of).items() if r == "0"}
        names = [n for n in names if n in survived]
    todo = log.with_suffix(".todo")
    todo.write_text("\n".join(names))
    env = dict(os.environ) if args.extensions else {**os.environ, "TALKPIPE_ASYNC_NO_EXTENSIONS": "1"}
    command = [sys.executable, str(Path(__file__).resolve()), "--module", args.module, "--log", str(log)]
    current = log.with_suffix(".current")
    while True:
        current.unlink(missing_ok=True)
        rc = subprocess.call([*command, "--child", str(todo), "--", *args.tests], cwd="mutants", env=env)
        if rc == DONE:
            break
        if not current.exists() or current.read_text() in logged(log):
            sys.exit("the pytest session ended before it reached a mutant (its output is above; are the tests "
                     "copied into mutants/?)")
        # The session ended inside a mutant (a hard timeout, a crash): that mutant is killed; go on after it.
        with log.open("a") as f:
            f.write(f"{current.read_text()} T\n")
    results = logged(log)
    survivors = [n for n in names if results.get(n) == "0"]
    killed = [n for n in names if results.get(n) in ("1", "T")]
    print(f"{len(names)} mutants: {len(killed)} killed, {len(survivors)} survived")
    print("\n".join(survivors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
