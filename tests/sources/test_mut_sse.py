"""The SSE parser's edges that the conformance tests leave open: exact caps, the kept id, BOM and line-end state.

Each test pins one behaviour of :class:`SSEParser` exactly: the inclusive character caps on every path a line
can take, the data cap counting one character per line end, the id handed over from a previous parser, a BOM
only at the very start of the stream, and the ``scanned`` count the linear-cost promise is measured by.
"""

from __future__ import annotations

import pytest

from talkpipe_async.sources.sse import SSEError, SSEEvent, SSEParser


def test_event_json_decodes_the_data() -> None:
    """``SSEEvent.json()`` decodes the event's own data."""
    assert SSEEvent(data='{"n": [1, 2]}').json() == {"n": [1, 2]}


def test_a_previous_last_event_id_is_kept_until_the_stream_sets_one() -> None:
    """The id handed to a new parser (from the previous connection) is its state and the id of its events."""
    parser = SSEParser("7")
    assert parser.last_event_id == "7"
    assert parser.retry is None and parser.scanned == 0 and not parser.partial
    assert parser.feed(b"data: a\n\n") == [SSEEvent(data="a", id="7")]
    assert parser.feed(b"id: 8\ndata: b\n\n") == [SSEEvent(data="b", id="8")]


def test_an_unfinished_line_of_exactly_the_cap_is_held() -> None:
    """A line held across chunks may reach ``max_line_chars``; one more character raises."""
    parser = SSEParser(max_line_chars=10)
    parser.feed(b"data: 1234")  # no line end: the whole chunk is held
    assert parser.partial
    assert parser.feed(b"\n\n") == [SSEEvent(data="1234")]
    parser.feed(b"data: ")
    with pytest.raises(SSEError, match=r"^event-stream line longer than 10 characters$"):
        parser.feed(b"12345")


def test_the_tail_after_the_last_line_end_counts_toward_the_cap() -> None:
    """The unfinished tail of a chunk that also ends lines is held under the same inclusive cap."""
    parser = SSEParser(max_line_chars=10)
    assert parser.feed(b"data: a\n\ndata: 1234") == [SSEEvent(data="a")]  # a 10-character tail is held
    assert parser.feed(b"\n\n") == [SSEEvent(data="1234")]
    parser = SSEParser(max_line_chars=10)
    parser.feed(b"data: a\n\ndata:")  # a 5-character tail, then 6 more characters without a line end
    with pytest.raises(SSEError, match="line longer than 10"):
        parser.feed(b" 12345")
    parser = SSEParser(max_line_chars=10)
    with pytest.raises(SSEError, match="line longer than 10"):
        parser.feed(b"data: a\n\ndata: 12345")  # an 11-character tail


def test_the_count_starts_again_after_held_pieces_are_joined() -> None:
    """Once held pieces are joined into finished lines, the next unfinished line has the whole cap again."""
    parser = SSEParser(max_line_chars=10)
    parser.feed(b"da")
    assert parser.feed(b"ta: a\n\ndata: 1234") == [SSEEvent(data="a")]  # joined, then a 10-character tail
    assert parser.feed(b"\n\n") == [SSEEvent(data="1234")]
    parser.feed(b"da")
    parser.feed(b"ta: b\n\n")
    assert parser.feed(b"data: 5678") == []  # 10 characters held after a join
    assert parser.feed(b"\n\n") == [SSEEvent(data="5678")]


def test_a_finished_line_of_exactly_the_cap_is_parsed() -> None:
    """A complete line inside one chunk may have ``max_line_chars`` characters; one more raises."""
    parser = SSEParser(max_line_chars=10)
    assert parser.feed(b"data: 1234\n\n") == [SSEEvent(data="1234")]
    with pytest.raises(SSEError, match=r"^event-stream line longer than 10 characters$"):
        parser.feed(b"data: 12345\n\n")


def test_event_data_is_capped_counting_one_character_per_data_line() -> None:
    """An event's data may reach ``max_line_chars`` (each data line counts its value and one line end); the count
    starts again with each event, and one character more raises."""
    parser = SSEParser(max_line_chars=10)
    two_lines = b"data:abcd\ndata:efgh\n\n"  # 4 + 1 + 4 + 1 = 10
    assert parser.feed(two_lines) == [SSEEvent(data="abcd\nefgh")]
    assert parser.feed(two_lines) == [SSEEvent(data="abcd\nefgh")]
    with pytest.raises(SSEError, match=r"^event data longer than 10 characters$"):
        parser.feed(b"data:abcd\ndata:efgh\ndata:\n")  # an empty third line still adds its line end


def test_a_bom_is_stripped_only_at_the_start_of_the_stream() -> None:
    """A BOM at the start of a later chunk is data, not a stream start."""
    parser = SSEParser()
    assert parser.feed(b"data: a") == []
    assert parser.feed(b"\xef\xbb\xbfb\n\n") == [SSEEvent(data="a\ufeffb")]


def test_scanned_counts_each_character_searched_split_or_joined() -> None:
    """``scanned``: each chunk's characters once when searched, the head of complete lines once when split, and
    the joined line once more when held pieces are joined; a leading blank line counts like any other."""
    parser = SSEParser()
    parser.feed(b"\ndata: a\n\n")
    assert parser.scanned == 10 + 10
    parser = SSEParser()
    parser.feed(b"data")  # held: 4
    parser.feed(b": a\n\nda")  # searched 7, joined "data: a\n\n" 9, split 9; "da" held
    assert parser.scanned == 4 + 7 + 9 + 9
    parser.feed(b"ta: b\n\n")  # searched 7, joined 9, split 9
    assert parser.scanned == 29 + 7 + 9 + 9
