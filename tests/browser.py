"""Headless Chromium for the tests that look at a page as a person would.

Debian's ``chromium`` (``.ci/run`` installs it when missing) is run once per look, with a
fresh profile in a temporary folder: ``--dump-dom`` gives the DOM after the page's scripts
ran for ``budget_ms`` of virtual time (timers fire without the wall clock waiting, network
answers are waited for); :func:`screenshot_live` takes a PNG after some seconds of real
time, through the DevTools protocol. It runs in a process group of its own,
killed whole when the look ends, fails or times out: no Chromium outlives its test.

:class:`Page` reads the dumped DOM with :mod:`html.parser`: the text of an element by id,
attributes by id, the rows of a table.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import shutil
import signal
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

_FLAGS = (
    "--headless",
    "--no-sandbox",  # root in CI: Chromium's sandbox refuses to start as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--mute-audio",
)
_VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}
)


def chromium_path() -> str:
    """The Chromium binary; skips the test when there is none."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("chromium is not installed (.ci/run installs Debian's with apt-get)")


async def run_chromium(url: str, *extra: str, budget_ms: int = 5000, within: float = 30.0) -> str:
    """Load ``url`` headless and return what Chromium printed (the DOM for ``--dump-dom``)."""
    binary = chromium_path()
    with tempfile.TemporaryDirectory(prefix="bloxproxy-chromium-") as profile:
        proc = await asyncio.create_subprocess_exec(
            binary,
            *_FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            *extra,
            url,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group: killed whole below
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), within)
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
            with contextlib.suppress(ProcessLookupError):  # renderers left behind, if any
                os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode != 0:
            raise AssertionError(f"chromium exited {proc.returncode}: {err.decode()[-2000:]}")
        return out.decode()


async def dump_dom(url: str, budget_ms: int = 5000) -> Page:
    return Page(await run_chromium(url, "--dump-dom", budget_ms=budget_ms))


async def screenshot_live(url: str, path: Path, seconds: float, within: float = 60.0) -> None:
    """A screenshot after ``seconds`` of real time on the page (its timers on the wall
    clock, unlike ``--virtual-time-budget``), through the DevTools protocol."""
    binary = chromium_path()
    with tempfile.TemporaryDirectory(prefix="bloxproxy-chromium-") as profile:
        proc = await asyncio.create_subprocess_exec(
            binary,
            *_FLAGS,
            f"--user-data-dir={profile}",
            "--hide-scrollbars",
            "--window-size=1280,1000",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(within):
                await _capture(proc, url, path, seconds)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def _capture(proc: asyncio.subprocess.Process, url: str, path: Path, seconds: float) -> None:
    import aiohttp  # (only here: the rest of this module needs no HTTP client)

    assert proc.stderr is not None
    port = ""
    while not port:
        line = (await proc.stderr.readline()).decode()
        if not line:
            raise AssertionError("chromium ended before its DevTools endpoint was up")
        found = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
        port = found.group(1) if found else ""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/json/list") as r:
            targets = await r.json()
        ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        async with session.ws_connect(ws_url, max_msg_size=0) as ws:
            calls = 0

            async def call(method: str, **params: object) -> dict[str, object]:
                nonlocal calls
                calls += 1
                await ws.send_json({"id": calls, "method": method, "params": params})
                while True:
                    msg = await ws.receive_json()
                    if msg.get("id") == calls:
                        assert "error" not in msg, msg
                        result: dict[str, object] = msg["result"]
                        return result

            await call("Page.enable")
            await call(
                "Emulation.setDeviceMetricsOverride",
                width=1280,
                height=1000,
                deviceScaleFactor=1,
                mobile=False,
            )
            await call("Page.navigate", url=url)
            await asyncio.sleep(seconds)
            shot = await call("Page.captureScreenshot", format="png")
    data = base64.b64decode(str(shot["data"]))
    await asyncio.to_thread(path.write_bytes, data)


class Page(HTMLParser):
    """A dumped DOM: the text and attributes of every element with an id, and tables' rows."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.html = html
        self.text: dict[str, str] = {}
        self.attrs: dict[str, dict[str, str]] = {}
        self.rows: dict[str, list[tuple[dict[str, str], list[str]]]] = {}
        self._open: list[tuple[str, str | None]] = []  # (tag, id)
        self._table: str | None = None
        self._row: tuple[dict[str, str], list[str]] | None = None
        self._cell: list[str] | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        ident = a.get("id")
        if ident:
            self.attrs[ident] = a
            self.text.setdefault(ident, "")
        if tag == "table" and ident:
            self._table = ident
            self.rows[ident] = []
        elif tag == "tr" and self._table is not None:
            self._row = (a, [])
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        if tag not in _VOID:
            self._open.append((tag, ident))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            open_tag, _ = self._open.pop()
            if open_tag == tag:
                break
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row[1].append(" ".join(" ".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.rows[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        for _, ident in self._open:
            if ident:
                self.text[ident] += " " + data
        if self._cell is not None:
            self._cell.append(data)

    def of(self, ident: str) -> str:
        """The text of the element ``ident``, white space collapsed."""
        assert ident in self.text, f"no element #{ident} on the page"
        return " ".join(self.text[ident].split())
