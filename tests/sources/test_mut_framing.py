"""The line framer of the network sources (``talkpipe_async._net.framing``), attacked at its edges.

Written from a mutation run over the module: the exact length bound (a line of exactly ``max_line_bytes`` is
kept, one byte more is over), the exact byte counts of what is dropped, the error text naming the stream and the
size seen, the one warning, ``strip_cr`` off, the text encodings, and the state ``finish`` and ``drop_partial``
leave behind (a framer is reused across the reconnects of one source).
"""

from __future__ import annotations

import logging

import pytest

from talkpipe_async._net.framing import DEFAULT_MAX_LINE, LineFramer, LineTooLong, NetStats


def test_the_bound_is_validated_with_a_clear_message() -> None:
    """``max_line_bytes`` may be 1 but not 0; ``overlong`` is one of two words, named in the error."""
    with pytest.raises(ValueError, match=r"^max_line_bytes must be at least 1$"):
        LineFramer(0)
    assert LineFramer(1).feed(b"a\n") == [b"a"]
    with pytest.raises(ValueError, match=r"^overlong must be 'raise' or 'skip', not 'drop'$"):
        LineFramer(4, overlong="drop")  # type: ignore[arg-type]


def test_defaults() -> None:
    """A new framer: a 1 MiB cap, raising on an over-long line, stripping ``\\r``, labelled "stream", own stats."""
    framer = LineFramer()
    assert framer.max_line_bytes == DEFAULT_MAX_LINE == 1 << 20
    assert framer.overlong == "raise" and framer.strip_cr is True and framer.label == "stream"
    assert framer.pending == 0
    assert framer.stats == NetStats() and framer.stats is not LineFramer().stats
    assert framer.feed(b"first\r\n") == [b"first"]  # the first line is delivered: nothing is being discarded
    stats = NetStats()
    assert LineFramer(stats=stats).stats is stats


def test_a_line_of_exactly_the_cap_is_kept_wherever_it_ends() -> None:
    """The cap is inclusive on each path: a held partial, the tail after the last newline, a line in a block."""
    framer = LineFramer(4, overlong="skip")
    assert framer.feed(b"abcd") == [] and framer.pending == 4  # held, no newline yet
    assert framer.feed(b"\n") == [b"abcd"]
    assert framer.feed(b"x\nwxyz") == [b"x"] and framer.pending == 4  # the tail after the last newline
    assert framer.feed(b"\nabcd\nef\n") == [b"wxyz", b"abcd", b"ef"]  # a block longer than the cap, no line over
    assert framer.stats.dropped_lines == 0 and framer.stats.dropped_bytes == 0


def test_the_error_names_the_stream_the_cap_and_the_size_seen() -> None:
    """``LineTooLong`` says which stream, the cap and how many bytes were seen, on each of the three paths."""
    held = LineFramer(4, label="tcp 127.0.0.1:9")
    assert held.feed(b"12") == []
    with pytest.raises(LineTooLong, match=r"^tcp 127\.0\.0\.1:9: line longer than 4 bytes \(at least 5\)$"):
        held.feed(b"345")  # the held part counts
    with pytest.raises(LineTooLong, match=r"^stream: line longer than 4 bytes \(at least 6\)$"):
        LineFramer(4).feed(b"ok\n123456")  # the tail after the last newline
    with pytest.raises(LineTooLong, match=r"^stream: line longer than 4 bytes \(at least 7\)$"):
        LineFramer(4).feed(b"ok\n1234567\n")  # a line inside the block
    raised = LineFramer(4)
    with pytest.raises(LineTooLong):
        raised.feed(b"123456789")
    assert raised.stats.dropped_lines == 0  # policy "raise" counts nothing: the caller sees the error


def test_skipped_bytes_are_counted_exactly() -> None:
    """Every byte of a dropped line is counted once, its newline included, on each path and across chunks."""
    stats = NetStats()
    framer = LineFramer(4, overlong="skip", stats=stats)
    assert framer.feed(b"12") == [] and framer.feed(b"345") == []  # a held line goes over: 5 bytes
    assert framer.pending == 0 and stats.dropped_bytes == 5
    assert framer.feed(b"678") == [] and stats.dropped_bytes == 8  # still inside it
    assert framer.feed(b"9\nok\n") == [b"ok"] and stats.dropped_bytes == 10  # "9\n"
    assert framer.feed(b"a\n123456") == [b"a"] and framer.pending == 0 and stats.dropped_bytes == 16  # the tail
    assert framer.feed(b"\nb\n") == [b"b"] and stats.dropped_bytes == 17  # its newline
    assert framer.feed(b"c\n1234567\nd\n") == [b"c", b"d"] and stats.dropped_bytes == 25  # a line in the block
    assert framer.feed(b"12345678\n") == [] and stats.dropped_bytes == 34  # nothing left: no empty line
    assert stats.dropped_lines == 4


