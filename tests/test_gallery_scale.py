"""The gallery at scale, in a real Chromium: the first screen fetches only the thumbnails it shows, filters and search
work on the page's data, and `batchgen serve` shows a clip that lands without a reload."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from aiohttp import web

from batchgen.outputs import RunDir, make_poster
from batchgen.report import write_report
from batchgen.serve import GalleryServer
from batchgen.simulator.clips import make_clip
from batchgen.store import Store
from tests.cdp import chromium, chromium_path
from tests.galleries import done_run
from tests.runs import cli_env, serving, start_cli

pytestmark = pytest.mark.timeout(120)


def _needs_chromium() -> None:
    if chromium_path() is None:
        pytest.skip("chromium is not installed (test_gallery.py fails or skips with the reason)")


def _thumbnail(tmp: Path) -> bytes:
    video, poster = tmp / "clip.mp4", tmp / "poster.jpg"
    video.write_bytes(make_clip(3, "16:9", False, 1, None, "720p"))
    make_poster(video, poster)
    return poster.read_bytes()


def _report(out: Path) -> None:
    store = Store.open(out / "state.db")
    try:
        write_report(store, RunDir(out))
    finally:
        store.close()


VISIBLE = """(() => Array.from(document.querySelectorAll('.still img')).filter((i) => {
  const r = i.getBoundingClientRect(); return r.top < innerHeight + 200 && r.bottom > 0; }).length)()"""


async def test_the_first_screen_fetches_only_the_thumbnails_it_shows(tmp_path: Path) -> None:
    _needs_chromium()
    out = done_run(tmp_path, 2_000, _thumbnail(tmp_path))
    _report(out)
    app = web.Application()
    app.router.add_static("/", out)
    async with serving(app) as url, chromium(tmp_path / "profile") as page:
        await page.open(f"{url}/index.html")
        await page.wait_for("window.batchgenRendered")
        await asyncio.sleep(0.5)  # let the posters in view load (their requests are what is counted)
        near = await page.evaluate(VISIBLE)
        fetched = page.fetched.matching("/posters/")
        assert 4 <= len(fetched) <= near < 60, (len(fetched), near)
        assert await page.evaluate("document.querySelectorAll('article.card').length") < 100  # of 2,000
        # Scrolling down brings more cards and their posters.
        await page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        await page.wait_for("document.querySelectorAll('article.card').length > 24")
        await asyncio.sleep(0.3)
        assert len(page.fetched.matching("/posters/")) > len(fetched)
        # Search and filters run on the page's data.
        await page.evaluate(
            "(() => { const q = document.getElementById('q'); q.value = 'variant 77,';"
            " q.dispatchEvent(new Event('input')); })()"
        )
        cards = await page.evaluate("Array.from(document.querySelectorAll('article.card')).map((c) => c.dataset.id)")
        assert len(cards) == 1 and cards[0].startswith("valley-77-")
        await page.evaluate(
            "(() => { const q = document.getElementById('q'); q.value = '';"
            " q.dispatchEvent(new Event('input'));"
            " const s = document.getElementById('shot'); s.value = 'harbour';"
            " s.dispatchEvent(new Event('change')); })()"
        )
        shown = await page.evaluate("document.getElementById('shown').textContent")
        assert shown == "1000 of 2000 jobs"


async def test_serve_shows_a_clip_that_lands_without_a_reload(make_sim, write_manifest, tmp_path: Path) -> None:
    _needs_chromium()
    from batchgen.simulator.server import SimSettings

    sim = await make_sim(SimSettings(latency_s=1.5))
    out = tmp_path / "out"
    text = "version: 1\nname: live\nrpm: 1000\ndefaults: {duration: 3, generate_audio: false}\nshots:\n"
    text += "".join(f"  - id: s{n}\n    prompt: 'shot {n}'\n" for n in range(3))
    run = await start_cli(
        "run",
        str(write_manifest(text)),
        "--out",
        str(out),
        "--no-progress",
        "--poll-interval-s",
        "0.05",
        env=cli_env(sim),
    )
    server = GalleryServer(out)
    try:
        url = await server.start()
        async with chromium(tmp_path / "profile") as page:
            deadline = time.monotonic() + 20
            while not (out / "state.db").exists() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await page.open(url)
            await page.wait_for("document.querySelectorAll('article.card').length === 3", timeout_s=20)
            assert await page.evaluate("document.querySelectorAll('.state-done').length") == 0
            await page.evaluate("window.sameDocument = true")
            # a filtered view follows what lands too
            await page.evaluate(
                "(() => { const q = document.getElementById('q'); q.value = 'shot 1';"
                " q.dispatchEvent(new Event('input')); })()"
            )
            await page.wait_for("document.querySelectorAll('.state-done .still').length === 1", timeout_s=30)
            assert await page.evaluate("document.querySelectorAll('article.card').length") == 1
            await page.evaluate(
                "(() => { const q = document.getElementById('q'); q.value = '';"
                " q.dispatchEvent(new Event('input')); })()"
            )
            await page.wait_for("document.querySelectorAll('.state-done .still').length === 3", timeout_s=30)
            assert await page.evaluate("window.sameDocument === true && window.batchgenLive > 0")
            stats = await page.evaluate("document.getElementById('stats').textContent")
            assert "3 done" in stats and "live" in stats
    finally:
        await server.close()
        if run.returncode is None:
            run.send_signal(signal.SIGINT)
        await asyncio.wait_for(run.wait(), 30)
    assert run.returncode == 0


async def test_serve_refuses_paths_outside_the_run_and_links(tmp_path: Path) -> None:
    out = done_run(tmp_path, 4, b"\xff\xd8\xff")
    (tmp_path / "secret.txt").write_text("not yours")
    (out / "posters" / "link.jpg").symlink_to(tmp_path / "secret.txt")
    server = GalleryServer(out)
    try:
        url = await server.start()
        import aiohttp

        async with aiohttp.ClientSession() as session:
            for path in ("posters/link.jpg", "state.db", "videos/..%2Fstate.db", "logs/x.json", "posters/.x"):
                async with session.get(url + path) as response:
                    assert response.status == 404, path
            async with session.get(url + "live.json?since=0") as response:
                live = await response.json()
            assert len(live["jobs"]) == 4 and live["header"]["counts"]["done"] == 4
            async with session.get(url + "live.json?since=" + str(live["version"])) as response:
                assert (await response.json())["jobs"] == []  # nothing changed since
            db = sqlite3.connect(out / "state.db")
            with db:
                db.execute("UPDATE jobs SET state = 'failed', reason = 'x', updated_at = updated_at + 1 WHERE idx = 0")
            db.close()
            async with session.get(url + "live.json?since=" + str(live["version"])) as response:
                changed = (await response.json())["jobs"]
            assert [job["state"] for job in changed] == ["failed"]
    finally:
        await server.close()


def test_a_damaged_report_cache_is_ignored_and_the_report_made_from_the_state(tmp_path: Path) -> None:
    import json

    out = done_run(tmp_path, 6, b"\xff\xd8\xff")
    _report(out)
    cache = out / ".report-cache.json"
    data = json.loads(cache.read_text())
    first = next(iter(data["entries"]))
    for broken in ([], [1.0, "{}", {}, 1], [1.0, '{"id": "other"}', data["entries"][first][2], 1]):
        data["entries"][first] = broken
        cache.write_text(json.dumps(data))
        _report(out)
        summary = json.loads((out / "summary.json").read_text())
        assert [job["id"] for job in summary["jobs"]].count(first) == 1 and len(summary["jobs"]) == 6
    cache.write_text("not json")
    _report(out)
    assert json.loads((out / "summary.json").read_text())["total"] == 6


def test_the_incremental_report_follows_jobs_leaving_the_manifest_and_lost_posters(tmp_path: Path) -> None:
    import json

    from batchgen.launch import load_run_manifest, open_run
    from tests.galleries import batch_yaml

    out = done_run(tmp_path, 6, _thumbnail(tmp_path))
    _report(out)
    (tmp_path / "big.yaml").write_text(batch_yaml(4))  # two jobs leave the manifest
    loaded = load_run_manifest(str(tmp_path / "big.yaml"), 10, str(out))
    with open_run(out, loaded.manifest, loaded.jobs, None, loaded.digest):
        pass
    poster = next((out / "posters").glob("*.jpg"))
    poster.unlink()
    (out / "videos" / f"{poster.stem}.mp4").write_bytes(make_clip(3, "16:9", False))
    _report(out)
    jobs = json.loads((out / "summary.json").read_text())["jobs"]
    assert sum(not job["in_manifest"] for job in jobs) == 2
    assert poster.exists()  # made again, without --full


async def test_a_tall_screen_fills_itself_and_no_prompt_can_close_the_data(tmp_path: Path) -> None:
    _needs_chromium()
    out = done_run(tmp_path, 2_000, b"\xff\xd8\xff")
    db = sqlite3.connect(out / "state.db")
    with db:
        db.execute(
            """UPDATE jobs SET payload = json_set(payload, '$.prompt', '<!--<script> a lighthouse </script>'),"""
            " updated_at = updated_at + 1 WHERE idx < 3"
        )
    db.close()
    _report(out)
    app = web.Application()
    app.router.add_static("/", out)
    async with serving(app) as url, chromium(tmp_path / "profile") as page:
        await page.open(f"{url}/index.html", width=3840, height=2160)
        await page.wait_for("window.batchgenRendered")
        cards = await page.evaluate("document.querySelectorAll('article.card').length")
        below = await page.evaluate("document.getElementById('more').getBoundingClientRect().top > innerHeight")
        assert cards > 48 and below, cards  # more than two chunks: the screen is full and scrolls
        texts = await page.evaluate("Array.from(document.querySelectorAll('.prompt')).map((p) => p.textContent)")
        assert texts[:3] == ["<!--<script> a lighthouse </script>"] * 3


async def test_closing_the_server_does_not_wait_for_a_slow_download(tmp_path: Path) -> None:
    import aiohttp

    out = done_run(tmp_path, 2, b"\xff\xd8\xff")
    video = next((out / "videos").glob("*.mp4"))
    video.write_bytes(bytes(50 << 20))
    server = GalleryServer(out)
    url = await server.start()
    session = aiohttp.ClientSession()
    response = await session.get(url + f"videos/{video.name}")
    await response.content.read(1024)  # a viewer that reads a little, then dawdles
    started = time.monotonic()
    await server.close()
    assert time.monotonic() - started < 5
    response.close()
    await session.close()
