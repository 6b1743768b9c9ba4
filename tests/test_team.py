"""A team on one account, on a real PostgreSQL: one budget, one pace, many workers on one batch.

Each test runs the real CLI (``batchgen run --state postgresql://…``) in subprocesses against one simulator on this
loop, and judges by the simulator's books: what was charged, what was paid twice, which submits met a 429.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
from pathlib import Path

import pytest

from batchgen.account import account_id
from batchgen.errors import StateError
from batchgen.pgstore import PgStore
from batchgen.simulator import DEFAULT_KEY
from batchgen.simulator.server import SimSettings
from tests.conftest import batch_manifest
from tests.runs import cli_env, run_cli_async, start_cli

pytestmark = pytest.mark.usefixtures("pg_server")


def _manifest(count: int, name: str) -> str:
    """``batch_manifest`` with prompts of its own (the simulator counts one payload bought twice as paid twice)."""
    return batch_manifest(count, name=name).replace("of a test batch", f"of the {name} batch")


def _env(sim, pg_url: str) -> dict[str, str]:
    return {**cli_env(sim), "BATCHGEN_STATE_URL": pg_url}


async def _finish(process: asyncio.subprocess.Process, timeout: float) -> tuple[int, str]:
    try:
        _, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode or 0, err.decode()


async def _runs(write_manifest, tmp_path: Path, env, jobs: dict[str, int], options, timeout: float):
    """Runs of manifests of their own (name → its number of jobs) at once, each in ``tmp_path / name``; (exit code,
    stderr) of each."""
    runs = []
    for name, count in jobs.items():
        path = write_manifest(_manifest(count, name), f"{name}.yaml")
        out = str(tmp_path / name)
        runs.append(await start_cli("run", str(path), "--out", out, "--no-progress", *options, env=env))
    return [await _finish(process, timeout) for process in runs]


def _state(pg_url: str, run: str, out: Path) -> PgStore:
    return PgStore.connect(pg_url, run, out, readonly=True)


async def test_two_runs_share_the_accounts_budget(make_sim, write_manifest, tmp_path: Path, pg_url: str) -> None:
    """Two manifests, concurrency 8 each, one $4 account budget: the provider's books stay within it."""
    sim = await make_sim(SimSettings(latency_s=0.3))
    env = _env(sim, pg_url)
    set_budget = await run_cli_async("account", "budget", "4", "--per", "week", env=env)
    assert set_budget.code == 0, set_budget.stderr
    assert "budget $4.00 a week" in set_budget.stdout and account_id(DEFAULT_KEY) in set_budget.stdout
    options = ("--concurrency", "8", "--rpm", "1000", "--history-lag-s", "1")
    results = await _runs(write_manifest, tmp_path, env, {"alpha": 12, "beta": 12}, options, timeout=60)
    assert all(code in (0, 3) for code, _ in results), results
    assert any(code == 3 for code, _ in results), "the budget never said no: the test proves nothing"
    account = sim.account(DEFAULT_KEY)
    charged = sum(charge.amount_micros for charge in account.charges)
    assert 0 < charged <= 4_000_000 and not account.paid_twice()
    reasons = set()
    for name in ("alpha", "beta"):
        state = _state(pg_url, name, tmp_path / name)
        try:
            reasons |= {job.reason for job in state.jobs(["skipped"])}
        finally:
            state.close()
    assert reasons and all((reason or "").startswith("over the account's budget ($4.00 a week)") for reason in reasons)
    status = await run_cli_async("status", "--json", env=env)
    assert status.code == 0, status.stderr
    (ledger,) = json.loads(status.stdout)["accounts"]
    assert round(ledger["spent_usd"] * 1e6) == charged and ledger["reserved_usd"] == 0
    text = await run_cli_async("status", env=env)
    assert f"account {account_id(DEFAULT_KEY)}: $4.00 a week" in text.stdout and "run alpha:" in text.stdout
    assert "2 run(s)" in text.stdout and "run beta:" in text.stdout
    runs_seen = {run["run"]: run for run in json.loads(status.stdout)["runs"]}
    assert set(runs_seen) == {"alpha", "beta"}
    assert round(sum(run["spent_usd"] for run in runs_seen.values()) * 1e6) == charged


@pytest.mark.timeout(180)
async def test_two_runs_share_the_accounts_pace(make_sim, write_manifest, tmp_path: Path, pg_url: str) -> None:
    """Two runs at --rpm 60 against a provider allowing the account 60 a minute: 70 submits, not one 429."""
    sim = await make_sim(SimSettings(rpm=60))
    env = _env(sim, pg_url)
    options = ("--concurrency", "40", "--rpm", "60")
    results = await _runs(write_manifest, tmp_path, env, {"left": 35, "right": 35}, options, timeout=150)
    assert [code for code, _ in results] == [0, 0], results
    account = sim.account(DEFAULT_KEY)
    refused = [seen for seen in account.requests if seen.status == 429]
    assert refused == [] and len(account.charges) == 70 and not account.paid_twice()


