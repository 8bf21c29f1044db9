"""Metadata items (``talkpipe_async._core._metadata``): recognition, equality and repr, pinned down.

The mutation run showed that no test asked ``is_metadata`` about a plain Metadata item or about TalkPipe's own
metadata class once it is registered, and that the repr (seen in error notes and test failures) was unchecked.
"""

from __future__ import annotations

import pytest

from talkpipe_async import Flush, Metadata, create_metadata, is_metadata
from talkpipe_async._core import _metadata


def test_is_metadata_knows_ours_and_nothing_else() -> None:
    assert is_metadata(Metadata()) and is_metadata(Flush()) and is_metadata(create_metadata(kind="x"))
    for item in (None, 0, "flush", {"kind": "x"}, Metadata):
        assert not is_metadata(item)


def test_is_metadata_knows_a_registered_foreign_class_and_still_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    class ForeignMetadata:  # stands for TalkPipe's Metadata class, registered once TalkPipe is in use
        pass

    monkeypatch.setattr(_metadata, "foreign_metadata", (ForeignMetadata,))
    assert is_metadata(ForeignMetadata()) and is_metadata(Flush())
    for item in (None, 0, "flush", {"kind": "x"}):
        assert not is_metadata(item)


def test_equality_is_by_type_and_fields() -> None:
    assert Metadata(a=1) == Metadata(a=1)
    assert Metadata(a=1) != Metadata(a=2)
    assert Metadata(a=1) != Flush(a=1)  # a Flush is not a plain marker with the same fields
    assert Metadata(a=1) != {"a": 1}
    with pytest.raises(TypeError):
        hash(Metadata())


def test_repr_shows_the_class_and_the_fields() -> None:
    assert repr(Metadata(action="flush", n=1)) == "Metadata(action='flush', n=1)"
    assert repr(Flush()) == "Flush()"
    assert getattr(create_metadata(kind="x"), "kind") == "x"  # noqa: B009
