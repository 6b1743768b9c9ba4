"""The state owns the run: which process runs a directory is recorded in the state and checked in the transaction
that begins each attempt, so no job is ever submitted by two processes, whatever happened to the lock file."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from batchgen import expand, load_manifest
from batchgen.errors import RunLockedError, StateError
from batchgen.launch import claim, owner_is_live
from batchgen.simulator.server import SimSettings
from batchgen.store import Owner, Store
from tests.conftest import batch_manifest
from tests.runs import assert_all_done, cli_env, read_state, run_cli_async, start_cli


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def state(tmp_path: Path, write_manifest) -> Path:
    jobs = expand(load_manifest(write_manifest(batch_manifest(2))))
    store = Store.open(tmp_path / "state.db")
    store.sync_jobs(jobs, [504_000] * 2, ["c"] * 2, now=1.0)
    store.close()
    return tmp_path / "state.db"


def test_a_job_begins_an_attempt_once_whoever_asks(state: Path) -> None:
    """Two processes that both think they run the directory: the second begin of one job is refused."""
    first, second = Store.open(state), Store.open(state)
    job_id = first.jobs()[0].id
    assert first.begin_attempt(job_id, "v2", 504_000, lambda money: True, now=2.0)
    with pytest.raises(StateError, match="no longer pending"):
        second.begin_attempt(job_id, "v2", 504_000, lambda money: True, now=2.0)
    assert len(second.attempts(job_id)) == 1 and second.money().reserved_micros == 504_000
    first.close()
    second.close()


def test_a_live_owner_is_refused_a_stale_one_taken_over_and_a_taken_run_stops(state: Path) -> None:
    first, second = Store.open(state), Store.open(state)
    claim(first)
    with pytest.raises(RunLockedError, match=rf"another batchgen run \(pid {os.getpid()} on {socket.gethostname()}"):
        second.claim("other", os.getpid() + 1, socket.gethostname(), 3.0, lambda owner: True)
    previous = second.claim("other", _dead_pid(), "h", 3.0, lambda owner: False)  # as if the first were gone
    assert previous is not None and previous.token == first.owner_token
    job_id = first.jobs()[0].id
    with pytest.raises(StateError, match="has taken over"):
        first.begin_attempt(job_id, "v2", 504_000, lambda money: True, now=4.0)
    with pytest.raises(StateError, match="has taken over"):
        first.heartbeat(5.0)
    assert first.jobs()[0].state == "pending" and first.money().reserved_micros == 0
    first.close()
    second.close()


def test_who_is_live() -> None:
    here = socket.gethostname()
    now = 1000.0
    assert not owner_is_live(Owner("t", _dead_pid(), here, 0.0, now), now)  # its process is gone
    assert not owner_is_live(Owner("t", os.getppid(), here, 0.0, now - 61), now)  # silent for over a minute
    assert not owner_is_live(Owner("t", os.getpid(), here, 0.0, now), now)  # this process, which is not running it
    assert owner_is_live(Owner("t", os.getppid(), here, 0.0, now - 5), now)
    assert owner_is_live(Owner("t", 1, "another-host", 0.0, now - 5), now)  # heard from: trusted on its word


async def test_a_deleted_lock_file_does_not_let_a_second_run_in(make_sim, write_manifest, tmp_path: Path) -> None:
    sim = await make_sim(SimSettings(latency_s=1.0))
    path, out = write_manifest(batch_manifest(16, extra="concurrency: 8\n")), tmp_path / "out"
    args = ("run", str(path), "--out", str(out), "--rpm", "1000", "--poll-interval-s", "0.05", "--no-progress")
    first = await start_cli(*args, env=cli_env(sim))
    async with asyncio.timeout(30):
        while not (out / "run.log").exists() or "→ submitted" not in (out / "run.log").read_text():
            await asyncio.sleep(0.02)
    (out / ".lock").unlink()  # "a stale lock file": people delete them
    second = await run_cli_async(*args, env=cli_env(sim))
    assert second.code == 2
    assert f"another batchgen run (pid {first.pid} on {socket.gethostname()}" in second.stderr
    _, err = await asyncio.wait_for(first.communicate(), 60)
    assert first.returncode == 0, err.decode()
    assert_all_done(out, 16)
    assert len(sim.account().charges) == 16 and sim.account().paid_twice() == {}


async def test_a_killed_runs_directory_is_taken_over_with_a_message(make_sim, write_manifest, tmp_path) -> None:
    sim = await make_sim(SimSettings(latency_s=0.3))
    path, out = write_manifest(batch_manifest(4)), tmp_path / "out"
    # A kill between a submit's intent and its POST leaves a job the history will never show: the resume waits the
    # history's lag (120 s by default) before submitting it again; this simulator's history has none.
    args = ("run", str(path), "--out", str(out), "--rpm", "1000", "--poll-interval-s", "0.05", "--history-lag-s", "1")
    args += ("--no-progress",)
    first = await start_cli(*args, env=cli_env(sim))
    async with asyncio.timeout(30):
        while not (out / "run.log").exists() or "→ submitted" not in (out / "run.log").read_text():
            await asyncio.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    await first.wait()
    again = await run_cli_async(*args[:-1], env=cli_env(sim))  # with progress lines: warnings are printed
    assert again.code == 0, again.stderr
    said = f"took over this directory from a run that is gone (pid {first.pid}"
    assert said in again.stderr and said in (out / "run.log").read_text()
    store = read_state(out)
    assert store.owner() is None  # let go at the end
    store.close()


async def test_a_state_that_lost_rows_is_caught_by_run_log_not_trusted(make_sim, write_manifest, tmp_path) -> None:
    """A kill, then a damaged WAL: the state rolls back to before four paid submits. reconcile names them (its
    window starts at run.log's first line, not at the earliest attempt the state still has), and the next run
    carries on with them (run.log names them): nothing is paid twice."""
    sim = await make_sim(SimSettings(latency_s=0.5))
    out = tmp_path / "out"
    env = cli_env(sim)
    args = ("--out", str(out), "--rpm", "1000", "--poll-interval-s", "0.05", "--no-progress", "--history-lag-s", "1")
    first = await run_cli_async("run", str(write_manifest(batch_manifest(2))), *args, env=env)
    assert first.code == 0, first.stderr  # its state is checkpointed into state.db when it closes
    path = write_manifest(batch_manifest(6, extra="concurrency: 6\n"))
    second = await start_cli("run", str(path), *args, env=env)
    async with asyncio.timeout(30):
        while (out / "run.log").read_text().count("→ submitted") < 6:
            await asyncio.sleep(0.02)
    second.kill()
    await second.wait()
    (out / "state.db-wal").write_bytes(b"\0" * 64)  # garbled: SQLite drops it
    (out / "state.db-shm").unlink(missing_ok=True)
    store = read_state(out)
    assert len(store.jobs()) == 2  # the four new jobs and their requests are gone from the state
    store.close()
    await asyncio.sleep(0.6)  # the four generations finish (and are charged) meanwhile
    books = await run_cli_async("reconcile", "--out", str(out), env=env)
    assert books.code == 1
    assert books.stdout.count("run.log names it; the state lost it") == 4, books.stdout
    again = await run_cli_async("run", str(path), *args, env=env)
    assert again.code == 0, again.stderr
    assert_all_done(out, 6)
    assert len(sim.account().charges) == 6 and sim.account().paid_twice() == {}
    assert (out / "run.log").read_text().count("the state had lost request") == 4
    agreed = await run_cli_async("reconcile", "--out", str(out), env=env)
    assert agreed.code == 0, agreed.stdout