@pytest.mark.timeout(120)
async def test_a_killed_worker_s_jobs_are_finished_by_the_others(
    make_sim, write_manifest, tmp_path: Path, pg_url: str
) -> None:
    """Three workers on one manifest, each with a run directory of its own; one is SIGKILLed with jobs in flight:
    the others take them over after its lease, by request id. Every job done once, none paid twice."""
    sim = await make_sim(SimSettings(latency_s=1.5))
    env = _env(sim, pg_url)
    path = write_manifest(batch_manifest(24, name="night"))
    dirs = [tmp_path / f"machine{i}" / "night" for i in range(3)]
    args = ["--concurrency", "4", "--rpm", "1000", "--no-progress", "--lease-s", "3", "--history-lag-s", "2"]
    args += ["--poll-interval-s", "0.3"]
    workers = [await start_cli("run", str(path), "--out", str(out), *args, env=env) for out in dirs]
    try:
        held = await _in_flight_of(pg_url, dirs[0], at_least=2)
        workers[0].send_signal(signal.SIGKILL)
        await workers[0].wait()
        results = [await _finish(process, 90) for process in workers[1:]]
    finally:
        for process in workers:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert [code for code, _ in results] == [0, 0], results
    assert any("took over" in err for _, err in results), results
    state = _state(pg_url, "night", tmp_path)
    try:
        jobs = state.jobs()
        assert len(jobs) == 24 and {job.state for job in jobs} == {"done"}
        for job in jobs:
            directory = (job.placed_on or "").split(":", 1)[1]
            assert (Path(directory) / (job.video_path or "")).is_file()  # where `placed_on` says
        victim = str(dirs[0].resolve())
        assert all(not (job.placed_on or "").endswith(victim) for job in jobs if job.id in held)
        assert state.workers() == [] and state.money().reserved_micros == 0
    finally:
        state.close()
    account = sim.account(DEFAULT_KEY)
    assert not account.paid_twice() and len(account.charges) == 24
    report = await run_cli_async("report", "--out", str(dirs[1]), env=env)
    assert report.code == 0, report.stderr
    places = [line.strip().split(" on ", 1) for line in report.stdout.splitlines()[1:]]
    assert sum(int(count.split()[0]) for count, _ in places) == 24 and all(":" in place for _, place in places)
    status = await run_cli_async("status", "--out", str(dirs[1]), env=env)
    assert status.code == 0 and "24 done" in status.stdout and "account: no budget" in status.stdout
    here = len(list((dirs[1] / "videos").glob("*.mp4")))
    verify = await run_cli_async("verify", "--out", str(dirs[1]), env=env)  # the videos placed in that directory
    assert verify.code == 0 and f"{here} finished videos, {here} whole" in verify.stdout, verify.stdout


async def test_runs_meeting_a_price_above_the_table_stay_within_the_accounts_budget(
    make_sim, write_manifest, tmp_path: Path, pg_url: str
) -> None:
    """The provider charges twice the table: a price nobody has seen is bought once for the account, not once a
    run, so three runs together stay within a $5 budget (each alone held only its own: $6.05 was seen)."""
    sim = await make_sim(SimSettings(latency_s=0.3, price_factor=2.0))
    env = _env(sim, pg_url)
    assert (await run_cli_async("account", "budget", "5", env=env)).code == 0
    options = ("--concurrency", "8", "--rpm", "1000", "--history-lag-s", "1", "--poll-interval-s", "0.1")
    results = await _runs(write_manifest, tmp_path, env, {"one": 10, "two": 10, "three": 10}, options, timeout=60)
    assert all(code in (0, 3) for code, _ in results), results
    account = sim.account(DEFAULT_KEY)
    charged = sum(charge.amount_micros for charge in account.charges)
    assert 0 < charged <= 5_000_000 and not account.paid_twice()


