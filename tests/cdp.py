"""A headless Chromium driven over the DevTools protocol (aiohttp's websocket client, no other library): open a page,
evaluate script in it, wait for a condition, and count what it fetched. Used by the gallery tests and bench/gallery.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

_LISTENING = re.compile(rb"DevTools listening on (ws://\S+)")


def chromium_path() -> str | None:
    """The Chromium on this machine, if any."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class Fetched:
    """What the page fetched: per URL, the bytes received (as sent over the wire) and when it finished."""

    bytes_by_url: dict[str, int] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)  # request id → URL

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes_by_url.values())

    def matching(self, part: str) -> list[str]:
        return [url for url in self.bytes_by_url if part in url]


class Page:
    """One tab, over its DevTools websocket."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.socket = socket
        self.fetched = Fetched()
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())
        self.loaded = asyncio.Event()

    async def _read(self) -> None:
        async for message in self.socket:
            data = json.loads(message.data)
            if "id" in data and data["id"] in self._waiting:
                future = self._waiting.pop(data["id"])
                if not future.done():
                    future.set_result(data)
                continue
            self._event(data)

    def _event(self, data: dict[str, Any]) -> None:
        method, params = data.get("method"), data.get("params", {})
        if method == "Network.requestWillBeSent":
            self.fetched.urls[params["requestId"]] = params["request"]["url"]
        elif method == "Network.loadingFinished":
            url = self.fetched.urls.get(params["requestId"])
            if url is not None:
                self.fetched.bytes_by_url[url] = int(params.get("encodedDataLength", 0))
        elif method == "Page.loadEventFired":
            self.loaded.set()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a DevTools method; its result (an error is raised)."""
        number = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[number] = future
        await self.socket.send_json({"id": number, "method": method, "params": params})
        answer = await asyncio.wait_for(future, 30)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` in the page (promises awaited)."""
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float = 20.0, every_s: float = 0.05) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page never had {expression!r}")
            await asyncio.sleep(every_s)

    async def open(self, url: str, width: int = 1280, height: int = 900) -> float:
        """Load ``url`` in a ``width`` × ``height`` window; seconds until its load event."""
        await self.send("Network.enable")
        await self.send("Page.enable")
        await self.send("Network.setCacheDisabled", cacheDisabled=True)
        await self.send(
            "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False
        )
        started = time.perf_counter()
        self.loaded.clear()
        await self.send("Page.navigate", url=url)
        await asyncio.wait_for(self.loaded.wait(), 60)
        return time.perf_counter() - started

    async def close(self) -> None:
        self._reader.cancel()
        await self.socket.close()


@asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[Page]:
    """A headless Chromium with one blank page, for the block."""
    binary = chromium_path()
    if binary is None:
        raise RuntimeError("chromium is not installed")
    args = [
        binary,
        "--headless",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "about:blank",
    ]
    if os.geteuid() == 0:
        args.insert(1, "--no-sandbox")  # Chromium refuses to sandbox as root
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert process.stderr is not None
        browser_url = await asyncio.wait_for(_listening(process.stderr), 30)
        port = browser_url.split(":")[2].split("/")[0]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                targets = await response.json()
            page_url = next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")
            socket = await session.ws_connect(page_url, max_msg_size=0)
            page = Page(socket)
            try:
                yield page
            finally:
                await page.close()
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


_DRAINS: set[asyncio.Task[None]] = set()


async def _listening(stderr: asyncio.StreamReader) -> str:
    while True:
        line = await stderr.readline()
        if not line:
            raise RuntimeError("chromium ended before it listened")
        found = _LISTENING.search(line)
        if found:
            drain = asyncio.create_task(_drain(stderr))  # its pipe must not fill up
            _DRAINS.add(drain)
            drain.add_done_callback(_DRAINS.discard)
            return found.group(1).decode()


async def _drain(stderr: asyncio.StreamReader) -> None:
    while await stderr.readline():
        pass
