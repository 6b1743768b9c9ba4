"""The shared state: PostgreSQL, for a team on one account, and for many workers on one batch (the only module that
imports psycopg).

A run's tables are :class:`~batchgen.store.Store`'s, in a schema of its own (``run_<hash of its name>``), so that
every method's SQL is the same on both engines; what a team shares is in the schema ``batchgen``::

    batchgen.runs      each run's name, schema and account
    batchgen.accounts  one budget ledger per account (a hash of the key): cap, period, settled, possibly billed,
                       reserved; changed in the same transaction as the run's own money, so that
                       ``spent + reserved + estimate ≤ cap`` holds across every run and machine
    batchgen.paces     one pace per account: when a 429 paused it; batchgen.submits: its submits of the last minute

Locks are taken in one order, so that two transactions never wait on each other in a circle: the account's ledger,
then the run's money, then rows of jobs (a sync of the job list locks the whole table after the money: its updates
of every row never meet another worker's updates of a few). The check that a job in flight is still this worker's
(``_fence``) reads its row without a lock: a takeover in the instant between that check and the commit is the one
case a lease cannot close, and money is still settled once (an attempt is ended by whichever commits first).

Workers say they are alive in their run's ``workers`` table; a job in flight names its worker (its lease); a worker
silent for longer than its lease is gone, and another takes its jobs over (``take_over``) as a resume would: by
request id, never POSTed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote

import psycopg
from psycopg.rows import RowMaker

from batchgen.account import AccountMoney, next_period, period_start
from batchgen.errors import RunLockedError, StateError, UsageError
from batchgen.store import IN_FLIGHT, JobRow, Owner, Store, WorkerRow, _job, not_held

RATE_WINDOW_S = 61.0  # a minute, and a second for the way to the provider (a guess: its window is not documented)
STATEMENT_TIMEOUT_MS = 60_000  # nothing waits forever: a statement (or a lock it waits for) gives up after a minute
CONNECT_TIMEOUT_S = 10
IDLE_IN_TRANSACTION_MS = 20_000  # our transactions wait on nothing but the server: one idle this long is stalled
SILENT_S = STATEMENT_TIMEOUT_MS / 1000 + 15  # a statement unanswered this long: the server or the path went silent
WATCH_EVERY_S = 1.0
CLAIM_TRIES = 5
URL_ENV = "BATCHGEN_STATE_URL"


# --- the connection: sqlite3's shape over psycopg --------------------------------------------------------------


class _Row(tuple[Any, ...]):
    """A row read by index or by column name, as ``sqlite3.Row`` is (``dict(row)`` works)."""

    _index: ClassVar[dict[str, int]] = {}

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


@lru_cache(maxsize=256)
def _row_class(names: tuple[str, ...]) -> type[_Row]:
    return type("Row", (_Row,), {"_index": {name: i for i, name in enumerate(names)}})


def _rows(cursor: Any) -> RowMaker[_Row]:
    names = tuple(column.name for column in cursor.description or ())
    row_class = _row_class(names)
    return lambda values: row_class(values)


@lru_cache(maxsize=1024)
def _sql(text: str) -> str:
    """SQLite's ``?`` placeholders as psycopg's ``%s`` (a ``%`` doubled); quoted text is left as it is."""
    out = []
    quoted = False
    for char in text:
        if char == "'":
            quoted = not quoted
        if char == "%":
            out.append("%%")
        elif char == "?" and not quoted:
            out.append("%s")
        else:
            out.append(char)
    return "".join(out)


class PgConnection:
    """What the store asks of a connection (``execute``, ``executemany``, ``close``), on psycopg in autocommit mode:
    the store says BEGIN and COMMIT itself.

    The server bounds what it does (``statement_timeout``, ``lock_timeout``), but a server, or a path to it, that goes
    silent would leave a statement waiting forever (TCP keeps a quiet connection open): a watchdog thread shuts the
    connection's socket when a statement has waited ``SILENT_S``, and the statement fails, saying so.
    """

    def __init__(self, conn: psycopg.Connection[Any], url: str) -> None:
        self.conn = conn
        self.url = url
        self._since: float | None = None  # when the statement under way was sent (monotonic)
        self._silenced = False
        self._closed = threading.Event()
        threading.Thread(target=self._watch, name="batchgen-state-watchdog", daemon=True).start()

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Any:
        self._since = time.monotonic()
        try:
            return self.conn.execute(_sql(sql), tuple(parameters))
        except psycopg.Error as exc:
            raise self._failed(exc) from None
        finally:
            self._since = None

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> Any:
        self._since = time.monotonic()
        try:
            cursor = self.conn.cursor()
            cursor.executemany(_sql(sql), [tuple(row) for row in parameters])
        except psycopg.Error as exc:
            raise self._failed(exc) from None
        finally:
            self._since = None
        return cursor

    def close(self) -> None:
        self._closed.set()
        self.conn.close()

    def _watch(self) -> None:
        while not self._closed.wait(WATCH_EVERY_S):
            since = self._since
            if since is not None and time.monotonic() - since > SILENT_S and not self._silenced:
                self._silenced = True
                with (
                    contextlib.suppress(OSError, psycopg.Error),
                    socket.socket(fileno=os.dup(self.conn.pgconn.socket)) as sock,
                ):
                    sock.shutdown(socket.SHUT_RDWR)

    def _failed(self, exc: psycopg.Error) -> StateError:
        """A statement that failed (the server gone, a lock waited for past the timeout): said with the state's
        URL, without its password; a transaction it was part of is rolled back (or was, by the server)."""
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self._silenced:
            text = f"no answer for {SILENT_S:.0f} s, the connection was given up ({text})"
        return StateError(f"the state {shown_url(self.url)} failed: {redacted(text, self.url)}")


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _parts(url: str) -> tuple[str, str, str | None, str] | None:
    """(scheme://, user, password, host/path) of a URL, the user part ending at the last ``@`` before the query (a
    password may hold a raw ``/``, ``:`` or ``@``); ``None`` when it is no URL."""
    scheme = _SCHEME.match(url)
    if scheme is None:
        return None
    rest = url[scheme.end() :].split("?", 1)[0].split("#", 1)[0]
    if "@" not in rest:
        return scheme.group(0), "", None, rest
    userinfo, where = rest.rsplit("@", 1)
    user, colon, password = userinfo.partition(":")
    return scheme.group(0), user, password if colon else None, where


def shown_url(url: str) -> str:
    """The state's URL for messages and files: without its password and without its query (where libpq takes
    ``?password=`` too). Never fails, whatever the text."""
    parts = _parts(url)
    if parts is None:
        return "the state's URL"
    scheme, user, _, where = parts
    return f"{scheme}{user + '@' if user else ''}{where}"


def _secrets(url: str) -> list[str]:
    """The passwords a URL carries (in its user part, or as ``password=`` in its query), to keep out of messages."""
    parts = _parts(url)
    found = [parts[2]] if parts is not None and parts[2] else []
    found += re.findall(r"[?&]password=([^&#]+)", url)
    return [secret for secret in found if secret]


def redacted(text: str, url: str) -> str:
    """``text`` (a driver's message, say) with every password of ``url`` replaced by ``***``."""
    for secret in _secrets(url):
        text = text.replace(secret, "***").replace(unquote(secret), "***")
    return text


def is_state_url(text: str | None) -> bool:
    """Whether ``text`` names a PostgreSQL state (``postgresql://…`` or ``postgres://…``)."""
    return bool(text) and str(text).startswith(("postgresql://", "postgres://"))


def run_schema(name: str) -> str:
    """The schema of the run ``name``: safe to quote whatever the name holds."""
    return "run_" + hashlib.sha256(name.encode()).hexdigest()[:20]


# --- migrations: append only, per schema -----------------------------------------------------------------------

GLOBAL_MIGRATIONS: list[tuple[str, str]] = [
    (
        "g001_accounts",
        """
        CREATE TABLE batchgen.runs (name TEXT PRIMARY KEY, schema TEXT NOT NULL UNIQUE, account TEXT,
                                    created_at DOUBLE PRECISION NOT NULL);
        CREATE TABLE batchgen.accounts (
            id TEXT PRIMARY KEY,
            cap_micros BIGINT,
            per TEXT CHECK (per IN ('day', 'week', 'month')),
            period_start DOUBLE PRECISION NOT NULL DEFAULT 0,
            settled_micros BIGINT NOT NULL DEFAULT 0,
            ambiguous_micros BIGINT NOT NULL DEFAULT 0,
            reserved_micros BIGINT NOT NULL DEFAULT 0,
            created_at DOUBLE PRECISION NOT NULL
        );
        CREATE TABLE batchgen.paces (account TEXT PRIMARY KEY, paused_until DOUBLE PRECISION NOT NULL DEFAULT 0);
        CREATE TABLE batchgen.submits (account TEXT NOT NULL, at DOUBLE PRECISION NOT NULL);
        CREATE INDEX submits_by_account ON batchgen.submits (account, at)
        """,
    ),
]

# The run's tables as SQLite's migrations m001-m007 leave them (one step here: this engine came after them).
RUN_MIGRATIONS: list[tuple[str, str]] = [
    (
        "p001_run",
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE money (id INTEGER PRIMARY KEY CHECK (id = 1), settled_micros BIGINT NOT NULL,
                            ambiguous_micros BIGINT NOT NULL, reserved_micros BIGINT NOT NULL);
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
            estimate_micros BIGINT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            in_manifest INTEGER NOT NULL DEFAULT 1,
            attempts_used INTEGER NOT NULL DEFAULT 0,
            download_failures INTEGER NOT NULL DEFAULT 0,
            not_before DOUBLE PRECISION NOT NULL DEFAULT 0,
            request_id TEXT, video_url TEXT,
            reason TEXT,
            possibly_billed_twice INTEGER NOT NULL DEFAULT 0,
            video_path TEXT, sha256 TEXT, probe TEXT,
            warnings TEXT NOT NULL DEFAULT '[]',
            submitted_at DOUBLE PRECISION, completed_at DOUBLE PRECISION, finished_at DOUBLE PRECISION,
            open_attempt BIGINT,
            updated_at DOUBLE PRECISION NOT NULL,
            price_class TEXT NOT NULL DEFAULT '',
            worker TEXT,
            placed_on TEXT
        );
        CREATE INDEX jobs_by_state ON jobs (state, idx);
        CREATE TABLE attempts (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            job_id TEXT NOT NULL REFERENCES jobs (id),
            number INTEGER NOT NULL,
            transport TEXT NOT NULL,
            started_at DOUBLE PRECISION NOT NULL,
            ended_at DOUBLE PRECISION,
            request_id TEXT,
            http_status INTEGER,
            message TEXT,
            outcome TEXT,
            backoff_s DOUBLE PRECISION,
            money TEXT NOT NULL CHECK (money IN ('reserved', 'settled', 'released', 'ambiguous')),
            reserved_micros BIGINT NOT NULL,
            settled_micros BIGINT NOT NULL DEFAULT 0,
            provider_cost_micros BIGINT
        );
        CREATE INDEX attempts_by_job ON attempts (job_id, id);
        CREATE INDEX attempts_possibly_billed ON attempts (job_id) WHERE money = 'ambiguous';
        CREATE TABLE images (sha256 TEXT PRIMARY KEY, path TEXT NOT NULL, mime TEXT NOT NULL, size BIGINT NOT NULL,
                             url TEXT, uploaded_at DOUBLE PRECISION);
        CREATE TABLE workers (token TEXT PRIMARY KEY, pid INTEGER NOT NULL, host TEXT NOT NULL, place TEXT NOT NULL,
                              lease_s DOUBLE PRECISION NOT NULL, started_at DOUBLE PRECISION NOT NULL,
                              heartbeat_at DOUBLE PRECISION NOT NULL);
        CREATE TABLE owner (id INTEGER PRIMARY KEY CHECK (id = 1), token TEXT NOT NULL, pid INTEGER NOT NULL,
                            host TEXT NOT NULL, started_at DOUBLE PRECISION NOT NULL,
                            heartbeat_at DOUBLE PRECISION NOT NULL)
        """,
    ),
]


def _migrate(db: PgConnection, schema: str, steps: list[tuple[str, str]]) -> None:
    """Apply the steps ``schema`` has not had yet, in one transaction, under a lock that makes workers starting
    together take turns."""
    db.execute("BEGIN")
    try:
        db.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (f"batchgen migrate {schema}",))
        db.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        db.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".migrations (name TEXT PRIMARY KEY, '
            "applied_at DOUBLE PRECISION NOT NULL)"
        )
        done = {row[0] for row in db.execute(f'SELECT name FROM "{schema}".migrations')}
        unknown = done - {name for name, _ in steps}
        if unknown:
            raise StateError(
                f"the state's schema {schema} was written by a newer batchgen ({', '.join(sorted(unknown))}): upgrade "
                "batchgen to use it; it was left as it is"
            )
        db.execute(f'SET LOCAL search_path TO "{schema}"')
        for name, sql in steps:
            if name in done:
                continue
            for statement in sql.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f'INSERT INTO "{schema}".migrations VALUES (?, ?)', (name, time.time()))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


# --- the store -------------------------------------------------------------------------------------------------

# A pending job this worker (its token the parameter) may claim: nobody's, its own, or a worker's that is gone.
_CLAIMABLE = "(worker IS NULL OR worker = ? OR NOT EXISTS (SELECT 1 FROM workers w WHERE w.token = jobs.worker))"


class PgStore(Store):
    """A run's state in PostgreSQL, shared by every worker of the run and every run of the account."""

    shared = True
    _begin = "BEGIN"
    _for_update = " FOR UPDATE"
    _cross_join = "JOIN"
    _probe_bytes = "(probe::json->>'bytes')::bigint"
    _placed_here = " AND (placed_on IS NULL OR placed_on = ?)"
    _lock_jobs = "LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE"
    _real = "DOUBLE PRECISION"
    _errors = (psycopg.Error,)

    def __init__(self, db: PgConnection, url: str, run: str, run_dir: Path, account: str | None) -> None:
        super().__init__(db, run_dir / "state.db")
        self.url = url
        self.run = run
        self.run_dir = run_dir
        self.account = account
        self.lease_s = 60.0
        self._capped, self._capped_at = False, -1e9
        self.place = f"{socket.gethostname()}:{run_dir.resolve()}"  # a reader's too: its done videos are here

    @property
    def where(self) -> str:
        return f"the state {shown_url(self.url)} (run {self.run!r})"

    @property
    def _place_args(self) -> tuple[Any, ...]:
        return (self.place,)

    @classmethod
    def connect(
        cls,
        url: str,
        run: str,
        run_dir: Path,
        *,
        account: str | None = None,
        readonly: bool = False,
        create: bool = True,
    ) -> PgStore:
        """Open the run ``run``'s state in the database at ``url`` (made and migrated when new, when ``create``
        and not ``readonly``); ``account``: the hash of the key its runs spend from (see ``account.account_id``)."""
        db = connect(url)
        try:
            schema = run_schema(run)
            known = db.execute("SELECT account FROM batchgen.runs WHERE name = ?", (run,)).fetchone()
            if known is None and (readonly or not create):
                raise StateError(f"no run {run!r} in the state {shown_url(url)}: nothing has run under that name yet")
            if not readonly:
                _migrate(db, schema, RUN_MIGRATIONS)
                db.execute(
                    "INSERT INTO batchgen.runs VALUES (?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
                    (run, schema, account, time.time()),
                )
                recorded = db.execute("SELECT account FROM batchgen.runs WHERE name = ?", (run,)).fetchone()[0]
                if account is not None and recorded is None:
                    db.execute("UPDATE batchgen.runs SET account = ? WHERE name = ?", (account, run))
                elif account is not None and recorded != account:
                    raise StateError(
                        f"the run {run!r} in {shown_url(url)} spends from another account (another API key): run it "
                        "with that key, or give this batch another name (--out)"
                    )
                if account is not None:
                    db.execute(
                        "INSERT INTO batchgen.accounts (id, created_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
                        (account, time.time()),
                    )
                    db.execute("INSERT INTO batchgen.paces VALUES (?, 0) ON CONFLICT (account) DO NOTHING", (account,))
            elif account is None:
                account = known[0]
            db.execute(f'SET search_path TO "{schema}"')
        except psycopg.Error as exc:
            db.close()
            raise StateError(f"cannot use the state {shown_url(url)}: {redacted(str(exc), url)}") from None
        except BaseException:
            db.close()
            raise
        return cls(db, url, run, run_dir, account)

    def reopen(self) -> PgStore:
        """Another connection to the same state, read-only (for a thread)."""
        other = PgStore.connect(self.url, self.run, self.run_dir, account=self.account, readonly=True)
        other.place = self.place
        return other

    # --- money: the account's ledger moves with the run's ----------------------------------------------------

    def _move(self, db: Any, *, settled: int = 0, ambiguous: int = 0, reserved: int = 0) -> None:
        if self.account is not None and (settled or ambiguous or reserved):
            # A period that ended while an attempt was open started the new one at zero: never below it.
            db.execute(
                "UPDATE batchgen.accounts SET settled_micros = GREATEST(0, settled_micros + ?), "
                "ambiguous_micros = GREATEST(0, ambiguous_micros + ?), reserved_micros = GREATEST(0, reserved_micros "
                "+ ?) WHERE id = ?",
                (settled, ambiguous, reserved, self.account),
            )
        super()._move(db, settled=settled, ambiguous=ambiguous, reserved=reserved)

    def _money_first(self, db: Any) -> None:
        if self.account is not None:
            db.execute("SELECT 1 FROM batchgen.accounts WHERE id = ? FOR UPDATE", (self.account,))
        db.execute("SELECT 1 FROM money FOR UPDATE")

    def account_fits(self, estimate_micros: int) -> bool:
        if self.account is None:
            return True
        return self._fits_ledger(self._ledger(self.db), estimate_micros)

    def _fits_ledger(self, ledger: AccountMoney, estimate_micros: int) -> bool:
        """Whether ``ledger`` takes ``estimate_micros`` more; ``self.refusal`` says why not."""
        self.refusal = None
        if ledger.fits(estimate_micros):
            return True
        left = max(0, ledger.left_micros() or 0)
        self.refusal = (
            f"over the account's budget ({ledger.describe_cap()}): needs ${estimate_micros / 1e6:,.2f}, "
            f"${left / 1e6:,.2f} left"
        )
        return False

    def _schemas(self, db: Any) -> list[str]:
        """The schemas of every run of the account (this run's alone without one)."""
        if self.account is None:
            return [run_schema(self.run)]
        rows = db.execute("SELECT schema FROM batchgen.runs WHERE account = ? ORDER BY schema", (self.account,))
        return [row[0] for row in rows] or [run_schema(self.run)]

    def _claimed_here(self) -> tuple[str, tuple[Any, ...]]:
        return f" AND {_CLAIMABLE}", (self.owner_token,)

    def _class_in_flight(self, db: Any, price_class: str) -> bool:
        """Under the account's lock (``_fits`` took it): whether an attempt of ``price_class``, a class whose price
        the account has never been told, would be a second clip bought blind: another attempt of a class of unknown
        price is in flight in a run of the account, held by a live worker (a run gone leaves its jobs to its own
        resume: they hold nobody else back). One clip at most is in flight at a price nobody has seen."""
        known = list(self.prices_seen())
        if price_class in known:
            return False
        return bool(self._blind_in_flight(db, known))

    def _blind_in_flight(self, db: Any, known: list[str]) -> set[str]:
        """The classes of unknown price (not in ``known``) in flight in the account's runs, held by live workers."""
        found: set[str] = set()
        for schema in self._schemas(db):
            rows = db.execute(
                f"SELECT DISTINCT j.price_class FROM \"{schema}\".jobs j WHERE j.state IN ('submitting', 'submitted') "
                f'AND j.price_class <> ALL(?) AND EXISTS (SELECT 1 FROM "{schema}".workers w WHERE w.token = j.worker '
                "AND w.heartbeat_at + w.lease_s >= extract(epoch from clock_timestamp()))",
                (known,),
            )
            found |= {row[0] for row in rows}
        return found

    def classes_in_flight(self) -> set[str]:
        """As ``Store.classes_in_flight``, and the classes of unknown price in flight in the account's other runs
        (held by live workers): a price nobody has seen is bought once for the account, not once a run."""
        found = super().classes_in_flight()
        if self.account is not None:
            found |= self._blind_in_flight(self.db, list(self.prices_seen()))
        return found

    def capped(self) -> bool:
        """Whether the account has a budget (read again at most every 10 s: a loop asks at each submit)."""
        now = time.monotonic()
        if now - self._capped_at > 10.0:
            ledger = self.account_money()
            self._capped = ledger is not None and ledger.cap_micros is not None
            self._capped_at = now
        return self._capped

    def _priced_tables(self) -> list[str]:
        return [f'"{schema}".' for schema in self._schemas(self.db)]

    def _check_terms(self, db: Any, terms: dict[str, Any]) -> None:
        """Under the run's lock (``sync_jobs`` took it): a worker whose manifest or budget differs from the live
        workers' is refused (it would take their jobs out of the run, or skip them by a budget of its own)."""
        row = db.execute("SELECT value FROM meta WHERE key = 'terms'").fetchone()
        known = json.loads(row[0]) if row else None
        live = self.live_workers()
        if known is None or known == terms or not live:
            return
        hosts = ", ".join(sorted({f"{worker.host} (pid {worker.pid})" for worker in live}))
        what = "manifest" if known.get("digest") != terms.get("digest") else "budget"
        raise RunLockedError(
            f"the workers running {self.where} ({hosts}) run it with another {what}: run the same manifest with "
            "the same --budget, or give this one another run name (--out)"
        )

    def _fits(self, db: Any, estimate_micros: int) -> bool:
        self.refusal = None
        if self.account is None:
            return True
        return self._fits_ledger(self._ledger(db, lock=True), estimate_micros)

    def _ledger(self, db: Any, *, lock: bool = False) -> AccountMoney:
        """The account's ledger, its period rolled over first when it ended (then spent starts again at zero)."""
        if self.account is None:
            return AccountMoney(None, None, 0.0, 0, 0, 0)
        ledger = _account_money(db, self.account, lock=lock)
        ends = next_period(ledger.period_start, ledger.per)
        now = time.time()
        if lock and ends is not None and now >= ends:
            start = period_start(now, ledger.per)
            settled, ambiguous = _recount(db, self.account, start)
            db.execute(
                "UPDATE batchgen.accounts SET period_start = ?, settled_micros = ?, ambiguous_micros = ? WHERE id = ?",
                (start, settled, ambiguous, self.account),
            )
            ledger = AccountMoney(ledger.cap_micros, ledger.per, start, settled, ambiguous, ledger.reserved_micros)
        return ledger

    def account_money(self) -> AccountMoney | None:
        """The account's ledger (``None``: this state has no account)."""
        if self.account is None:
            return None
        return self._ledger(self.db)

    # --- the pace: one per account -----------------------------------------------------------------------------

    def take_submit(self, rpm: int) -> float:
        """Take a submit from the account's pace: 0 when taken, else how many seconds to wait before asking again
        (a 429's pause, or the minute's submits used up by this and every other run of the account). Times are the
        database's clock, the one every machine shares."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT paused_until, extract(epoch from clock_timestamp()) FROM batchgen.paces WHERE account = ? "
                "FOR UPDATE",
                (self.account,),
            ).fetchone()
            paused_until, now = float(row[0]), float(row[1])
            db.execute(
                "DELETE FROM batchgen.submits WHERE account = ? AND at <= ?", (self.account, now - RATE_WINDOW_S)
            )
            count, first = db.execute(
                "SELECT COUNT(*), MIN(at) FROM batchgen.submits WHERE account = ?", (self.account,)
            ).fetchone()
            wait = max(paused_until - now, float(first) + RATE_WINDOW_S - now if count >= rpm else 0.0)
            if wait > 0:
                return wait
            db.execute("INSERT INTO batchgen.submits VALUES (?, ?)", (self.account, now))
        return 0.0

    def pause_submits(self, seconds: float) -> None:
        """No run of the account submits for ``seconds`` from now (a 429 said so)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE batchgen.paces SET paused_until = GREATEST(paused_until, extract(epoch from clock_timestamp()) "
                "+ ?) WHERE account = ?",
                (seconds, self.account),
            )

    def pace(self) -> tuple[int, float]:
        """The account's submits in the last minute, and for how many more seconds it is paused (0: not)."""
        row = self.db.execute(
            "SELECT (SELECT COUNT(*) FROM batchgen.submits WHERE account = ? AND at > extract(epoch from "
            "clock_timestamp()) - ?), (SELECT paused_until FROM batchgen.paces WHERE account = ?), "
            "extract(epoch from clock_timestamp())",
            (self.account, RATE_WINDOW_S, self.account),
        ).fetchone()
        return int(row[0]), max(0.0, float(row[1] or 0) - float(row[2]))

    # --- workers -------------------------------------------------------------------------------------------------

    def claim(self, token: str, pid: int, host: str, now: float, is_live: Callable[[Owner], bool]) -> Owner | None:
        """Join the run as a worker (many may): nobody is taken over here; ``take_over`` does it, job by job."""
        self.place = f"{host}:{self.run_dir.resolve()}"
        with self.transaction() as db:
            db.execute(
                "INSERT INTO workers VALUES (?, ?, ?, ?, ?, extract(epoch from clock_timestamp()), "
                "extract(epoch from clock_timestamp()))",
                (token, pid, host, self.place, self.lease_s),
            )
        self.owner_token = token
        self.took_over = None
        return None

    def heartbeat(self, now: float) -> None:
        with self.transaction() as db:
            row = db.execute(
                "UPDATE workers SET heartbeat_at = extract(epoch from clock_timestamp()) WHERE token = ? RETURNING 1",
                (self.owner_token,),
            ).fetchone()
            if row is None:
                raise StateError(self._gone())

    def _gone(self) -> str:
        return (
            f"this worker was not heard from for longer than its lease ({self.lease_s:g} s) and the others took its "
            f"jobs over, in {self.where}: it stops (run again to join)"
        )

    def release(self) -> None:
        if self.owner_token is not None:
            with self.transaction() as db:
                db.execute("UPDATE jobs SET worker = NULL WHERE worker = ? AND state = 'pending'", (self.owner_token,))
                db.execute("DELETE FROM workers WHERE token = ?", (self.owner_token,))
            self.owner_token = None

    def _check_owner(self, db: Any) -> None:
        if self.owner_token is None:
            return
        if db.execute("SELECT 1 FROM workers WHERE token = ?", (self.owner_token,)).fetchone() is None:
            raise StateError(self._gone())

    def _fence(self, db: Any, job_id: str) -> None:
        if self.owner_token is None:
            return
        row = db.execute("SELECT worker FROM jobs WHERE id = ?", (job_id,)).fetchone()  # no lock: see the top
        if row is not None and row[0] is not None and row[0] != self.owner_token:
            raise StateError(f"{job_id} was taken over by another worker: {self._gone()}")

    def owner(self) -> Owner | None:
        """The worker heard from last (any one: they share the run)."""
        row = self.db.execute(
            "SELECT token, pid, host, started_at, heartbeat_at FROM workers ORDER BY heartbeat_at DESC LIMIT 1"
        ).fetchone()
        return Owner(*row) if row else None

    def workers(self) -> list[WorkerRow]:
        """The run's workers, as they were last heard from, with the database's clock's now."""
        rows = self.db.execute(
            "SELECT token, pid, host, place, lease_s, started_at, heartbeat_at FROM workers ORDER BY started_at"
        )
        return [WorkerRow(*row) for row in rows]

    def db_now(self) -> float:
        """The database's clock (the one leases and the pace are measured with)."""
        return float(self.db.execute("SELECT extract(epoch from clock_timestamp())").fetchone()[0])

    def live_workers(self) -> list[WorkerRow]:
        """The workers whose lease has not run out, this one aside."""
        now = self.db_now()
        return [
            worker
            for worker in self.workers()
            if worker.token != self.owner_token and now - worker.heartbeat_at <= worker.lease_s
        ]

    def take_over(self, now: float) -> list[JobRow]:
        """Workers whose lease ran out are gone: their jobs in flight become this worker's (each one claimed by
        one worker only: ``FOR UPDATE SKIP LOCKED``), to be re-attached by request id, downloaded again, or looked
        up in the history, as a resume does. Returns those jobs."""
        with self.transaction() as db:
            db.execute(
                "DELETE FROM workers WHERE token != ? AND heartbeat_at + lease_s < "
                "extract(epoch from clock_timestamp())",
                (self.owner_token,),
            )
            marks = ",".join("?" * len(IN_FLIGHT))
            rows = db.execute(
                "UPDATE jobs SET worker = ?, updated_at = ? WHERE id IN (SELECT id FROM jobs j WHERE state IN "
                f"({marks}) AND (worker IS NULL OR NOT EXISTS (SELECT 1 FROM workers w WHERE w.token = j.worker)) "
                "FOR UPDATE SKIP LOCKED) RETURNING *",
                (self.owner_token, now, *IN_FLIGHT),
            ).fetchall()
        return sorted((_job(row) for row in rows), key=lambda job: job.idx)

    def earliest_pending(self, *, held: Sequence[str] = ()) -> float | None:
        """As ``Store.earliest_pending``, of the jobs this worker may claim."""
        row = self.db.execute(
            f"SELECT MIN(not_before) FROM jobs WHERE state = 'pending' AND in_manifest = 1 AND {_CLAIMABLE}"
            f"{not_held(held)}",
            (self.owner_token, *held),
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def others_busy(self) -> bool:
        """Whether other workers hold jobs of the run: in flight (alive or not: a lease that runs out is taken over
        here), or claimed to submit by a live one."""
        marks = ",".join("?" * len(IN_FLIGHT))
        row = self.db.execute(
            f"SELECT EXISTS (SELECT 1 FROM jobs WHERE worker IS DISTINCT FROM ? AND (state IN ({marks}) OR "
            "(state = 'pending' AND in_manifest = 1 AND EXISTS (SELECT 1 FROM workers w "
            "WHERE w.token = jobs.worker))))",
            (self.owner_token, *IN_FLIGHT),
        ).fetchone()
        return bool(row[0])

    def next_pending(self, now: float, after_idx: int = -1, *, held: Sequence[str] = ()) -> JobRow | None:
        """As ``Store.next_pending``, and the job is claimed for this worker (``FOR UPDATE SKIP LOCKED``): the
        others pass it by while this worker is alive. One statement: a transaction of its own.

        The claim is checked again on the row the update changes (the sub-select's own check can pass a job another
        worker claimed in the instant between: seen under load, two workers then began one job); a claim lost that
        way is tried again, a few times, before this worker says there is nothing to take now."""
        for _ in range(CLAIM_TRIES):
            row = self.db.execute(
                f"UPDATE jobs SET worker = ? WHERE state = 'pending' AND {_CLAIMABLE} AND id = (SELECT id FROM jobs "
                f"WHERE state = 'pending' AND in_manifest = 1 AND not_before <= ? AND idx > ? AND {_CLAIMABLE}"
                f"{not_held(held)} ORDER BY idx LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING *",
                (self.owner_token, self.owner_token, now, after_idx, self.owner_token, *held),
            ).fetchone()
            if row is not None:
                return _job(row)
            if self.earliest_pending(held=held) is None:
                return None
        return None

    def mine(self, job: JobRow) -> bool:
        """Whether ``job`` is this worker's to follow (its lease)."""
        return job.worker == self.owner_token


def connect(url: str) -> PgConnection:
    """A connection to the state's database, its shared tables made or brought up to date."""
    try:
        conn = psycopg.connect(
            url,
            autocommit=True,
            row_factory=_rows,
            connect_timeout=CONNECT_TIMEOUT_S,
            # A session that stalls inside a transaction (a worker paused, a path gone silent) gives its locks up, the
            # account's ledger among them, before the others' lock waits give up; keepalives find a dead peer.
            options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout={STATEMENT_TIMEOUT_MS} "
            f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS} -c tcp_keepalives_idle=15 "
            "-c tcp_keepalives_interval=5 -c tcp_keepalives_count=3",
            keepalives=1,
            keepalives_idle=15,
            keepalives_interval=5,
            keepalives_count=3,
            application_name="batchgen",
        )
    except psycopg.Error as exc:
        raise StateError(
            f"cannot reach the state database {shown_url(url)}: {redacted(str(exc).strip(), url)}; start PostgreSQL "
            "(docs/team.md) or correct --state / $" + URL_ENV
        ) from None
    db = PgConnection(conn, url)
    try:
        _migrate(db, "batchgen", GLOBAL_MIGRATIONS)
    except psycopg.Error as exc:
        db.close()
        raise StateError(f"cannot use the state database {shown_url(url)}: {redacted(str(exc), url)}") from None
    return db


# --- the account, for `batchgen account` and `batchgen status --state` ------------------------------------------


def set_budget(url: str, account: str, cap_micros: int | None, per: str | None) -> AccountMoney:
    """Set the account's budget (``None``: no cap); a new period begins now when ``per`` changes."""
    db = connect(url)
    try:
        db.execute("BEGIN")
        db.execute(
            "INSERT INTO batchgen.accounts (id, created_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
            (account, time.time()),
        )
        row = db.execute("SELECT per FROM batchgen.accounts WHERE id = ? FOR UPDATE", (account,)).fetchone()
        if row[0] != per:  # what was spent in the new period (all of it, for a fixed total), from every run's books
            start = period_start(time.time(), per)
            settled, ambiguous = _recount(db, account, start)
            db.execute(
                "UPDATE batchgen.accounts SET per = ?, period_start = ?, settled_micros = ?, ambiguous_micros = ? "
                "WHERE id = ?",
                (per, start, settled, ambiguous, account),
            )
        db.execute("UPDATE batchgen.accounts SET cap_micros = ? WHERE id = ?", (cap_micros, account))
        db.execute("COMMIT")
        return _account_money(db, account)
    except psycopg.Error as exc:
        raise StateError(f"cannot set the account's budget in {shown_url(url)}: {redacted(str(exc), url)}") from None
    finally:
        db.close()


def _recount(db: Any, account: str, since: float) -> tuple[int, int]:
    """What the account's runs spent since ``since`` (settled, possibly billed), from their attempts: the truth the
    ledger's running totals are kept equal to."""
    settled = ambiguous = 0
    for (schema,) in db.execute("SELECT schema FROM batchgen.runs WHERE account = ?", (account,)).fetchall():
        row = db.execute(
            "SELECT COALESCE(SUM(CASE WHEN money = 'settled' THEN settled_micros ELSE 0 END), 0), "
            "COALESCE(SUM(CASE WHEN money = 'ambiguous' THEN settled_micros ELSE 0 END), 0) "
            f'FROM "{schema}".attempts WHERE ended_at >= ?',
            (since,),
        ).fetchone()
        settled, ambiguous = settled + int(row[0]), ambiguous + int(row[1])
    return settled, ambiguous


def _account_money(db: Any, account: str, *, lock: bool = False) -> AccountMoney:
    """The account's ledger as it is (locked until the transaction ends, with ``lock``)."""
    row = db.execute(
        "SELECT cap_micros, per, period_start, settled_micros, ambiguous_micros, reserved_micros "
        f"FROM batchgen.accounts WHERE id = ?{' FOR UPDATE' if lock else ''}",
        (account,),
    ).fetchone()
    if row is None:
        return AccountMoney(None, None, 0.0, 0, 0, 0)
    return AccountMoney(row[0], row[1], float(row[2]), int(row[3]), int(row[4]), int(row[5]))


def account_overview(url: str, account: str | None) -> dict[str, Any]:
    """Every run of the account (every run, without one): their jobs, money and workers, the account's ledger and
    its pace, for ``batchgen status --state``."""
    db = connect(url)
    try:
        now = float(db.execute("SELECT extract(epoch from clock_timestamp())").fetchone()[0])
        if account is None:
            runs = db.execute("SELECT name, schema, account FROM batchgen.runs ORDER BY name").fetchall()
        else:
            runs = db.execute(
                "SELECT name, schema, account FROM batchgen.runs WHERE account = ? ORDER BY name", (account,)
            ).fetchall()
        accounts = sorted({row[2] for row in runs if row[2]} | ({account} if account else set()))
        result: dict[str, Any] = {"now": now, "accounts": [], "runs": []}
        for acct in accounts:
            ledger = _account_money(db, acct)
            row = db.execute(
                "SELECT (SELECT COUNT(*) FROM batchgen.submits WHERE account = ? AND at > ?), "
                "(SELECT paused_until FROM batchgen.paces WHERE account = ?)",
                (acct, now - RATE_WINDOW_S, acct),
            ).fetchone()
            result["accounts"].append(
                {
                    "account": acct,
                    "budget": ledger.describe_cap() if ledger.cap_micros is not None else None,
                    "budget_usd": None if ledger.cap_micros is None else ledger.cap_micros / 1e6,
                    "per": ledger.per,
                    "period_started_at": ledger.period_start or None,
                    "spent_usd": ledger.spent_micros / 1e6,
                    "possibly_billed_usd": ledger.ambiguous_micros / 1e6,
                    "reserved_usd": ledger.reserved_micros / 1e6,
                    "left_usd": None if ledger.left_micros() is None else (ledger.left_micros() or 0) / 1e6,
                    "submits_last_minute": int(row[0]),
                    "paused_for_s": max(0.0, float(row[1] or 0) - now),
                }
            )
        for name, schema, acct in runs:
            result["runs"].append(_run_overview(db, name, schema, acct, now))
        result["total_spent_usd"] = round(sum(run["spent_usd"] for run in result["runs"]), 6)
        return result
    except psycopg.Error as exc:
        raise StateError(f"cannot read the state {shown_url(url)}: {redacted(str(exc), url)}") from None
    finally:
        db.close()


def _run_overview(db: PgConnection, name: str, schema: str, account: str | None, now: float) -> dict[str, Any]:
    counts = {
        row[0]: int(row[1])
        for row in db.execute(f'SELECT state, COUNT(*) FROM "{schema}".jobs WHERE in_manifest = 1 GROUP BY state')
    }
    money = db.execute(f'SELECT settled_micros, ambiguous_micros, reserved_micros FROM "{schema}".money').fetchone()
    budget = db.execute(f"SELECT value FROM \"{schema}\".meta WHERE key = 'budget_micros'").fetchone()
    workers = [
        {**WorkerRow(*row[:7]).summary(now), "in_flight": int(row[7])}
        for row in db.execute(
            "SELECT w.token, w.pid, w.host, w.place, w.lease_s, w.started_at, w.heartbeat_at, (SELECT COUNT(*) FROM "
            f"\"{schema}\".jobs j WHERE j.worker = w.token AND j.state IN ('submitting', 'submitted', 'downloading')) "
            f'FROM "{schema}".workers w ORDER BY w.started_at'
        )
    ]
    cap = json.loads(budget[0]) if budget else None
    return {
        "run": name,
        "account": account,
        "counts": counts,
        "total": sum(counts.values()),
        "spent_usd": (money[0] + money[1]) / 1e6,
        "possibly_billed_usd": money[1] / 1e6,
        "reserved_usd": money[2] / 1e6,
        "budget_usd": None if cap is None else cap / 1e6,
        "workers": workers,
    }


def check_state_url(url: str) -> str:
    """``url`` when it names a PostgreSQL database, else a :class:`UsageError` saying how to write one."""
    if not is_state_url(url):
        raise UsageError(
            f"--state {shown_url(url)!r} is not a PostgreSQL URL: write postgresql://USER:PASSWORD@HOST:PORT/DATABASE "
            f"(or set ${URL_ENV}); without it the state is the run directory's state.db"
        )
    return url
