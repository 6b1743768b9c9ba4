"""The run's state file: SQLite in WAL mode, the only module that imports sqlite3.

Every method that changes state is one transaction (``BEGIN IMMEDIATE``), written *before* the action it allows.
A job's life::

    pending ─(reserve + submitting: one transaction)─▶ submitting ─(request id stored)─▶ submitted
    submitted ─(COMPLETED, money settled)─▶ downloading(url) ─(video renamed into place)─▶ done
    an attempt that fails ─▶ pending again with not_before, or failed      budget/deadline ─▶ skipped
    a request the provider forgot ─▶ lost

Money: each attempt reserves the job's estimate and ends in exactly one of ``settled`` (billed), ``released`` (not
billed) or ``ambiguous`` (possibly billed, counted as spent). The ``money`` row holds the running totals
(``spent = settled + ambiguous``, ``reserved`` = open reservations) and is updated in the same transactions, so that
it is always the sum over the attempts (a test checks it).

Durability: ``synchronous=NORMAL`` in WAL mode: a commit survives the process being killed at any moment (the
threat of an overnight run); only a power cut can lose the last transactions.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchgen.account import AccountMoney
from batchgen.canonical import canonical_json, content_hash
from batchgen.errors import JobGone, RunLockedError, StateError
from batchgen.jobs import Job

STATES = ("pending", "submitting", "submitted", "downloading", "done", "failed", "lost", "skipped")
IN_FLIGHT = ("submitting", "submitted", "downloading")


@dataclass(frozen=True)
class Money:
    """The run's money in µUSD: spent (settled + possibly billed) and reserved (open attempts)."""

    spent_micros: int
    reserved_micros: int
    settled_micros: int = 0
    ambiguous_micros: int = 0


@dataclass(frozen=True)
class JobRow:
    """A job as the state file knows it."""

    id: str
    idx: int
    shot_id: str
    take: int
    variables: list[list[Any]]
    model: str
    payload: dict[str, Any]
    payload_hash: str
    estimate_micros: int
    state: str
    in_manifest: bool
    attempts_used: int
    download_failures: int
    not_before: float
    request_id: str | None
    video_url: str | None
    reason: str | None
    possibly_billed_twice: bool
    video_path: str | None
    sha256: str | None
    probe: dict[str, Any] | None
    warnings: list[str]
    submitted_at: float | None
    completed_at: float | None
    finished_at: float | None
    open_attempt: int | None
    updated_at: float
    price_class: str
    worker: str | None = None  # the worker holding it in flight (its lease), by token
    placed_on: str | None = None  # where its video was placed: ``host:run directory``


@dataclass(frozen=True)
class AttemptRow:
    """One attempt of a job and how its money ended."""

    id: int
    job_id: str
    number: int
    transport: str
    started_at: float
    ended_at: float | None
    request_id: str | None
    http_status: int | None
    message: str | None
    outcome: str | None
    backoff_s: float | None
    money: str
    reserved_micros: int
    settled_micros: int
    provider_cost_micros: int | None  # what the provider said it charged, when it said (settled is that, or the
    # reservation when it did not)


@dataclass(frozen=True)
class DoneVideo:
    """A done job's video as the state recorded it (``size``: ``None`` for videos of older states)."""

    job_id: str
    path: str  # relative to the run directory
    size: int | None
    sha256: str | None


# --- migrations: append only -------------------------------------------------------------------------------

MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = []


def migration(function: Callable[[sqlite3.Connection], None]) -> Callable[[sqlite3.Connection], None]:
    """Register a schema migration; they run in order, each once, recorded in ``migrations``."""
    MIGRATIONS.append(function)
    return function


def _script(db: sqlite3.Connection, sql: str) -> None:
    """Run statements one by one: ``executescript`` would commit the migration's transaction half-way."""
    for statement in sql.split(";"):
        if statement.strip():
            db.execute(statement)


@migration
def m001_initial(db: sqlite3.Connection) -> None:
    _script(
        db,
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE money (id INTEGER PRIMARY KEY CHECK (id = 1), settled_micros INTEGER NOT NULL,
                            ambiguous_micros INTEGER NOT NULL, reserved_micros INTEGER NOT NULL);
        INSERT INTO money VALUES (1, 0, 0, 0);
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            idx INTEGER NOT NULL,
            shot_id TEXT NOT NULL,
            take INTEGER NOT NULL,
            variables TEXT NOT NULL,
            model TEXT NOT NULL,
            payload TEXT NOT NULL,
            payload_hash TEXT NOT NULL,
            estimate_micros INTEGER NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            in_manifest INTEGER NOT NULL DEFAULT 1,
            attempts_used INTEGER NOT NULL DEFAULT 0,
            download_failures INTEGER NOT NULL DEFAULT 0,
            not_before REAL NOT NULL DEFAULT 0,
            request_id TEXT, status_url TEXT, response_url TEXT, video_url TEXT,
            reason TEXT,
            possibly_billed_twice INTEGER NOT NULL DEFAULT 0,
            video_path TEXT, sha256 TEXT, probe TEXT,
            warnings TEXT NOT NULL DEFAULT '[]',
            submitted_at REAL, completed_at REAL, finished_at REAL,
            open_attempt INTEGER,
            updated_at REAL NOT NULL
        );
        CREATE INDEX jobs_by_state ON jobs (state, idx);
        CREATE TABLE attempts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id TEXT NOT NULL REFERENCES jobs (id),
            number INTEGER NOT NULL,
            transport TEXT NOT NULL,
            started_at REAL NOT NULL,
            ended_at REAL,
            request_id TEXT,
            http_status INTEGER,
            message TEXT,
            outcome TEXT,
            backoff_s REAL,
            money TEXT NOT NULL CHECK (money IN ('reserved', 'settled', 'released', 'ambiguous')),
            reserved_micros INTEGER NOT NULL,
            settled_micros INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX attempts_by_job ON attempts (job_id, id);
        """,
    )


@migration
def m002_no_urls_of_old_processes(db: sqlite3.Connection) -> None:
    """Poll and result URLs are derived from today's base URL and the request id (invariant 6): a state no longer
    keeps those an answer named, which pointed at the host, port and process that answered it."""
    _script(db, "ALTER TABLE jobs DROP COLUMN status_url; ALTER TABLE jobs DROP COLUMN response_url")


@migration
def m003_price_classes(db: sqlite3.Connection) -> None:
    """Spend follows the bill (invariant 9): each job's price class, and each attempt's cost as the provider told
    it, so a reservation can be the highest price the provider charged for the class."""
    _script(
        db,
        "ALTER TABLE jobs ADD COLUMN price_class TEXT NOT NULL DEFAULT '';"
        "ALTER TABLE attempts ADD COLUMN provider_cost_micros INTEGER",
    )


@migration
def m004_owner(db: sqlite3.Connection) -> None:
    """The state owns the run (invariant 10): which process runs this directory, checked in the transaction that
    begins each attempt, so two processes never both submit, whatever happened to the lock file."""
    _script(
        db,
        "CREATE TABLE owner (id INTEGER PRIMARY KEY CHECK (id = 1), token TEXT NOT NULL, pid INTEGER NOT NULL, "
        "host TEXT NOT NULL, started_at REAL NOT NULL, heartbeat_at REAL NOT NULL)",
    )


@migration
def m005_possibly_billed_index(db: sqlite3.Connection) -> None:
    """The attempts that may have been billed, found without reading every attempt (a run with a budget asks at
    each submit which price classes have one)."""
    _script(db, "CREATE INDEX attempts_possibly_billed ON attempts (job_id) WHERE money = 'ambiguous'")


@migration
def m006_images(db: sqlite3.Connection) -> None:
    """Local images, by content: where each was read, and the URL the provider's storage gave it, so that each
    content is uploaded once, and a resume sends the same URL."""
    _script(
        db,
        "CREATE TABLE images (sha256 TEXT PRIMARY KEY, path TEXT NOT NULL, mime TEXT NOT NULL, size INTEGER NOT NULL, "
        "url TEXT, uploaded_at REAL)",
    )


@migration
def m007_workers(db: sqlite3.Connection) -> None:
    """Who holds a job in flight (``worker``: the owner's token; with many workers on one state, its lease) and
    which run directory a done job's video was placed in (``placed_on``: ``host:directory``)."""
    _script(db, "ALTER TABLE jobs ADD COLUMN worker TEXT; ALTER TABLE jobs ADD COLUMN placed_on TEXT")


SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class ImageRow:
    """A local image of the run: its content, where it was read, and where the provider's storage keeps it."""

    sha256: str
    path: str
    mime: str
    size: int
    url: str | None = None
    uploaded_at: float | None = None


@dataclass(frozen=True)
class WorkerRow:
    """A worker of a shared run, as its state records it (``place``: ``host:run directory``)."""

    token: str
    pid: int
    host: str
    place: str
    lease_s: float
    started_at: float
    heartbeat_at: float

    def summary(self, now: float) -> dict[str, Any]:
        """The worker for ``status``: where it runs, when it was last heard from (``now``: the database's clock)."""
        return {
            "host": self.host,
            "pid": self.pid,
            "directory": self.place.split(":", 1)[-1],
            "heard_from_s_ago": round(now - self.heartbeat_at, 1),
            "alive": now - self.heartbeat_at <= self.lease_s,
        }


@dataclass(frozen=True)
class Owner:
    """The process that runs a directory, as the state records it."""

    token: str
    pid: int
    host: str
    started_at: float
    heartbeat_at: float

    def describe(self, now: float) -> str:
        """``pid 123 on host h, started 12:00:00, last heard from 4 s ago``."""
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started_at))
        return f"pid {self.pid} on {self.host}, started {started}, last heard from {now - self.heartbeat_at:.0f} s ago"


