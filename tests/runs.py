"""Running batches in tests: in-process (a Runner on the test's loop) or the real CLI in a subprocess."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import av
from aiohttp import web

from batchgen import expand, load_manifest
from batchgen.client import Client, Timeouts
from batchgen.launch import open_run
from batchgen.models import Model, load_model
from batchgen.pricing import clip_spec, micros
from batchgen.runner import Event, Runner, RunResult, RunSettings
from batchgen.simulator import DEFAULT_KEY
from batchgen.simulator.clips import size_of
from batchgen.simulator.server import Simulator
from batchgen.store import Store
from tests.conftest import ROOT


async def run_in_process(
    manifest_path: Path,
    out: Path,
    sim: Simulator,
    *,
    key: str = DEFAULT_KEY,
    events: list[Event] | None = None,
    history: bool = True,
    history_url: str | None = None,
    model: Model | None = None,
    timeouts: Timeouts | None = None,
    base_url: str | None = None,
    upload_url: str | None = None,
    **settings: object,
) -> RunResult:
    """Run a manifest against ``sim`` with a Runner in this loop; zero backoff and fast polls unless given (and
    ``model`` instead of the manifest's, say with another typical generation time; ``base_url`` instead of the
    simulator's, say a port where nothing listens)."""
    manifest = load_manifest(manifest_path)
    jobs = expand(manifest)
    history_url = history_url or (sim.base_url if history else None)
    options: dict[str, object] = {
        "concurrency": manifest.concurrency,
        "rpm": 10_000,
        "poll_interval_s": 0.01,
        "max_polls_per_s": 10_000,  # fast polls for the few jobs of a test
        "backoff_base_s": 0.0,
        "budget_micros": None if manifest.budget_usd is None else micros(manifest.budget_usd),
        "history_lag_s": 0.5,
    }
    options.update(settings)
    run_settings = RunSettings(**options)  # type: ignore[arg-type]
    with open_run(out, manifest, jobs, run_settings.budget_micros) as (run_dir, store):
        client = Client(
            base_url or sim.base_url,
            key,
            history_url=history_url,
            upload_url=upload_url or sim.base_url,
            timeouts=timeouts,
        )
        async with client:

            def catalogue(slug: str) -> Model:
                return model if model is not None and model.slug == slug else load_model(slug)

            runner = Runner(store, run_dir, client, run_settings, on_event=(events or []).append, catalogue=catalogue)
            return await runner.run()


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """``app`` served on a free loopback port for the block; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def read_state(out: Path) -> Store:
    """The run's state, read-only."""
    return Store.open(out / "state.db", readonly=True)


@dataclass
class Done:
    """A finished CLI process."""

    code: int
    stdout: str
    stderr: str


def cli_env(sim: Simulator | None, key: str = DEFAULT_KEY) -> dict[str, str]:
    """The environment of a CLI subprocess aimed at ``sim``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMIND_")}
    if sim is not None:
        env.update(SEGMIND_API_KEY=key, SEGMIND_BASE_URL=sim.base_url, SEGMIND_HISTORY_URL=sim.base_url)
        env.update(SEGMIND_UPLOAD_URL=sim.base_url)
    return env


async def start_cli(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    """Start ``python -m batchgen ARGS`` without blocking the loop (the simulator lives in it)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "batchgen",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def run_cli_async(*args: str, env: dict[str, str], timeout: float = 60) -> Done:
    """Run the CLI to its end while this loop keeps serving."""
    process = await start_cli(*args, env=env)
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()  # never a run left behind by a test that gave up on it
        await process.wait()
        raise
    return Done(process.returncode or 0, out.decode(), err.decode())


def probe_file(path: Path) -> tuple[float, int, int, bool]:
    """(seconds, width, height, audio) of an MP4."""
    with av.open(io.BytesIO(path.read_bytes())) as container:
        video = container.streams.video[0]
        assert video.duration is not None
        return (
            float(video.duration * video.time_base),
            video.codec_context.width,
            video.codec_context.height,
            bool(container.streams.audio),
        )


def assert_all_done(out: Path, count: int) -> None:
    """Every job done, with a valid video matching it, a complete log, and no .part left."""
    store = read_state(out)
    try:
        jobs = store.jobs()
        assert len(jobs) == count
        assert {job.state for job in jobs} == {"done"}, [(j.id, j.state, j.reason) for j in jobs if j.state != "done"]
        for job in jobs:
            video = out / (job.video_path or "")
            seconds, width, height, audio = probe_file(video)
            spec = clip_spec(job.payload, load_model(job.model))  # with the model's defaults
            assert seconds == float(spec.seconds)
            if spec.aspect_ratio:  # else the clip takes its image's ratio
                assert (width, height) == size_of(spec.aspect_ratio)
            assert audio == spec.audio
            assert job.sha256 == hashlib.sha256(video.read_bytes()).hexdigest()
            assert job.probe and job.probe["width"] == width
            log = json.loads((out / "logs" / f"{job.id}.json").read_text())
            assert log["state"] == "done" and log["sha256"] == job.sha256 and log["attempts"]
        assert not list((out / "videos").glob("*.part"))
    finally:
        store.close()
