"""Run the benchmark suite: ``python -m benchmarks [--quick] [--only NAME] [--out DIR] [--docs] [--no-pythons]``.

Each ``benchmarks/bench_*.py`` module exposes ``run(quick) -> list[Result]``.
The suite writes ``results.json``, ``results.md`` (a table) and ``ratios.png``
(a chart) into ``--out``; with ``--docs`` it also rewrites the results section
of ``docs/benchmarks.md`` and copies the chart to ``docs/benchmarks.png``.
A scenario that fails is reported (with its error) and does not stop the others.
When ``bench_core`` runs, it also runs on every other Python found (see
``benchmarks/_pythons.py``), and the page gets a table with a column per Python.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from ._harness import Result

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs" / "benchmarks.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def _modules(only: str | None) -> list[str]:
    names = sorted(m.name for m in pkgutil.iter_modules([str(HERE)]) if m.name.startswith("bench_"))
    return [n for n in names if only is None or only in n]


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {system}"


def _load() -> tuple[float, float]:
    """The load average over the last minute and the last 15 (other work on the machine skews the figures)."""
    one, _, fifteen = os.getloadavg()
    return one, fifteen


def _cell(text: str) -> str:
    """Text for a markdown table cell: a ``|`` would end the cell."""
    return text.replace("|", "\\|")


def _table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| scenario | subject | baseline | subject s | baseline s | ratio | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        met = {True: "yes", False: "**no**", None: "-"}[r["met"]]
        cells = [_cell(r["scenario"]), _cell(r["subject"]), _cell(r["baseline"])]
        note = f" ({_cell(r['note'])})" if r.get("note") else ""
        rows.append(
            f"| {cells[0]}{note} | {cells[1]} | {cells[2]} | {r['subject_s']:.4f} | {r['baseline_s']:.4f} "
            f"| {r['ratio']:.3f} | {r['target'] or '-'} | {met} |"
        )
    return "\n".join(rows)


def _python_table(by_python: dict[str, list[dict[str, Any]]]) -> str:
    """One row per core comparison, one ratio column per Python (``**x**``: target missed)."""
    versions = sorted(by_python, key=lambda v: tuple(int(p) for p in v.split(".")))
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for version in versions:
        for r in by_python[version]:
            row = rows.setdefault((r["scenario"], r["baseline"]), {"target": r["target"]})
            ratio = f"{r['ratio']:.3f}"
            row[version] = f"**{ratio}**" if r["met"] is False else ratio
    head = "| scenario | baseline | " + " | ".join(f"Python {v}" for v in versions) + " | target |"
    lines = [head, "|---|---|" + "---|" * len(versions) + "---|"]
    for (scenario, baseline), row in rows.items():
        cells = " | ".join(row.get(v, "-") for v in versions)
        lines.append(f"| {_cell(scenario)} | {_cell(baseline)} | {cells} | {row['target'] or '-'} |")
    return "\n".join(lines)


def _chart(results: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no chart", file=sys.stderr)
        return False
    labels = [f"{r['scenario'][:48]}\nvs {r['baseline'][:40]}" for r in results]
    ratios = [r["ratio"] for r in results]
    colors = ["tab:green" if r["met"] else "tab:red" if r["met"] is False else "tab:gray" for r in results]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(results) + 1.5))
    ax.barh(range(len(results)), ratios, color=colors)
    ax.set_yticks(range(len(results)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("time ratio subject / baseline (log; < 1: subject faster); green: target met, red: missed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _write_docs(table: str, header: str, pythons: str = "") -> None:
    text = DOCS.read_text() if DOCS.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    per_python = f"\n\n### The core scenarios on every Python (ratios)\n\n{pythons}" if pythons else ""
    body = f"{header}\n\n{table}{per_python}\n\n![ratios](benchmarks.png)"
    DOCS.write_text(f"{head}{BEGIN}\n{body}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmark modules; exit 1 if a module failed to run."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions (about 2 minutes)")
    parser.add_argument("--only", help="run only modules whose name contains this text")
    parser.add_argument("--out", default="benchmark-results", help="output directory")
    parser.add_argument("--docs", action="store_true", help="write the results into docs/benchmarks.md")
    parser.add_argument(
        "--no-pythons", action="store_true", help="run the core scenarios on this Python only"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    failures: list[str] = []
    started = time.perf_counter()
    load_before = _load()
    for name in _modules(args.only):
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            found: list[Result] = module.run(args.quick)
        except Exception:  # reported, the suite goes on
            failures.append(name)
            print(traceback.format_exc(), file=sys.stderr)
            continue
        for r in found:
            d = r.as_dict()
            d["module"] = name
            results.append(d)
            print(f"   {r.scenario}: ratio {r.ratio:.3f} vs {r.baseline} (target {r.target or '-'}, met {r.met})")
        print(f"   ({time.perf_counter() - t0:.1f} s)")
    pythons = ""
    core = [r for r in results if r["module"] == "bench_core"]
    if core and not args.no_pythons:
        from ._pythons import core_on_other_pythons

        by_python = {platform.python_version(): core, **core_on_other_pythons(args.quick)}
        pythons = _python_table(by_python)
        (out / "pythons.json").write_text(json.dumps(by_python, indent=1))
    mode = "quick" if args.quick else "full"
    start_load, end_load = ("{:.1f} / {:.1f}".format(*x) for x in (load_before, _load()))
    header = (f"Mode: {mode}. Machine: {_machine()}. Run on {time.strftime('%Y-%m-%d')}, "
              f"{(time.perf_counter() - started) / 60:.0f} min; load average (1 min / 15 min) at the start "
              f"{start_load}, at the end {end_load}.")
    summary = {"machine": _machine(), "python": platform.python_version(), "mode": mode, "results": results}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    table = _table(results)
    (out / "results.md").write_text(f"{header}\n\n{table}\n" + (f"\n{pythons}\n" if pythons else ""))
    charted = _chart(results, out / "ratios.png") if results else False
    if args.docs:
        _write_docs(table, header, pythons)
        if charted:
            shutil.copy(out / "ratios.png", DOCS.parent / "benchmarks.png")
    print(f"wrote {out}/results.json, results.md{', ratios.png' if charted else ''} "
          f"in {time.perf_counter() - started:.0f} s")
    if failures:
        print(f"failed modules: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
