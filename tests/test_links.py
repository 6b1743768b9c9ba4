"""Symbolic links planted in a run directory are never followed: nothing outside the run is written or chmod-ed."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from batchgen import expand, load_manifest
from batchgen.errors import ExitCode, OutputError
from batchgen.launch import open_run
from batchgen.outputs import RunDir
from batchgen.simulator.server import SimSettings
from tests.conftest import batch_manifest
from tests.runs import assert_all_done, run_in_process

PRECIOUS = b"a file the run must never touch\n"


@pytest.fixture
def precious(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o755)
    os.chmod(outside, 0o755)
    target = outside / "precious.txt"
    target.write_bytes(PRECIOUS)
    return target


async def test_part_files_planted_as_links_mid_run_are_never_written_through(
    make_sim, write_manifest, tmp_path: Path, precious: Path
) -> None:
    sim = await make_sim(SimSettings(latency_s=0.3))
    path, out = write_manifest(batch_manifest(4, extra="concurrency: 4\n")), tmp_path / "out"
    ids = [job.id for job in expand(load_manifest(path))]

    async def plant() -> None:  # once the run has made its directories, before any video arrives
        while not (out / "videos").is_dir():
            await asyncio.sleep(0.005)
        for job_id in ids:
            (out / "videos" / f"{job_id}.mp4.part").symlink_to(precious)
            (out / "logs" / f".{job_id}.json.tmp").symlink_to(precious)

    planting = asyncio.create_task(plant())
    result = await run_in_process(path, out, sim)
    await planting
    assert result.exit_code == ExitCode.OK
    assert precious.read_bytes() == PRECIOUS
    assert_all_done(out, 4)
    for job_id in ids:
        assert not (out / "videos" / f"{job_id}.mp4").is_symlink()
    assert len(sim.account().charges) == 4


@pytest.mark.parametrize("name", [".lock", "run.log"])
async def test_a_link_at_the_lock_or_the_log_is_refused(
    make_sim, write_manifest, tmp_path: Path, precious: Path, name: str
) -> None:
    sim = await make_sim()
    path, out = write_manifest(batch_manifest(1)), tmp_path / "out"
    RunDir(out).prepare()
    (out / name).symlink_to(precious)
    with pytest.raises(OutputError, match=f"{name} is a symbolic link"):
        await run_in_process(path, out, sim)
    assert precious.read_bytes() == PRECIOUS and len(sim.account().charges) == 0


@pytest.mark.parametrize("name", ["videos", "logs", "posters"])
def test_a_subdirectory_that_is_a_link_is_refused_and_its_target_left_alone(
    write_manifest, tmp_path: Path, precious: Path, name: str
) -> None:
    manifest = load_manifest(write_manifest(batch_manifest(1)))
    out = tmp_path / "out"
    out.mkdir()
    (out / name).symlink_to(precious.parent, target_is_directory=True)
    with pytest.raises(OutputError, match=f"{name} is a symbolic link"), open_run(out, manifest, None, None):
        pass
    assert stat.S_IMODE(precious.parent.stat().st_mode) == 0o755


async def test_a_state_file_or_a_simulator_journal_that_is_a_link_is_refused(
    write_manifest, tmp_path: Path, precious: Path
) -> None:
    from tests.conftest import MANIFESTS
    from tests.runs import cli_env, run_cli_async

    out = tmp_path / "out"
    RunDir(out).prepare()
    (out / "state.db").symlink_to(precious)
    done = await run_cli_async("run", str(MANIFESTS / "demo.yaml"), "--simulate", "--out", str(out), env=cli_env(None))
    assert done.code == 2 and "state.db is a symbolic link" in done.stderr
    (out / "state.db").unlink()
    (out / "simulator.jsonl").symlink_to(precious)
    done = await run_cli_async("run", str(MANIFESTS / "demo.yaml"), "--simulate", "--out", str(out), env=cli_env(None))
    assert done.code == 2 and "simulator.jsonl is a symbolic link" in done.stderr
    assert precious.read_bytes() == PRECIOUS
