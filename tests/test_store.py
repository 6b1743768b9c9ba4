"""The store suite: migrations, money that always adds up, recovery, requeue, claims and leases.

Every test taking ``store`` runs on both engines: the SQLite file and a PostgreSQL state (a fresh database per
test, on the server `.ci/run` starts; skipped, saying why, without one).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from batchgen import expand, load_manifest
from batchgen.errors import RunLockedError, StateError
from batchgen.store import SCHEMA_VERSION, ImageRow, Store
from tests.conftest import batch_manifest


def _open(engine: str, request: pytest.FixtureRequest, tmp_path: Path, name: str = "run", account: str = "acct"):
    if engine == "sqlite":
        return Store.open(tmp_path / f"{name}.db")
    from batchgen.pgstore import PgStore

    return PgStore.connect(request.getfixturevalue("pg_url"), name, tmp_path, account=account)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path, write_manifest) -> Store:
    jobs = expand(load_manifest(write_manifest(batch_manifest(3))))
    opened = _open(request.param, request, tmp_path)
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
    names = [row[0] for row in store.db.execute("SELECT name FROM migrations ORDER BY name")]
    if not store.shared:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert names == [
            "m001_initial",
            "m002_no_urls_of_old_processes",
            "m003_price_classes",
            "m004_owner",
            "m005_possibly_billed_index",
            "m006_images",
            "m007_workers",
        ]
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert (store.path.stat().st_mode & 0o777) == 0o600
    else:
        assert names == ["p001_run"]
        shared = [row[0] for row in store.db.execute("SELECT name FROM batchgen.migrations")]
        assert shared == ["g001_accounts"]


def test_a_second_open_migrates_nothing_again(request: pytest.FixtureRequest, store: Store, tmp_path: Path) -> None:
    again = _open("postgresql" if store.shared else "sqlite", request, tmp_path)
    try:
        assert [job.id for job in again.jobs()] == [job.id for job in store.jobs()]
        assert again.db.execute("SELECT COUNT(*) FROM migrations").fetchone()[0] == (1 if store.shared else 7)
    finally:
        again.close()


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


def _submitted(store: Store, job_id: str, request_id: str, now: float = 3.0) -> int:
    attempt = store.begin_attempt(job_id, "v2", 504_000, lambda money: True, now=now - 1)
    assert attempt is not None
    store.mark_submitted(job_id, request_id, now=now)
    return attempt


def _adds_up(store: Store) -> None:
    money = store.money()
    assert (money.settled_micros, money.ambiguous_micros, money.reserved_micros) == _sums(store)


def test_an_ambiguous_attempt_found_in_the_history_is_adopted_not_paid_again(store: Store) -> None:
    job_id = store.jobs()[0].id
    store.begin_attempt(job_id, "v2", 504_000, lambda money: True, now=2.0)
    store.recover(now=3.0)
    attempt = store.unresolved_ambiguous(job_id)
    assert attempt is not None and store.money().ambiguous_micros == 504_000
    store.adopt(job_id, attempt.id, "req-found", now=4.0)
    job = store.job(job_id)
    assert (job.state, job.request_id, job.possibly_billed_twice) == ("submitted", "req-found", False)
    assert store.money().reserved_micros == 504_000 and store.money().ambiguous_micros == 0
    assert store.owned_request_ids() == {"req-found"}
    store.mark_completed(job_id, 420_000, "http://x/v.mp4", now=5.0)
    assert store.money().spent_micros == 420_000 and store.prices_seen() == {"c": 420_000}
    _adds_up(store)


def test_what_the_history_says_of_an_ambiguous_attempt(store: Store) -> None:
    failed, unknown = (job.id for job in store.jobs()[:2])
    for job_id in (failed, unknown):
        store.begin_attempt(job_id, "v2", 504_000, lambda money: True, now=2.0)
    store.recover(now=3.0)
    first, second = store.unresolved_ambiguous(failed), store.unresolved_ambiguous(unknown)
    assert first is not None and second is not None
    store.close_ambiguous(failed, first.id, billed=False, message="FAILED there", now=4.0, request_id="r1")
    store.close_ambiguous(unknown, second.id, billed=None, message="not there", now=4.0)
    assert not store.job(failed).possibly_billed_twice and store.job(unknown).possibly_billed_twice
    assert store.unresolved_ambiguous(failed) is None and store.unresolved_ambiguous(unknown) is None
    assert store.money().ambiguous_micros == 504_000
    assert store.flagged()[0] == [unknown]
    _adds_up(store)


def test_a_lost_clip_recovered_from_the_history_is_settled_once(store: Store) -> None:
    job_id = store.jobs()[0].id
    _submitted(store, job_id, "req-1")
    store.end_attempt(job_id, money="ambiguous", outcome="lost", next_state="lost", now=4.0)
    store.recovered(job_id, "http://x/v.mp4", 630_000, now=5.0)
    job = store.job(job_id)
    assert (job.state, job.video_url) == ("downloading", "http://x/v.mp4")
    money = store.money()
    assert (money.settled_micros, money.ambiguous_micros) == (630_000, 0)
    _adds_up(store)


def test_a_request_the_journal_names_is_adopted_into_a_pending_job(store: Store) -> None:
    pending, done = (job.id for job in store.jobs()[:2])
    assert store.adopt_request(pending, "req-journal", 504_000, "v2", now=2.0)
    assert store.job(pending).state == "submitted" and store.money().reserved_micros == 504_000
    _submitted(store, done, "req-done")
    assert not store.adopt_request(done, "req-other", 504_000, "v2", now=4.0)
    assert store.owned_request_ids() == {"req-journal", "req-done"}
    _adds_up(store)


def test_done_videos_and_where_they_were_placed(store: Store, tmp_path: Path) -> None:
    store.claim("me", 1, "host-a", 1.0, lambda owner: False)
    a, b = (job.id for job in store.jobs()[:2])
    for job_id in (a, b):
        _submitted(store, job_id, f"req-{job_id}")
        store.mark_completed(job_id, None, f"http://x/{job_id}.mp4", now=4.0)
    store.mark_done_many([(a, f"videos/{a}.mp4", "ab" * 32, {"bytes": 1234}, ["w"])], now=5.0)
    (video,) = store.done_videos()
    assert (video.job_id, video.path, video.size, video.sha256) == (a, f"videos/{a}.mp4", 1234, "ab" * 32)
    job = store.job(a)
    assert (job.state, job.warnings, job.placed_on) == ("done", ["w"], f"host-a:{tmp_path.resolve()}")
    assert store.finished_since(5.0) == 1 and store.finished_since(6.0) == 0
    assert store.costs([a, b]) == {a: (504_000, 1), b: (504_000, 1)}
    store.redownload(a, "gone", now=6.0)
    assert store.job(a).state == "downloading" and store.done_videos() == []
    store.release()


def test_local_images_keep_their_upload(store: Store) -> None:
    store.sync_images([ImageRow("s1", "/a.png", "image/png", 10), ImageRow("s2", "/b.png", "image/png", 20)])
    assert store.image_url("s1") is None
    store.image_uploaded("s1", "https://cdn/s1.png", now=2.0)
    store.sync_images([ImageRow("s1", "/moved.png", "image/png", 10)])
    image = store.image("s1")
    assert image is not None and (image.path, image.url) == ("/moved.png", "https://cdn/s1.png")
    assert [row.sha256 for row in store.images()] == ["s2", "s1"] and store.image("nope") is None  # by path


def test_held_price_classes_and_backoff_order_the_queue(store: Store) -> None:
    a, b, _ = (job.id for job in store.jobs())
    store.defer(a, 50.0, now=2.0)
    picked = store.next_pending(10.0)
    assert picked is not None and picked.id == b
    assert store.next_pending(10.0, held=["c"]) is None
    assert store.earliest_pending() == 0.0 and store.earliest_pending(held=["c"]) is None
    assert store.pending_classes() == {"c"} and store.classes_in_flight() == set()
    store.begin_attempt(b, "v2", 504_000, lambda money: True, now=11.0)
    assert store.classes_in_flight() == {"c"}
    store.recover(now=12.0)  # b: possibly billed, to be looked up: it is not held
    held_pick = store.next_pending(13.0, held=["c"])
    assert held_pick is not None and held_pick.id == b


def test_reads_of_the_job_list(store: Store, write_manifest) -> None:
    ids = [job.id for job in store.jobs()]
    assert [job_id for job_id, _ in store.job_stamps()] == ids
    assert sorted(job.id for job in store.jobs_by_id([ids[2], ids[0], "nope"])) == sorted([ids[0], ids[2]])
    assert store.manifest_job_count() == 3 and store.counts()["pending"] == 3
    store.set_meta(budget_micros=5_000_000, note={"a": [1, 2]})
    assert store.get_meta("note") == {"a": [1, 2]} and store.get_meta("missing", 7) == 7
    assert store.jobs(["pending"], updated_since=2.0) == []
    with pytest.raises(StateError, match="no job nope"):
        store.job("nope")


def test_skipped_jobs_come_back_and_failed_unsent_ones_cost_nothing(store: Store) -> None:
    a, b = (job.id for job in store.jobs()[:2])
    store.mark_skipped(a, "over budget", now=2.0)
    store.mark_failed_unsent(b, "its image could not be uploaded", now=2.0)
    assert store.counts()["skipped"] == 1 and store.counts()["failed"] == 1
    store.requeue_skipped(now=3.0)
    assert store.job(a).state == "pending" and store.money().spent_micros == 0


def test_a_price_above_the_estimate_is_reported(store: Store) -> None:
    job_id = store.jobs()[0].id
    _submitted(store, job_id, "req-1")
    store.mark_completed(job_id, 700_000, "http://x/v.mp4", now=4.0)
    assert store.charged_above_estimate() == [(job_id, 700_000, 504_000)]


def test_a_taken_over_submit_keeps_the_state_it_was_left_in(store: Store) -> None:
    job_id = store.jobs()[0].id
    store.begin_attempt(job_id, "v2", 504_000, lambda money: True, now=2.0)
    store.recover(now=3.0)  # another worker took it over: possibly billed, back in line
    store.mark_submitted(job_id, "late-answer", now=4.0)  # the old worker's answer, late
    assert store.job(job_id).state == "pending"


def test_two_processes_on_one_state(request: pytest.FixtureRequest, store: Store, tmp_path: Path) -> None:
    """SQLite: one owner, the second refused while it lives. PostgreSQL: workers share the run."""
    engine = "postgresql" if store.shared else "sqlite"
    other = _open(engine, request, tmp_path)
    try:
        store.claim("one", 1, "h", 1.0, lambda owner: True)
        if not store.shared:
            with pytest.raises(RunLockedError):
                other.claim("two", 2, "h", 2.0, lambda owner: True)
            return
        other.claim("two", 2, "h", 2.0, lambda owner: True)
        first, second = store.next_pending(5.0), other.next_pending(5.0)
        assert first is not None and second is not None and first.id != second.id  # each claimed by one
        assert store.next_pending(5.0).id == first.id  # still this worker's
        store.begin_attempt(first.id, "v2", 504_000, lambda money: True, now=6.0)
        store.mark_submitted(first.id, "req-1", now=7.0)
        assert other.take_over(8.0) == []  # its worker is alive
        store.db.execute("UPDATE workers SET heartbeat_at = heartbeat_at - 3600 WHERE token = 'one'")
        (taken,) = other.take_over(9.0)
        assert (taken.id, taken.state, taken.request_id, taken.worker) == (first.id, "submitted", "req-1", "two")
        with pytest.raises(StateError, match="took its jobs over"):
            store.heartbeat(10.0)
        with pytest.raises(StateError, match="taken over by another worker"):  # its late poll changes nothing
            store.mark_completed(first.id, 1, "http://x/v.mp4", now=10.5)
        assert store.job(first.id).state == "submitted" and store.money().spent_micros == 0
        with pytest.raises(StateError, match="took its jobs over"):
            store.begin_attempt(store.jobs()[2].id, "v2", 1, lambda money: True, now=11.0)
        assert other.next_pending(12.0) is not None  # the gone worker's claim is let go
    finally:
        other.close()
