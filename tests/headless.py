"""Headless Chromium driven over the DevTools protocol (`--remote-debugging-pipe`: JSON messages on file
descriptors 3 and 4, no websocket library needed). One browser serves many pages; every request a page
makes is recorded from the protocol's Network events, so a test can assert a page works offline.
"""

from __future__ import annotations

import base64
import fcntl
import itertools
import json
import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class LoadedPage:
    dom: str
    requests: list[str] = field(default_factory=list)  # every URL the page asked for, in order


class Browser:
    """`with Browser(profile_dir) as browser: page = browser.load(path, screenshot=...)`."""

    def __init__(self, profile: Path, timeout_s: float = 120):
        self.profile, self.timeout_s = profile, timeout_s
        self._ids = itertools.count(1)
        self._buffer = b""
        self._events: list[dict] = []

    def __enter__(self) -> Browser:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def wire_fds() -> None:  # in the child, before exec: the protocol lives on fds 3 (in) and 4 (out)
            commands, replies = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child_r, from_child_w))
            os.dup2(commands, 3)
            os.dup2(replies, 4)

        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update", "--disable-extensions",
                 "--allow-file-access-from-files", f"--user-data-dir={self.profile}", "--remote-debugging-pipe"]
        self.process = subprocess.Popen([chromium(), *flags, "about:blank"], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        preexec_fn=wire_fds, pass_fds=(3, 4))
        os.close(to_child_r)
        os.close(from_child_w)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._send("Browser.close")
        except Exception:
            pass
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_child)
        os.close(self._from_child)

    def _send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        message_id = next(self._ids)
        message = {"id": message_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        reply = self._wait(lambda m: m.get("id") == message_id)
        if "error" in reply:
            raise AssertionError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def _wait(self, matches) -> dict:
        deadline = time.monotonic() + self.timeout_s
        while True:
            for i, message in enumerate(self._events):
                if matches(message):
                    return self._events.pop(i)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("Chromium did not answer in time")
            ready, _, _ = select.select([self._from_child], [], [], remaining)
            if ready:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    raise AssertionError("Chromium exited")
                self._buffer += chunk
                *messages, self._buffer = self._buffer.split(b"\0")
                self._events += [json.loads(m) for m in messages if m]

    def load(self, page: Path, screenshot: Path | None = None, size: tuple[int, int] = (1280, 1600)) -> LoadedPage:
        """Open a file in a new tab; return its DOM after its load handlers ran and every URL it requested."""
        target = self._send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self._send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for method in ("Network.enable", "Page.enable"):
            self._send(method, session=session)
        self._send("Emulation.setDeviceMetricsOverride",
                   {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": False}, session)
        self._send("Page.navigate", {"url": page.resolve().as_uri()}, session)
        self._wait(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == session)
        ready = ("new Promise(done => { const check = () => document.body.hasAttribute('data-images') ? "
                 "done(document.documentElement.outerHTML) : setTimeout(check, 50); check(); })")
        dom = self._send("Runtime.evaluate", {"expression": ready, "awaitPromise": True, "returnByValue": True},
                         session)["result"]["value"]
        if screenshot:
            shot = self._send("Page.captureScreenshot", {"format": "png"}, session)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        requests = [m["params"]["request"]["url"] for m in self._events
                    if m.get("method") == "Network.requestWillBeSent" and m.get("sessionId") == session]
        self._events = [m for m in self._events if m.get("sessionId") != session]
        self._send("Target.closeTarget", {"targetId": target})
        return LoadedPage(dom, requests)
