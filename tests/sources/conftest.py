"""Fixtures shared by the source tests."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from talkpipe_async.sources import tail_file
from talkpipe_async.sources._tail_chain import _Tailer


@pytest.fixture
def make_tailer() -> Iterator[Any]:
    """Build hand-driven tailers (closed at the end): ``make_tailer(path, **tail_file options)``.

    A hand-driven tailer is the tail's reading side (``_Tailer.poll``) run in the test's thread, without the scout
    thread: the test decides when each poll happens.  Defaults: no rotation grace, read from the beginning.
    """
    made: list[_Tailer] = []

    def make(path: Path, **options: Any) -> _Tailer:
        options.setdefault("rotate_grace", 0)
        options.setdefault("start", "beginning")
        tailer = _Tailer(tail_file(path, **options))
        made.append(tailer)
        return tailer

    yield make
    for t in made:
        t.close()


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context) for ``localhost``, from a throwaway CA the client alone trusts."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client
