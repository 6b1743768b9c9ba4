"""The provider's request history: the simulator's endpoints, and the runner never paying twice with it."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from batchgen.errors import ExitCode
from batchgen.simulator import DEFAULT_KEY
from batchgen.simulator.faults import Fault, FaultPlan, parse_script
from batchgen.simulator.server import SimSettings
from tests.conftest import batch_manifest
from tests.runs import assert_all_done, cli_env, read_state, run_cli_async, run_in_process, serving

MODEL = "kling-3-standard-text2video"
KEY = {"x-api-key": DEFAULT_KEY}
HISTORY = "/inference-request/request-history"
# Every answer whole at once, and every answer in pieces of 256 bytes 1 ms apart (a page of rows is kilobytes).
LINKS = {"loopback": {}, "trickle": {"trickle_bytes": 256, "trickle_gap_s": 0.001}}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0  # 2027-01-15T08:00:00Z

    def __call__(self) -> float:
        return self.now


async def test_history_rows_paging_window_and_lag(make_sim) -> None:
    clock = Clock()
    sim = await make_sim(SimSettings(history_lag_s=5), FaultPlan(script={("submit", 2): Fault("fail")}), clock=clock)
    async with aiohttp.ClientSession(headers=KEY) as http:
        for n in range(5):
            await (await http.post(f"{sim.base_url}/v2/{MODEL}", json={"prompt": f"p{n}", "duration": "3"})).release()
        async with http.get(f"{sim.base_url}{HISTORY}") as r:
            assert (await r.json())["total"] == 0  # not landed yet
        clock.now += 5
        async with http.get(f"{sim.base_url}{HISTORY}", params={"per_page": "2", "page": "2"}) as r:
            page = await r.json()
        assert (page["total"], page["total_pages"], len(page["data"])) == (5, 3, 2)
        async with http.get(f"{sim.base_url}{HISTORY}", params={"per_page": "100", "status": "FAILED"}) as r:
            (failed,) = (await r.json())["data"]
        assert failed["credits_deduction"] == 0.0 and failed["error"] and failed["generation_url"] is None
        async with http.get(f"{sim.base_url}{HISTORY}", params={"per_page": "100"}) as r:
            rows = (await r.json())["data"]
        done = next(row for row in rows if row["model_status"] == "COMPLETED")
        assert set(done) == {
            "request_id",
            "model_name",
            "model_status",
            "credits_deduction",
            "request_body",
            "generation_url",
            "latency_ms",
            "created_at",
            "updated_at",
            "error",
        }
        assert done["credits_deduction"] == 0.756 and done["model_name"] == MODEL
        assert done["request_body"]["prompt"].startswith("p") and done["generation_url"].endswith(".mp4")
        assert [row["created_at"] for row in rows] == sorted((row["created_at"] for row in rows), reverse=True)
        for bad in ({"per_page": "101"}, {"page": "0"}, {"from_date": "2026-11-01", "to_date": "2027-01-15"}):
            async with http.get(f"{sim.base_url}{HISTORY}", params=bad) as r:
                assert r.status == 400
        async with http.get(f"{sim.base_url}{HISTORY}", params={"from_date": "2027-01-16"}) as r:
            assert r.status == 400  # from after to
        clock.now += 10 * 86400  # far past the 1-hour TTL of the status endpoint
        async with http.get(f"{sim.base_url}{HISTORY}/{done['request_id']}") as r:
            assert (await r.json())["request_id"] == done["request_id"]
        async with http.get(f"{sim.base_url}/v2/requests/{done['request_id']}/status") as r:
            assert r.status == 404
        async with http.get(f"{sim.base_url}{HISTORY}/no-such-id") as r:
            assert r.status == 404


@pytest.mark.parametrize("link", LINKS)
@pytest.mark.parametrize("transport", ["v2", "v1"])
async def test_every_dropped_submit_is_adopted_not_paid_twice(
    make_sim, write_manifest, tmp_path, transport, link
) -> None:
    faults = FaultPlan(script=parse_script(",".join(f"submit:{n}=drop" for n in range(1, 6))))
    sim = await make_sim(SimSettings(latency_s=0.05, **LINKS[link]), faults)
    path, out = write_manifest(batch_manifest(8, extra="concurrency: 4\n")), tmp_path / "out"
    result = await run_in_process(path, out, sim, transport=transport)
    assert result.exit_code == ExitCode.OK
    assert_all_done(out, 8)
    assert sim.account().paid_twice() == {} and len(sim.account().charges) == 8
    store = read_state(out)
    assert not any(job.possibly_billed_twice for job in store.jobs())
    assert store.money().spent_micros == sim.account().spent_micros and store.money().ambiguous_micros == 0
    store.close()
    assert (out / "run.log").read_text().count("in the provider's history: adopted") == 5


@pytest.mark.parametrize("link", LINKS)
async def test_a_request_past_its_ttl_is_recovered_with_no_new_charge(make_sim, write_manifest, tmp_path, link) -> None:
    sim = await make_sim(SimSettings(latency_s=0.3, ttl_s=0.05, **LINKS[link]))
    path, out = write_manifest(batch_manifest(3)), tmp_path / "out"
    result = await run_in_process(path, out, sim, poll_interval_s=0.1)
    assert result.exit_code == ExitCode.OK
    assert_all_done(out, 3)
    assert len(sim.account().charges) == 3 and len([r for r in sim.account().requests if r.status == 200]) == 3
    store = read_state(out)
    assert store.money().settled_micros == sim.account().spent_micros and store.money().ambiguous_micros == 0
    store.close()


async def test_history_lag_longer_than_the_allowance_resubmits_and_says_so(make_sim, write_manifest, tmp_path) -> None:
    sim = await make_sim(SimSettings(history_lag_s=30), FaultPlan(script={("submit", 1): Fault("drop")}))
    path, out = write_manifest(batch_manifest(1)), tmp_path / "out"
    result = await run_in_process(path, out, sim, history_lag_s=0.2)
    assert result.exit_code == ExitCode.OK
    store = read_state(out)
    (job,) = store.jobs()
    first = store.attempts(job.id)[0]
    assert job.possibly_billed_twice and first.outcome == "unresolved" and first.money == "ambiguous"
    assert "not in the provider's request history after 0.2 s" in (first.message or "")
    store.close()
    assert len(sim.account().paid_twice()) == 1  # the lag hid the first request: the state says so


async def test_reconcile_agrees_after_a_clean_run_and_names_a_difference(make_sim, write_manifest, tmp_path) -> None:
    sim = await make_sim()
    path, out = write_manifest(batch_manifest(3)), tmp_path / "out"
    await run_in_process(path, out, sim)
    clean = await run_cli_async("reconcile", "--out", str(out), env=cli_env(sim))
    assert clean.code == 0, clean.stderr
    assert "the books agree" in clean.stdout and "$1.512 billed" in clean.stdout
    async with aiohttp.ClientSession(headers=KEY) as http:  # a charge made outside the run, for a job's payload
        store = read_state(out)
        payload = store.jobs()[0].payload
        store.close()
        await (await http.post(f"{sim.base_url}/v2/{MODEL}", json=payload)).release()
    differ = await run_cli_async("reconcile", "--out", str(out), "--json", env=cli_env(sim))
    assert differ.code == 1
    import json

    data = json.loads(differ.stdout)
    assert not data["agree"] and len(data["billed_unknown_to_state"]) == 1
    assert data["billed_unknown_to_state"][0]["job"] is not None
    assert data["provider_billed_usd"] == pytest.approx(4 * 0.504)


@pytest.mark.parametrize("link", LINKS)
async def test_lost_v1_answer_after_a_kill_is_fetched_from_history(make_sim, write_manifest, tmp_path, link) -> None:
    sim = await make_sim(SimSettings(**LINKS[link]))
    path, out = write_manifest(batch_manifest(2)), tmp_path / "out"
    await run_in_process(path, out, sim, transport="v1")
    store = read_state(out)
    job = store.jobs()[0]
    store.close()
    import sqlite3

    with sqlite3.connect(out / "state.db") as db:  # as if killed between the 200 and the saved file
        db.execute("UPDATE jobs SET state = 'downloading', video_url = NULL WHERE id = ?", (job.id,))
    (out / (job.video_path or "")).unlink()
    result = await run_in_process(path, out, sim, transport="v1")
    assert result.exit_code == ExitCode.OK
    assert_all_done(out, 2)
    assert len(sim.account().charges) == 2


async def test_an_unreachable_history_is_asked_once_not_once_per_ambiguous_job(
    make_sim, write_manifest, tmp_path
) -> None:
    """Each ambiguous job would otherwise wait for the same failing history (a 30 s timeout each, offline)."""
    hits = []

    async def unavailable(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.json_response({"error": "down for maintenance"}, status=503)

    app = web.Application()
    app.router.add_get(HISTORY, unavailable)
    async with serving(app) as history_url:
        # The first job tells the price (it runs alone); the three after it are submitted together and dropped.
        faults = FaultPlan(script=parse_script("submit:2=drop,submit:3=drop,submit:4=drop"))
        sim = await make_sim(SimSettings(latency_s=0.05), faults)
        path, out = write_manifest(batch_manifest(4, extra="concurrency: 3\n")), tmp_path / "out"
        result = await run_in_process(path, out, sim, history_url=history_url)
    assert result.exit_code == ExitCode.OK
    assert_all_done(out, 4)
    assert len(hits) == 1
    log = (out / "run.log").read_text()
    assert log.count("could not be read") == 1 and log.count("the request history is unreachable") == 2
    store = read_state(out)
    assert [job.possibly_billed_twice for job in store.jobs()] == [False, True, True, True]  # said, not hidden
    store.close()


@pytest.mark.parametrize("shape", ["items", "results", "epoch"])
async def test_the_likely_shapes_of_the_history_find_every_lost_submit(
    make_sim, write_manifest, tmp_path, shape
) -> None:
    faults = FaultPlan(script=parse_script("submit:1=drop,submit:3=drop"))
    sim = await make_sim(SimSettings(latency_s=0.05, history_shape=shape), faults)
    path, out = write_manifest(batch_manifest(4, extra="concurrency: 2\n")), tmp_path / "out"
    result = await run_in_process(path, out, sim)
    assert result.exit_code == ExitCode.OK
    assert sim.account().paid_twice() == {} and len(sim.account().charges) == 4
    assert (out / "run.log").read_text().count("in the provider's history: adopted") == 2


async def test_a_history_in_a_shape_it_cannot_read_is_said_out_loud(make_sim, write_manifest, tmp_path) -> None:
    """Rows where it does not look, without timestamps: said in run.log and by status, and the fallback is that of a
    history that does not answer (submitted again, flagged possibly billed twice), never "not there"."""
    faults = FaultPlan(script=parse_script("submit:1=drop"))
    sim = await make_sim(SimSettings(latency_s=0.05, history_shape="unknown"), faults)
    path, out = write_manifest(batch_manifest(2)), tmp_path / "out"
    result = await run_in_process(path, out, sim)
    assert result.exit_code == ExitCode.OK
    said = "the request history answered in a shape batchgen cannot read: no list of rows under data/items/results"
    assert said in (out / "run.log").read_text()
    status = await run_cli_async("status", "--out", str(out), env=cli_env(None))
    assert said in status.stdout
    store = read_state(out)
    assert [job.possibly_billed_twice for job in store.jobs()] == [True, False]
    store.close()
