"""The 5-stage chain on every event loop and against the async peers (issue 6).

Subject: five ``@segment`` async generators (``x + 1``) over N ints.
Baselines: the same five hand-written async generators on asyncio, uvloop and
trio (the floor), aiostream's ``pipe.map`` chain, asyncstdlib's ``map`` chain,
and TalkPipe 1.2 for the sync path when it is installed (it is optional: its
install is heavy).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Iterator
from typing import Any

from ._harness import Result, compare, measure_async
from .bench_core import _numbers, chain_hand, chain_subject, sync_plain, sync_subject

__all__ = ["run"]


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _backends() -> list[tuple[str, str, dict[str, Any]]]:
    found = [("asyncio", "asyncio", {})]
    if _has("uvloop"):
        found.append(("uvloop", "asyncio", {"use_uvloop": True}))
    if _has("trio"):
        found.append(("trio", "trio", {}))
    return found


def _peer_baselines(n: int) -> list[tuple[str, Any]]:
    peers: list[tuple[str, Any]] = []
    if _has("aiostream"):
        from aiostream import pipe, stream

        def plus1(x: int) -> int:
            return x + 1

        async def aiostream_chain() -> None:
            xs = stream.iterate(range(n))
            for _ in range(5):
                xs = xs | pipe.map(plus1)
            async with xs.stream() as items:
                async for _ in items:
                    pass

        peers.append(("aiostream pipe.map x5", measure_async(aiostream_chain)))
    if _has("asyncstdlib"):
        import asyncstdlib as a

        async def asyncstdlib_chain() -> None:
            it: Any = _numbers(n)
            for _ in range(5):
                it = a.map(lambda x: x + 1, it)
            async for _ in it:
                pass

        peers.append(("asyncstdlib map x5", measure_async(asyncstdlib_chain)))
    return peers


def run(quick: bool) -> list[Result]:
    """Floor on each loop, then the peers, for the 5-stage chain."""
    n = 100_000 if quick else 1_000_000
    repeat = 3 if quick else 5
    results: list[Result] = []
    for label, backend, options in _backends():
        results += compare(
            f"5-stage chain on {label}",
            ("talkpipe_async", measure_async(chain_subject(n), backend, **options)),
            [(f"hand-written async generators ({label})", measure_async(chain_hand(n), backend, **options))],
            repeat=repeat,
            targets={f"hand-written async generators ({label})": ("<= 1.10", lambda r: r <= 1.10)},
        )
    peers = _peer_baselines(n)
    if peers:
        results += compare(
            "5-stage chain against the async peers (asyncio)",
            ("talkpipe_async", measure_async(chain_subject(n))),
            peers,
            repeat=repeat,
        )
    baselines: list[tuple[str, Any]] = []
    if _has("talkpipe"):
        from talkpipe.pipe.core import segment as tp_segment

        @tp_segment
        def tp_inc(items: Iterable[int]) -> Iterator[int]:
            for x in items:
                yield x + 1

        tp_chain = tp_inc() | tp_inc() | tp_inc() | tp_inc() | tp_inc()

        def talkpipe_run() -> None:
            for _ in tp_chain(range(n)):
                pass

        baselines.append(("TalkPipe 1.2 (sync)", talkpipe_run))
    else:
        print("   TalkPipe not installed: skipping the TalkPipe 1.2 baseline (pip install talkpipe to include it)")

    results += compare(
        "5-stage sync chain, no-loop path",
        ("talkpipe_async iter_sync", sync_subject(n)),
        [("plain generators", sync_plain(n)), *baselines],
        repeat=repeat,
        targets={"plain generators": ("<= 1.15", lambda r: r <= 1.15)},
    )
    return results
