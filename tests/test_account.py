"""The account of a shared state: its name, its budget's periods and ledger, its pace (pure parts, then the rows)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from batchgen.account import AccountMoney, account_id, next_period, period_start
from tests.conftest import batch_manifest, run_cli


def _utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_an_account_is_named_by_a_hash_of_its_key_never_the_key() -> None:
    name = account_id("sk-secret-key")
    assert len(name) == 16 and "secret" not in name and name != account_id("sk-other-key")
    assert name == account_id("sk-secret-key")


@pytest.mark.parametrize(
    ("per", "now", "start", "end"),
    [
        ("day", "2026-11-27T21:05:00", "2026-11-27T00:00:00", "2026-11-28T00:00:00"),
        ("week", "2026-11-27T21:05:00", "2026-11-23T00:00:00", "2026-11-30T00:00:00"),  # a Friday: from Monday
        ("week", "2026-11-23T00:00:00", "2026-11-23T00:00:00", "2026-11-30T00:00:00"),
        ("month", "2026-12-31T23:59:59", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
        ("month", "2026-11-01T00:00:00", "2026-11-01T00:00:00", "2026-12-01T00:00:00"),
    ],
)
def test_budget_periods_are_utc_days_weeks_and_months(per: str, now: str, start: str, end: str) -> None:
    begun = period_start(_utc(now), per)
    assert begun == _utc(start) and next_period(begun, per) == _utc(end)


def test_a_fixed_total_has_no_period() -> None:
    assert period_start(time.time(), None) == 0.0 and next_period(0.0, None) is None
    with pytest.raises(ValueError, match="unknown budget period"):
        period_start(0.0, "fortnight")


def test_the_ledger_keeps_the_per_run_invariant_account_wide() -> None:
    ledger = AccountMoney(5_000_000, "week", 0.0, settled_micros=3_000_000, ambiguous_micros=500_000,
                          reserved_micros=1_000_000)  # fmt: skip
    assert ledger.spent_micros == 3_500_000 and ledger.left_micros() == 500_000
    assert ledger.fits(500_000) and not ledger.fits(500_001)
    assert ledger.describe_cap() == "$5.00 a week"
    assert AccountMoney(None, None, 0.0, 10**12, 0, 0).fits(10**12)


def test_the_account_command_says_what_is_wrong() -> None:
    env = {"PATH": "/usr/bin:/bin", "SEGMIND_API_KEY": "k"}
    no_state = run_cli("account", "budget", "250", env=env)
    assert no_state.returncode == 2 and "pass --state" in no_state.stderr and "Traceback" not in no_state.stderr
    bad = run_cli("account", "budget", "lots", "--state", "postgresql://x@127.0.0.1:1/none", env=env)
    assert bad.returncode == 2 and "write an amount in dollars" in bad.stderr
    negative = run_cli("account", "budget", "-5", "--state", "postgresql://x@127.0.0.1:1/none", env=env)
    assert negative.returncode == 2 and "more than 0" in negative.stderr


def test_a_budget_and_a_pause_are_shared_by_the_runs_of_an_account(pg_url: str, tmp_path: Path, write_manifest) -> None:
    from batchgen import expand, load_manifest
    from batchgen.pgstore import PgStore, set_budget

    set_budget(pg_url, "acct", 1_000_000, None)
    stores = [PgStore.connect(pg_url, name, tmp_path / name, account="acct") for name in ("a", "b")]
    try:
        for n, store in enumerate(stores):
            jobs = expand(load_manifest(write_manifest(batch_manifest(2, name=f"r{n}"), f"r{n}.yaml")))
            store.sync_jobs(jobs, [600_000] * 2, ["c"] * 2, now=1.0)
        first, second = stores[0].jobs()[0].id, stores[1].jobs()[0].id
        assert stores[0].begin_attempt(first, "v2", 600_000, lambda money: True, now=2.0) is not None
        assert stores[1].begin_attempt(second, "v2", 600_000, lambda money: True, now=2.0) is None  # $1 in all
        assert stores[1].refusal == "over the account's budget ($1.00 in all): needs $0.60, $0.40 left"
        stores[0].end_attempt(first, money="released", outcome="retry", next_state="pending", now=3.0)
        assert stores[1].begin_attempt(second, "v2", 600_000, lambda money: True, now=4.0) is not None
        ledger = stores[0].account_money()
        assert ledger is not None and (ledger.reserved_micros, ledger.spent_micros) == (600_000, 0)
        assert stores[0].take_submit(2) == 0.0 and stores[1].take_submit(2) == 0.0
        assert 59.0 < stores[0].take_submit(2) <= 61.0  # the account's minute is used up, by both runs
        stores[1].pause_submits(30.0)  # a 429 one run met
        assert stores[0].pace()[0] == 2 and 29.0 < stores[0].pace()[1] <= 30.0
    finally:
        for store in stores:
            store.close()