def test_a_newline_at_the_start_of_a_chunk_ends_the_dropped_line() -> None:
    """While dropping an over-long line, a chunk that starts with the newline ends it, and what follows is kept."""
    framer = LineFramer(4, overlong="skip")
    assert framer.feed(b"123456") == []
    assert framer.feed(b"\nnext\nand\n") == [b"next", b"and"]
    assert framer.stats.dropped_bytes == 7


def test_the_first_drop_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """One warning on the ``talkpipe_async.net`` logger at the first dropped line, naming stream and cap; then none."""
    framer = LineFramer(4, overlong="skip", label="udp :9")
    with caplog.at_level(logging.WARNING, logger="talkpipe_async.net"):
        assert framer.feed(b"123456\n") == []
        records = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
        assert records == [
            ("talkpipe_async.net", logging.WARNING, "udp :9: dropping lines longer than 4 bytes (counted in stats)")
        ]
        assert framer.feed(b"123456\n7890123\n") == []
    assert len(caplog.records) == 1
    assert framer.stats.dropped_lines == 3


def test_strip_cr_off_keeps_every_carriage_return() -> None:
    """With ``strip_cr=False`` the ``\\r`` before a newline, and at the end of the stream, stays in the line."""
    framer = LineFramer(10, strip_cr=False)
    assert framer.feed(b"a\r\nb\n") == [b"a\r", b"b"]
    assert framer.feed_text(b"c\r\nd\n") == ["c\r", "d"]
    assert framer.feed(b"e\r") == [] and framer.finish() == b"e\r"


def test_feed_text_strips_the_carriage_return_and_decodes_in_the_given_encoding() -> None:
    """``feed_text`` strips one ``\\r`` per line like ``feed``, decodes UTF-8 by default, or the encoding given."""
    framer = LineFramer(10)
    assert framer.feed_text(b"a\r\nb\r\r\nc\n") == ["a", "b\r", "c"]
    assert framer.feed_text(b"caf\xc3\xa9\n") == ["caf\u00e9"]
    assert framer.feed_text(b"caf\xe9\n", "latin-1") == ["caf\u00e9"]
    assert framer.feed_text(b"caf\xe9\n", encoding="latin-1", errors="strict") == ["caf\u00e9"]
    assert framer.feed_text(b"x\xffy\n", errors="ignore") == ["xy"]
    assert framer.feed_text(b"no newline") == [] and framer.pending == 10
    assert framer.feed_text(b"\n\xff\n") == ["no newline", "\ufffd"]  # undecodable bytes are replaced by default


def test_feed_strips_only_a_trailing_carriage_return() -> None:
    """Only a ``\r`` that ends a line goes; spaces and tabs are kept, also when a long block is checked line by line."""
    framer = LineFramer(4)
    assert framer.feed(b"a\r\nbc\n") == [b"a", b"bc"]
    assert framer.feed(b"a b\n\tc\r\n") == [b"a b", b"\tc"]  # the block is over the cap, no line is


def test_finish_returns_the_last_line_once_and_leaves_the_framer_clean() -> None:
    """``finish``: None when nothing is held, the unterminated line once (less a final ``\\r``), then a clean framer."""
    framer = LineFramer(4, overlong="skip")
    assert framer.finish() is None
    assert framer.feed(b"ab") == [] and framer.finish() == b"ab"
    assert framer.pending == 0 and framer.finish() is None
    assert framer.feed(b"abc\r") == [] and framer.finish() == b"abc"  # its \r goes, like a line's
    assert framer.feed(b"123456") == []  # dropping an over-long line when the stream ends
    assert framer.finish() is None
    assert framer.feed(b"next\n") == [b"next"]  # the next stream starts clean: its first line is kept


def test_drop_partial_counts_the_held_line_and_leaves_the_framer_clean() -> None:
    """``drop_partial`` counts each held line and its bytes, nothing when none is held, and resets dropping."""
    stats = NetStats()
    framer = LineFramer(4, overlong="skip", stats=stats)
    framer.drop_partial()
    assert stats.partial_dropped == 0 and stats.dropped_bytes == 0
    assert framer.feed(b"abc") == []
    framer.drop_partial()
    assert framer.pending == 0 and stats.partial_dropped == 1 and stats.dropped_bytes == 3
    assert framer.feed(b"de") == []
    framer.drop_partial()
    assert stats.partial_dropped == 2 and stats.dropped_bytes == 5
    assert framer.feed(b"123456") == [] and stats.dropped_bytes == 11
    framer.drop_partial()  # the stream broke inside an over-long line
    assert stats.partial_dropped == 2 and stats.dropped_bytes == 11
    assert framer.feed(b"next\n") == [b"next"]
