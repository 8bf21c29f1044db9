"""The blocking wrapper in a notebook cell, on a real ipykernel driven by nbclient.

A cell runs inside the kernel's asyncio event loop; blocking calls run their
pipeline on the wrapper's own loop thread.  A kernel interrupt (SIGINT) stops
the pipeline, runs its cleanup, and leaves no thread behind.
"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import pytest

SETUP = textwrap.dedent(
    """
    import asyncio, threading, anyio
    from talkpipe_async import segment, source

    @source
    async def numbers(n=5):
        for i in range(n):
            yield i

    @segment
    async def double(items):
        async for x in items:
            yield 2 * x

    closed = []

    @source
    async def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
                await anyio.sleep(0)
        finally:
            closed.append("source closed")

    asyncio.get_running_loop()                    # a cell runs inside the kernel's event loop
    assert (numbers() | double()).run_blocking() == [0, 2, 4, 6, 8]
    with (numbers() | double()).iter_blocking(backend="trio") as items:
        assert next(items) == 0
    assert double().as_function_blocking(single_in=True, single_out=True)(21) == 42

    def pool(t):
        return t.name == "AnyIO worker thread" or t.name.startswith("Trio thread ")

    before = set(threading.enumerate())
    print("setup ok")
    """
)

INTERRUPTED = textwrap.dedent(
    """
    with endless().iter_blocking() as items:
        for x in items:
            if x == 1000:
                open(MARK, "w").close()           # tells the test we are inside the loop body
    """
)

AFTER = textwrap.dedent(
    """
    left = sorted(t.name for t in set(threading.enumerate()) - before if not pool(t))
    print("closed", closed, "new threads", left)
    """
)


def _text(cell: Any) -> str:
    return "".join(out.get("text", "") for out in cell.outputs if out.get("output_type") == "stream")


def test_blocking_calls_and_an_interrupt_in_a_notebook_cell(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    mark = tmp_path / "inside"
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(f"MARK = {str(mark)!r}\n" + SETUP),
        nbformat.v4.new_code_cell(INTERRUPTED),
        nbformat.v4.new_code_cell(AFTER),
    ]
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=30, allow_errors=True, resources={"metadata": {"path": str(tmp_path)}}
    )

    async def drive() -> None:
        async with client.async_setup_kernel():
            await client.async_execute_cell(nb.cells[0], 0)
            running = asyncio.ensure_future(client.async_execute_cell(nb.cells[1], 1))
            for _ in range(3000):  # bounded wait for the file the cell writes from inside its loop
                if mark.exists() or running.done():
                    break
                await asyncio.sleep(0.01)
            assert mark.exists(), nb.cells[1].outputs
            await client.km.interrupt_kernel()
            await asyncio.wait_for(running, 30)
            await client.async_execute_cell(nb.cells[2], 2)

    asyncio.run(asyncio.wait_for(drive(), 50))
    assert _text(nb.cells[0]).strip() == "setup ok", nb.cells[0].outputs
    errors = [out for out in nb.cells[1].outputs if out.get("output_type") == "error"]
    printed = "".join(str(out.get("text", "")) for out in nb.cells[1].outputs)
    if errors or "Unexpected exception formatting exception" not in printed:
        assert [e["ename"] for e in errors] == ["KeyboardInterrupt"], nb.cells[1].outputs
    # else IPython's own traceback formatter failed (stack_data found no source for a frame, seen once under load)
    # and printed its fallback instead of an error output: the interrupt is still checked by the next cell, which
    # sees the stages closed and no thread left.
    assert _text(nb.cells[2]).strip() == "closed ['source closed'] new threads []", nb.cells[2].outputs


PROGRESS_CELL = textwrap.dedent(
    """
    from talkpipe_async import source
    from talkpipe_async.observe import progress

    @source
    async def ticks(n=200):
        for i in range(n):
            yield i

    show = progress()                      # in a notebook: a table in the cell, updated in place
    assert show.backend == "notebook", show.backend
    async with ticks().stream(stats_every=0.01, on_stats=show) as items:   # top-level await
        print(len([x async for x in items]))
    """
)


def test_progress_draws_a_table_in_the_cell(tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(PROGRESS_CELL)]
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=30, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = nb.cells[0].outputs
    tables = [out["data"]["text/html"] for out in outputs if out.get("output_type") == "display_data"]
    assert len(tables) == 1, outputs  # one display, updated in place
    assert "<td>ticks</td>" in tables[0] and "<td>200</td>" in tables[0] and "done" in tables[0], tables
    assert _text(nb.cells[0]).strip() == "200"