class Store:
    """The state of one run: here SQLite, a file in the run directory (``PgStore`` keeps it in PostgreSQL).

    The SQL of the methods is written for both engines; what differs is in the attributes below, in opening,
    migrating and owning (one process owns a SQLite state; many workers share a PostgreSQL one).
    """

    shared = False  # several workers may run this state at once (PostgreSQL)
    _begin = "BEGIN IMMEDIATE"  # SQLite: the write lock at the start, so that a check and its write are one
    _for_update = ""  # PostgreSQL: lock the rows a check reads until the transaction ends
    _cross_join = "CROSS JOIN"  # SQLite keeps the join's order with it (the possibly billed attempts first)
    _probe_bytes = "json_extract(probe, '$.bytes')"
    _placed_here = ""  # the done videos of this worker's run directory (all of them: one directory)
    _lock_jobs = ""  # PostgreSQL: the job list locked against other writers while it is synced
    _real = "REAL"  # a floating-point type (SQLite's REAL; PostgreSQL's is single precision)
    account: str | None = None  # the account the run spends from (a shared state's: a hash of the key)
    _errors: tuple[type[BaseException], ...] = (sqlite3.DatabaseError,)

    def __init__(self, db: Any, path: Path) -> None:
        self.db = db
        self.path = path
        self.owner_token: str | None = None  # set by ``claim``: attempts begin only while the state says it is ours
        self.took_over: Owner | None = None  # the stale owner ``claim`` took the directory from, to be said
        self.place: str | None = None  # ``host:run directory`` of this process's videos (set by ``claim``)
        self.refusal: str | None = None  # why a limit beyond the run's budget refused the last attempt (``_fits``)
        self.held = False  # the last attempt waits for the price of its class (``begin_attempt(alone=…)``)

    @property
    def where(self) -> str:
        """The state, for messages: ``the state file PATH`` (or its database and run)."""
        return f"the state file {self.path}"

    @property
    def _place_args(self) -> tuple[Any, ...]:
        return ()

    # --- opening ------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, *, readonly: bool = False) -> Store:
        """Open (or create) the state file at ``path`` and bring its schema up to date."""
        if path.is_symlink():
            raise StateError(
                f"{path} is a symbolic link: the state is kept only in the run directory itself; remove it"
            )
        if readonly and not path.exists():
            raise StateError(f"no state file at {path}: nothing has run in this directory yet")
        try:
            if not readonly and not path.exists():
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # private: prompts can be confidential
            uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
            db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30, check_same_thread=False)
            db.row_factory = sqlite3.Row
            if not readonly:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            store = cls(db, path)
            store._migrate(readonly)
        except sqlite3.DatabaseError as exc:
            raise StateError(
                f"cannot use the state file {path}: {exc}; if it is damaged, move it aside: `batchgen run` then starts "
                "a new state (clips it paid for are found again in the provider's request history, by run.log)"
            ) from None
        return store

    def _migrate(self, readonly: bool) -> None:
        version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StateError(
                f"{self.path} was written by a newer batchgen (state schema {version}, this one knows "
                f"{SCHEMA_VERSION}): upgrade batchgen to use it; the file was left as it is"
            )
        if version == SCHEMA_VERSION:
            return
        if readonly and version == 0:
            raise StateError(
                f"{self.path} holds no state (it is empty: a run stopped before writing it, or it was emptied); "
                "`batchgen run` starts a new one"
            )
        if readonly:
            raise StateError(f"{self.path} has an older state schema: run `batchgen run` once to upgrade it")
        with self.transaction():
            self.db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
            for function in MIGRATIONS[version:]:
                function(self.db)
                self.db.execute("INSERT INTO migrations VALUES (?, ?)", (function.__name__, time.time()))
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        """Close the file."""
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """One ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on any error."""
        try:
            self.db.execute(self._begin)
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
        except self._errors as exc:
            # Read-only, full or broken: the transaction did not happen, and the state is as it was.
            raise StateError(f"cannot write {self.where}: {exc}; nothing was changed") from None

    # --- money: every change goes through ``_move`` ----------------------------------------------------------

    def _money_of(self, db: Any, *, lock: bool = False) -> Money:
        """The run's running totals (locked until the transaction ends, with ``lock``, where the engine can)."""
        row = db.execute(
            "SELECT settled_micros, ambiguous_micros, reserved_micros FROM money" + (self._for_update if lock else "")
        ).fetchone()
        return Money(row[0] + row[1], row[2], row[0], row[1])

    def _move(self, db: Any, *, settled: int = 0, ambiguous: int = 0, reserved: int = 0) -> None:
        """Change the run's totals, in the caller's transaction."""
        db.execute(
            "UPDATE money SET settled_micros = settled_micros + ?, ambiguous_micros = ambiguous_micros + ?, "
            "reserved_micros = reserved_micros + ?",
            (settled, ambiguous, reserved),
        )

    def _claimed_here(self) -> tuple[str, tuple[Any, ...]]:
        """The condition (``AND …``, its parameters) that a pending job is this process's to begin: every one here
        (a shared state: not one a live worker claimed)."""
        return "", ()

    def _class_in_flight(self, db: Any, price_class: str) -> bool:
        """Whether an attempt of ``price_class`` is in flight where it counts (a shared state: in any run of the
        account); a lone run's own hold is the runner's (``_held_classes``)."""
        return False

    def _check_terms(self, db: Any, terms: dict[str, Any]) -> None:
        """A shared state refuses a worker on other terms than the live ones' (one process owns this state)."""

    def _money_first(self, db: Any) -> None:
        """Lock what money moves need before any row of a job (a shared state: the account's ledger, then the run's
        money), so that transactions meet their locks in one order; SQLite's ``BEGIN IMMEDIATE`` holds them all."""

    def account_fits(self, estimate_micros: int) -> bool:
        """Whether the account's budget (a shared state's) could take an attempt of ``estimate_micros`` now: a look
        before the pace is asked for a slot; ``begin_attempt`` decides. No account here."""
        return True

    def _fits(self, db: Any, estimate_micros: int) -> bool:
        """Whether limits beyond the run's budget let an attempt of ``estimate_micros`` begin (none here: a shared
        state checks its account's budget)."""
        return True

    # --- meta ---------------------------------------------------------------------------------------------

    def get_meta(self, key: str, default: Any = None) -> Any:
        """A value of the run's metadata (JSON), or ``default``."""
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, **values: Any) -> None:
        """Set metadata values (JSON), in one transaction."""
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [(key, json.dumps(value)) for key, value in values.items()],
            )

    # --- the job list -------------------------------------------------------------------------------------

    def sync_jobs(
        self,
        jobs: Sequence[Job],
        estimates: Sequence[int],
        classes: Sequence[str],
        now: float,
        terms: dict[str, Any] | None = None,
    ) -> int:
        """Add jobs new to the manifest, mark the rest in or out of it, and put skipped jobs back in line.

        Returns how many jobs were added. Jobs no longer in the manifest are kept, never deleted. ``terms`` (what
        the jobs were made from: the manifest's digest, the budget) are recorded in the same transaction, after a
        shared state checked that no live worker runs the run on other terms.
        """
        with self.transaction() as db:
            db.execute(f"SELECT 1 FROM money{self._for_update}")  # workers starting together sync one at a time
            if self._lock_jobs:  # its updates of every job wait for the others' updates of a few, never in a circle
                db.execute(self._lock_jobs)
            if terms is not None:
                self._check_terms(db, terms)
                db.execute(
                    "INSERT INTO meta VALUES ('terms', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (json.dumps(terms),),
                )
            known = {row[0] for row in db.execute("SELECT id FROM jobs")}
            new = [(job, estimate) for job, estimate in zip(jobs, estimates, strict=True) if job.id not in known]
            db.executemany(
                "INSERT INTO jobs (id, idx, shot_id, take, variables, model, payload, payload_hash, estimate_micros,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        job.id,
                        job.index,
                        job.shot_id,
                        job.take,
                        json.dumps(job.variables),
                        job.model,
                        canonical_json(job.payload),
                        content_hash(
                            {"model": job.model, "payload": job.payload}
                        ),  # the simulator's, without local images
                        estimate,
                        now,
                    )
                    for job, estimate in new
                ],
            )
            # A job that enters or leaves the manifest changes (updated_at: the report reads what changed). Its
            # old membership is kept meanwhile as in_manifest - 2 (-1: it was in, -2: it was not).
            db.execute("UPDATE jobs SET in_manifest = in_manifest - 2")
            db.executemany(
                "UPDATE jobs SET updated_at = CASE WHEN in_manifest = -2 THEN ? ELSE updated_at END, in_manifest = 1, "
                "idx = ?, estimate_micros = ?, price_class = ? WHERE id = ?",
                [
                    (now, job.index, estimate, price, job.id)
                    for job, estimate, price in zip(jobs, estimates, classes, strict=True)
                ],
            )
            db.execute(
                "UPDATE jobs SET updated_at = CASE WHEN in_manifest = -1 THEN ? ELSE updated_at END, in_manifest = 0 "
                "WHERE in_manifest < 0",
                (now,),
            )
            _requeue_skipped(db, now)
        return len(new)

    def fill_price_classes(self, price_class: Callable[[str, dict[str, Any]], str]) -> None:
        """Give jobs of a state older than price classes theirs (once, after the upgrade): ``price_class(model,
        payload)``."""
        rows = self.db.execute("SELECT id, model, payload FROM jobs WHERE price_class = ''").fetchall()
        if rows:
            with self.transaction() as db:
                db.executemany(
                    "UPDATE jobs SET price_class = ? WHERE id = ?",
                    [(price_class(row[1], json.loads(row[2])), row[0]) for row in rows],
                )

    # --- local images ---------------------------------------------------------------------------------------

    def sync_images(self, images: list[ImageRow]) -> None:
        """Record the local images the manifest's jobs send (a known content keeps its URL; its path is updated)."""
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO images (sha256, path, mime, size) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (sha256) DO UPDATE SET path = excluded.path",
                [(image.sha256, image.path, image.mime, image.size) for image in images],
            )

    def images(self) -> list[ImageRow]:
        """Every local image of the run."""
        rows = self.db.execute("SELECT sha256, path, mime, size, url, uploaded_at FROM images ORDER BY path")
        return [ImageRow(*row) for row in rows]

    def image(self, sha256: str) -> ImageRow | None:
        """One local image by its content, or ``None`` when the state has none such."""
        row = self.db.execute(
            "SELECT sha256, path, mime, size, url, uploaded_at FROM images WHERE sha256 = ?", (sha256,)
        ).fetchone()
        return None if row is None else ImageRow(*row)

    def image_url(self, sha256: str) -> str | None:
        """The URL the provider's storage gave the image ``sha256``, ``None`` before it is uploaded."""
        row = self.db.execute("SELECT url FROM images WHERE sha256 = ?", (sha256,)).fetchone()
        return None if row is None else row[0]

    def image_uploaded(self, sha256: str, url: str, now: float) -> None:
        """The provider's storage holds the image at ``url``: every job sending it sends that URL from now on."""
        with self.transaction() as db:
            db.execute("UPDATE images SET url = ?, uploaded_at = ? WHERE sha256 = ?", (url, now, sha256))

    def _priced_tables(self) -> list[str]:
        """The prefixes of the tables whose attempts tell prices: this run's (a shared state: every run's of the
        account, whose prices are the same provider's)."""
        return [""]

    def prices_seen(self, since: float | None = None) -> dict[str, int]:
        """Per price class, the highest cost the provider reported for one of its attempts (µUSD); of the attempts
        that ended since ``since`` (epoch), with it."""
        prices: dict[str, int] = {}
        for prefix in self._priced_tables():
            rows = self.db.execute(
                f"SELECT j.price_class, MAX(a.provider_cost_micros) FROM {prefix}attempts a JOIN {prefix}jobs j ON "
                "a.job_id = j.id WHERE a.provider_cost_micros IS NOT NULL AND a.ended_at >= ? GROUP BY j.price_class",
                (since or 0.0,),
            )
            for price_class, cost in rows:
                prices[price_class] = max(int(cost), prices.get(price_class, 0))
        return prices

    def price_factor(self) -> float:
        """The most the provider charged over a job's estimate, as a factor (1.0 when never above it)."""
        factor = 1.0
        for prefix in self._priced_tables():
            row = self.db.execute(
                f"SELECT MAX(CAST(a.provider_cost_micros AS {self._real}) / j.estimate_micros) FROM {prefix}attempts "
                f"a JOIN {prefix}jobs j ON a.job_id = j.id WHERE a.provider_cost_micros IS NOT NULL "
                "AND j.estimate_micros > 0"
            ).fetchone()
            factor = max(factor, float(row[0] or 1.0))
        return factor

    def charged_above_estimate(self) -> list[tuple[str, int, int]]:
        """(job id, charged, reserved) of every attempt the provider charged more than it reserved (µUSD)."""
        rows = self.db.execute(
            "SELECT job_id, provider_cost_micros, reserved_micros FROM attempts "
            "WHERE provider_cost_micros > reserved_micros ORDER BY id"
        )
        return [(row[0], int(row[1]), int(row[2])) for row in rows]

    def requeue_skipped(self, now: float) -> None:
        """Put the manifest's skipped jobs back in line (a new run reconsiders what budget or deadline refused)."""
        with self.transaction() as db:
            _requeue_skipped(db, now)

    def next_pending(self, now: float, after_idx: int = -1, *, held: Sequence[str] = ()) -> JobRow | None:
        """The first pending job of the manifest (after ``after_idx``) whose backoff is over, of no price class in
        ``held`` unless it has an attempt to settle first (possibly billed: it is looked up, not paid again)."""
        row = self.db.execute(
            "SELECT * FROM jobs WHERE state = 'pending' AND in_manifest = 1 AND not_before <= ? AND idx > ?"
            f"{not_held(held)} ORDER BY idx LIMIT 1",
            (now, after_idx, *held),
        ).fetchone()
        return _job(row) if row else None

    def earliest_pending(self, *, held: Sequence[str] = ()) -> float | None:
        """When the next pending job's backoff ends (``None``: no pending job), of no price class in ``held`` (unless
        it has an attempt to settle first, as ``next_pending``)."""
        row = self.db.execute(
            f"SELECT MIN(not_before) FROM jobs WHERE state = 'pending' AND in_manifest = 1{not_held(held)}",
            tuple(held),
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def classes_in_flight(self) -> set[str]:
        """The price classes of the jobs whose cost is not known yet: submitted (or being submitted), or waiting with
        an attempt that may have been billed (its request not found yet: it may be generating)."""
        rows = self.db.execute(
            "SELECT DISTINCT price_class FROM jobs WHERE state IN ('submitting', 'submitted') UNION "
            f"SELECT DISTINCT j.price_class FROM attempts a {self._cross_join} jobs j ON j.id = a.job_id "
            "WHERE a.money = 'ambiguous' AND a.outcome IN ('retry', 'ambiguous') AND j.state = 'pending' "
            "AND j.in_manifest = 1"
        )  # from the few possibly billed attempts (an index of its own; CROSS JOIN keeps that order), not every job
        return {row[0] for row in rows}

    def pending_classes(self) -> set[str]:
        """The price classes of the jobs waiting to be submitted."""
        rows = self.db.execute("SELECT DISTINCT price_class FROM jobs WHERE state = 'pending' AND in_manifest = 1")
        return {row[0] for row in rows}

    def job(self, job_id: str) -> JobRow:
        """One job by id."""
        row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise StateError(f"no job {job_id} in {self.path}")
        return _job(row)

    def jobs(self, states: Sequence[str] | None = None, *, updated_since: float | None = None) -> list[JobRow]:
        """Every job (in ``states``; changed since ``updated_since``), in manifest order."""
        if states is None:
            rows = self.db.execute("SELECT * FROM jobs ORDER BY in_manifest DESC, idx")
        else:
            marks = ",".join("?" * len(states))
            rows = self.db.execute(
                f"SELECT * FROM jobs WHERE state IN ({marks}) AND updated_at >= ? ORDER BY idx",
                (*states, updated_since or 0.0),
            )
        return [_job(row) for row in rows]

    def costs(self, job_ids: Sequence[str] | None = None) -> dict[str, tuple[int, int]]:
        """Per job (of ``job_ids``, else every one): (µUSD settled or possibly billed, number of attempts)."""
        money = "SUM(CASE WHEN money IN ('settled', 'ambiguous') THEN settled_micros ELSE 0 END)"
        if job_ids is None:
            rows = list(self.db.execute(f"SELECT job_id, {money}, COUNT(*) FROM attempts GROUP BY job_id"))
        else:
            rows = []
            for chunk in _chunks(list(job_ids)):
                marks = ",".join("?" * len(chunk))
                query = f"SELECT job_id, {money}, COUNT(*) FROM attempts WHERE job_id IN ({marks}) GROUP BY job_id"
                rows.extend(self.db.execute(query, chunk))
        return {row[0]: (int(row[1] or 0), int(row[2])) for row in rows}

    def finished_since(self, since: float) -> int:
        """How many jobs finished (done, failed or lost) since ``since`` (epoch)."""
        row = self.db.execute(
            "SELECT COUNT(*) FROM jobs WHERE state IN ('done', 'failed', 'lost') AND finished_at >= ?", (since,)
        ).fetchone()
        return int(row[0])

    def job_stamps(self) -> list[tuple[str, float]]:
        """Every job's id and when it last changed, in the order ``jobs()`` gives them (cheap: no payloads)."""
        rows = self.db.execute("SELECT id, updated_at FROM jobs ORDER BY in_manifest DESC, idx")
        return [(row[0], float(row[1])) for row in rows]

    def jobs_by_id(self, job_ids: Sequence[str]) -> list[JobRow]:
        """The jobs of ``job_ids`` (those that exist), in no particular order."""
        found: list[JobRow] = []
        for chunk in _chunks(list(job_ids)):
            marks = ",".join("?" * len(chunk))
            found.extend(_job(row) for row in self.db.execute(f"SELECT * FROM jobs WHERE id IN ({marks})", chunk))
        return found

    def flagged(self) -> tuple[list[str], list[tuple[str, str]]]:
        """Ids of the jobs possibly billed twice, and (id, state) of the jobs no longer in the manifest."""
        twice = [row[0] for row in self.db.execute("SELECT id FROM jobs WHERE possibly_billed_twice = 1 ORDER BY idx")]
        gone = [(row[0], row[1]) for row in self.db.execute("SELECT id, state FROM jobs WHERE in_manifest = 0")]
        return twice, gone

    def manifest_job_count(self) -> int:
        """How many jobs the current manifest has."""
        return int(self.db.execute("SELECT COUNT(*) FROM jobs WHERE in_manifest = 1").fetchone()[0])

    def counts(self) -> dict[str, int]:
        """How many jobs of the manifest are in each state."""
        rows = self.db.execute("SELECT state, COUNT(*) FROM jobs WHERE in_manifest = 1 GROUP BY state")
        return {state: 0 for state in STATES} | {row[0]: row[1] for row in rows}

    def attempts(self, job_id: str) -> list[AttemptRow]:
        """Every attempt of a job, oldest first."""
        rows = self.db.execute("SELECT * FROM attempts WHERE job_id = ? ORDER BY id", (job_id,))
        return [AttemptRow(**dict(row)) for row in rows]

    def all_attempts(self) -> list[AttemptRow]:
        """Every attempt of the run, oldest first."""
        return [AttemptRow(**dict(row)) for row in self.db.execute("SELECT * FROM attempts ORDER BY id")]

    def money(self) -> Money:
        """The running totals."""
        return self._money_of(self.db)

    # --- transitions: each one transaction, before the action it allows ----------------------------------

    def begin_attempt(
        self,
        job_id: str,
        transport: str,
        estimate_micros: int,
        allow: Callable[[Money], bool],
        now: float,
        *,
        alone: str | None = None,
    ) -> int | None:
        """Reserve ``estimate_micros`` and mark the job ``submitting``, if ``allow(money)`` says so.

        The check and the reservation are one transaction: no two attempts can both take the last dollars.
        ``alone``: the job's price class has no confirmed price yet; a shared state begins it only while no run of
        the account has one of that class in flight (``None`` returned, ``self.held`` set). :class:`JobGone`
        when the job is no longer pending (another worker or command changed it).
        """
        self.held = False
        with self.transaction() as db:
            self._check_owner(db)
            if not self._fits(db, estimate_micros):
                return None
            if alone is not None and self._class_in_flight(db, alone):
                self.held = True
                return None
            if not allow(self._money_of(db, lock=True)):
                return None
            claim, claimer = self._claimed_here()
            row = db.execute(
                f"SELECT attempts_used FROM jobs WHERE id = ? AND state = 'pending'{claim}{self._for_update}",
                (job_id, *claimer),
            ).fetchone()
            if row is None:  # only a pending job begins an attempt: never one another process has taken
                raise JobGone(f"{job_id} is no longer pending in {self.where}: another process changed it")
            attempt_id = int(
                db.execute(
                    "INSERT INTO attempts (job_id, number, transport, started_at, money, reserved_micros) "
                    "VALUES (?, ?, ?, ?, 'reserved', ?) RETURNING id",
                    (job_id, row[0] + 1, transport, now, estimate_micros),
                ).fetchone()[0]
            )
            self._move(db, reserved=estimate_micros)
            db.execute(
                "UPDATE jobs SET state = 'submitting', attempts_used = attempts_used + 1, open_attempt = ?, "
                "reason = NULL, worker = ?, updated_at = ? WHERE id = ?",
                (attempt_id, self.owner_token, now, job_id),
            )
        return attempt_id

    # --- ownership ----------------------------------------------------------------------------------------

    def reopen(self) -> Store:
        """Another connection to the same state, read-only (for a thread)."""
        other = Store.open(self.path, readonly=True)
        other.place = self.place
        return other

    def take_over(self, now: float) -> list[JobRow]:
        """The jobs in flight this process takes charge of: here, at its start, every one (it owns the state)."""
        return self.jobs(IN_FLIGHT)

    def mine(self, job: JobRow) -> bool:
        """Whether ``job`` is this process's to follow: every job of a state it owns."""
        return True

    def places(self) -> dict[str | None, int]:
        """How many done videos each place holds (``host:run directory``; ``None``: placed by an older batchgen)."""
        rows = self.db.execute("SELECT placed_on, COUNT(*) FROM jobs WHERE state = 'done' GROUP BY placed_on")
        return {row[0]: int(row[1]) for row in rows}

    def workers(self) -> list[WorkerRow]:
        """The workers of a shared run: none here (one process owns this state: ``owner``)."""
        return []

    def live_workers(self) -> list[WorkerRow]:
        """The other workers of a shared run whose lease has not run out: none here."""
        return []

    def account_money(self) -> AccountMoney | None:
        """The ledger of the account the run spends from: none here (a run's budget is its own)."""
        return None

    def pace(self) -> tuple[int, float]:
        """The account's submits in the last minute and its pause: a state of one run keeps no shared pace."""
        return 0, 0.0

    def db_now(self) -> float:
        """The clock heartbeats are measured with: this machine's."""
        return time.time()

    def capped(self) -> bool:
        """Whether a budget beyond the run's applies (a shared state's account): none here."""
        return False

    def others_busy(self) -> bool:
        """Whether other processes hold jobs of the run (in flight, or claimed to submit): none share this one."""
        return False

    def owner(self) -> Owner | None:
        """Who runs this directory, as recorded."""
        row = self.db.execute("SELECT token, pid, host, started_at, heartbeat_at FROM owner").fetchone()
        return Owner(*row) if row else None

    def claim(self, token: str, pid: int, host: str, now: float, is_live: Callable[[Owner], bool]) -> Owner | None:
        """Record this process as the directory's owner, in one transaction; the stale owner it took over from, if
        any. :class:`RunLockedError` when ``is_live`` says the recorded owner still runs."""
        with self.transaction() as db:
            row = db.execute("SELECT token, pid, host, started_at, heartbeat_at FROM owner").fetchone()
            previous = Owner(*row) if row else None
            if previous is not None and previous.token != token and is_live(previous):
                raise RunLockedError(
                    f"another batchgen run ({previous.describe(now)}) is using {self.path.parent}; wait for it, or "
                    "stop it first"
                )
            db.execute(
                "INSERT INTO owner VALUES (1, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET token = excluded.token, "
                "pid = excluded.pid, host = excluded.host, started_at = excluded.started_at, "
                "heartbeat_at = excluded.heartbeat_at",
                (token, pid, host, now, now),
            )
        self.owner_token = token
        self.place = f"{host}:{self.path.parent.resolve()}"
        self.took_over = previous if previous is not None and previous.token != token else None
        return self.took_over

    def heartbeat(self, now: float) -> None:
        """Say the owner is alive; :class:`StateError` when another process has taken the directory over."""
        with self.transaction() as db:
            self._check_owner(db)
            db.execute("UPDATE owner SET heartbeat_at = ? WHERE token = ?", (now, self.owner_token))

    def release(self) -> None:
        """This process no longer runs the directory."""
        if self.owner_token is not None:
            with self.transaction() as db:
                db.execute("DELETE FROM owner WHERE token = ?", (self.owner_token,))
            self.owner_token = None

    def _check_owner(self, db: Any) -> None:
        if self.owner_token is None:
            return
        row = db.execute("SELECT pid, host FROM owner WHERE token = ?", (self.owner_token,)).fetchone()
        if row is None:
            holder = self.owner()
            who = f" ({holder.describe(time.time())})" if holder else ""
            raise StateError(f"another batchgen process{who} has taken over {self.path.parent}: this one stops")

    def mark_submitted(self, job_id: str, request_id: str, now: float) -> None:
        """The provider answered with a request id: it is stored at once, and the job is never POSTed again."""
        with self.transaction() as db:
            self._fence(db, job_id)
            self._submitted(job_id, request_id, now)

    def _fence(self, db: Any, job_id: str) -> None:
        """Before a change to a job in flight: it is still this process's (a shared state's jobs can be taken over
        by another worker; one process owns every job here)."""

    def _submitted(self, job_id: str, request_id: str, now: float) -> None:
        db = self.db
        db.execute(
            "UPDATE attempts SET request_id = ? WHERE id = (SELECT open_attempt FROM jobs WHERE id = ?)",
            (request_id, job_id),
        )
        db.execute(  # a job another worker took over meanwhile (as possibly billed) stays as that one left it
            "UPDATE jobs SET state = 'submitted', request_id = ?, submitted_at = ?, updated_at = ? WHERE id = ? "
            "AND state = 'submitting'",
            (request_id, now, now, job_id),
        )

    def mark_billed_v1(self, job_id: str, request_id: str, cost_micros: int | None, now: float) -> None:
        """A v1 answer arrived with 200: the request id stored and the money settled, in one transaction."""
        with self.transaction() as db:
            self._money_first(db)
            self._fence(db, job_id)
            self._submitted(job_id, request_id, now)
            self._completed(job_id, cost_micros, None, now)

    def mark_completed(self, job_id: str, cost_micros: int | None, video_url: str | None, now: float) -> None:
        """The generation completed: settle its money (the provider's figure, else the estimate), go download."""
        with self.transaction() as db:
            self._money_first(db)
            self._fence(db, job_id)
            self._completed(job_id, cost_micros, video_url, now)

    def _completed(self, job_id: str, cost_micros: int | None, video_url: str | None, now: float) -> None:
        db = self.db
        attempt = _open_attempt(db, job_id)
        if attempt is not None:
            cost = attempt["reserved_micros"] if cost_micros is None else cost_micros
            _end_attempt(self._move, db, attempt, "settled", cost, outcome="ok", status=200, message=None, now=now)
            db.execute("UPDATE attempts SET provider_cost_micros = ? WHERE id = ?", (cost_micros, attempt["id"]))
        db.execute(
            "UPDATE jobs SET state = 'downloading', video_url = ?, completed_at = ?, open_attempt = NULL, "
            "download_failures = 0, not_before = 0, updated_at = ? WHERE id = ?",
            (video_url, now, now, job_id),
        )

    def end_attempt(
        self,
        job_id: str,
        *,
        money: str,
        outcome: str,
        next_state: str,
        status: int | None = None,
        message: str | None = None,
        backoff_s: float | None = None,
        not_before: float = 0.0,
        refund_attempt: bool = False,
        now: float,
    ) -> None:
        """An attempt ended without a video: its money ``released`` or ``ambiguous``; the job moves on.

        Back to ``pending``, the job forgets the request (the next attempt is a new one) and is marked possibly
        billed twice when this attempt may have been billed. ``refund_attempt``: the attempt does not count against
        ``--max-attempts`` (a 429, a stop).
        """
        with self.transaction() as db:
            self._money_first(db)
            self._fence(db, job_id)
            attempt = _open_attempt(db, job_id)
            if attempt is not None:
                _end_attempt(
                    self._move,
                    db,
                    attempt,
                    money,
                    0,
                    outcome=outcome,
                    status=status,
                    message=message,
                    now=now,
                    backoff_s=backoff_s,
                )
            again = next_state == "pending"
            db.execute(
                "UPDATE jobs SET state = ?, reason = ?, not_before = ?, open_attempt = NULL, updated_at = ?, "
                "attempts_used = attempts_used - ?, "
                "possibly_billed_twice = CASE WHEN possibly_billed_twice = 1 OR ? THEN 1 ELSE 0 END WHERE id = ?",
                (
                    next_state,
                    None if again else message,
                    not_before,
                    now,
                    int(refund_attempt),
                    money == "ambiguous" and again,
                    job_id,
                ),
            )
            if again:
                db.execute("UPDATE jobs SET request_id = NULL WHERE id = ?", (job_id,))

    def set_video_url(self, job_id: str, video_url: str, now: float) -> None:
        """Where the paid video of a v1 answer can be downloaded."""
        with self.transaction() as db:
            db.execute("UPDATE jobs SET video_url = ?, updated_at = ? WHERE id = ?", (video_url, now, job_id))

    def download_failed(self, job_id: str, message: str, not_before: float, give_up: bool, now: float) -> None:
        """A download broke: the clip is paid, so only the download is retried (or the job fails)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET download_failures = download_failures + 1, not_before = ?, reason = ?, "
                "state = CASE WHEN ? THEN 'failed' ELSE state END, updated_at = ? WHERE id = ?",
                (not_before, message, give_up, now, job_id),
            )

    def unresolved_ambiguous(self, job_id: str) -> AttemptRow | None:
        """The job's latest attempt that may have been billed and that the request history has not yet settled."""
        row = self.db.execute(
            "SELECT * FROM attempts WHERE job_id = ? AND money = 'ambiguous' AND outcome IN ('retry', 'ambiguous') "
            "ORDER BY id DESC LIMIT 1",
            (job_id,),
        ).fetchone()
        return AttemptRow(**dict(row)) if row else None

    def adopt(self, job_id: str, attempt_id: int, request_id: str, now: float) -> None:
        """The request history shows the ambiguous attempt's request: the job carries on with it, no new POST.

        The attempt's money goes back from possibly billed to reserved, to be settled when it completes.
        """
        with self.transaction() as db:
            self._money_first(db)
            reserved = db.execute("SELECT reserved_micros FROM attempts WHERE id = ?", (attempt_id,)).fetchone()[0]
            self._move(db, ambiguous=-reserved, reserved=reserved)
            db.execute(
                "UPDATE attempts SET money = 'reserved', settled_micros = 0, outcome = NULL, request_id = ?, "
                "message = 'found in the provider''s request history: adopted, not submitted again' WHERE id = ?",
                (request_id, attempt_id),
            )
            db.execute(
                "UPDATE jobs SET state = 'submitted', request_id = ?, "
                "open_attempt = ?, submitted_at = ?, not_before = 0, updated_at = ?, "
                "possibly_billed_twice = CASE WHEN EXISTS (SELECT 1 FROM attempts WHERE job_id = ? AND id != ? "
                "AND money = 'ambiguous') THEN 1 ELSE 0 END "
                "WHERE id = ?",
                (request_id, attempt_id, now, now, job_id, attempt_id, job_id),
            )

    def close_ambiguous(
        self,
        job_id: str,
        attempt_id: int,
        *,
        billed: bool | None,
        message: str,
        now: float,
        request_id: str | None = None,
    ) -> None:
        """What the request history says of an ambiguous attempt: not billed (``False``: FAILED there), or still
        unknown (``None``: not there after the lag allowance; it stays possibly billed). Either way it is settled
        for good, and the job is submitted again."""
        with self.transaction() as db:
            self._money_first(db)
            if billed is False:
                reserved = db.execute("SELECT reserved_micros FROM attempts WHERE id = ?", (attempt_id,)).fetchone()[0]
                self._move(db, ambiguous=-reserved)
                db.execute(
                    "UPDATE attempts SET money = 'released', settled_micros = 0, outcome = 'not_billed', message = ?, "
                    "request_id = ? WHERE id = ?",
                    (message, request_id, attempt_id),
                )
            else:
                db.execute(
                    "UPDATE attempts SET outcome = 'unresolved', message = ? WHERE id = ?", (message, attempt_id)
                )
            db.execute(
                "UPDATE jobs SET possibly_billed_twice = CASE WHEN EXISTS (SELECT 1 FROM attempts WHERE job_id = ? "
                "AND money = 'ambiguous') THEN 1 ELSE 0 END, updated_at = ? WHERE id = ?",
                (job_id, now, job_id),
            )

    def defer(self, job_id: str, not_before: float, now: float) -> None:
        """Leave a pending job alone until ``not_before``."""
        with self.transaction() as db:
            db.execute("UPDATE jobs SET not_before = ?, updated_at = ? WHERE id = ?", (not_before, now, job_id))

    def recovered(self, job_id: str, video_url: str, cost_micros: int | None, now: float) -> None:
        """The request history has the clip of a lost job: settle it with the provider's figure, go download it."""
        with self.transaction() as db:
            self._money_first(db)
            row = db.execute(
                "SELECT * FROM attempts WHERE job_id = ? AND outcome = 'lost' ORDER BY id DESC LIMIT 1", (job_id,)
            ).fetchone()
            if row is not None:
                cost = row["reserved_micros"] if cost_micros is None else cost_micros
                if row["money"] == "ambiguous":
                    self._move(db, ambiguous=-row["settled_micros"], settled=cost)
                else:
                    self._move(db, settled=cost - row["settled_micros"])
                db.execute(
                    "UPDATE attempts SET money = 'settled', settled_micros = ?, outcome = 'ok', provider_cost_micros "
                    "= ?, message = 'recovered from the provider''s request history' WHERE id = ?",
                    (cost, cost_micros, row["id"]),
                )
            db.execute(
                "UPDATE jobs SET state = 'downloading', video_url = ?, reason = NULL, download_failures = 0, "
                "not_before = 0, completed_at = ?, updated_at = ? WHERE id = ?",
                (video_url, now, now, job_id),
            )

    def owned_request_ids(self) -> set[str]:
        """Every request id some job of the run already owns."""
        return {row[0] for row in self.db.execute("SELECT request_id FROM attempts WHERE request_id IS NOT NULL")}

    def mark_lost(self, job_id: str, reason: str, now: float) -> None:
        """A paid clip that cannot be fetched any more: only ``batchgen retry --lost`` pays for it again."""
        with self.transaction() as db:
            db.execute(
                "UPDATE attempts SET outcome = 'lost', message = ? WHERE id = "
                "(SELECT MAX(id) FROM attempts WHERE job_id = ?)",
                (reason, job_id),
            )
            db.execute("UPDATE jobs SET state = 'lost', reason = ?, updated_at = ? WHERE id = ?", (reason, now, job_id))

    def mark_done_many(self, placed: Sequence[tuple[str, str, str, dict[str, Any], list[str]]], now: float) -> None:
        """Several videos placed together: ``(job id, video path, sha256, probe, warnings)`` each, one transaction."""
        with self.transaction() as db:
            db.executemany(
                "UPDATE jobs SET state = 'done', video_path = ?, sha256 = ?, probe = ?, warnings = ?, reason = NULL, "
                "placed_on = ?, finished_at = ?, updated_at = ? WHERE id = ?",
                [
                    (path, sha256, json.dumps(probe), json.dumps(warnings), self.place, now, now, job_id)
                    for job_id, path, sha256, probe, warnings in placed
                ],
            )

    def done_videos(self) -> list[DoneVideo]:
        """Every done job's video as recorded (a light read: a resume of 100,000 jobs looks at each)."""
        rows = self.db.execute(
            f"SELECT id, video_path, {self._probe_bytes}, sha256 FROM jobs WHERE state = 'done'{self._placed_here} "
            "ORDER BY idx",
            self._place_args,
        )
        return [DoneVideo(row[0], row[1] or f"videos/{row[0]}.mp4", row[2], row[3]) for row in rows]

    def adopt_request(self, job_id: str, request_id: str, reserve_micros: int, transport: str, now: float) -> bool:
        """A request ``run.log`` names for a job the state has as pending (the state lost rows: a damaged WAL, a
        restored copy): the job carries on with it, in a new attempt, never submitted again. False when the job is
        not pending (nothing to adopt it into)."""
        with self.transaction() as db:
            self._money_first(db)
            self._check_owner(db)
            row = db.execute("SELECT attempts_used FROM jobs WHERE id = ? AND state = 'pending'", (job_id,)).fetchone()
            if row is None:
                return False
            cursor = db.execute(
                "INSERT INTO attempts (job_id, number, transport, started_at, request_id, message, money, "
                "reserved_micros) VALUES (?, ?, ?, ?, ?, ?, 'reserved', ?) RETURNING id",
                (
                    job_id,
                    row[0] + 1,
                    transport,
                    now,
                    request_id,
                    "named by run.log: the state had lost it",
                    reserve_micros,
                ),
            )
            attempt_id = int(cursor.fetchone()[0])
            self._move(db, reserved=reserve_micros)
            db.execute(
                "UPDATE jobs SET state = 'submitted', request_id = ?, open_attempt = ?, attempts_used = attempts_used "
                "+ 1, submitted_at = ?, not_before = 0, reason = NULL, worker = ?, updated_at = ? WHERE id = ?",
                (request_id, attempt_id, now, self.owner_token, now, job_id),
            )
        return True

    def note_problem(self, job_id: str, message: str, now: float) -> None:
        """The last problem of a job in flight (a poll that failed, say), for ``status``; the job stays as it is."""
        with self.transaction() as db:
            db.execute("UPDATE jobs SET reason = ?, updated_at = ? WHERE id = ?", (message, now, job_id))

    def redownload(self, job_id: str, reason: str, now: float) -> None:
        """A done job whose video is gone or damaged: back to downloading its paid clip (never to a new submit)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'downloading', video_path = NULL, sha256 = NULL, probe = NULL, reason = ?, "
                "download_failures = 0, not_before = 0, updated_at = ? WHERE id = ? AND state = 'done'",
                (reason, now, job_id),
            )

    def mark_skipped(self, job_id: str, reason: str, now: float) -> None:
        """Budget or deadline said no to this job."""
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'skipped', reason = ?, updated_at = ? WHERE id = ? AND state = 'pending'",
                (reason, now, job_id),
            )

    def mark_failed_unsent(self, job_id: str, reason: str, now: float) -> None:
        """A job that cannot be sent (its image cannot be uploaded) fails without an attempt: nothing was spent."""
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'failed', reason = ?, finished_at = ?, updated_at = ? "
                "WHERE id = ? AND state = 'pending'",
                (reason, now, now, job_id),
            )

    def recover(self, now: float, job_ids: Sequence[str] | None = None) -> list[str]:
        """Read the state after a stop: every job caught in ``submitting`` is ambiguous (possibly billed).

        Its attempt's money is kept as possibly billed and the job goes back to pending, marked as possibly
        billed twice when it is submitted again. Returns those job ids. ``submitted`` and ``downloading`` jobs
        need nothing: the runner re-attaches and re-downloads them.
        """
        stuck = [row[0] for row in self.db.execute("SELECT id FROM jobs WHERE state = 'submitting'")]
        if job_ids is not None:  # a shared state: only the jobs this worker took over
            taken = set(job_ids)
            stuck = [job_id for job_id in stuck if job_id in taken]
        for job_id in stuck:
            self.end_attempt(
                job_id,
                money="ambiguous",
                outcome="ambiguous",
                next_state="pending",
                message="the run stopped before the provider's answer arrived: possibly billed",
                now=now,
            )
        return stuck

    def requeue(self, states: Sequence[str], now: float) -> list[str]:
        """Put jobs in ``states`` back in line with fresh attempts (``batchgen retry``).

        A failed job whose clip was paid (it has a video URL) goes back to downloading, never to a new submit.
        """
        with self.transaction() as db:
            marks = ",".join("?" * len(states))
            ids = [row[0] for row in db.execute(f"SELECT id FROM jobs WHERE state IN ({marks})", tuple(states))]
            db.execute(
                f"UPDATE jobs SET state = CASE WHEN video_url IS NOT NULL AND state = 'failed' THEN 'downloading' "
                f"ELSE 'pending' END, attempts_used = 0, download_failures = 0, not_before = 0, reason = NULL, "
                f"request_id = CASE WHEN video_url IS NOT NULL AND state = 'failed' THEN request_id ELSE NULL END, "
                f"possibly_billed_twice = CASE WHEN possibly_billed_twice = 1 OR state = 'lost' THEN 1 ELSE 0 END, "
                f"updated_at = ? WHERE state IN ({marks})",
                (now, *states),
            )
        return ids


# A job (of the jobs table) with an attempt that may have been billed and that the request history has not settled.
_UNRESOLVED = (
    "EXISTS (SELECT 1 FROM attempts a WHERE a.job_id = jobs.id AND a.money = 'ambiguous' "
    "AND a.outcome IN ('retry', 'ambiguous'))"
)


def not_held(held: Sequence[str]) -> str:
    """The condition (``AND …``, its parameters ``held``) that a pending job is of no price class in ``held``, or has
    an attempt to settle first."""
    if not held:
        return ""
    return f" AND (price_class NOT IN ({','.join('?' * len(held))}) OR {_UNRESOLVED})"


def _requeue_skipped(db: Any, now: float) -> None:
    db.execute(
        "UPDATE jobs SET state = 'pending', reason = NULL, not_before = 0, updated_at = ? "
        "WHERE state = 'skipped' AND in_manifest = 1",
        (now,),
    )


def _open_attempt(db: Any, job_id: str) -> Any:
    row = db.execute(
        "SELECT a.* FROM attempts a JOIN jobs j ON a.id = j.open_attempt WHERE j.id = ?", (job_id,)
    ).fetchone()
    return row


def _end_attempt(
    move: Callable[..., None],
    db: Any,
    attempt: Any,
    money: str,
    settled_micros: int,
    *,
    outcome: str,
    status: int | None,
    message: str | None,
    now: float,
    backoff_s: float | None = None,
) -> None:
    reserved = attempt["reserved_micros"]
    kept = {"settled": settled_micros, "ambiguous": reserved, "released": 0}[money]
    db.execute(
        "UPDATE attempts SET money = ?, settled_micros = ?, outcome = ?, http_status = ?, message = ?, ended_at = ?, "
        "backoff_s = ? WHERE id = ?",
        (money, kept, outcome, status, message, now, backoff_s, attempt["id"]),
    )
    move(
        db,
        reserved=-reserved,
        settled=kept if money == "settled" else 0,
        ambiguous=kept if money == "ambiguous" else 0,
    )


def _chunks(items: list[str], size: int = 500) -> Iterator[list[str]]:
    """``items`` in lists of at most ``size`` (SQLite limits the parameters of one statement)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _job(row: Any) -> JobRow:
    data = dict(row)
    data["variables"] = json.loads(data["variables"])
    data["payload"] = json.loads(data["payload"])
    data["probe"] = json.loads(data["probe"]) if data["probe"] else None
    data["warnings"] = json.loads(data["warnings"])
    data["in_manifest"] = bool(data["in_manifest"])
    data["possibly_billed_twice"] = bool(data["possibly_billed_twice"])
    return JobRow(**data)
