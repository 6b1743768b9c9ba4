"""``batchgen serve``: a run's gallery over http, live while the batch runs.

Read-only: the state is opened without the lock (as ``status`` does), so it works beside the process running the
batch, on this machine or one sharing the directory; nothing is written. Routes:

- ``GET /``: the gallery (``gallery.py``) as the state has it now, compressed;
- ``GET /live.json?since=N``: the header (counts, money, ETA) and the jobs that changed after version ``N``, which the
  page asks every two seconds;
- ``GET /videos/…``, ``/posters/…``, ``/inputs/…``: the run's files (plain names only; no link is followed).

It listens on loopback unless told otherwise. The state is read by one worker thread (SQLite connections belong to
the thread that opened them); a refresh reads only the jobs whose ``updated_at`` moved (``report.ReportCache``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import html
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from batchgen.errors import StateError
from batchgen.gallery import LIVE_POLL_S, compact, gallery_html, header, ordered
from batchgen.launch import OWNER_STALE_S, owner_is_live
from batchgen.outputs import RunDir
from batchgen.report import CACHE_NAME, ReportCache, eta_s, summary_head
from batchgen.store import Owner, Store

FILE_DIRS = ("videos", "posters", "inputs")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
WAITING = (
    '<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="2"><title>waiting · batchgen</title>'
    '<body style="font:15px system-ui;background:#111;color:#ddd;padding:24px">No run in this directory yet: this page '
    "looks again every 2 seconds.</body>"
)


def _running(owner: Owner) -> bool:
    """Whether the run's owner still runs it (this very process too: ``run --serve``)."""
    if time.time() - owner.heartbeat_at > OWNER_STALE_S:
        return False
    return owner.pid == os.getpid() or owner_is_live(owner)


class GalleryServer:
    """The gallery of the run directory ``root``, served by its own ``web.Application``."""

    def __init__(self, root: Path) -> None:
        self.run_dir = RunDir(root)
        self.cache = ReportCache.load(root / CACHE_NAME)
        self._store: Store | None = None
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="gallery")
        self._lock = asyncio.Lock()
        self.app = web.Application()
        self.app.add_routes(
            [
                web.get("/", self.page),
                web.get("/index.html", self.page),
                web.get("/live.json", self.live),
                web.get("/{folder}/{name}", self.file),
            ]
        )
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0: any free port); the URL of the gallery."""
        # A client still downloading a video when the server closes is cut off after a second: a run's end (its
        # report, its notification) never waits for a slow viewer.
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0]
        shown = f"[{bound[0]}]" if ":" in str(bound[0]) else bound[0]
        self.url = f"http://{shown}:{bound[1]}/"
        return self.url

    async def close(self) -> None:
        """Stop serving and close the state."""
        if self._runner is not None:
            await self._runner.cleanup()
        await asyncio.get_running_loop().run_in_executor(self._worker, self._close_store)
        self._worker.shutdown(wait=True)

    # --- reading the state, in the worker thread -----------------------------------------------------------

    def _close_store(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def _snapshot(self, since: int) -> dict[str, Any] | None:
        """The header and the rows changed after ``since`` (every row when 0); ``None`` when there is no run yet."""
        if self._store is None:
            if not self.run_dir.state.exists():
                return None
            try:
                self._store = Store.open(self.run_dir.state, readonly=True)
            except StateError as exc:
                if "holds no state" in str(exc):
                    return None  # created this instant and not yet written: the page asks again
                raise
        self.cache.refresh(self._store, self.run_dir, writing=False)
        owner = self._store.owner()
        running = owner is not None and _running(owner)
        head = header(summary_head(self._store), eta_s(self._store) if running else None, live=True, running=running)
        rows = self.cache.rows(since)
        return {"version": self.cache.version, "header": head, "rows": ordered(rows) if since == 0 else rows}

    async def _read(self, since: int) -> dict[str, Any] | None:
        async with self._lock:
            return await asyncio.get_running_loop().run_in_executor(self._worker, self._snapshot, since)

    # --- routes --------------------------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.StreamResponse:
        """The gallery as the state has it now."""
        try:
            snapshot = await self._read(0)
        except StateError as exc:  # a state this version cannot read (newer, damaged): said, not waited for
            return web.Response(text=html.escape(str(exc)), status=500, content_type="text/plain")
        if snapshot is None:
            return web.Response(text=WAITING, content_type="text/html")
        data = {**compact(snapshot["rows"]), "poll_ms": round(LIVE_POLL_S * 1000)}
        response = web.Response(
            text=gallery_html(snapshot["header"], data, snapshot["version"]),
            content_type="text/html",
            headers={"Cache-Control": "no-store"},
        )
        response.enable_compression()
        return response

    async def live(self, request: web.Request) -> web.StreamResponse:
        """What changed since the version the page has."""
        try:
            since = max(0, int(request.query.get("since", "0")))
        except ValueError:
            raise web.HTTPBadRequest(text="since is a whole number") from None
        try:
            snapshot = await self._read(since)
        except StateError as exc:
            raise web.HTTPInternalServerError(text=str(exc)) from None
        if snapshot is None:
            raise web.HTTPServiceUnavailable(text="no run yet")
        body = {"version": snapshot["version"], "header": snapshot["header"], "jobs": snapshot["rows"]}
        response = web.json_response(body, headers={"Cache-Control": "no-store"})
        response.enable_compression()
        return response

    async def file(self, request: web.Request) -> web.StreamResponse:
        """A video, poster or input copy of the run: a plain file right in its folder, never through a link."""
        folder, name = request.match_info["folder"], request.match_info["name"]
        if folder not in FILE_DIRS or not _NAME.fullmatch(name):
            raise web.HTTPNotFound()
        path = self.run_dir.root / folder / name
        try:
            info = os.lstat(path)
            parent = os.lstat(path.parent)
        except OSError:
            raise web.HTTPNotFound() from None
        if not stat.S_ISREG(info.st_mode) or not stat.S_ISDIR(parent.st_mode):
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Cache-Control": "no-cache"})
