"""Import time: ``python -c "import talkpipe_async"`` against ``python -c "import anyio"``, whole processes.

Both commands run interleaved in fresh interpreters with byte-code caching
on (``PYTHONPYCACHEPREFIX`` in a temporary directory, warmed up first), so
neither side pays for compiling its sources: what a user's program pays at
start.  The informational row gives the import alone (``-X importtime``,
cumulative microseconds of the top-level module, medians), without the
interpreter's own start-up.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

from ._harness import Result

__all__ = ["run"]

ANYIO = "import anyio"
OURS = "import talkpipe_async"


def _env(cache: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = cache
    return env


def _process(code: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return time.perf_counter() - start


def _import_only(code: str, module: str, env: dict[str, str]) -> float:
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], env=env, capture_output=True, text=True, check=True
    ).stderr
    for line in err.splitlines():
        fields = line.split("|")
        if len(fields) == 3 and fields[2].strip() == module and fields[2].startswith(f" {module}"):
            return int(fields[1]) / 1e6
    return float("nan")


def _spread(xs: list[float]) -> float:
    return (max(xs) - min(xs)) / statistics.median(xs)


def run(quick: bool) -> list[Result]:
    """Whole-process and import-only ratios."""
    repeat = 7 if quick else 31
    with tempfile.TemporaryDirectory() as cache:
        env = _env(cache)
        for _ in range(2):  # warm the byte-code cache and the page cache
            _process(ANYIO, env)
            _process(OURS, env)
        ours, theirs, ours_alone, theirs_alone = [], [], [], []
        for _ in range(repeat):
            theirs.append(_process(ANYIO, env))
            ours.append(_process(OURS, env))
            theirs_alone.append(_import_only(ANYIO, "anyio", env))
            ours_alone.append(_import_only(OURS, "talkpipe_async", env))
    whole = Result(
        "import time, whole process (python -c ...)",
        "import talkpipe_async",
        "import anyio",
        statistics.median(ours),
        statistics.median(theirs),
        _spread(ours),
        _spread(theirs),
        target="<= 1.15",
    )
    whole.met = whole.ratio <= 1.15
    alone = Result(
        "import time, the import alone (-X importtime, cumulative)",
        "talkpipe_async",
        "anyio",
        statistics.median(ours_alone),
        statistics.median(theirs_alone),
        _spread(ours_alone),
        _spread(theirs_alone),
    )
    return [whole, alone]


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        ms = f"{r.subject_s * 1e3:.1f} ms vs {r.baseline_s * 1e3:.1f} ms"
        print(f"{r.scenario}: {ms}, ratio {r.ratio:.3f} met={r.met}")
