"""A team's state: 10,000 jobs, 4 workers on one PostgreSQL, against one process on its SQLite file.

Two measures (`python bench/team.py`, or within `run_all.py`; it needs a PostgreSQL server: $BATCHGEN_TEST_POSTGRESQL,
else the one `.ci/run` starts, on which it makes and drops a database of its own):

1. **Claim and settle, per job**: the state's own work for one job, without HTTP: claim it (``next_pending``, with
   ``FOR UPDATE SKIP LOCKED`` on PostgreSQL), reserve (``begin_attempt``, with the account's ledger), store the
   request id, settle the money, mark it done: five transactions. 10,000 jobs by 4 processes at once on PostgreSQL
   (an account budget set, so the ledger row is locked on each reservation and settlement) against 1 process on
   SQLite. Per job: each process's wall time ÷ the jobs it did.
2. **Makespan**: the same 10,000 jobs run for real (`batchgen run`, v1, the simulator in its own process answering at
   once) by 4 workers with `--state` and concurrency 16 each, against one process on its SQLite file with
   concurrency 64: from the first process started to the last one ended.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import KEY, cli, env_for, manifest, simulator_process, warm_up

JOBS, WORKERS, CONCURRENCY = 10_000, 4, 16
SERVER = os.environ.get("BATCHGEN_TEST_POSTGRESQL", "postgresql://batchgen:batchgen@127.0.0.1:5432/postgres")


def _database() -> str:
    """A new database on the server, as a URL."""
    import psycopg

    name = f"bench_team_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return SERVER.rsplit("/", 1)[0] + f"/{name}"


def _drop(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _jobs(directory: Path) -> list:
    from batchgen import expand, load_manifest

    return expand(load_manifest(manifest(directory / "team.yaml", JOBS, concurrency=CONCURRENCY, name="team")))


def _open(url: str | None, directory: Path, account: str | None):
    from batchgen.pgstore import PgStore
    from batchgen.store import Store

    if url is None:
        return Store.open(directory / "state.db")
    return PgStore.connect(url, "team", directory, account=account)


def _work(url: str | None, directory: str, account: str | None, results: multiprocessing.Queue) -> None:
    """One worker: claim, reserve, submit, settle and finish jobs until none is left; (jobs, wall seconds)."""
    from batchgen.errors import JobGone

    store = _open(url, Path(directory), account)
    store.claim(uuid.uuid4().hex, os.getpid(), "bench", time.time(), lambda owner: False)
    done = 0
    started = time.perf_counter()
    while True:
        job = store.next_pending(time.time())
        if job is None:
            break
        try:
            attempt = store.begin_attempt(job.id, "v1", job.estimate_micros, lambda money: True, time.time())
        except JobGone:
            raise RuntimeError(f"{job.id} was claimed by two workers") from None
        if attempt is None:
            raise RuntimeError("the account's budget refused a job: the benchmark's budget is too small")
        store.mark_submitted(job.id, f"req-{job.id}", time.time())
        store.mark_completed(job.id, job.estimate_micros, None, time.time())
        store.mark_done_many([(job.id, f"videos/{job.id}.mp4", "0" * 64, {"bytes": 1}, [])], time.time())
        done += 1
    results.put((done, time.perf_counter() - started))
    store.release()
    store.close()


def transitions(url: str | None, workers: int) -> tuple[float, float]:
    """(ms of state work a job, per worker; the jobs a second of all workers together)."""
    from batchgen.account import account_id
    from batchgen.pgstore import set_budget

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        jobs = _jobs(directory)
        account = account_id(KEY) if url else None
        store = _open(url, directory, account)
        store.sync_jobs(jobs, [job_estimate for job_estimate in [504_000] * len(jobs)], ["c"] * len(jobs), time.time())
        store.close()
        if url is not None:
            set_budget(url, account, 100_000 * 1_000_000, "week")  # a cap: the ledger is locked and checked each time
        results: multiprocessing.Queue = multiprocessing.Queue()
        started = time.perf_counter()
        processes = [
            multiprocessing.Process(target=_work, args=(url, str(directory), account, results)) for _ in range(workers)
        ]
        for process in processes:
            process.start()
        figures = [results.get(timeout=1200) for _ in processes]
        for process in processes:
            process.join()
        wall = time.perf_counter() - started
    if sum(done for done, _ in figures) != JOBS:
        raise RuntimeError(f"the workers did {sum(d for d, _ in figures)} jobs, not {JOBS}")
    per_job_ms = max(seconds / done * 1000 for done, seconds in figures if done)
    return per_job_ms, JOBS / wall


def makespans(url: str) -> tuple[float, float]:
    """(wall seconds of one process on SQLite, of 4 workers on PostgreSQL), the same 10,000 jobs."""
    with simulator_process("--latency-s", "0") as sim, tempfile.TemporaryDirectory() as tmp:
        warm_up(sim.url)
        path = manifest(Path(tmp) / "team.yaml", JOBS, concurrency=CONCURRENCY * WORKERS, name="team")
        alone, done, _ = cli("run", str(path), "--out", f"{tmp}/alone/team", "--transport", "v1", "--no-progress",
                             env=env_for(sim.url))  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"the SQLite run failed: {done.stderr[-2000:]}")
        env = {**env_for(sim.url), "BATCHGEN_STATE_URL": url}
        started = time.perf_counter()
        import subprocess

        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "batchgen", "run", str(path), "--out", f"{tmp}/w{n}/team", "--transport", "v1",
                 "--concurrency", str(CONCURRENCY), "--no-progress"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )
            for n in range(WORKERS)
        ]  # fmt: skip
        errors = [worker.communicate(timeout=1200)[1] for worker in workers]
        together = time.perf_counter() - started
        if any(worker.returncode for worker in workers):
            raise RuntimeError(f"a worker failed: {[e[-1000:] for e in errors]}")
    return alone, together


def main(repeats: int = 2) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {
        "sqlite_ms": [],
        "pg_ms": [],
        "sqlite_jobs_s": [],
        "pg_jobs_s": [],
        "makespan_sqlite_s": [],
        "makespan_pg_s": [],
        "makespan_ratio": [],
    }
    for _ in range(repeats):
        ms, rate = transitions(None, 1)
        figures["sqlite_ms"].append(ms)
        figures["sqlite_jobs_s"].append(rate)
        url = _database()
        try:
            ms, rate = transitions(url, WORKERS)
            figures["pg_ms"].append(ms)
            figures["pg_jobs_s"].append(rate)
        finally:
            _drop(url)
        url = _database()
        try:
            alone, together = makespans(url)
        finally:
            _drop(url)
        figures["makespan_sqlite_s"].append(alone)
        figures["makespan_pg_s"].append(together)
        figures["makespan_ratio"].append(together / alone)
    return figures


if __name__ == "__main__":
    for key, values in main(repeats=int(sys.argv[1]) if len(sys.argv) > 1 else 1).items():
        print(key, [round(value, 3) for value in values])
