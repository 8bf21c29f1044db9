"""The incremental parsers of the network sources, against reference splitters over every chunking.

``LineFramer`` (TCP, Unix, HTTP lines and NDJSON) and ``SSEParser``: what
they deliver must not depend on how the bytes were cut, over-long lines
included, the memory they hold must stay under the cap, and the work they do
must stay linear in the input (counted, not timed).
"""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from talkpipe_async.sources.sockets import LineFramer, NetStats
from talkpipe_async.sources.sse import SSEParser

CAP = 8


def reference_lines(data: bytes, cap: int) -> tuple[list[bytes], int]:
    """Split on b"\\n", drop (and count) lines over *cap* bytes, strip one trailing \\r; the tail as a last line."""
    *complete, tail = data.split(b"\n")
    kept: list[bytes] = []
    dropped = 0
    for line in [*complete, tail] if tail else complete:
        if len(line) > cap:
            dropped += 1
        else:
            kept.append(line[:-1] if line.endswith(b"\r") else line)
    return kept, dropped


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """*data* cut at *points* (any order, repeats allowed: empty chunks too)."""
    bounds = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(bounds)] + [b""]


#: lines of 0-20 bytes (some over the cap of 8), \r\n or \n, sometimes no final newline
LINES = st.lists(
    st.tuples(st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")), st.booleans()),
    max_size=12,
)


@given(LINES, st.booleans(), st.lists(st.integers(min_value=0, max_value=400), max_size=20))
@settings(max_examples=400, deadline=None)
def test_line_framer_matches_the_reference_for_every_chunking(
    lines: list[tuple[bytes, bool]], final_newline: bool, points: list[int]
) -> None:
    data = b"".join(text + (b"\r\n" if crlf else b"\n") for text, crlf in lines)
    if not final_newline and lines:
        data = data[:-1]  # the last line ends without its newline (a lone \r may remain)
    stats = NetStats()
    framer = LineFramer(CAP, overlong="skip", stats=stats)
    got: list[bytes] = []
    for chunk in cut(data, points):
        got += framer.feed(chunk)
        assert framer.pending <= CAP  # never more than one capped partial line held
    tail = framer.finish()
    if tail is not None:
        got.append(tail)
    expected, dropped = reference_lines(data, CAP)
    assert got == expected
    assert stats.dropped_lines == dropped


@given(st.integers(min_value=1, max_value=5), st.integers(min_value=CAP + 1, max_value=5000))
def test_an_overlong_line_inside_one_chunk_is_capped(before: int, size: int) -> None:
    stats = NetStats()
    framer = LineFramer(CAP, overlong="skip", stats=stats)
    chunk = b"ok\n" * before + b"x" * size + b"\nafter\n" + b"y" * size  # one read holds all of it
    assert framer.feed(chunk) == [b"ok"] * before + [b"after"]
    assert framer.pending == 0 and stats.dropped_lines == 2  # the unfinished over-long tail is not held
    assert framer.feed(b"zz\nend\n") == [b"end"]  # the rest of that line is dropped up to its newline


def sse_text(lines: list[tuple[str, str]]) -> bytes:
    return "".join(f"{field}: {value}\r\n" if field else "\n" for field, value in lines).encode()


SSE_LINES = st.lists(
    st.tuples(st.sampled_from(["data", "id", "event", ""]), st.text(alphabet="ab\u00e9\u2028 ", max_size=6)),
    max_size=15,
)


@given(SSE_LINES, st.lists(st.integers(min_value=0, max_value=400), max_size=20))
@settings(max_examples=300, deadline=None)
def test_sse_parser_does_not_depend_on_the_chunking(lines: list[tuple[str, str]], points: list[int]) -> None:
    data = sse_text(lines)
    whole = SSEParser().feed(data)
    parser = SSEParser()
    pieces = [event for chunk in cut(data, points) for event in parser.feed(chunk)]
    assert pieces == whole
    assert parser.scanned <= 3 * len(data.decode())


def test_sse_parser_work_is_linear_in_a_long_line_fed_in_small_chunks() -> None:
    line = ("data: " + "x" * ((1 << 20) - 100) + "\n\n").encode()
    for size in (128, 65536):
        parser = SSEParser()
        events = []
        for i in range(0, len(line), size):
            events += parser.feed(line[i : i + size])
        assert len(events) == 1 and len(events[0].data) == (1 << 20) - 100
        # every character is searched once, and joined and split once when its line ends: no re-scanning per chunk
        assert parser.scanned <= 3 * len(line), (size, parser.scanned)


def test_sse_retry_is_milliseconds_exactly() -> None:
    parser = SSEParser()
    parser.feed(b"retry: 1500\n\nretry: 2.5\nretry: -1\nretry: 12a\n\n")
    assert parser.retry == 1500  # digits only: the others are ignored