async def test_a_worker_with_another_manifest_or_budget_is_refused(
    make_sim, write_manifest, tmp_path: Path, pg_url: str
) -> None:
    """Two workers started together with different manifests: one is refused (checked under the run's lock), and a
    worker joining with a budget of its own too; the first finishes every job."""
    sim = await make_sim(SimSettings(latency_s=1.0))
    env = _env(sim, pg_url)
    first = write_manifest(batch_manifest(6, name="night"), "a.yaml")
    edited = write_manifest(batch_manifest(6, name="night").replace("test batch", "edited batch"), "b.yaml")
    args = ("--rpm", "1000", "--no-progress", "--poll-interval-s", "0.2")
    paths = (first, edited)
    together = [
        asyncio.create_task(_finish(await start_cli("run", str(path), "--out", str(tmp_path / f"m{n}" / "night"),
                                                    *args, env=env), 60))
        for n, path in enumerate(paths)
    ]  # fmt: skip
    finished, _ = await asyncio.wait(together, return_when=asyncio.FIRST_COMPLETED)  # the one refused
    (loser,) = finished
    code, refused = loser.result()
    assert code == 2 and "run it with another manifest" in refused and "Traceback" not in refused
    winner = paths[1 - together.index(loser)]
    late = await run_cli_async("run", str(winner), "--out", str(tmp_path / "m2" / "night"), *args, "--budget", "1",
                               env=env)  # fmt: skip
    assert late.code == 2 and "run it with another budget" in late.stderr
    code, err = await together[1 - together.index(loser)]
    assert code == 0, err
    state = _state(pg_url, "night", tmp_path)
    try:
        assert state.counts()["done"] == 6 and state.manifest_job_count() == 6
    finally:
        state.close()


async def test_a_shared_run_s_directory_says_where_its_state_is(
    make_sim, write_manifest, tmp_path: Path, pg_url: str
) -> None:
    sim = await make_sim()
    out = tmp_path / "night"
    done = await run_cli_async(
        "run", str(write_manifest(batch_manifest(2, name="night"))), "--out", str(out), "--no-progress",
        "--state", pg_url, env=cli_env(sim),
    )  # fmt: skip
    assert done.code == 0, done.stderr
    assert not (out / "state.db").exists() and "batchgen:" not in (out / "state.link").read_text()  # no password
    status = await run_cli_async("status", "--out", str(out), env=cli_env(sim))
    assert status.code == 2 and "is in PostgreSQL" in status.stderr and "--state" in status.stderr
    assert "Traceback" not in status.stderr
    wrong = await run_cli_async("status", "--out", str(out), "--state", "mysql://x", env=cli_env(sim))
    assert wrong.code == 2 and "not a PostgreSQL URL" in wrong.stderr
    for command in ("report", "retry"):  # a run name that is not there: said, and no run is made of it
        typo = await run_cli_async(command, "--out", str(tmp_path / "nigth"), "--state", pg_url, env=cli_env(sim))
        assert typo.code == 2 and "no run 'nigth'" in typo.stderr and not (tmp_path / "nigth").exists()
    listed = await run_cli_async("status", "--state", pg_url, "--json", env=cli_env(sim))
    assert [run["run"] for run in json.loads(listed.stdout)["runs"]] == ["night"]
    gone = await run_cli_async(
        "status", "--out", str(out), "--state", "postgresql://nobody:secret@127.0.0.1:1/none", env=cli_env(sim)
    )
    assert gone.code == 2 and "cannot reach the state database" in gone.stderr and "secret" not in gone.stderr


async def _in_flight_of(pg_url: str, out: Path, *, at_least: int) -> set[str]:
    """The ids of the jobs the worker of run directory ``out`` holds in flight, once it holds ``at_least``."""
    place = str(out.resolve())
    for _ in range(400):
        await asyncio.sleep(0.05)
        try:
            state = _state(pg_url, "night", out)
        except StateError:
            continue  # not begun yet
        try:
            rows = state.db.execute(
                "SELECT j.id FROM jobs j JOIN workers w ON w.token = j.worker WHERE w.place LIKE ? "
                "AND j.state IN ('submitting', 'submitted')",
                (f"%:{place}",),
            ).fetchall()
        finally:
            state.close()
        if len(rows) >= at_least:
            return {row[0] for row in rows}
    raise AssertionError(f"the worker of {out} never held {at_least} jobs in flight")


async def test_a_worker_paused_past_its_lease_does_not_send_the_submit_it_began(
    make_sim, write_manifest, tmp_path: Path, pg_url: str
) -> None:
    """A worker wrote the intent of a submit, then was paused (a laptop asleep, SIGSTOP) past its lease; another took
    the job over. Woken, it sends nothing: before a POST, a worker not heard from lately renews its lease or stops."""
    import time

    from batchgen import expand, load_manifest
    from batchgen.client import Client
    from batchgen.outputs import RunDir
    from batchgen.runner import Runner, RunSettings

    sim = await make_sim()
    jobs = expand(load_manifest(write_manifest(batch_manifest(2, name="night"))))
    paused = PgStore.connect(pg_url, "night", tmp_path / "a", account="acct")
    taker = PgStore.connect(pg_url, "night", tmp_path / "b", account="acct")
    try:
        paused.claim("paused", 1, "h", time.time(), lambda owner: False)
        paused.sync_jobs(jobs, [504_000] * 2, ["c"] * 2, time.time())
        job = paused.next_pending(time.time())
        assert job is not None and paused.begin_attempt(job.id, "v2", 504_000, lambda money: True, time.time())
        taker.claim("taker", 2, "h", time.time(), lambda owner: False)
        taker.db.execute("UPDATE workers SET heartbeat_at = heartbeat_at - 3600 WHERE token = 'paused'")
        assert [taken.id for taken in taker.take_over(time.time())] == [job.id]
        run_dir = RunDir(tmp_path / "a")
        run_dir.prepare()
        async with Client(sim.base_url, DEFAULT_KEY) as client:
            runner = Runner(paused, run_dir, client, RunSettings(heartbeat_s=0.5))
            runner._heard_at -= 3600  # asleep since its last heartbeat
            try:
                with pytest.raises(StateError, match="took its jobs over"):
                    await runner._post_v2(paused.job(job.id))
            finally:
                runner._log.close()
        assert sim.account(DEFAULT_KEY).requests == []  # nothing sent: the taker alone decides about it
    finally:
        paused.close()
        taker.close()


