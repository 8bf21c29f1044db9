"""The core scenarios on every Python this machine has: one venv per Python, one subprocess per run.

Pythons are looked up under pyenv (``$PYENV_ROOT/versions/3.*/bin/python``,
3.10 and newer).  Each one needs the package installed: the venv of the CI
script (``/tmp/talkpipe-py3.X``) is used when it is there, else one is made
under ``$TALKPIPE_BENCH_VENVS`` (default ``~/.cache/talkpipe-async-bench``)
with ``pip install -e ".[trio,uvloop]"``.  When the C source is newer than
that Python's built extension, the package is reinstalled (``--no-deps``)
so the figures are of today's code.  By hand, for one Python::

    python3.12 -m venv /tmp/v312 && /tmp/v312/bin/pip install -e ".[trio,uvloop]"
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["core_on_other_pythons", "find_pythons"]

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "talkpipe_async" / "_core" / "_speedups.c"


def find_pythons() -> dict[str, str]:
    """``{"3.12": "/path/to/python3.12", ...}`` for every CPython >= 3.10 under pyenv."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found: dict[str, str] = {}
    for path in sorted(glob.glob(f"{root}/versions/3.*/bin/python")):
        match = re.search(r"/versions/(3)\.(\d+)\.[^/]*/bin/python$", path)
        if match and int(match.group(2)) >= 10:
            found.setdefault(f"3.{match.group(2)}", path)
    return found


def _ext_suffix(python: str) -> str:
    out = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def _venv(version: str, python: str) -> str | None:
    """A venv's python with the package installed and built from today's source (None: could not)."""
    ci = Path(f"/tmp/talkpipe-py{version}/bin/python")
    base = Path(os.environ.get("TALKPIPE_BENCH_VENVS", os.path.expanduser("~/.cache/talkpipe-async-bench")))
    venv_python = ci if ci.exists() else base / f"py{version}" / "bin" / "python"
    try:
        if not venv_python.exists():
            print(f"   making a venv for Python {version} in {venv_python.parent.parent}", flush=True)
            subprocess.run([python, "-m", "venv", str(venv_python.parent.parent)], check=True)
            _install(venv_python, deps=True)
        built = SOURCE.parent / f"_speedups{_ext_suffix(str(venv_python))}"
        if not built.exists() or built.stat().st_mtime < SOURCE.stat().st_mtime:
            built.unlink(missing_ok=True)  # a new file, not a rewrite: a running process keeps its mapping
            _install(venv_python, deps=False)
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"   Python {version}: no usable venv ({exc}); skipped", file=sys.stderr)
        return None
    return str(venv_python)


def _install(venv_python: Path, *, deps: bool) -> None:
    extra = [] if deps else ["--no-deps"]
    target = f"{REPO}[trio,uvloop]" if deps else str(REPO)
    subprocess.run(
        [str(venv_python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *extra, "-e", target],
        check=True,
    )


def core_on_other_pythons(quick: bool) -> dict[str, list[dict[str, Any]]]:
    """``{full version: results}`` of ``bench_core`` run by every other Python found (this one's run in-process)."""
    here = sysconfig.get_python_version()
    runs: dict[str, list[dict[str, Any]]] = {}
    for version, python in find_pythons().items():
        if version == here:
            continue
        venv_python = _venv(version, python)
        if venv_python is None:
            continue
        print(f"== bench_core on Python {version}", flush=True)
        with tempfile.TemporaryDirectory() as out:
            command = [venv_python, "-m", "benchmarks", "--only", "bench_core", "--no-pythons", "--out", out]
            done = subprocess.run([*command, *(["--quick"] if quick else [])], cwd=REPO)
            results = Path(out) / "results.json"
            if done.returncode != 0 or not results.exists():
                print(f"   Python {version}: the core run failed (exit {done.returncode})", file=sys.stderr)
                continue
            data = json.loads(results.read_text())
            runs[data.get("python", version)] = data["results"]  # keyed by the full version (3.12.1)
    return runs
