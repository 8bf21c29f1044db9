"""Memory (issue 6): peak RSS for 100,000 vs 5,000,000 items through a 5-stage pipeline.

Each size runs in a fresh subprocess and reports its peak RSS (``VmHWM`` of
``/proc/self/status``: unlike ``ru_maxrss`` it is not inherited across
``fork``/``exec`` from a large parent);
flat memory means the two peaks differ by little.  The figure reported as the
subject/baseline "time" fields is the peak RSS in MB.
"""

from __future__ import annotations

import subprocess
import sys

from ._harness import Result

__all__ = ["run"]

_CHILD = r"""
import sys, anyio
from benchmarks.bench_core import inc
n = int(sys.argv[1])
async def main():
    chain = inc() | inc() | inc() | inc() | inc()
    async with chain.stream(range(n)) as items:
        async for _ in items:
            pass
anyio.run(main)
with open("/proc/self/status") as f:
    print(next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024)
"""


def _peak_mb(n: int) -> float:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(n)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run(quick: bool) -> list[Result]:
    """Peak RSS of the small and the large run, and their difference."""
    small, large = 100_000, (1_000_000 if quick else 5_000_000)
    small_mb, large_mb = _peak_mb(small), _peak_mb(large)
    growth = large_mb - small_mb
    return [
        Result(
            f"peak RSS (MB), 5-stage pipeline, {large:,} vs {small:,} items",
            f"{large:,} items",
            f"{small:,} items",
            large_mb,
            small_mb,
            0.0,
            0.0,
            target="growth < 10 MB",
            met=growth < 10,
            note=f"growth {growth:.1f} MB",
        )
    ]
