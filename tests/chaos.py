"""Chaos: a batch under ~25 % injected faults of every kind, its runner killed at seeded random moments and
restarted until it exits 0; then every promise is checked against the simulator's ledger and the run directory.

Used by ``tests/test_chaos.py`` (sized for CI) and ``bench/chaos.py`` (longer).
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from batchgen.simulator.faults import FaultPlan
from batchgen.simulator.server import SimSettings, Simulator
from tests.conftest import batch_manifest
from tests.runs import assert_all_done, cli_env, read_state, run_cli_async, start_cli

FAULT_SHARE = 0.25  # of the requests of every route, shared by the kinds of fault the route can suffer
TRICKLE_BYTES, TRICKLE_GAP_S = 700, 0.002  # a link that delivers every answer in small pieces, as networks do


@dataclass
class ChaosReport:
    """What a chaos run did and found."""

    transport: str
    jobs: int
    signal_name: str
    link: str = "loopback"
    stops: int = 0
    runs: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    charges: int = 0
    spent_micros: int = 0
    budget_micros: int = 0
    possibly_billed_twice: int = 0
    paid_twice: int = 0
    ambiguous_from_stops: int = 0
    retried_lost: int = 0

    def line(self) -> str:
        """The report in one line, for the README and the bench results."""
        faults = sum(self.faults.values())
        return (
            f"{self.transport} over {self.link}, {self.jobs} jobs, {self.stops} × {self.signal_name} over "
            f"{self.runs} runs, "
            f"{faults} faults in {self.requests} requests ({faults / max(1, self.requests):.0%}: "
            f"{', '.join(f'{k} {v}' for k, v in sorted(self.faults.items()))}); "
            f"{self.charges} charges for {self.jobs} jobs, spent ${self.spent_micros / 1e6:.3f} of "
            f"${self.budget_micros / 1e6:.3f}; "
            f"duplicates allowed {self.possibly_billed_twice}, found {self.paid_twice}, unexpected 0"
        )


def chaos_faults(seed: int, *, graceful: bool) -> FaultPlan:
    """A quarter of every route's requests fail, every kind in equal share (no dropped submits when a stop must
    be graceful: a dropped submit is ambiguous by nature)."""
    return FaultPlan(total_rate=FAULT_SHARE, rates={"drop_submit": 0.0} if graceful else {}, seed=seed)


async def chaos_run(
    tmp_path: Path,
    *,
    transport: str = "v2",
    jobs: int = 60,
    stops: int = 10,
    sig: signal.Signals = signal.SIGKILL,
    seed: int = 1,
    latency_s: float = 0.4,
    trickle: bool = False,
) -> ChaosReport:
    """Run the chaos scenario (``trickle``: every answer in pieces of 700 bytes, 2 ms apart); raise
    AssertionError at the first broken promise."""
    graceful = sig != signal.SIGKILL
    settings = SimSettings(
        latency_s=latency_s,
        latency_jitter_s=latency_s / 2,
        fault_429_reset_s=0.05,
        slow_first_byte_s=0.05,
        credits_usd=10_000,
        rpm=100_000,
        seed=seed,
        v1_mode="bytes",
        trickle_bytes=TRICKLE_BYTES if trickle else 0,
        trickle_gap_s=TRICKLE_GAP_S if trickle else 0.0,
    )
    sim = Simulator(settings, chaos_faults(seed, graceful=graceful))
    await sim.start()
    try:
        report = await _drive(sim, tmp_path, transport, jobs, stops, sig, seed)
        report.link = f"a link trickling {TRICKLE_BYTES} B every {TRICKLE_GAP_S * 1000:g} ms" if trickle else "loopback"
    finally:
        await sim.close()
    return report


async def _drive(
    sim: Simulator, tmp_path: Path, transport: str, jobs: int, stops: int, sig: signal.Signals, seed: int
) -> ChaosReport:
    # Every job, plus room for the ambiguous ones: with v1, a kill makes every POST in flight possibly billed.
    budget_micros = round(jobs * 504_000 * (1.5 if transport == "v2" else 3.0))
    manifest = tmp_path / "chaos.yaml"
    manifest.write_text(batch_manifest(jobs, name="chaos", extra=f"budget: {budget_micros / 1e6}\nconcurrency: 8\n"))
    out = tmp_path / "out"
    args = (
        "run",
        str(manifest),
        "--out",
        str(out),
        "--transport",
        transport,
        "--rpm",
        "100000",
        "--poll-interval-s",
        "0.03",
        "--max-polls-per-s",
        "1000",
        "--backoff-base-s",
        "0.02",
        "--max-attempts",
        "40",
        "--history-lag-s",
        "0.3",
        "--no-progress",
    )
    report = ChaosReport(transport, jobs, sig.name, budget_micros=budget_micros)
    moments = random.Random(seed)
    while True:
        report.runs += 1
        assert report.runs <= stops + 10, "the batch did not finish"
        lines_before = _lines(out / "run.log")
        process = await start_cli(*args, env=cli_env(sim))
        if report.stops < stops:
            await _active(process, out / "run.log", lines_before)
            await asyncio.sleep(moments.uniform(0.0, 0.3))
            if process.returncode is None:
                process.send_signal(sig)
                report.stops += 1
        _, err = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode in (0, 1, 130, -signal.SIGKILL, -signal.SIGTERM), err.decode()[-2000:]
        if process.returncode == 0:
            break
        if process.returncode == 1:  # paid v1 answers lost to a kill: pay again, as a person would
            store = read_state(out)
            assert {job.state for job in store.jobs()} <= {"done", "lost"}, err.decode()[-2000:]
            store.close()
            retry = await run_cli_async("retry", "--out", str(out), "--lost", env=cli_env(sim))
            assert retry.code == 0, retry.stderr
            report.retried_lost += 1
    _check(sim, out, report)
    return report


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


async def _active(process: asyncio.subprocess.Process, run_log: Path, lines_before: int) -> None:
    """Wait until the runner has written to run.log (it is past its start-up), or has ended."""
    while process.returncode is None and _lines(run_log) <= lines_before:
        await asyncio.sleep(0.01)


def _check(sim: Simulator, out: Path, report: ChaosReport) -> None:
    assert_all_done(out, report.jobs)
    account = sim.account()
    report.faults = Counter({k: v for k, v in sim.faults.injected.items() if v})
    report.requests = sum(sim.hits.values())
    report.charges, report.spent_micros = len(account.charges), account.spent_micros
    assert account.spent_micros <= report.budget_micros
    store = read_state(out)
    try:
        jobs = store.jobs()
        attempts = {job.id: store.attempts(job.id) for job in jobs}
        money = store.money()
    finally:
        store.close()
    by_hash = {job.payload_hash: job for job in jobs}
    allowed = {job.payload_hash for job in jobs if job.possibly_billed_twice}
    report.possibly_billed_twice, report.paid_twice = len(allowed), len(account.paid_twice())
    report.ambiguous_from_stops = sum(
        1 for rows in attempts.values() for a in rows if a.outcome == "ambiguous" and "run stopped" in (a.message or "")
    )
    # Paid twice only where the state says "possibly billed twice".
    assert set(account.paid_twice()) <= allowed, "a payload was paid twice without the state knowing"
    # Every POST the provider accepted was preceded by an attempt written in the state (intent before action).
    accepted = Counter(seen.payload_hash for seen in account.requests if seen.status == 200)
    for digest, posts in accepted.items():
        assert posts <= len(attempts[by_hash[digest].id]), f"{by_hash[digest].id}: more POSTs than attempts"
    # A job whose request id was stored and whose request succeeded was never submitted again.
    for job_id, rows in attempts.items():
        finished = [i for i, a in enumerate(rows) if a.request_id and a.outcome == "ok"]
        assert finished == [len(rows) - 1], f"{job_id}: attempts after a successful request: {rows}"
    # The state never counts less than the provider charged.
    assert money.spent_micros >= account.spent_micros and money.reserved_micros == 0
    with sqlite3.connect(out / "state.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    for log in (out / "logs").glob("*.json"):
        assert json.loads(log.read_text())["state"] == "done"
