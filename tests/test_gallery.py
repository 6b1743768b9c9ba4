"""summary.json and the index.html gallery, rendered in a real headless Chromium."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from aiohttp import web

from batchgen.simulator.faults import FaultPlan, parse_script
from tests.cdp import chromium, chromium_path
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

CHECK = """(() => ({
  cards: document.querySelectorAll('article.card').length,
  states: Array.from(document.querySelectorAll('article.card')).map((c) => c.dataset.state),
  stills: document.querySelectorAll('.still img').length,
  loaded: Array.from(document.querySelectorAll('.still img[src]')).map((i) => i.getAttribute('src')),
  card_width: document.querySelector('article.card').getBoundingClientRect().width,
  main_width: document.querySelector('main').getBoundingClientRect().width,
  params: (document.querySelector('.state-done .params') || {}).textContent || null,
  pwned: window.pwned === undefined ? null : window.pwned,
  scripts: document.querySelectorAll('script').length,
  xss_text: Array.from(document.querySelectorAll('.prompt')).some((p) =>
    p.textContent.indexOf('<scr' + 'ipt>window.pwned = 1</scr' + 'ipt>') >= 0),
  title: document.title,
  reason: (document.querySelector('.state-failed .reason') || {}).textContent || null,
  stats: document.getElementById('stats').textContent,
}))()"""


def _chromium() -> None:
    if chromium_path():
        return
    if os.environ.get("BATCHGEN_SKIP_BROWSER"):  # .ci/run as a user who cannot install it: said there, once
        pytest.skip("chromium is not installed (installing it needs root: sudo apt-get install chromium)")
    pytest.fail("headless Chromium is needed (.ci/run installs Debian's chromium package)")


async def _render(root: Path, tmp_path: Path) -> dict:
    """The gallery as a static file server (no live view) shows it in Chromium."""
    _chromium()
    app = web.Application()
    app.router.add_static("/", root)
    async with serving(app) as url, chromium(tmp_path / "profile") as page:
        await page.open(f"{url}/index.html", width=1200)
        await page.wait_for("window.batchgenRendered")
        result: dict = await page.evaluate(CHECK)
        await page.evaluate("document.querySelector('.still').click()")  # one click plays
        result["playing"] = await page.wait_for("document.querySelector('video[autoplay][controls]') !== null")
        return result


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
    # Each done card shows its poster (a thumbnail, loaded as it comes into view); one click plays the video.
    assert page["stills"] == 5 and all((out / poster).stat().st_size > 0 for poster in page["loaded"])
    assert page["playing"]
    assert page["card_width"] > 300 and page["card_width"] * 3 > 0.9 * (page["main_width"] - 48)
    assert page["params"] == "3 s · silent", page["params"]
    # Text from the manifest is text: the data block and the script are the page's only two scripts.
    assert page["pwned"] is None and page["scripts"] == 2 and page["xss_text"]
    assert "Invalid" in (page["reason"] or "") or "Error 400" in (page["reason"] or "")
    assert page["title"] == "gallery · batchgen" and "5 done" in page["stats"] and "$2.520 spent" in page["stats"]

    report = await run_cli_async("report", "--out", str(out), env=cli_env(sim))
    assert report.code == 0 and "6 jobs" in report.stdout
    status = await run_cli_async("status", "--out", str(out), "--html", env=cli_env(sim))
    assert status.stdout.strip() == str((out / "index.html").resolve())
