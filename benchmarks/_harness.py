"""Shared benchmark harness: interleaved repetitions, medians, spreads, ratios.

Every scenario measures its subject and its baselines in the same process,
interleaved (subject, baseline, subject, baseline, ...), so that machine
noise hits both alike; the ratio is median(subject) / median(baseline) for
times (lower is better for the subject).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Result", "compare", "measure_async", "timed"]


@dataclass
class Result:
    """One comparison: subject against one baseline."""

    scenario: str
    subject: str
    baseline: str
    subject_s: float
    baseline_s: float
    subject_spread: float
    baseline_spread: float
    target: str = ""
    met: bool | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """subject time / baseline time (below 1: the subject is faster)."""
        return self.subject_s / self.baseline_s if self.baseline_s else float("inf")

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, ratio included."""
        data = asdict(self)
        data["ratio"] = self.ratio
        return data


def timed(func: Callable[[], Any], clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds taken by one call of *func* (wall-clock time unless another *clock* is given)."""
    start = clock()
    func()
    return clock() - start


def _spread(samples: list[float]) -> float:
    return (max(samples) - min(samples)) / statistics.median(samples) if len(samples) > 1 else 0.0


def compare(
    scenario: str,
    subject: tuple[str, Callable[[], Any]],
    baselines: list[tuple[str, Callable[[], Any]]],
    *,
    repeat: int,
    targets: dict[str, tuple[str, Callable[[float], bool]]] | None = None,
    cpu: bool = False,
) -> list[Result]:
    """Time *subject* and each baseline *repeat* times, interleaved.

    ``targets`` maps a baseline name to ``(text, check(ratio) -> bool)``,
    for example ``{"hand-written": ("<= 1.10", lambda r: r <= 1.10)}``.
    ``cpu=True`` times with the process's CPU time (every thread of it): for
    CPU-bound scenarios, so that other work on a shared machine stays out of
    the figures (on a quiet machine it equals the wall-clock time).
    """
    clock = time.process_time if cpu else time.perf_counter
    names = [subject[0]] + [name for name, _ in baselines]
    funcs = [subject[1]] + [func for _, func in baselines]
    for func in funcs:  # warm-up
        func()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeat):
        for name, func in zip(names, funcs, strict=True):
            samples[name].append(timed(func, clock))
    results = []
    subject_s = statistics.median(samples[subject[0]])
    for name in names[1:]:
        result = Result(
            scenario,
            subject[0],
            name,
            subject_s,
            statistics.median(samples[name]),
            _spread(samples[subject[0]]),
            _spread(samples[name]),
        )
        if targets and name in targets:
            text, check = targets[name]
            result.target = text
            result.met = check(result.ratio)
        results.append(result)
    return results


def measure_async(coro_func: Callable[[], Any], backend: str = "asyncio", **options: Any) -> Callable[[], Any]:
    """A sync callable that runs ``coro_func()`` on a fresh event loop of *backend*."""
    import anyio

    def run() -> Any:
        return anyio.run(coro_func, backend=backend, backend_options=options or None)

    return run