async def test_two_kinds_of_clip_at_unseen_prices_are_not_bought_blind_at_once(
    make_sim, write_manifest, tmp_path: Path, pg_url: str
) -> None:
    """Two runs, each a kind of clip nobody knows the price of (3 s and 5 s), the provider charging twice the table,
    a $2 account budget: one is bought blind, the other waits for it and reserves what the provider charges."""
    sim = await make_sim(SimSettings(latency_s=0.5, price_factor=2.0))
    env = _env(sim, pg_url)
    assert (await run_cli_async("account", "budget", "2", env=env)).code == 0
    runs = []
    for name, seconds in (("short", 3), ("long", 5)):
        path = write_manifest(batch_manifest(1, name=name, duration=seconds), f"{name}.yaml")
        runs.append(await start_cli("run", str(path), "--out", str(tmp_path / name), "--no-progress",
                                    "--poll-interval-s", "0.1", env=env))  # fmt: skip
    results = [await _finish(process, 60) for process in runs]
    assert all(code in (0, 3) for code, _ in results), results
    charged = sum(charge.amount_micros for charge in sim.account(DEFAULT_KEY).charges)
    assert 0 < charged <= 2_000_000


async def test_a_run_gone_holds_no_other_run_of_the_account_back(
    make_sim, write_manifest, tmp_path: Path, pg_url: str
) -> None:
    """A run killed with a job in flight (its price unknown) leaves it to its own resume: another run of the same
    kind of clip goes on, with no budget and with one."""
    sim = await make_sim(SimSettings(latency_s=30.0))
    env = _env(sim, pg_url)
    gone = write_manifest(_manifest(2, "gone"), "gone.yaml")
    process = await start_cli("run", str(gone), "--out", str(tmp_path / "gone"), "--no-progress", "--lease-s", "3",
                              env=env)  # fmt: skip
    for _ in range(200):
        await asyncio.sleep(0.05)
        if sim.account(DEFAULT_KEY).requests:
            break
    process.kill()
    await process.wait()
    await asyncio.sleep(3.5)  # its lease runs out
    sim.settings = dataclasses.replace(sim.settings, latency_s=0.2)
    assert (await run_cli_async("account", "budget", "100", env=env)).code == 0
    other = await start_cli("run", str(write_manifest(_manifest(2, "other"), "other.yaml")), "--out",
                            str(tmp_path / "other"), "--no-progress", "--poll-interval-s", "0.1", "--rpm", "1000",
                            "--progress-every-s", "1", env=env)  # fmt: skip
    try:
        _, err = await asyncio.wait_for(other.communicate(), 45)
    except TimeoutError:
        other.terminate()
        _, err = await other.communicate()
        raise AssertionError(f"the other run waited: {err.decode()[-3000:]}") from None
    assert other.returncode == 0, err.decode()


async def test_workers_stopped_by_the_run_s_budget_all_end(
    make_sim, write_manifest, tmp_path: Path, pg_url: str
) -> None:
    """Two workers of one run under its $1.20 budget: when it is spent, both end (exit 3), neither waiting for a
    reservation of the other's to end (one used to wait for a change only its own process could make)."""
    sim = await make_sim(SimSettings(latency_s=1.0))
    env = _env(sim, pg_url)
    path = write_manifest(batch_manifest(6, name="bud"))
    args = ("--budget", "1.2", "--concurrency", "2", "--rpm", "1000", "--lease-s", "6", "--no-progress",
            "--poll-interval-s", "0.2")  # fmt: skip
    workers = [await start_cli("run", str(path), "--out", str(tmp_path / f"m{n}" / "bud"), *args, env=env)
               for n in range(2)]  # fmt: skip
    results = [await _finish(process, 60) for process in workers]
    assert [code for code, _ in results] == [3, 3], results
    charged = sum(charge.amount_micros for charge in sim.account(DEFAULT_KEY).charges)
    assert 0 < charged <= 1_200_000
