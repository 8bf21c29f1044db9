"""The suite's own servers (redis-server, nats-server) do not outlive a test session that pytest-timeout ends.

pytest-timeout's thread method ends the session with ``os._exit``: no fixture teardown runs.  A server started by
a fixture must still go, or every timed-out run leaves one running (and a CI machine fills up with them).  Here a
small session in a child process starts a server through the suite's fixture, hangs, and is ended by the timeout;
the server's port must then stop answering.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.wait import wait_until_sync

pytestmark = pytest.mark.parametrize("fixture", ["redis_url", "nats_url"])

ROOT = Path(__file__).resolve().parents[2]

HANGING = '''
import time

def test_hangs({fixture}):
    with open({out!r}, "w") as f:
        f.write({fixture})
    time.sleep(60)  # the hang pytest-timeout ends
'''


def answers(port: int) -> bool:
    """Something accepts connections on 127.0.0.1:*port*."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_a_timed_out_session_leaves_no_server(fixture: str, tmp_path: Path) -> None:
    from tests.helpers import servers

    if fixture == "redis_url" and servers.redis_binary() is None:
        pytest.skip("redis-server is not installed")
    if fixture == "nats_url" and servers.nats_binary() is None:
        pytest.skip("nats-server is not installed")
    out = tmp_path / "url"
    test_file = tmp_path / "test_hangs.py"
    test_file.write_text(HANGING.format(fixture=fixture, out=str(out)))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.helpers.brokers", "-p", "no:randomly",
         "-p", "no:cacheprovider", "--timeout", "3", "-o", "timeout_method=thread", "--rootdir", str(tmp_path),
         str(test_file)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert "Timeout" in done.stdout + done.stderr, done.stdout[-2000:] + done.stderr[-2000:]
    port = int(out.read_text().rsplit(":", 1)[1].split("/")[0])
    wait_until_sync(lambda: not answers(port), time.monotonic() + 10, f"the server on port {port} to go", interval=0.05)
