"""The account of a shared state: its name, its budget's periods and ledger, its pace (pure parts, then the rows)."""

from __future__ import annotations

import contextlib
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


@pytest.mark.parametrize(
    ("url", "shown", "secret"),
    [
        ("postgresql://u:s3cret@db:5432/x", "postgresql://u@db:5432/x", "s3cret"),
        ("postgresql://u@db/x?password=s3cret&sslmode=require", "postgresql://u@db/x", "s3cret"),
        ("postgresql://u:SEC RET@db/x", "postgresql://u@db/x", "SEC RET"),
        ("postgresql://u:s3cret@127.0.0.1:notaport/db", "postgresql://u@127.0.0.1:notaport/db", "s3cret"),
        ("postgresql://u:s3cret@[::1/db", "postgresql://u@[::1/db", "s3cret"),
        ("postgresql://u:p%40ss@db/x", "postgresql://u@db/x", "p@ss"),
        ("postgresql://u:Se/cret9@127.0.0.1/x", "postgresql://u@127.0.0.1/x", "Se/cret9"),  # raw, as people type them
        ("postgresql://u:Se@cret9@127.0.0.1/x", "postgresql://u@127.0.0.1/x", "Se@cret9"),
    ],
)
def test_a_state_url_is_shown_without_its_password(url: str, shown: str, secret: str) -> None:
    from batchgen.pgstore import redacted, shown_url

    assert shown_url(url) == shown
    assert redacted(f'unexpected spaces found in "{secret}" of {url}', url).count("***") >= 1
    assert secret not in redacted(f"driver said {secret!r}", url)


def test_bad_state_urls_are_said_without_a_traceback_or_the_password() -> None:
    for url in ("postgresql://u:s3cret@127.0.0.1:notaport/db", "postgresql://u:s3cret@[::1/db"):
        done = run_cli("status", "--state", url, env={"PATH": "/usr/bin:/bin"})
        assert done.returncode == 2 and "Traceback" not in done.stderr and "s3cret" not in done.stderr, done.stderr


def test_changing_the_period_recounts_what_was_spent(pg_url: str, tmp_path: Path, write_manifest) -> None:
    """Switching a weekly cap to a fixed total (or back) counts the runs' own attempts again: it never forgets."""
    from batchgen import expand, load_manifest
    from batchgen.pgstore import PgStore, set_budget

    set_budget(pg_url, "acct", 10_000_000, "week")
    store = PgStore.connect(pg_url, "r", tmp_path / "r", account="acct")
    try:
        store.sync_jobs(expand(load_manifest(write_manifest(batch_manifest(2)))), [600_000] * 2, ["c"] * 2, now=1.0)
        job_id = store.jobs()[0].id
        store.begin_attempt(job_id, "v2", 600_000, lambda money: True, now=time.time())
        store.mark_completed(job_id, 700_000, "http://x/v.mp4", now=time.time())
        assert set_budget(pg_url, "acct", 10_000_000, "day").spent_micros == 700_000
        assert set_budget(pg_url, "acct", 4_000_000, None).spent_micros == 700_000
        assert set_budget(pg_url, "acct", None, None).cap_micros is None
    finally:
        store.close()


def test_a_silent_state_server_is_given_up_not_waited_for_forever(pg_url: str, monkeypatch) -> None:
    """A path to the server that goes quiet (a proxy stopped, a cable pulled): TCP keeps the connection open and
    the server's own timeouts never see the statement; the watchdog gives it up and the statement fails."""
    import socket
    import threading
    from urllib.parse import urlsplit

    from batchgen import pgstore
    from batchgen.errors import StateError

    parts = urlsplit(pg_url)
    quiet = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    opened: list[socket.socket] = [listener]

    def pipe(source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if quiet.is_set():
                    continue  # swallowed: the path went silent
                target.sendall(data)

    def serve() -> None:
        client, _ = listener.accept()
        upstream = socket.create_connection((parts.hostname, parts.port or 5432))
        opened.extend((client, upstream))
        threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    port = listener.getsockname()[1]
    via = pg_url.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{port}")
    monkeypatch.setattr(pgstore, "SILENT_S", 1.5)
    monkeypatch.setattr(pgstore, "WATCH_EVERY_S", 0.2)
    db = pgstore.connect(via)
    try:
        assert db.execute("SELECT 1").fetchone()[0] == 1
        quiet.set()
        started = time.monotonic()
        with pytest.raises(StateError, match="no answer for 2 s"):
            db.execute("SELECT 1")
        assert time.monotonic() - started < 10
    finally:
        db.close()
        for sock in opened:
            sock.close()
