"""One manifest, many models: per-model validation, per-model plans, local images uploaded once per content, the
image-to-video clip starting on the user's own still, the gallery comparing models side by side."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import time
from fractions import Fraction
from pathlib import Path

import av
import pytest
from aiohttp import web

from batchgen import ManifestError, expand, load_manifest
from batchgen.errors import ExitCode, StateError
from batchgen.images import ImageProblem, read_image, sniff
from batchgen.launch import load_run_manifest
from batchgen.models import known_models, load_model
from batchgen.pricing import estimate_micros, usd
from batchgen.simulator import DEFAULT_KEY
from batchgen.simulator.server import SimSettings, Simulator
from tests.cdp import chromium, chromium_path
from tests.conftest import run_cli
from tests.runs import assert_all_done, cli_env, read_state, run_cli_async, run_in_process, serving, start_cli

URL_IMAGE = "https://images.segmind.com/assets/elsewhere.png"  # not the simulator's: it is not fetched


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A PNG of one colour, made with PyAV (no imaging library)."""
    frame = av.VideoFrame(width, height, "rgb24")
    frame.planes[0].update(bytes(rgb) * (frame.planes[0].buffer_size // 3))
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "rgb24"
    return b"".join(bytes(packet) for packet in codec.encode(frame) + codec.encode(None))


def jpeg(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    frame = av.VideoFrame(width, height, "rgb24")
    frame.planes[0].update(bytes(rgb) * (frame.planes[0].buffer_size // 3))
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt, codec.time_base = width, height, "yuvj420p", Fraction(1, 25)
    still = frame.reformat(format="yuvj420p")
    return b"".join(bytes(packet) for packet in codec.encode(still) + codec.encode(None))


MIXED = """\
version: 1
name: mixed
concurrency: 8
rpm: 100
shots:
  - id: still-a
    model: kling-3-standard-image2video
    image: stills/orange.png
    prompt: "The orange still comes to life"
    duration: 3
    generate_audio: false
  - id: still-b
    image: stills/blue.jpg
    prompt: "The blue still, on three models"
    matrix:
      model: [kling-3-standard-image2video, hailuo-2.3-fast, wan-2.6-i2v]
  - id: by-url
    model: kling-3-standard-image2video
    start_image_url: https://images.segmind.com/assets/elsewhere.png
    prompt: "A still the provider fetches itself"
    duration: 3
    generate_audio: false
  - id: words
    prompt: "A harbour at dusk, {look}"
    matrix:
      model: [kling-3-standard-text2video, veo-3-fast, pixverse-4.5-video]
      look: [photoreal]
"""


def _stills(directory: Path) -> None:
    (directory / "stills").mkdir(exist_ok=True)
    (directory / "stills" / "orange.png").write_bytes(png(64, 36, (240, 140, 20)))
    (directory / "stills" / "blue.jpg").write_bytes(jpeg(64, 64, (30, 60, 200)))


def _messages(path: Path) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    return [str(problem) for problem in caught.value.problems]


def test_fields_are_validated_per_model_each_error_at_its_place_naming_the_model(write_manifest, tmp_path) -> None:
    _stills(tmp_path)
    (tmp_path / "stills" / "notes.png").write_text("not a picture\n")
    path = write_manifest(
        "version: 1\nname: bad\n"
        "defaults:\n  duration: 7\n"  # 4
        "shots:\n"
        "  - id: a\n"
        "    prompt: x\n"
        "    voice_ids: [v1]\n"  # 8: veo-3 has no voices
        "    matrix:\n"
        "      model: [kling-3-standard-text2video, veo-3, kling-9]\n"  # 10: kling-9 is no model
        "  - id: b\n"
        "    model: kling-3-standard-image2video\n"
        "    prompt: y\n"
        "    image: stills/missing.png\n"  # 14
        "  - id: c\n"
        "    model: hailuo-2.3-fast\n"
        "    prompt: z\n"
        "    first_frame_image: stills/notes.png\n"  # 18
        "  - id: d\n"
        "    model: pixverse-4.5-video\n"
        "    prompt: w\n"
        "    quality: 1080p\n"
        "    duration: 8\n"  # 23: 1080p takes 5 s only
    )
    messages = [message.removeprefix(f"{path}:") for message in _messages(path)]
    assert messages[:4] == [
        "4:13: defaults.duration: 7 is not one of 4, 6, 8 (veo-3)",
        "4:13: defaults.duration: 7 is not one of 6, 10 (hailuo-2.3-fast)",
        '8:5: shots[0].voice_ids: "voice_ids" is not a field of veo-3: remove it, or give this shot a model that '
        "takes it",
        '10:51: shots[0].matrix.model[2]: unknown model "kling-9" (known: '
        + ", ".join(known_models())
        + "; see `batchgen models`)",
    ]
    assert messages[4].startswith("14:12: shots[1].image: there is no file ") and "missing.png" in messages[4]
    assert messages[5].startswith("18:24: shots[2].first_frame_image: ")
    assert messages[5].endswith("not a PNG, JPEG or WebP image (by its first bytes): convert it to one")
    assert messages[6:] == ["23:15: shots[3].duration: 8 is not allowed at 1080p: only 5 s is (pixverse-4.5-video)"]


def test_a_too_big_image_is_refused_before_anything_is_read_or_spent(write_manifest, tmp_path) -> None:
    big = tmp_path / "big.png"
    with big.open("wb") as file:
        file.write(png(8, 8, (1, 2, 3)))
        file.truncate(21 << 20)  # sparse: hailuo takes 20 MB at most
    path = write_manifest(
        "version: 1\nname: big\nmodel: hailuo-2.3-fast\nshots:\n  - id: a\n    prompt: x\n    image: big.png\n"
    )
    (message,) = _messages(path)
    assert "21.0 MB, more than the model's limit of 20.0 MB" in message and ":7:12:" in message
    with pytest.raises(ImageProblem, match=r"more than 1\.0 MB"):
        read_image(big, 1 << 20)
    assert sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp" and sniff(b"GIF89a") is None


def test_the_plan_counts_and_prices_each_model(write_manifest, tmp_path) -> None:
    _stills(tmp_path)
    path = write_manifest(MIXED)
    jobs = expand(load_manifest(path))
    assert {job.model for job in jobs} == {
        "kling-3-standard-image2video",
        "hailuo-2.3-fast",
        "wan-2.6-i2v",
        "kling-3-standard-text2video",
        "veo-3-fast",
        "pixverse-4.5-video",
    }
    done = run_cli("plan", str(path), "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    for slug, row in plan["models"].items():
        own = [job for job in jobs if job.model == slug]
        assert row["jobs"] == len(own)
        assert row["estimate_usd"] == pytest.approx(usd(sum(estimate_micros(j.payload, load_model(slug)) for j in own)))
    text = run_cli("plan", str(path)).stdout
    assert "kling-3-standard-image2video" in text and "3 jobs" in text and "hailuo-2.3-fast" in text


def test_an_image_is_named_by_its_content_not_its_path(write_manifest, tmp_path) -> None:
    _stills(tmp_path)
    path = write_manifest(MIXED)
    before = {job.id for job in expand(load_manifest(path))}
    (tmp_path / "moved").mkdir()
    os.replace(tmp_path / "stills" / "orange.png", tmp_path / "moved" / "orange.png")
    moved = write_manifest(MIXED.replace("stills/orange.png", "moved/orange.png"))
    assert {job.id for job in expand(load_manifest(moved))} == before
    (tmp_path / "moved" / "orange.png").write_bytes(png(64, 36, (250, 150, 30)))  # same path, new bytes
    after = {job.id for job in expand(load_manifest(moved))}
    assert len(before - after) == 1 and len(after - before) == 1  # only the job of that image changed


async def test_a_mixed_manifest_runs_each_distinct_image_uploaded_once(make_sim, write_manifest, tmp_path) -> None:
    _stills(tmp_path)
    sim = await make_sim()
    out = tmp_path / "out"
    result = await run_in_process(write_manifest(MIXED), out, sim)
    assert result.exit_code == ExitCode.OK
    assert_all_done(out, 8)
    account = sim.account()
    assert len(account.charges) == 8 and not account.paid_twice()
    assert sorted(upload.size for upload in account.uploads) == sorted(
        (tmp_path / "stills" / name).stat().st_size for name in ("orange.png", "blue.jpg")
    )
    store = read_state(out)
    try:
        assert all(image.url and "/assets/" in image.url for image in store.images())
        sent = {g.payload.get("start_image_url") for g in sim.generations.values()}
        assert URL_IMAGE in sent and all(not str(url).startswith("image:") for url in sent)
    finally:
        store.close()
    # A second run finds everything done and uploads nothing again.
    again = await run_in_process(write_manifest(MIXED), out, sim)
    assert again.exit_code == ExitCode.OK and len(sim.account().uploads) == 2


def _mean_rgb(frame: av.VideoFrame) -> tuple[float, ...]:
    rgb = frame.reformat(width=frame.width, height=frame.height, format="rgb24")
    plane = rgb.planes[0]
    data = b"".join(
        bytes(plane)[row * plane.line_size : row * plane.line_size + rgb.width * 3] for row in range(rgb.height)
    )
    count = len(data) // 3
    return tuple(sum(data[channel::3]) / count for channel in range(3))


async def test_an_image_to_video_clip_starts_on_the_image(make_sim, write_manifest, tmp_path) -> None:
    _stills(tmp_path)
    sim = await make_sim()
    out = tmp_path / "out"
    text = (
        "version: 1\nname: one\nmodel: kling-3-standard-image2video\nshots:\n"
        "  - id: a\n    image: stills/orange.png\n    prompt: wakes\n    duration: 3\n    generate_audio: false\n"
    )
    assert (await run_in_process(write_manifest(text), out, sim)).exit_code == ExitCode.OK
    (video,) = (out / "videos").glob("*.mp4")
    with av.open(io.BytesIO(video.read_bytes())) as container:
        first = next(container.decode(video=0))
    red, green, blue = _mean_rgb(first)
    assert abs(red - 240) < 16 and abs(green - 140) < 16 and abs(blue - 20) < 16, (red, green, blue)


async def test_each_image_is_uploaded_once_across_a_kill_and_a_resume(write_manifest, tmp_path) -> None:
    _stills(tmp_path)
    path = write_manifest(MIXED)
    out = tmp_path / "out"
    env = {k: v for k, v in cli_env(None).items()}
    args = (
        "run",
        str(path),
        "--out",
        str(out),
        "--simulate",
        "--history-lag-s",
        "1",
        "--sim-latency-s",
        "4",
        "--no-progress",
    )
    process = await start_cli(*args, env=env)
    deadline = time.monotonic() + 30
    uploaded, submitted = [], 0
    while time.monotonic() < deadline:  # both images uploaded and jobs submitted with them: then the kill
        await asyncio.sleep(0.05)
        with contextlib.suppress(StateError):  # not created yet, or created and not yet written
            store = read_state(out)
            try:
                uploaded = [image for image in store.images() if image.url]
                submitted = store.counts().get("submitted", 0)
            finally:
                store.close()
            if len(uploaded) == 2 and submitted >= 4:
                break
    process.send_signal(signal.SIGKILL)
    await process.wait()
    assert len(uploaded) == 2 and submitted >= 4, "the kill came before the uploads it is to test"
    done = await start_cli(*args[:-3], "--sim-latency-s", "0.05", "--no-progress", env=env)
    _, err = await asyncio.wait_for(done.communicate(), 60)
    assert done.returncode == 0, err.decode()
    assert_all_done(out, 8)
    sim = Simulator(SimSettings(), journal=out / "simulator.jsonl")  # the books the run's simulator kept
    account = sim.account(DEFAULT_KEY)
    assert len(account.uploads) == 2 and len({u.sha256 for u in account.uploads}) == 2
    assert len(account.charges) == 8 and not account.paid_twice()


def test_an_edited_image_makes_new_jobs_on_the_fast_resume(write_manifest, tmp_path) -> None:
    from batchgen.launch import open_run

    _stills(tmp_path)
    path = write_manifest(MIXED)
    out = tmp_path / "out"
    first = load_run_manifest(str(path), 10_000, str(out))
    assert first.jobs is not None
    with open_run(out, first.manifest, first.jobs, None, first.digest):
        pass
    assert load_run_manifest(str(path), 10_000, str(out)).jobs is None  # nothing changed: the state's jobs
    os.utime(tmp_path / "stills" / "blue.jpg")  # touched, same bytes: still the state's jobs
    assert load_run_manifest(str(path), 10_000, str(out)).jobs is None
    (tmp_path / "stills" / "blue.jpg").write_bytes(jpeg(64, 64, (200, 60, 30)))
    again = load_run_manifest(str(path), 10_000, str(out))
    assert again.jobs is not None and {j.id for j in again.jobs} != {j.id for j in first.jobs}


async def test_segminds_own_sdk_uploads_to_the_simulator(make_sim, tmp_path) -> None:
    segmind = pytest.importorskip("segmind")
    sim = await make_sim()
    image = tmp_path / "still.png"
    image.write_bytes(png(16, 16, (9, 99, 199)))

    def upload() -> dict[str, object]:
        client = segmind.SegmindClient(api_key=DEFAULT_KEY)
        try:
            files = client.files
            files.STORAGE_BASE_URL = sim.base_url  # the SDK's storage host, aimed at the simulator
            answer: dict[str, object] = files.upload(str(image))
            return answer
        finally:
            client._client.close()  # the SDK has no close() of its own

    answer = await asyncio.to_thread(upload)
    (url,) = answer["file_urls"]  # type: ignore[misc]
    assert str(url).startswith(f"{sim.base_url}/assets/")
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(str(url)) as response:
        assert response.status == 200 and await response.read() == image.read_bytes()
    assert [upload.size for upload in sim.account().uploads] == [image.stat().st_size]


COMPARED = ["kling-3-standard-image2video", "hailuo-2.3-fast", "wan-2.6-i2v"]


async def test_the_gallery_shows_the_input_and_compares_models_side_by_side(write_manifest, tmp_path) -> None:
    _stills(tmp_path)
    out = tmp_path / "out"
    done = await run_cli_async(
        "run", str(write_manifest(MIXED)), "--out", str(out), "--simulate", "--sim-latency-s", "0.05", env=cli_env(None)
    )
    assert done.code == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    by_shot: dict[str, list[dict[str, object]]] = {}
    for job in summary["jobs"]:
        by_shot.setdefault(job["shot"], []).append(job)
    (orange,) = by_shot["still-a"]
    assert str(orange["input_image"]).startswith("inputs/") and (out / str(orange["input_image"])).stat().st_size
    assert orange["parameters"]["start_image_url"] == "orange.png"
    (url_job,) = by_shot["by-url"]
    assert url_job["input_image"] == URL_IMAGE
    if chromium_path() is None:
        return  # the page itself is checked in a browser where there is one (test_gallery.py says so when not)
    app = web.Application()
    app.router.add_static("/", out)
    async with serving(app) as url, chromium(tmp_path / "profile") as page:
        await page.open(f"{url}/index.html", width=1400)
        await page.wait_for("window.batchgenRendered")
        heads = await page.evaluate("Array.from(document.querySelectorAll('.colhead')).map((h) => h.textContent)")
        assert heads == [*COMPARED, "kling-3-standard-text2video", "veo-3-fast", "pixverse-4.5-video"]
        # each model's card in its model's column, its input image beside it
        columns = await page.evaluate(
            "Array.from(document.querySelectorAll('.compare .card')).map((c) => "
            "[c.querySelector('.model').textContent, c.style.gridColumn])"
        )
        assert [column for column, _ in columns[:3]] == COMPARED and [n for _, n in columns[:3]] == ["1", "2", "3"]
        assert await page.evaluate("document.querySelectorAll('.compare .card img.input').length") == 3


def test_element_references_name_listed_elements(write_manifest, tmp_path) -> None:
    _stills(tmp_path)
    path = write_manifest(
        "version: 1\nname: el\nmodel: kling-3-standard-image2video\nshots:\n"
        "  - id: a\n    image: stills/orange.png\n    prompt: '@Element1 meets @Element3'\n"
        "    elements:\n      - frontal_image_url: stills/blue.jpg\n        reference_image_urls: [stills/orange.png]\n"
    )
    (message,) = _messages(path)
    assert message.endswith(":7:13: shots[0].prompt: @Element3 refers to element 3, but elements lists 1")
    fixed = write_manifest(path.read_text().replace("@Element3", "the sea"), "fixed.yaml")
    (job,) = expand(load_manifest(fixed))
    element = job.payload["elements"][0]
    assert element["frontal_image_url"].startswith("image:sha256:")  # nested images are local files too
    assert element["reference_image_urls"][0] == job.payload["start_image_url"]


def test_hostile_image_values_and_model_conflicts_are_refused(write_manifest, tmp_path) -> None:
    _stills(tmp_path)
    os.symlink(tmp_path / "stills" / "orange.png", tmp_path / "stills" / "same.png")
    (tmp_path / "stills" / "header.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    os.mkfifo(tmp_path / "stills" / "pipe.png")
    path = write_manifest(
        "version: 1\nname: odd\nmodel: kling-3-standard-image2video\nshots:\n"
        "  - id: twice\n    prompt: x\n    matrix: {image: [stills/orange.png, stills/same.png]}\n"  # 7
        "  - id: both\n    model: veo-3\n    prompt: y\n    matrix: {model: [veo-3-fast]}\n"  # 8-11
        "  - id: alias\n    prompt: z\n    image: stills/orange.png\n    start_image_url: stills/blue.jpg\n"  # 12-15
        "  - id: header\n    prompt: w\n    image: stills/header.png\n"  # 16-18
        "  - id: pipe\n    prompt: v\n    image: stills/pipe.png\n"  # 19-21
        "  - id: nohost\n    prompt: u\n    image: 'https://'\n"  # 22-24
        "  - id: plain\n    prompt: t\n    image: 'http://example.com/a.png'\n"  # 25-27
    )
    messages = [message.removeprefix(f"{path}:") for message in _messages(path)]
    assert any(m.startswith("7:") and "the same request (the same image counts once)" in m for m in messages)
    assert any(m.startswith("9:5:") and "keep `model:` or `matrix: {model: [...]}`" in m for m in messages)
    assert any(m.startswith("14:5:") and '"image" is start_image_url' in m for m in messages)
    assert any(m.startswith("18:12:") and "holds no picture that can be read" in m for m in messages)
    assert any(m.startswith("21:12:") and "is not a plain file" in m for m in messages)
    assert any(m.startswith("24:12:") and "neither an https URL (with a host)" in m for m in messages)
    assert any(m.startswith("27:12:") and "neither an https URL" in m for m in messages)


def test_model_in_a_prompt_and_integer_strings(write_manifest) -> None:
    path = write_manifest(
        "version: 1\nname: m\nshots:\n  - id: a\n    prompt: 'made by {model}'\n    duration: '4'\n"
        "    matrix: {model: [veo-3-fast, kling-3-standard-text2video]}\n"
    )
    jobs = expand(load_manifest(path))
    assert [(job.model, job.payload["prompt"], job.payload["duration"]) for job in jobs] == [
        ("veo-3-fast", "made by veo-3-fast", 4),
        ("kling-3-standard-text2video", "made by kling-3-standard-text2video", "4"),
    ]


async def test_a_clip_that_takes_its_images_ratio_is_not_a_mismatch(make_sim, write_manifest, tmp_path) -> None:
    _stills(tmp_path)  # blue.jpg is square
    sim = await make_sim()
    out = tmp_path / "out"
    text = "version: 1\nname: sq\nmodel: wan-2.6-i2v\nshots:\n  - id: a\n    image: stills/blue.jpg\n    prompt: x\n"
    assert (await run_in_process(write_manifest(text), out, sim)).exit_code == ExitCode.OK
    store = read_state(out)
    try:
        (job,) = store.jobs()
        assert job.probe is not None and (job.probe["width"], job.probe["height"]) == (320, 320)
        assert job.warnings == []
    finally:
        store.close()
    # The run's books can be compared after the image moved away: the state has what the run needs.
    os.replace(tmp_path / "stills", tmp_path / "elsewhere")
    done = await run_cli_async("reconcile", "--out", str(out), env=cli_env(sim))
    assert done.code == 0 and "agree" in done.stdout, done.stderr
