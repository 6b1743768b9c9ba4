"""`batchgen run`, `status` and `retry` as processes: exit codes, signals, SIGKILL and resume, the lock."""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter
from pathlib import Path

from batchgen.launch import load_run_manifest, open_run, run_root
from batchgen.manifest import MAX_JOBS, load_manifest
from batchgen.simulator.server import SimSettings
from tests.conftest import MANIFESTS, batch_manifest
from tests.runs import assert_all_done, cli_env, read_state, run_cli_async, start_cli


async def _wait_for_lines(path: Path, text: str, count: int, timeout: float = 30) -> None:
    async def seen() -> int:
        return path.read_text().count(text) if path.exists() else 0

    async with asyncio.timeout(timeout):
        while await seen() < count:
            await asyncio.sleep(0.02)


def _accepted_posts(sim) -> Counter[str]:
    return Counter(seen.payload_hash for seen in sim.account().requests if seen.status == 200)


async def test_run_v2_then_status_and_a_rerun_that_pays_nothing(make_sim, write_manifest, tmp_path: Path) -> None:
    sim = await make_sim(SimSettings(latency_s=0.05))
    path, out = write_manifest(batch_manifest(4)), tmp_path / "out"
    env = cli_env(sim)
    done = await run_cli_async(
        "run", str(path), "--out", str(out), "--rpm", "1000", "--poll-interval-s", "0.02", "--no-progress", env=env
    )
    assert done.code == 0, done.stderr
    assert f"{out}: 4 done; spent $2.016" in done.stdout
    assert_all_done(out, 4)
    status = await run_cli_async("status", "--out", str(out), "--json", env=env)
    data = json.loads(status.stdout)
    assert data["counts"]["done"] == 4 and data["money"]["spent_usd"] == 2.016 and data["in_flight"] == []
    again = await run_cli_async("run", str(path), "--out", str(out), "--no-progress", env=env)
    assert again.code == 0 and len(sim.account().charges) == 4


async def test_v1_transport_through_the_cli(make_sim, write_manifest, tmp_path: Path) -> None:
    sim = await make_sim()
    path, out = write_manifest(batch_manifest(3)), tmp_path / "out"
    done = await run_cli_async(
        "run", str(path), "--out", str(out), "--transport", "v1", "--rpm", "1000", "--no-progress", env=cli_env(sim)
    )
    assert done.code == 0, done.stderr
    assert_all_done(out, 3)


async def test_sigkill_mid_batch_then_resume_pays_no_finished_job_twice(make_sim, write_manifest, tmp_path) -> None:
    sim = await make_sim(SimSettings(latency_s=0.3))
    path, out = write_manifest(batch_manifest(16, extra="concurrency: 4\n")), tmp_path / "out"
    # A kill between a submit's intent and its POST leaves a job the history will never show: the resume waits the
    # history's lag before submitting it again (120 s by default; this simulator's history has no lag).
    args = ("run", str(path), "--out", str(out), "--rpm", "1000", "--poll-interval-s", "0.05", "--no-progress")
    args += ("--history-lag-s", "1")
    process = await start_cli(*args, env=cli_env(sim))
    await _wait_for_lines(out / "run.log", "← done", 3)
    process.kill()
    await process.wait()
    assert process.returncode == -signal.SIGKILL
    done = await run_cli_async(*args, env=cli_env(sim))
    assert done.code == 0, done.stderr
    assert_all_done(out, 16)
    store = read_state(out)
    twice_allowed = {job.payload_hash for job in store.jobs() if job.possibly_billed_twice}
    request_ids = {a.request_id for a in store.all_attempts() if a.request_id}
    store.close()
    assert set(sim.account().paid_twice()) <= twice_allowed
    for digest, posts in _accepted_posts(sim).items():
        assert posts == 1 or digest in twice_allowed
    for charge in sim.account().charges:  # every charge is known to the state, or its job says "possibly twice"
        assert charge.request_id in request_ids or charge.payload_hash in twice_allowed


