"""Spend follows the bill: a provider charging more than the table (a price change, a manifest ``pricing:`` that is
too low) never takes a run past its budget by more than the one clip that told the price."""

from __future__ import annotations

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


async def test_each_price_class_is_told_by_one_clip_and_then_runs_wide(
    make_sim, write_manifest, tmp_path: Path
) -> None:
    """Two classes (3 s and 5 s): one clip of each runs while its price is unknown; once both are told, the cap
    is the concurrency again."""
    sim = await make_sim(SimSettings(latency_s=0.2, price_factor=1.5))
    text = batch_manifest(12, extra="concurrency: 8\n")
    text = text.replace("    matrix:\n", "    matrix:\n      duration: [3, 5]\n")
    path, out = write_manifest(text), tmp_path / "out"
    result = await run_in_process(path, out, sim)
    assert result.exit_code == ExitCode.OK and len(sim.account().charges) == 24
    assert sim.account().peak_in_progress == 8
    store = read_state(out)
    attempts = sorted((a for a in store.all_attempts()), key=lambda a: a.started_at)
    first_two = {store.job(a.job_id).price_class for a in attempts[:2]}
    assert first_two == {"kling-3-standard-text2video:3s:silent", "kling-3-standard-text2video:5s:silent"}
    assert attempts[2].started_at >= min(a.ended_at or 0 for a in attempts[:2])  # the third waited for a price
    assert store.prices_seen() == {
        "kling-3-standard-text2video:3s:silent": 756_000,
        "kling-3-standard-text2video:5s:silent": 1_260_000,
    }
    store.close()
