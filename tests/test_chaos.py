"""Chaos in CI: kill the runner at random moments under ~25 % faults; every promise must still hold."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.chaos import chaos_run


@pytest.mark.timeout(240)
@pytest.mark.parametrize("trickle", [False, True], ids=["loopback", "trickle"])
@pytest.mark.parametrize("transport", ["v2", "v1"])
async def test_sigkill_ten_times_under_faults(tmp_path: Path, transport: str, trickle: bool) -> None:
    report = await chaos_run(
        tmp_path, transport=transport, jobs=60, stops=10, sig=signal.SIGKILL, seed=7, trickle=trickle
    )
    print(report.line())
    assert report.stops >= 10
    assert sum(report.faults.values()) >= 30
    if transport == "v2":  # the request history settles every ambiguous submit: nothing is paid twice
        assert report.paid_twice == 0
    kinds = {"rate_429", "rate_500", "rate_502", "rate_504", "drop_submit", "fail_job", "slow_first_byte"}
    if transport == "v2":  # v1 answers the video in the POST: there is no separate download to break
        kinds |= {"drop_download", "short_body"}
    assert kinds <= set(report.faults), report.faults


@pytest.mark.timeout(240)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_graceful_stops_leave_nothing_ambiguous(tmp_path: Path, sig: signal.Signals) -> None:
    report = await chaos_run(tmp_path, transport="v2", jobs=30, stops=4, sig=sig, seed=11)
    print(report.line())
    assert report.stops >= 4
    assert report.ambiguous_from_stops == 0
    assert report.possibly_billed_twice == 0 and report.paid_twice == 0
