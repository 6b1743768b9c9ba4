"""Finished videos checked again: `batchgen verify [--repair]`, and the look a run takes when it starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchgen.simulator.server import SimSettings
from tests.conftest import batch_manifest
from tests.runs import assert_all_done, cli_env, read_state, run_cli_async, run_in_process


def _videos(out: Path) -> list[Path]:
    store = read_state(out)
    paths = [out / (job.video_path or "") for job in store.jobs()]
    store.close()
    return paths


@pytest.mark.parametrize("transport", ["v2", "v1"])
async def test_verify_repair_restores_a_deleted_and_a_corrupted_video_without_paying(
    make_sim, write_manifest, tmp_path: Path, transport: str
) -> None:
    """v1 answers the video in the POST (no URL is kept): its copy is found again in the request history."""
    sim = await make_sim()
    path, out = write_manifest(batch_manifest(3)), tmp_path / "out"
    await run_in_process(path, out, sim, transport=transport)
    first, second, third = _videos(out)
    first.unlink()
    second.write_bytes(b"\0" * second.stat().st_size)  # same size, junk: only the sha256 tells
    env = cli_env(sim)
    check = await run_cli_async("verify", "--out", str(out), "--json", env=env)
    assert check.code == 1, check.stderr
    problems = {row["job"]: row["problem"] for row in json.loads(check.stdout)["bad"]}
    assert sorted(problems.values()) == sorted(
        [f"videos/{first.name} is missing", f"videos/{second.name} is not the video received (its sha256 differs)"]
    )
    repair = await run_cli_async("verify", "--out", str(out), "--repair", env=env)
    assert repair.code == 0, repair.stdout + repair.stderr
    assert repair.stdout.count("→ repaired") == 2
    assert_all_done(out, 3)
    assert len(sim.account().charges) == 3  # nothing paid again
    again = await run_cli_async("verify", "--out", str(out), env=env)
    assert again.code == 0 and "3 finished videos, 3 whole, 0 missing or damaged" in again.stdout
    assert third.exists()


async def test_a_run_finds_a_missing_video_and_downloads_it_again(make_sim, write_manifest, tmp_path: Path) -> None:
    sim = await make_sim()
    path, out = write_manifest(batch_manifest(2)), tmp_path / "out"
    await run_in_process(path, out, sim)
    gone, truncated = _videos(out)
    gone.unlink()
    truncated.write_bytes(truncated.read_bytes()[:100])
    await run_in_process(path, out, sim)
    assert_all_done(out, 2)
    assert len(sim.account().charges) == 2
    log = (out / "run.log").read_text()
    assert f"videos/{gone.name} is missing: downloading it again" in log
    assert f"videos/{truncated.name} has 100 bytes, not the" in log


async def test_what_cannot_be_recovered_is_listed(make_sim, write_manifest, tmp_path: Path) -> None:
    sim = await make_sim(SimSettings(ttl_s=0.01))  # the result endpoint forgets the request at once
    path, out = write_manifest(batch_manifest(1)), tmp_path / "out"
    await run_in_process(path, out, sim, transport="v1", history=False)  # no URL kept, and no history to ask
    (video,) = _videos(out)
    video.unlink()
    env = {**cli_env(sim), "SEGMIND_HISTORY_URL": "off"}
    repair = await run_cli_async("verify", "--out", str(out), "--repair", env=env)
    assert repair.code == 1
    assert f"videos/{video.name} is missing → lost" in repair.stdout
    assert len(sim.account().charges) == 1


async def test_a_repair_that_could_not_start_changes_nothing_and_one_that_did_not_finish_is_said(
    make_sim, write_manifest, tmp_path: Path
) -> None:
    sim = await make_sim()
    path, out = write_manifest(batch_manifest(2)), tmp_path / "out"
    await run_in_process(path, out, sim)
    first, _ = _videos(out)
    first.unlink()
    nokey = {k: v for k, v in cli_env(sim).items() if k != "SEGMIND_API_KEY"}
    refused = await run_cli_async("verify", "--out", str(out), "--repair", env=nokey)
    assert refused.code == 2 and "no API key" in refused.stderr
    store = read_state(out)
    assert store.counts()["done"] == 2  # nothing was put back in line: the key was missing before anything moved
    store.close()
    import sqlite3

    with sqlite3.connect(out / "state.db") as db:  # as if a repair had been stopped after it began
        db.execute(
            "UPDATE jobs SET state = 'downloading', video_path = NULL WHERE video_path LIKE ?", (f"%{first.name}",)
        )
    check = await run_cli_async("verify", "--out", str(out), env=cli_env(sim))
    assert check.code == 1 and "its video not downloaded yet" in check.stdout