async def test_sigint_parks_what_is_in_flight_and_exits_130(make_sim, write_manifest, tmp_path: Path) -> None:
    sim = await make_sim(SimSettings(latency_s=0.5))
    path, out = write_manifest(batch_manifest(12, extra="concurrency: 4\n")), tmp_path / "out"
    args = ("run", str(path), "--out", str(out), "--rpm", "1000", "--poll-interval-s", "0.05", "--no-progress")
    process = await start_cli(*args, env=cli_env(sim))
    await _wait_for_lines(out / "run.log", "→ submitted", 4)
    process.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 130, err.decode()
    assert "run the same command again to resume" in err.decode()
    store = read_state(out)
    assert store.counts()["submitting"] == 0
    assert not any(job.possibly_billed_twice for job in store.jobs())
    store.close()
    done = await run_cli_async(*args, env=cli_env(sim))
    assert done.code == 0, done.stderr
    assert_all_done(out, 12)
    assert not sim.account().paid_twice()
    assert all(posts == 1 for posts in _accepted_posts(sim).values())


async def test_a_second_run_on_the_same_directory_names_the_first_ones_pid(make_sim, write_manifest, tmp_path) -> None:
    sim = await make_sim(SimSettings(latency_s=30))  # the first run is stopped: its jobs must outlast two CLI starts
    path, out = write_manifest(batch_manifest(2)), tmp_path / "out"
    args = ("run", str(path), "--out", str(out), "--poll-interval-s", "0.05", "--no-progress")
    first = await start_cli(*args, env=cli_env(sim))
    try:
        await _wait_for_lines(out / "run.log", "→ submitted", 2)
        second = await run_cli_async(*args, env=cli_env(sim))
        assert second.code == 2
        assert f"batchgen: error: another batchgen run (pid {first.pid}) is using {out}" in second.stderr
        status = await run_cli_async("status", "--out", str(out), env=cli_env(sim))
        assert status.code == 0 and "2 submitted" in status.stdout and "request" in status.stdout
    finally:
        first.send_signal(signal.SIGTERM)
        await first.wait()
    assert first.returncode == 130


async def test_no_key_and_no_simulate_is_a_usage_error(tmp_path: Path) -> None:
    done = await run_cli_async("run", str(MANIFESTS / "demo.yaml"), "--out", str(tmp_path / "o"), env=cli_env(None))
    assert done.code == 2
    assert "no API key: set SEGMIND_API_KEY" in done.stderr and "--simulate" in done.stderr
    assert "Traceback" not in done.stderr


async def test_plain_http_to_another_machine_is_refused(tmp_path: Path) -> None:
    env = {**cli_env(None), "SEGMIND_API_KEY": "k"}
    done = await run_cli_async(
        "run", str(MANIFESTS / "demo.yaml"), "--out", str(tmp_path / "o"), "--base-url", "http://203.0.113.7", env=env
    )
    assert done.code == 2 and "--allow-insecure-http" in done.stderr


async def test_a_malformed_base_url_is_a_usage_error_not_a_traceback(tmp_path: Path) -> None:
    env = {**cli_env(None), "SEGMIND_API_KEY": "k", "SEGMIND_BASE_URL": "http://127.0.0.1:8931http://127.0.0.1"}
    done = await run_cli_async("run", str(MANIFESTS / "demo.yaml"), "--out", str(tmp_path / "o"), env=env)
    assert done.code == 2 and "Traceback" not in done.stderr
    assert "is not a valid URL" in done.stderr and "https://api.segmind.com" in done.stderr


async def test_lost_jobs_come_back_only_through_retry_lost(make_sim, write_manifest, tmp_path: Path) -> None:
    sim = await make_sim(SimSettings(latency_s=1, ttl_s=0.05))
    path, out = write_manifest(batch_manifest(1)), tmp_path / "out"
    args = ("run", str(path), "--out", str(out), "--poll-interval-s", "0.1", "--history-url", "off", "--no-progress")
    first = await run_cli_async(*args, env=cli_env(sim))
    assert first.code == 1, first.stderr
    status = await run_cli_async("status", "--out", str(out), env=cli_env(sim))
    assert "lost" in status.stdout and "no longer knows request" in status.stdout
    again = await run_cli_async(*args, env=cli_env(sim))
    assert again.code == 1 and sum(1 for r in sim.account().requests) == 1  # not paid again
    retry = await run_cli_async("retry", "--out", str(out), "--lost", env=cli_env(sim))
    assert retry.code == 0 and "1 lost job back in line" in retry.stdout
    sim.settings = SimSettings(latency_s=0, ttl_s=3600)
    third = await run_cli_async(*args, env=cli_env(sim))
    assert third.code == 0, third.stderr
    store = read_state(out)
    assert store.jobs()[0].possibly_billed_twice
    store.close()


