"""write_lines / write_jsonl on real files: append, rotation safety, flush policies, pass-through."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from talkpipe_async import Flush, Metadata
from talkpipe_async.sinks import SinkStats, write_jsonl, write_lines
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.anyio


def open_fds() -> int:
    """How many file descriptors this process holds."""
    return len(os.listdir("/proc/self/fd"))


class Feed:
    """An upstream the test controls item by item."""

    def __init__(self) -> None:
        self.send, self.recv = anyio.create_memory_object_stream[Any](100)

    async def items(self) -> AsyncIterator[Any]:
        async with self.recv:
            async for item in self.recv:
                if isinstance(item, BaseException):
                    raise item
                yield item


async def next_item(items: AsyncIterator[Any]) -> Any:
    with anyio.fail_after(4):
        return await items.__anext__()


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.exists() else ""


async def test_write_lines_appends_and_passes_items_on(tmp_path: Path) -> None:
    fds = open_fds()
    p = tmp_path / "out.log"
    stats = SinkStats()
    sink = write_lines(p, stats=stats)
    assert await sink.collect(["a", "b", 3]) == ["a", "b", 3]
    assert await sink.collect(["c"]) == ["c"]
    assert read(p) == "a\nb\n3\nc\n"
    assert stats.items == 4 and stats.bytes == 8
    assert open_fds() <= fds, "file descriptors leaked"


async def test_write_jsonl_with_field(tmp_path: Path) -> None:
    p = tmp_path / "out.jsonl"
    items = [{"rec": {"x": 1, "s": "é"}}, {"rec": [1, 2]}]
    assert await write_jsonl(p, field="rec").collect(items) == items
    assert [json.loads(x) for x in read(p).splitlines()] == [{"x": 1, "s": "é"}, [1, 2]]
    assert '"é"' in read(p)


async def test_write_jsonl_unserialisable_names_stage_and_item(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"out: cannot write item .*object"):
        await write_jsonl(tmp_path / "x.jsonl", name="out").collect([{"a": object()}])


async def test_rotation_rename_and_delete_reopen(tmp_path: Path) -> None:
    p = tmp_path / "out.log"
    stats = SinkStats()
    feed = Feed()
    async with write_lines(p, flush_every=1, stats=stats).stream(feed.items()) as items:
        await feed.send.send("1")
        assert await next_item(items) == "1"
        os.rename(p, tmp_path / "out.log.1")
        await feed.send.send("2")
        assert await next_item(items) == "2"
        assert read(p) == "2\n"
        p.unlink()
        await feed.send.send("3")
        assert await next_item(items) == "3"
        assert read(p) == "3\n"
        feed.send.close()
    assert read(tmp_path / "out.log.1") == "1\n"
    assert stats.reopens == 2


async def test_flush_every_n_items(tmp_path: Path) -> None:
    p = tmp_path / "out.log"
    feed = Feed()
    async with write_lines(p, flush_every=2, flush_interval=None).stream(feed.items()) as items:
        for x in "abcd":
            await feed.send.send(x)
        assert await next_item(items) == "a"
        assert await next_item(items) == "b"
        await wait_until(lambda: "b\n" in read(p))
        feed.send.close()
        assert [x async for x in items] == ["c", "d"]
    assert read(p) == "a\nb\nc\nd\n"


async def test_flush_interval_while_no_items_arrive(tmp_path: Path) -> None:
    p = tmp_path / "out.log"
    feed = Feed()
    stats = SinkStats()
    async with write_lines(p, flush_interval=0.02, stats=stats).stream(feed.items()) as items:
        await feed.send.send("x")
        assert await next_item(items) == "x"
        await wait_until(lambda: read(p) == "x\n")  # flushed by the timer, upstream idle
        assert stats.flushes == 1
        feed.send.close()


async def test_flush_metadata_flushes_then_passes_on_in_order(tmp_path: Path) -> None:
    p = tmp_path / "out.log"
    feed = Feed()
    async with write_lines(p, flush_interval=None).stream(feed.items(), metadata=True) as items:
        await feed.send.send("x")
        await feed.send.send(Flush())
        await feed.send.send(Metadata(kind="other"))
        assert await next_item(items) == "x"
        assert isinstance(await next_item(items), Flush)
        assert read(p) == "x\n"
        assert await next_item(items) == Metadata(kind="other")
        feed.send.close()


async def test_emit_flushed_passes_items_only_once_on_disk(tmp_path: Path) -> None:
    p = tmp_path / "out.log"
    feed = Feed()
    sink = write_lines(p, flush_every=3, flush_interval=None, emit="flushed", fsync=True)
    async with sink.stream(feed.items()) as items:
        for x in "abcde":
            await feed.send.send(x)
        for x in "abc":
            assert await next_item(items) == x
            assert x + "\n" in read(p)
        feed.send.close()
        rest = [x async for x in items]
    assert rest == ["d", "e"]  # released by the final flush
    assert read(p) == "a\nb\nc\nd\ne\n"
    assert sink.stats.fsyncs >= 1


async def test_upstream_error_propagates_and_written_lines_are_kept(tmp_path: Path) -> None:
    fds = open_fds()
    p = tmp_path / "out.log"
    feed = Feed()
    with pytest.raises(RuntimeError, match="upstream broke"):
        async with write_lines(p, flush_interval=None).stream(feed.items()) as items:
            await feed.send.send("a")
            assert await next_item(items) == "a"
            await feed.send.send(RuntimeError("upstream broke"))
            await next_item(items)
    assert read(p) == "a\n"
    assert open_fds() <= fds, "file descriptors leaked"


async def test_early_exit_closes_and_flushes(tmp_path: Path) -> None:
    fds = open_fds()
    p = tmp_path / "out.log"
    async with write_lines(p, flush_interval=None).stream([str(i) for i in range(1000)]) as items:
        async for x in items:
            if x == "5":
                break
    lines = read(p).splitlines()
    assert lines[:6] == ["0", "1", "2", "3", "4", "5"]  # read-ahead may have written more
    assert open_fds() <= fds, "file descriptors leaked"


def test_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="flushed"):
        write_lines(tmp_path / "x", flush_interval=None, emit="flushed")
    with pytest.raises(ValueError, match="emit"):
        write_lines(tmp_path / "x", emit="never")  # type: ignore[arg-type]


async def test_write_jsonl_escapes_the_line_separators(tmp_path: Path) -> None:
    records = [{"text": "a\u2028b"}, {"text": "c\u2029d", "é": "ü"}]
    path = tmp_path / "out.jsonl"
    await write_jsonl(path).collect(records)
    text = path.read_text(encoding="utf-8")
    assert [json.loads(line) for line in text.splitlines()] == records  # str.splitlines splits on U+2028 too
    assert "\u2028" not in text and "\u2029" not in text and "ü" in text  # the rest stays UTF-8
