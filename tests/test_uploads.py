"""Uploading local images: before any attempt begins, so that an upload that fails, stalls, is refused or is
interrupted spends nothing and leaves nothing that might have been billed; each content once."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from batchgen.errors import ExitCode
from batchgen.simulator.faults import FaultPlan, parse_script
from batchgen.simulator.server import SimSettings
from tests.runs import cli_env, read_state, run_cli_async, run_in_process, start_cli
from tests.test_catalogue import png

ONE = (
    "version: 1\nname: up\nrpm: 1000\nmodel: kling-3-standard-image2video\n"
    "shots:\n  - id: a\n    image: still.png\n    prompt: wakes\n    duration: 3\n    generate_audio: false\n"
)


def _manifest(write_manifest, tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "still.png").write_bytes(png(32, 18, (200, 100, 50)))
    return write_manifest(ONE + extra)


def _attempts(out: Path) -> tuple[str, int, bool, int]:
    store = read_state(out)
    try:
        (job,) = [job for job in store.jobs() if job.shot_id == "a"]
        return job.state, job.attempts_used, job.possibly_billed_twice, store.money().spent_micros
    finally:
        store.close()


async def test_failed_uploads_use_no_attempt_and_are_tried_again(make_sim, write_manifest, tmp_path) -> None:
    sim = await make_sim(faults=FaultPlan(script=parse_script("upload:1=500,upload:2=502")))
    out = tmp_path / "out"
    result = await run_in_process(_manifest(write_manifest, tmp_path), out, sim)
    assert result.exit_code == ExitCode.OK
    assert _attempts(out)[:3] == ("done", 1, False)
    assert len(sim.account().uploads) == 1 and len(sim.account().charges) == 1


async def test_a_lost_upload_answer_is_simply_uploaded_again(make_sim, write_manifest, tmp_path) -> None:
    sim = await make_sim(faults=FaultPlan(script=parse_script("upload:1=drop")))
    out = tmp_path / "out"
    assert (await run_in_process(_manifest(write_manifest, tmp_path), out, sim)).exit_code == ExitCode.OK
    uploads = sim.account().uploads
    assert len(uploads) == 2 and uploads[0].sha256 == uploads[1].sha256  # free: kept twice, paid for nothing
    assert _attempts(out)[:3] == ("done", 1, False) and len(sim.account().charges) == 1


async def test_a_storage_that_refuses_the_key_stops_the_run_spending_nothing(
    make_sim, write_manifest, tmp_path
) -> None:
    sim = await make_sim(faults=FaultPlan(script=parse_script("upload:1=401")))
    out = tmp_path / "out"
    events: list = []
    result = await run_in_process(_manifest(write_manifest, tmp_path), out, sim, events=events)
    assert result.exit_code == ExitCode.PROVIDER
    assert "the storage at 127.0.0.1 refused the upload" in (result.stop_message or "")
    assert _attempts(out) == ("pending", 0, False, 0) and not sim.generations


async def test_an_unreachable_storage_fails_only_the_jobs_with_images(make_sim, write_manifest, tmp_path) -> None:
    sim = await make_sim()
    out = tmp_path / "out"
    text = "  - id: words\n    model: veo-3-fast\n    prompt: a harbour\n    duration: 4\n"
    result = await run_in_process(
        _manifest(write_manifest, tmp_path, text), out, sim, upload_url="http://127.0.0.1:9", max_attempts=3
    )
    assert result.exit_code == ExitCode.JOBS_FAILED  # not a stop of the run: the text-to-video job is done
    assert result.counts["done"] == 1 and result.counts["failed"] == 1
    state, attempts, twice, _ = _attempts(out)
    assert (state, attempts, twice) == ("failed", 0, False)
    store = read_state(out)
    try:
        (failed,) = store.jobs(["failed"])
        assert "could not be uploaded to the storage at 127.0.0.1 after 3 tries (nothing was spent)" in str(
            failed.reason
        )
    finally:
        store.close()
    assert len(sim.account().charges) == 1


async def _stopped_during_upload(write_manifest, tmp_path: Path, make_sim, sig: signal.Signals) -> tuple:
    sim = await make_sim(SimSettings(slow_first_byte_s=20.0), FaultPlan(script=parse_script("upload:1=slow")))
    out = tmp_path / "out"
    path = _manifest(write_manifest, tmp_path)
    process = await start_cli("run", str(path), "--out", str(out), "--no-progress", env=cli_env(sim))
    deadline = time.monotonic() + 20
    while sim.hits["/upload-asset"] < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert sim.hits["/upload-asset"] == 1
    process.send_signal(sig)
    await asyncio.wait_for(process.wait(), 30)
    return sim, out, path, process.returncode


async def test_a_kill_during_an_upload_leaves_nothing_possibly_billed(make_sim, write_manifest, tmp_path) -> None:
    sim, out, path, _ = await _stopped_during_upload(write_manifest, tmp_path, make_sim, signal.SIGKILL)
    assert _attempts(out) == ("pending", 0, False, 0) and not sim.generations
    sim.faults.script.clear()
    done = await run_cli_async("run", str(path), "--out", str(out), "--no-progress", env=cli_env(sim))
    assert done.code == 0, done.stderr
    state, attempts, twice, spent = _attempts(out)
    assert (state, attempts, twice) == ("done", 1, False)
    assert spent == sim.account().spent_micros and len(sim.account().charges) == 1  # no phantom spend


async def test_ctrl_c_during_an_upload_submits_nothing(make_sim, write_manifest, tmp_path) -> None:
    sim, out, _, code = await _stopped_during_upload(write_manifest, tmp_path, make_sim, signal.SIGINT)
    assert code == ExitCode.INTERRUPTED
    await asyncio.sleep(0)  # the upload answered after the stop; nothing may follow it
    assert not sim.generations and _attempts(out) == ("pending", 0, False, 0)
