"""The state file: migrations, schema versions, money that always adds up, recovery and requeue."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from batchgen import expand, load_manifest
from batchgen.errors import StateError
from batchgen.store import SCHEMA_VERSION, Store
from tests.conftest import batch_manifest


@pytest.fixture
def store(tmp_path: Path, write_manifest) -> Store:
    jobs = expand(load_manifest(write_manifest(batch_manifest(3))))
    opened = Store.open(tmp_path / "state.db")
    opened.sync_jobs(jobs, [504_000] * 3, ["c"] * 3, now=1.0)
    yield opened
    opened.close()


def _sums(store: Store) -> tuple[int, int, int]:
    attempts = store.all_attempts()
    settled = sum(a.settled_micros for a in attempts if a.money == "settled")
    ambiguous = sum(a.settled_micros for a in attempts if a.money == "ambiguous")
    reserved = sum(a.reserved_micros for a in attempts if a.money == "reserved")
    return settled, ambiguous, reserved


def test_schema_is_migrated_and_recorded(store: Store) -> None:
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [row[0] for row in store.db.execute("SELECT name FROM migrations")] == [
        "m001_initial",
        "m002_no_urls_of_old_processes",
        "m003_price_classes",
        "m004_owner",
        "m005_possibly_billed_index",
        "m006_images",
    ]
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (store.path.stat().st_mode & 0o777) == 0o600


def test_a_newer_schema_is_refused_and_left_intact(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    Store.open(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    before = path.read_bytes()
    with pytest.raises(StateError, match="written by a newer batchgen"):
        Store.open(path)
    assert path.read_bytes() == before


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateError, match="cannot use the state file"):
        Store.open(path)


def test_money_totals_are_always_the_sum_of_the_attempts(store: Store) -> None:
    a, b, c = (job.id for job in store.jobs())
    allow = lambda money: True  # noqa: E731
    for job_id in (a, b, c):
        assert store.begin_attempt(job_id, "v2", 504_000, allow, now=2.0)
    assert store.money().reserved_micros == 3 * 504_000
    store.mark_submitted(a, "req-a", now=3.0)
    store.mark_completed(a, 420_000, "http://x/a.mp4", now=4.0)
    store.end_attempt(b, money="released", outcome="retry", next_state="pending", now=5.0)
    store.end_attempt(c, money="ambiguous", outcome="retry", next_state="pending", now=5.0)
    money = store.money()
    assert (money.settled_micros, money.ambiguous_micros, money.reserved_micros) == _sums(store)
    assert (money.spent_micros, money.reserved_micros) == (420_000 + 504_000, 0)
    assert store.job(c).possibly_billed_twice and not store.job(b).possibly_billed_twice


def test_the_check_and_the_reservation_are_one_transaction(store: Store) -> None:
    job_id = store.jobs()[0].id
    assert store.begin_attempt(job_id, "v2", 504_000, lambda money: False, now=2.0) is None
    assert store.job(job_id).state == "pending" and store.all_attempts() == []


def test_recover_turns_submitting_into_possibly_billed(store: Store) -> None:
    job_id = store.jobs()[0].id
    store.begin_attempt(job_id, "v2", 504_000, lambda money: True, now=2.0)
    assert store.recover(now=3.0) == [job_id]
    job = store.job(job_id)
    assert (job.state, job.possibly_billed_twice) == ("pending", True)
    assert store.money().ambiguous_micros == 504_000 and store.money().reserved_micros == 0


def test_requeue_never_pays_again_for_a_paid_clip(store: Store) -> None:
    paid, lost = (job.id for job in store.jobs()[:2])
    for job_id in (paid, lost):
        store.begin_attempt(job_id, "v2", 504_000, lambda money: True, now=2.0)
        store.mark_submitted(job_id, f"req-{job_id}", now=3.0)
    store.mark_completed(paid, None, "http://x/v.mp4", now=4.0)
    store.download_failed(paid, "broken", 0, True, now=5.0)
    store.end_attempt(lost, money="ambiguous", outcome="lost", next_state="lost", now=5.0)
    assert sorted(store.requeue(["failed", "lost"], now=6.0)) == sorted([paid, lost])
    assert (store.job(paid).state, store.job(paid).request_id) == ("downloading", f"req-{paid}")
    assert (store.job(lost).state, store.job(lost).possibly_billed_twice) == ("pending", True)


def test_sync_keeps_jobs_that_left_the_manifest(store: Store, write_manifest) -> None:
    fewer = expand(load_manifest(write_manifest(batch_manifest(2), "b.yaml")))
    assert store.sync_jobs(fewer, [504_000] * 2, ["c"] * 2, now=2.0) == 0
    assert [job.in_manifest for job in store.jobs()] == [True, True, False]
    assert sum(store.counts().values()) == 2
