"""Spend follows the bill: a provider charging more than the table (a price change, a manifest ``pricing:`` that is
too low) never takes a run past its budget by more than the one clip that told the price."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from batchgen.errors import ExitCode
from batchgen.simulator.server import SimSettings
from tests.conftest import batch_manifest
from tests.runs import cli_env, read_state, run_cli_async, run_in_process


@pytest.mark.parametrize("transport", ["v2", "v1"])
async def test_three_times_the_table_with_sixteen_in_flight_stays_under_the_budget(
    make_sim, write_manifest, tmp_path: Path, transport: str
) -> None:
    """The first clip of the class runs alone and is charged $1.512 (its estimate was $0.504); every later one
    reserves $1.512: with $3, one more does not fit. (Reserving the table, 17 clips were bought: $8.568.)"""
    sim = await make_sim(SimSettings(latency_s=0.1, price_factor=3.0))
    path, out = write_manifest(batch_manifest(20, extra="budget: 3\nconcurrency: 16\n")), tmp_path / "out"
    result = await run_in_process(path, out, sim, transport=transport)
    assert result.exit_code == ExitCode.BUDGET
    assert sim.account().spent_micros <= 3_000_000
    assert (len(sim.account().charges), result.counts["done"], result.counts["skipped"]) == (1, 1, 19)
    assert sim.account().peak_in_progress == 1  # the clip that told the price ran alone
    store = read_state(out)
    assert store.money().spent_micros == sim.account().spent_micros == 1_512_000
    assert store.charged_above_estimate() == [(store.jobs(["done"])[0].id, 1_512_000, 504_000)]
    assert all("needs $1.512" in (job.reason or "") for job in store.jobs(["skipped"]))
    store.close()
    assert "above the $0.504 it was estimated at" in (out / "run.log").read_text()


async def test_a_manifest_price_below_the_providers_is_corrected_by_the_first_bill(
    make_sim, write_manifest, tmp_path: Path
) -> None:
    sim = await make_sim(SimSettings(latency_s=0.05))
    pricing = "pricing: {silent: 0.05, audio: 0.05, voice: 0.05}\n"
    path, out = write_manifest(batch_manifest(10, extra=f"budget: 2.2\nconcurrency: 8\n{pricing}")), tmp_path / "out"
    result = await run_in_process(path, out, sim)
    assert result.exit_code == ExitCode.BUDGET
    # the first at $0.15 reserved and $0.504 charged, then three more at $0.504 each: $2.016 of $2.20
    assert (len(sim.account().charges), sim.account().spent_micros) == (4, 2_016_000)
    status = await run_cli_async("status", "--out", str(out), env=cli_env(None))
    assert "charged above the estimate: 1 attempt" in status.stdout, status.stdout


async def test_price_classes_are_told_one_clip_at_a_time_then_the_run_goes_wide(
    make_sim, write_manifest, tmp_path: Path
) -> None:
    """Two classes (3 s and 5 s) and a provider at 1.5× the table: the first clip runs alone and is charged 1.5×;
    the first of the other class then reserves its estimate × 1.5 and runs alone too; then the run is as wide as
    its concurrency. At no moment are two clips of untold prices bought together."""
    sim = await make_sim(SimSettings(latency_s=0.2, price_factor=1.5))
    text = batch_manifest(12, extra="concurrency: 8\nbudget: 100\n")
    text = text.replace("    matrix:\n", "    matrix:\n      duration: [3, 5]\n")
    path, out = write_manifest(text), tmp_path / "out"
    result = await run_in_process(path, out, sim)
    assert result.exit_code == ExitCode.OK and len(sim.account().charges) == 24
    assert sim.account().peak_in_progress == 8
    store = read_state(out)
    attempts = sorted(store.all_attempts(), key=lambda a: a.started_at)
    by_class: dict[str, list] = {}
    for attempt in attempts:
        by_class.setdefault(store.job(attempt.job_id).price_class, []).append(attempt)
    assert len(by_class) == 2
    for rows in by_class.values():  # each class's first clip ran before any other of its class began
        assert all(later.started_at >= (rows[0].ended_at or 0) for later in rows[1:])
    first_five = by_class["kling-3-standard-text2video:5s:silent"][0]
    assert first_five.reserved_micros == first_five.settled_micros == 1_260_000  # its estimate × 1.5, as told
    assert store.prices_seen() == {
        "kling-3-standard-text2video:3s:silent": 756_000,
        "kling-3-standard-text2video:5s:silent": 1_260_000,
    }
    store.close()


async def test_a_price_told_in_an_earlier_run_is_told_again(make_sim, write_manifest, tmp_path: Path) -> None:
    """The provider raises its price between two runs: the second run's first clip runs alone again, and the rest
    reserve the new price (a price known from the state is a floor, not a promise)."""
    path, out = write_manifest(batch_manifest(12, extra="concurrency: 8\n")), tmp_path / "out"
    cheap = await make_sim(SimSettings(latency_s=0.05))
    await run_in_process(path, out, cheap, budget_micros=1_100_000)  # two clips at $0.504
    dear = await make_sim(SimSettings(latency_s=0.05, price_factor=3.0))
    result = await run_in_process(path, out, dear, budget_micros=5_000_000)
    assert result.exit_code == ExitCode.BUDGET
    # $1.008 before; then one clip alone at $1.512 (it tells the new price); then $1.512 each: one more fits
    assert len(dear.account().charges) == 2 and dear.account().peak_in_progress == 1
    store = read_state(out)
    assert store.money().spent_micros == 1_008_000 + 2 * 1_512_000
    store.close()


async def test_a_possibly_billed_job_taken_out_of_the_manifest_holds_nothing(
    make_sim, write_manifest, tmp_path: Path
) -> None:
    """A kill during a submit leaves a possibly billed attempt; the user then removes that job from the manifest.
    Its class must not count as in flight: nothing could ever settle it, and every untold class would wait for ever."""
    import sqlite3

    sim = await make_sim(SimSettings(latency_s=0.05))
    out = tmp_path / "out"
    four = write_manifest(batch_manifest(4, extra="budget: 10\n"), "four.yaml")
    await run_in_process(four, out, sim, budget_micros=600_000)  # one clip: the rest skipped
    store = read_state(out)
    gone = store.jobs()[3]
    store.close()
    with sqlite3.connect(out / "state.db") as db:  # as a kill between a submit's intent and its answer leaves it
        db.execute(
            "INSERT INTO attempts (job_id, number, transport, started_at, money, reserved_micros, outcome) "
            "VALUES (?, 1, 'v2', 1, 'ambiguous', 504000, 'ambiguous')",
            (gone.id,),
        )
        db.execute("UPDATE money SET ambiguous_micros = ambiguous_micros + 504000")
        db.execute("UPDATE jobs SET state = 'pending', reason = NULL WHERE id = ?", (gone.id,))
    three = write_manifest(batch_manifest(3, extra="budget: 10\n").replace("duration: 3", "duration: 4"), "three.yaml")
    result = await asyncio.wait_for(run_in_process(three, out, sim), 20)
    assert result.exit_code == ExitCode.OK and result.counts["done"] == 3


async def test_jobs_over_the_budget_are_skipped_without_spending_the_rate(
    make_sim, write_manifest, tmp_path: Path
) -> None:
    """At 5 submits a minute, 19 jobs that do not fit are skipped at once, not one every 12 s."""
    sim = await make_sim(SimSettings(latency_s=0.05))
    path = write_manifest(batch_manifest(20, extra="budget: 0.6\n"))
    result = await asyncio.wait_for(run_in_process(path, tmp_path / "out", sim, rpm=5), 20)
    assert result.exit_code == ExitCode.BUDGET and (result.counts["done"], result.counts["skipped"]) == (1, 19)
