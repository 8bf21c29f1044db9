"""Headless Chromium (Debian's ``chromium`` package) driven over the DevTools protocol, for browser-side tests.

``Chromium(tmp_path).run(url, name)`` starts a fresh browser on *url* and
returns the value of the page's global *name* once the page defined it (a
promise is awaited), read through
the page's DevTools WebSocket with the ``websockets`` client.  The browser
runs with a fresh profile and talks to nothing but 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import connect

from tests.conftest import die_with_parent
from tests.helpers.servers import _missing

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
]
START_TIMEOUT = 30.0


def chromium_binary() -> str:
    """The path of ``chromium``; skip (or, in CI, fail) when it is not installed."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        _missing("chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
    return found


class Chromium:
    """One headless browser per :meth:`run`, with its own profile directory under *tmp_path*."""

    def __init__(self, tmp_path: Path) -> None:
        self.binary = chromium_binary()
        self.profile = tmp_path / "chromium-profile"

    def run(self, url: str, name: str, timeout: float = 20.0) -> Any:
        """Open *url*, wait until its script defines the global *name*, return its (awaited) JSON value."""
        expression = (
            f"(async () => {{ while (!({name!r} in window)) await new Promise((r) => setTimeout(r, 20));"
            f" return await window[{name!r}]; }})()"
        )
        self.profile.mkdir(parents=True, exist_ok=True)
        log = open(self.profile.parent / "chromium.log", "wb")
        proc = subprocess.Popen(
            [self.binary, *FLAGS, f"--user-data-dir={self.profile}", url],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        try:
            page = self._page(proc, url)
            with connect(page, max_size=None, open_timeout=timeout) as ws:
                for attempt in range(1, 4):  # a navigation of the fresh tab destroys the first context
                    answer = self._evaluate(ws, attempt, expression, timeout)
                    if "result" in answer:
                        break
            if "result" not in answer:
                raise AssertionError(f"DevTools answered {answer}")
            if "exceptionDetails" in answer["result"]:
                raise AssertionError(f"the page's script failed: {answer['result']['exceptionDetails']}")
            return answer["result"]["result"].get("value")
        finally:
            proc.kill()
            proc.wait(10)
            log.close()

    @staticmethod
    def _evaluate(ws: Any, ident: int, expression: str, timeout: float) -> dict[str, Any]:
        params = {"expression": expression, "awaitPromise": True, "returnByValue": True}
        ws.send(json.dumps({"id": ident, "method": "Runtime.evaluate", "params": params}))
        while True:
            answer: dict[str, Any] = json.loads(ws.recv(timeout=timeout))
            if answer.get("id") == ident:
                return answer

    def _page(self, proc: subprocess.Popen[bytes], url: str) -> str:
        """The DevTools WebSocket URL of the tab showing *url* (a bounded poll while the browser starts)."""
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"chromium exited with code {proc.returncode}")
            if port_file.exists() and port_file.read_text().count("\n") >= 1:
                port = port_file.read_text().split("\n")[0].strip()
                try:
                    targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
                except httpx.HTTPError:
                    targets = []
                for target in targets:
                    if target.get("type") == "page" and target.get("url", "").startswith(url):
                        return str(target["webSocketDebuggerUrl"])
            time.sleep(0.05)  # polling a starting process with a bound: nothing to wait on instead
        raise RuntimeError(f"chromium did not open {url} within {START_TIMEOUT} s")
