"""summary.json and the index.html gallery, rendered in a real headless Chromium."""

from __future__ import annotations

import asyncio
import html
import json
import os
import shutil
from pathlib import Path

import pytest
from aiohttp import web

from batchgen.simulator.faults import FaultPlan, parse_script
from tests.runs import cli_env, run_cli_async, serving

XSS = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"> & "quotes"'
MANIFEST = f"""\
version: 1
name: gallery
defaults: {{duration: 3, generate_audio: false}}
shots:
  - id: harbour
    prompt: "Boats in a harbour at {{time}}"
    matrix: {{time: [dawn, dusk]}}
    takes: 2
  - id: xss
    prompt: {json.dumps(XSS)}
    aspect_ratio: "9:16"
  - id: doomed
    prompt: "A request the provider refuses"
"""

CHECK = """<!doctype html><html><body><pre id="result">pending</pre>
<iframe id="page" src="index.html" width="1200" height="900"></iframe>
<script>
window.addEventListener('load', function () {
  var frame = document.getElementById('page'), doc = frame.contentDocument, win = frame.contentWindow;
  document.getElementById('result').textContent = JSON.stringify({
    cards: doc.querySelectorAll('article.card').length,
    states: Array.from(doc.querySelectorAll('article.card')).map(function (c) { return c.dataset.state; }),
    posters: Array.from(doc.querySelectorAll('video[poster]')).map(function (v) { return v.getAttribute('poster'); }),
    wrapped: doc.querySelectorAll('details video').length,
    card_width: doc.querySelector('article.card').getBoundingClientRect().width,
    main_width: doc.querySelector('main').getBoundingClientRect().width,
    params: (doc.querySelector('.state-done .prompt + .meta') || {}).textContent || null,
    pwned: win.pwned === undefined ? null : win.pwned,
    scripts: doc.querySelectorAll('script').length,
    xss_text: Array.from(doc.querySelectorAll('.prompt')).some(function (p) {
      return p.textContent.indexOf('<scr' + 'ipt>window.pwned = 1</scr' + 'ipt>') >= 0; }),
    title: doc.title,
    videos: doc.querySelectorAll('video[preload="none"][controls]').length,
    reason: (doc.querySelector('.state-failed .reason') || {}).textContent || null,
  });
});
</script></body></html>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return str(shutil.which(name))
    if os.environ.get("BATCHGEN_SKIP_BROWSER"):  # .ci/run as a user who cannot install it: said there, once
        pytest.skip("chromium is not installed (installing it needs root: sudo apt-get install chromium)")
    pytest.fail("headless Chromium is needed (.ci/run installs Debian's chromium package)")


async def _render(root: Path, tmp_path: Path) -> dict:
    async def check(request: web.Request) -> web.Response:
        return web.Response(text=CHECK, content_type="text/html")

    app = web.Application()
    app.router.add_get("/check.html", check)
    app.router.add_static("/", root)
    async with serving(app) as url:
        process = await asyncio.create_subprocess_exec(
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            f"{url}/check.html",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 90)
    text = out.decode()
    start = text.index('<pre id="result">') + len('<pre id="result">')
    result = text[start : text.index("</pre>", start)]
    assert result != "pending", err.decode()[-2000:]
    return json.loads(html.unescape(result))


@pytest.mark.timeout(180)
async def test_the_gallery_in_a_real_browser(make_sim, write_manifest, tmp_path: Path) -> None:
    sim = await make_sim(faults=FaultPlan(script=parse_script("submit:6=400")))
    out = tmp_path / "out"
    done = await run_cli_async(
        "run",
        str(write_manifest(MANIFEST)),
        "--out",
        str(out),
        "--rpm",
        "1000",
        "--concurrency",
        "1",
        "--poll-interval-s",
        "0.02",
        "--no-progress",
        env=cli_env(sim),
    )
    assert done.code == 1, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["done"] == 5 and summary["counts"]["failed"] == 1 and len(summary["jobs"]) == 6
    assert {job["shot"] for job in summary["jobs"]} == {"harbour", "xss", "doomed"}
    done_jobs = [job for job in summary["jobs"] if job["state"] == "done"]
    assert all(job["poster"] and (out / job["poster"]).stat().st_size > 0 for job in done_jobs)
    assert all(job["cost_usd"] == 0.504 and job["duration_s"] == 3.0 for job in done_jobs)
    assert summary["money"]["spent_usd"] == pytest.approx(5 * 0.504) and summary["wall_time_s"] > 0

    page = await _render(out, tmp_path)
    assert page["cards"] == 6 and sorted(page["states"]) == ["done"] * 5 + ["failed"]
    # One click plays (the still is the video's poster, no wrapper to open first); the cards fill the width.
    assert len(page["posters"]) == 5 and all((out / poster).stat().st_size > 0 for poster in page["posters"])
    assert page["wrapped"] == 0
    assert page["card_width"] > 300 and page["card_width"] * 3 > 0.9 * (page["main_width"] - 48)
    assert page["params"] == "3 s · silent", page["params"]
    assert page["pwned"] is None and page["scripts"] == 1 and page["xss_text"]
    assert page["videos"] == 5
    assert "Invalid" in (page["reason"] or "") or "Error 400" in (page["reason"] or "")
    assert page["title"] == "gallery · batchgen"

    report = await run_cli_async("report", "--out", str(out), env=cli_env(sim))
    assert report.code == 0 and "6 jobs" in report.stdout
    status = await run_cli_async("status", "--out", str(out), "--html", env=cli_env(sim))
    assert status.stdout.strip() == str((out / "index.html").resolve())
