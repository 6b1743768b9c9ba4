"""6. A 10,000-clip night: the poster of a 1080p clip, the report after 10 new clips, and the gallery in Chromium.

- thumbnail: the time and size of the poster of a real-size (1080p) clip (target ≤ 40 kB);
- report: `write_report` of a 10,000-job run directory from scratch, then after 10 jobs changed (target < 1 s);
- gallery: `batchgen serve` of that directory opened in headless Chromium (1280 × 900): the time to a usable first
  screen (the page's first cards drawn and every poster in view loaded; target < 1.5 s), the bytes it fetched by then
  (target < 5 MB), and the time the page takes to answer a search, a state filter and a shot filter (< 100 ms).

The run directory is made directly, as a finished run leaves it (tests/galleries.py): every poster a hard link to the
thumbnail of one 1080p clip, the videos empty files (nothing fetches them before a card is clicked).
"""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from batchgen.outputs import RunDir, make_poster
from batchgen.report import write_report
from batchgen.serve import GalleryServer
from batchgen.simulator.clips import make_clip
from batchgen.store import Store
from tests.cdp import chromium
from tests.galleries import done_run

JOBS = 10_000
FIRST_SCREEN = """(() => {
  if (!window.batchgenRendered) return false;
  const inView = Array.from(document.querySelectorAll('.still img')).filter((i) => {
    const r = i.getBoundingClientRect(); return r.top < innerHeight && r.bottom > 0; });
  return inView.length > 0 && inView.every((i) => i.src && i.complete && i.naturalWidth > 0);
})()"""
# The page's own clock around one change of a filter (the page renders synchronously on the event).
TIMED = """(() => {{ const t = performance.now(); {action}; return performance.now() - t; }})()"""
ACTIONS = {
    "search": "const q = document.getElementById('q'); q.value = 'variant 4321,'; q.dispatchEvent(new Event('input'))",
    "clear": "const q = document.getElementById('q'); q.value = ''; q.dispatchEvent(new Event('input'))",
    "state": "document.querySelector('#states button[data-state=done]').click()",
    "shot": "const s = document.getElementById('shot'); s.value = 'harbour'; s.dispatchEvent(new Event('change'))",
}


def thumbnail(tmp: Path, repeats: int = 20) -> tuple[list[float], bytes]:
    """Per try, the ms to make the poster of a 5 s 1080p clip; and the poster."""
    video, poster = tmp / "clip.mp4", tmp / "poster.jpg"
    video.write_bytes(make_clip(5, "16:9", True, 1, None, "1080p"))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        make_poster(video, poster)
        times.append((time.perf_counter() - started) * 1000)
    return times, poster.read_bytes()


def report_times(out: Path) -> tuple[float, float]:
    """Seconds of a report from scratch, then of one after 10 jobs changed."""
    store = Store.open(out / "state.db")
    try:
        started = time.perf_counter()
        write_report(store, RunDir(out), full=True)
        full = time.perf_counter() - started
        db = sqlite3.connect(out / "state.db")
        with db:  # ten clips land: their jobs change, as a run's marking them done does
            db.execute("UPDATE jobs SET updated_at = updated_at + 1, warnings = '[\"new\"]' WHERE idx < 10")
        db.close()
        started = time.perf_counter()
        write_report(store, RunDir(out))
        return full, time.perf_counter() - started
    finally:
        store.close()


async def open_gallery(out: Path, profile: Path) -> dict[str, float]:
    server = GalleryServer(out)
    url = await server.start()
    try:
        async with chromium(profile) as page:
            await page.send("Network.enable")
            await page.send("Page.enable")
            await page.send("Network.setCacheDisabled", cacheDisabled=True)
            await page.send(
                "Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False
            )
            started = time.perf_counter()
            await page.send("Page.navigate", url=url)
            await page.wait_for(FIRST_SCREEN, timeout_s=30, every_s=0.01)
            first_screen = time.perf_counter() - started
            await asyncio.sleep(1.0)  # what else it fetches without a scroll
            fetched = page.fetched.total_bytes
            timings = {
                name: float(await page.evaluate(TIMED.format(action=action))) for name, action in ACTIONS.items()
            }
            return {
                "first_screen_s": first_screen,
                "fetched_mb": fetched / 1e6,
                "posters_fetched": float(len(page.fetched.matching("/posters/"))),
                "filter_ms": max(timings.values()),
            }
    finally:
        await server.close()


def main(repeats: int = 3) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {
        "thumbnail_ms": [],
        "thumbnail_kb": [],
        "report_full_s": [],
        "report_10_new_s": [],
        "first_screen_s": [],
        "fetched_mb": [],
        "posters_fetched": [],
        "filter_ms": [],
        "page_mb": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-gallery-") as name:
        tmp = Path(name)
        times, poster = thumbnail(tmp)
        results["thumbnail_ms"] = [statistics.median(times)]
        results["thumbnail_kb"] = [len(poster) / 1000]
        out = done_run(tmp, JOBS, poster)
        for _ in range(repeats):
            full, incremental = report_times(out)
            results["report_full_s"].append(full)
            results["report_10_new_s"].append(incremental)
        results["page_mb"] = [(out / "index.html").stat().st_size / 1e6]
        for attempt in range(repeats):
            opened = asyncio.run(open_gallery(out, tmp / f"profile-{attempt}"))
            for key, value in opened.items():
                results[key].append(value)
    return results


if __name__ == "__main__":
    for key, values in main().items():
        print(key, [round(value, 3) for value in values])
