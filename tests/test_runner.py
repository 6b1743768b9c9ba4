"""The runner against the simulator over loopback: caps, money, retries, resume, outputs."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import threading
import time
from pathlib import Path

import pytest

from batchgen import load_manifest
from batchgen.errors import ExitCode
from batchgen.runner import _in_thread, backoff_s
from batchgen.simulator.faults import Fault, FaultPlan, parse_script
from batchgen.simulator.server import SimSettings
from batchgen.store import Store
from tests.conftest import batch_manifest
from tests.runs import assert_all_done, read_state, run_in_process


@pytest.mark.parametrize("transport", ["v2", "v1"])
async def test_happy_path_holds_the_concurrency_cap(make_sim, write_manifest, tmp_path: Path, transport: str) -> None:
    sim = await make_sim(SimSettings(latency_s=0.15))
    path = write_manifest(batch_manifest(9, extra="concurrency: 3\n"))
    result = await run_in_process(path, tmp_path / "out", sim, transport=transport)
    assert result.exit_code == ExitCode.OK
    assert_all_done(tmp_path / "out", 9)
    account = sim.account()
    assert account.peak_in_progress == 3
    assert len(account.charges) == 9 and not account.paid_twice()
    assert result.money.spent_micros == account.spent_micros == 9 * 504_000
    run_log = (tmp_path / "out" / "run.log").read_text()
    assert run_log.count("→ submit (attempt 1)") == 9 and run_log.count("← done") == 9


async def test_a_v2_slot_is_free_once_the_generation_is_over_and_only_once(
    make_sim, write_manifest, tmp_path: Path
) -> None:
    # The second job's result fails twice after its status said COMPLETED: the next job is submitted meanwhile (the
    # generation is over; the first job told the price), and the polls that see COMPLETED again give no second slot
    # back (a fourth job would then run beside the third).
    faults = FaultPlan(script=parse_script("result:2=500,result:3=500"))
    sim = await make_sim(SimSettings(latency_s=0.15), faults=faults)
    path = write_manifest(batch_manifest(4, extra="concurrency: 1\n"))
    result = await run_in_process(path, tmp_path / "out", sim, transport="v2", poll_interval_s=0.02)
    assert result.exit_code == ExitCode.OK
    assert_all_done(tmp_path / "out", 4)
    assert sim.account().peak_in_progress == 1 and len(sim.account().charges) == 4
    store = read_state(tmp_path / "out")
    _, second, third, _ = store.jobs()
    store.close()
    assert second.completed_at and third.submitted_at and third.submitted_at < second.completed_at


@pytest.mark.parametrize("mode", ["url", "base64"])
async def test_v1_json_answers_are_handled(make_sim, write_manifest, tmp_path: Path, mode: str) -> None:
    sim = await make_sim(SimSettings(v1_mode=mode))
    path = write_manifest(batch_manifest(3))
    result = await run_in_process(path, tmp_path / "out", sim, transport="v1")
    assert result.exit_code == ExitCode.OK
    assert_all_done(tmp_path / "out", 3)


async def test_budget_holds_with_sixteen_in_flight(make_sim, write_manifest, tmp_path: Path) -> None:
    sim = await make_sim(SimSettings(latency_s=0.2))
    budget = 7 * 0.504 + 0.3  # seven jobs fit, the eighth does not
    path = write_manifest(batch_manifest(20, extra=f"budget: {budget}\nconcurrency: 16\n"))
    result = await run_in_process(path, tmp_path / "out", sim)
    assert result.exit_code == ExitCode.BUDGET
    assert sim.account().spent_micros <= round(budget * 1_000_000)
    assert len(sim.account().charges) == 7
    assert (result.counts["done"], result.counts["skipped"]) == (7, 13)
    store = read_state(tmp_path / "out")
    assert all("over budget" in (job.reason or "") for job in store.jobs(["skipped"]))
    store.close()


async def test_budget_counts_what_earlier_runs_spent(make_sim, write_manifest, tmp_path: Path) -> None:
    sim = await make_sim()
    path = write_manifest(batch_manifest(4, extra="budget: 1.10\n"))
    first = await run_in_process(path, tmp_path / "out", sim)
    assert (first.exit_code, first.counts["done"]) == (ExitCode.BUDGET, 2)
    second = await run_in_process(path, tmp_path / "out", sim)
    assert (second.exit_code, second.counts["done"]) == (ExitCode.BUDGET, 2)
    assert len(sim.account().charges) == 2
    third = await run_in_process(path, tmp_path / "out", sim, budget_micros=2_100_000)
    assert (third.exit_code, third.counts["done"]) == (ExitCode.OK, 4)
    assert len(sim.account().charges) == 4


async def test_a_429_pauses_every_submit_until_the_reset(make_sim, write_manifest, tmp_path: Path) -> None:
    # With a budget the first job runs alone (it tells the price): nothing else is on its way when its 429 comes.
    faults = FaultPlan(script=parse_script("submit:1=429"))
    sim = await make_sim(SimSettings(fault_429_reset_s=0.4, latency_s=0.2), faults)
    path = write_manifest(batch_manifest(5, extra="concurrency: 2\nbudget: 100\n"))
    result = await run_in_process(path, tmp_path / "out", sim)
    assert result.exit_code == ExitCode.OK
    requests = sim.account().requests
    limited = next(r for r in requests if r.status == 429)
    after = [r.at for r in requests if r.at > limited.at]
    assert after and min(after) >= limited.at + 0.4 - 0.01
    assert len(sim.account().charges) == 5


async def test_406_stops_submitting_and_resumes_after_a_top_up(make_sim, write_manifest, tmp_path: Path) -> None:
    sim = await make_sim(SimSettings(credits_usd=1.2))
    path = write_manifest(batch_manifest(5, extra="concurrency: 1\n"))
    first = await run_in_process(path, tmp_path / "out", sim)
    assert first.exit_code == ExitCode.PROVIDER
    assert "Insufficient credits" in (first.stop_message or "")
    assert (first.counts["done"], first.counts["pending"]) == (2, 3)
    sim.add_credits(10)
    second = await run_in_process(path, tmp_path / "out", sim)
    assert second.exit_code == ExitCode.OK
    assert len(sim.account().charges) == 5 and not sim.account().paid_twice()


async def test_401_stops_at_once(make_sim, write_manifest, tmp_path: Path) -> None:
    sim = await make_sim()
    path = write_manifest(batch_manifest(30, extra="concurrency: 8\n"))
    result = await run_in_process(path, tmp_path / "out", sim, key="wrong-key")
    assert result.exit_code == ExitCode.PROVIDER
    assert "Invalid API key" in (result.stop_message or "")
    assert sum(sim.hits.values()) <= 2  # the balance check, and nothing more
    assert result.counts["pending"] == 30


async def test_401_on_submit_when_the_balance_check_is_off(make_sim, write_manifest, tmp_path: Path) -> None:
    sim = await make_sim()
    path = write_manifest(batch_manifest(30, extra="concurrency: 8\n"))
    result = await run_in_process(path, tmp_path / "out", sim, key="wrong-key", check_credits=False)
    assert result.exit_code == ExitCode.PROVIDER
    assert sum(sim.hits.values()) <= 8
    assert result.money.spent_micros == 0 and result.money.reserved_micros == 0


async def test_broken_downloads_are_retried_without_a_new_charge(make_sim, write_manifest, tmp_path: Path) -> None:
    faults = FaultPlan(script=parse_script("download:1=drop@0.5,download:2=short@0.3,download:3=drop@0.9"))
    sim = await make_sim(faults=faults)
    path = write_manifest(batch_manifest(3))
    result = await run_in_process(path, tmp_path / "out", sim)
    assert result.exit_code == ExitCode.OK
    assert_all_done(tmp_path / "out", 3)
    assert len(sim.account().charges) == 3
    assert sim.hits["/files/{request_id}.mp4"] == 6


async def test_failed_generations_and_5xx_are_retried_and_not_billed(make_sim, write_manifest, tmp_path: Path) -> None:
    faults = FaultPlan(script=parse_script("submit:1=fail,submit:2=502,submit:3=500,submit:4=fail"))
    sim = await make_sim(faults=faults)
    path = write_manifest(batch_manifest(2, extra="concurrency: 1\n"))
    result = await run_in_process(path, tmp_path / "out", sim)
    assert result.exit_code == ExitCode.OK
    assert len(sim.account().charges) == 2
    assert result.money.spent_micros == 2 * 504_000
    store = read_state(tmp_path / "out")
    outcomes = [[a.outcome for a in store.attempts(job.id)] for job in store.jobs()]
    store.close()
    assert sum(map(len, outcomes)) == 6  # four failed attempts, shared by the two jobs as scheduling falls
    assert all(attempts[-1] == "ok" and set(attempts[:-1]) <= {"retry"} for attempts in outcomes)


async def test_attempts_run_out(make_sim, write_manifest, tmp_path: Path) -> None:
    sim = await make_sim(faults=FaultPlan(rates={"rate_502": 1.0}))
    path = write_manifest(batch_manifest(1))
    result = await run_in_process(path, tmp_path / "out", sim, max_attempts=3)
    assert result.exit_code == ExitCode.JOBS_FAILED
    store = read_state(tmp_path / "out")
    (job,) = store.jobs()
    assert job.state == "failed" and job.reason == "gave up after 3 attempts: Bad gateway"
    assert [a.money for a in store.attempts(job.id)] == ["released"] * 3
    log = json.loads((tmp_path / "out" / "logs" / f"{job.id}.json").read_text())
    assert [a["http_status"] for a in log["attempts"]] == [502, 502, 502]
    store.close()


async def test_bad_request_fails_the_job_for_good(make_sim, write_manifest, tmp_path: Path) -> None:
    sim = await make_sim(faults=FaultPlan(script=parse_script("submit:1=400")))
    path = write_manifest(batch_manifest(2, extra="concurrency: 1\n"))
    result = await run_in_process(path, tmp_path / "out", sim)
    assert (result.exit_code, result.counts["failed"], result.counts["done"]) == (ExitCode.JOBS_FAILED, 1, 1)


async def test_an_expired_request_becomes_lost(make_sim, write_manifest, tmp_path: Path) -> None:
    sim = await make_sim(SimSettings(latency_s=5, ttl_s=0.05))
    path = write_manifest(batch_manifest(2))
    result = await run_in_process(path, tmp_path / "out", sim, poll_interval_s=0.1, history=False)
    assert (result.exit_code, result.counts["lost"]) == (ExitCode.JOBS_FAILED, 2)
    store = read_state(tmp_path / "out")
    for job in store.jobs():
        assert job.request_id and job.request_id in (job.reason or "")
    assert store.money().ambiguous_micros == 2 * 504_000  # accepted requests: possibly billed
    store.close()


async def test_dropped_submit_is_possibly_billed_twice(make_sim, write_manifest, tmp_path: Path) -> None:
    sim = await make_sim(faults=FaultPlan(script={("submit", 1): Fault("drop")}))
    path = write_manifest(batch_manifest(1))
    result = await run_in_process(path, tmp_path / "out", sim, history=False)
    assert result.exit_code == ExitCode.OK
    store = read_state(tmp_path / "out")
    (job,) = store.jobs()
    assert job.possibly_billed_twice
    assert [a.money for a in store.attempts(job.id)] == ["ambiguous", "settled"]
    assert store.money().spent_micros == 2 * 504_000 == sim.account().spent_micros
    store.close()


async def test_reconcile_adds_new_jobs_and_keeps_removed_ones(make_sim, write_manifest, tmp_path: Path) -> None:
    sim = await make_sim()
    await run_in_process(write_manifest(batch_manifest(3)), tmp_path / "out", sim)
    edited = batch_manifest(3).replace("[0, 1, 2]", "[1, 2, 3, 4]")
    result = await run_in_process(write_manifest(edited), tmp_path / "out", sim)
    assert result.exit_code == ExitCode.OK
    assert len(sim.account().charges) == 5  # only jobs 3 and 4 were new
    store = read_state(tmp_path / "out")
    gone = [job for job in store.jobs() if not job.in_manifest]
    assert len(gone) == 1 and gone[0].state == "done" and "clip-0-" in gone[0].id
    store.close()


async def test_deadline_in_the_past_skips_everything(make_sim, write_manifest, tmp_path: Path) -> None:
    sim = await make_sim()
    result = await run_in_process(write_manifest(batch_manifest(2)), tmp_path / "out", sim, deadline=1.0)
    assert (result.exit_code, result.counts["skipped"]) == (ExitCode.BUDGET, 2)
    assert sum(sim.hits.values()) <= 1


@pytest.mark.parametrize("transport", ["v2", "v1"])
async def test_the_deadline_learns_how_long_jobs_take(make_sim, write_manifest, tmp_path: Path, transport: str) -> None:
    # The model says 10 ms; the provider takes 0.4 s. Jobs one at a time, the deadline 1.1 s away: once the first job
    # has taken 0.4 s, the third, due at 0.8 s, would end late, and is not started (it was, trusting the model).
    sim = await make_sim(SimSettings(latency_s=0.4))
    manifest = write_manifest(batch_manifest(6, extra="concurrency: 1\n"))
    model = dataclasses.replace(load_manifest(manifest).model, typical_generation_s=0.01)
    deadline = time.time() + 1.1
    result = await run_in_process(manifest, tmp_path / "out", sim, model=model, transport=transport, deadline=deadline)
    assert result.exit_code == ExitCode.BUDGET and 1 <= result.counts["done"] <= 2
    store = read_state(tmp_path / "out")
    assert all(job.finished_at and job.finished_at <= deadline for job in store.jobs(["done"]))
    store.close()


def test_backoff_is_full_jitter_and_capped() -> None:
    assert [backoff_s(n, 2.0, 300.0, 1.0) for n in (1, 2, 3, 9, 20)] == [2.0, 4.0, 8.0, 300.0, 300.0]
    assert backoff_s(3, 2.0, 300.0, 0.5) == 4.0
    assert backoff_s(3, 0.0, 300.0, 0.9) == 0.0


@pytest.mark.parametrize("transport", ["v2", "v1"])
async def test_a_video_placed_just_before_a_stop_is_kept_not_bought_again(
    make_sim, write_manifest, tmp_path: Path, transport: str
) -> None:
    """A stop between a video's rename and its ``done`` (the state still says downloading): the next run keeps the
    file it placed instead of paying again (v1 answers have no URL to fetch again) or downloading it again."""
    sim = await make_sim()
    path = write_manifest(batch_manifest(3))
    out = tmp_path / "out"
    await run_in_process(path, out, sim, transport=transport)
    store = Store.open(out / "state.db")
    job = store.jobs(["done"])[0]
    with store.transaction() as db:
        db.execute(
            "UPDATE jobs SET state = 'downloading', video_path = NULL, sha256 = NULL, probe = NULL, video_url = "
            "CASE WHEN ? = 'v1' THEN NULL ELSE video_url END WHERE id = ?",
            (transport, job.id),
        )
    store.close()
    (out / "logs" / f"{job.id}.json").unlink()
    downloads = sim.hits["/files/{request_id}.mp4"]
    result = await run_in_process(path, out, sim, transport=transport)
    assert result.exit_code == ExitCode.OK
    assert_all_done(out, 3)
    assert len(sim.account().charges) == 3 and sim.hits["/files/{request_id}.mp4"] == downloads
    assert f"{job.id} ← done: videos/{job.id}.mp4" in (out / "run.log").read_text()
    assert "placed before the last stop" in (out / "run.log").read_text()


async def test_file_work_in_a_thread_runs_to_its_end_through_a_cancel() -> None:
    """A cancel (a stop) that comes while the work waits for a free thread must not drop it: a batch of videos
    half placed, or logs never written. Plain ``to_thread`` drops it; ``_in_thread`` runs it and is then cancelled."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=1))
    busy, ran = threading.Event(), []
    blocker = asyncio.ensure_future(asyncio.to_thread(busy.wait))  # the only thread is taken
    task = asyncio.create_task(_in_thread(ran.append, "placed"))
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.sleep(0.01)
    busy.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    await blocker
    assert ran == ["placed"]