async def test_demo_with_simulate(tmp_path: Path) -> None:
    done = await run_cli_async(
        "run",
        str(MANIFESTS / "demo.yaml"),
        "--simulate",
        "--sim-latency-s",
        "0",
        "--out",
        str(tmp_path / "demo"),
        "--no-progress",
        env=cli_env(None),
    )
    assert done.code == 0, done.stderr
    assert_all_done(tmp_path / "demo", 6)


async def test_a_batch_parked_under_v2_finishes_under_v1(make_sim, write_manifest, tmp_path: Path) -> None:
    """Switching transports between runs: the v1 run polls the v2 requests it inherits instead of waiting forever."""
    sim = await make_sim(SimSettings(latency_s=0.5))
    path, out = write_manifest(batch_manifest(6, extra="concurrency: 3\n")), tmp_path / "out"
    args = ("run", str(path), "--out", str(out), "--rpm", "1000", "--poll-interval-s", "0.05", "--no-progress")
    process = await start_cli(*args, "--transport", "v2", env=cli_env(sim))
    await _wait_for_lines(out / "run.log", "→ submitted", 3)
    process.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 130, err.decode()
    store = read_state(out)
    assert store.counts()["submitted"] >= 1
    store.close()
    done = await run_cli_async(*args, "--transport", "v1", env=cli_env(sim))
    assert done.code == 0, done.stderr
    assert_all_done(out, 6)
    assert all(posts == 1 for posts in _accepted_posts(sim).values()) and len(sim.account().charges) == 6


async def test_a_resumed_run_of_an_unchanged_manifest_reuses_its_jobs(make_sim, write_manifest, tmp_path: Path) -> None:
    """The state remembers what its jobs were made from: the same bytes (and job limit, version, schemas) are not
    checked and expanded again; any edit is, and a budget-skipped job is reconsidered either way."""
    sim = await make_sim()
    path, out = write_manifest(batch_manifest(4, extra="budget: 1.10\n")), tmp_path / "out"
    args = ("run", str(path), "--out", str(out), "--rpm", "1000", "--poll-interval-s", "0.02", "--no-progress")
    first = await run_cli_async(*args, env=cli_env(sim))
    assert first.code == 3, first.stderr  # two fit the budget, two are skipped
    loaded = load_run_manifest(str(path), MAX_JOBS, str(out))
    assert loaded.jobs is None and loaded.manifest == load_manifest(path)
    assert load_run_manifest(str(path), MAX_JOBS + 1, str(out)).jobs is not None  # another job limit
    second = await run_cli_async(*args, "--budget", "5", env=cli_env(sim))
    assert second.code == 0, second.stderr
    assert_all_done(out, 4)
    path.write_text(path.read_text().replace("Clip number", "Edited clip"))
    assert len(load_run_manifest(str(path), MAX_JOBS, str(out)).jobs or []) == 4
    third = await run_cli_async(*args, "--budget", "10", env=cli_env(sim))
    assert third.code == 0, third.stderr
    store = read_state(out)
    assert store.manifest_job_count() == 4 and len(store.jobs(["done"])) == 8  # 4 new, 4 kept as not in manifest
    store.close()
    path.write_text(path.read_text().replace("duration: 3", "duration: 99"))
    broken = await run_cli_async(*args, env=cli_env(sim))
    assert broken.code == 2 and "duration" in broken.stderr  # an edit is validated again, with its position


async def test_poll_settings_must_be_positive(tmp_path: Path) -> None:
    env = {**cli_env(None), "SEGMIND_API_KEY": "k"}
    for flag in ("--poll-interval-s", "--max-polls-per-s"):
        done = await run_cli_async(
            "run", str(MANIFESTS / "demo.yaml"), "--out", str(tmp_path / "o"), flag, "-1", env=env
        )
        assert done.code == 2 and f"{flag} must be more than 0" in done.stderr and "Traceback" not in done.stderr


def test_without_out_the_run_directory_is_found_by_the_manifests_name(write_manifest, tmp_path, monkeypatch) -> None:
    path = write_manifest(batch_manifest(3, name="named"))
    monkeypatch.chdir(tmp_path)
    first = load_run_manifest(str(path), MAX_JOBS, None)
    assert first.jobs is not None and len(first.jobs) == 3
    with open_run(run_root(first.manifest.name, None), first.manifest, first.jobs, None, first.digest):
        pass
    assert (tmp_path / "output" / "named" / "state.db").exists()
    again = load_run_manifest(str(path), MAX_JOBS, None)
    assert again.jobs is None and again.manifest == first.manifest
