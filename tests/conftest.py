"""Shared fixtures: paths of the project, and running the real CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"


@pytest.fixture
def write_manifest(tmp_path: Path):
    """Write YAML text to a manifest file in tmp_path and return its path."""

    def write(text: str, name: str = "manifest.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 60):
    """Run ``python -m batchgen ARGS`` in a subprocess and return the completed process."""
    return subprocess.run(
        [sys.executable, "-m", "batchgen", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env=env,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
async def make_sim():
    """Start simulators on loopback (closed after the test): ``await make_sim(SimSettings(...), FaultPlan(...))``."""
    from batchgen.simulator.server import Simulator

    started = []

    async def make(settings=None, faults=None, clock=None):
        sim = Simulator(settings, faults, clock=clock) if clock else Simulator(settings, faults)
        await sim.start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        await sim.close()


def batch_manifest(count: int, *, name: str = "batch", duration: int = 3, audio: bool = False, extra: str = "") -> str:
    """A manifest of ``count`` jobs: one shot with a matrix of ``count`` numbered variants."""
    values = ", ".join(str(i) for i in range(count))
    return (
        f"version: 1\nname: {name}\n{extra}defaults:\n  duration: {duration}\n  generate_audio: {str(audio).lower()}\n"
        f"shots:\n  - id: clip\n    prompt: 'Clip number {{n}} of a test batch'\n    matrix:\n      n: [{values}]\n"
    )


# --- PostgreSQL: a real server (CI starts one: .ci/run), a fresh database per test ---------------------------------

PG_URL_ENV = "BATCHGEN_TEST_POSTGRESQL"  # the server the tests use, as a URL to its maintenance database
PG_DEFAULT_URL = "postgresql://batchgen:batchgen@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def pg_server() -> dict:
    """The PostgreSQL server of the tests (``$BATCHGEN_TEST_POSTGRESQL``, else the one `.ci/run` starts); the
    tests that need it are skipped, saying why, when none answers."""
    import os
    from urllib.parse import urlsplit

    import psycopg

    url = os.environ.get(PG_URL_ENV, PG_DEFAULT_URL)
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.Error as exc:
        pytest.skip(
            f"no PostgreSQL server at {url.split('@')[-1]} ({str(exc).strip()[:120]}): `bash .ci/run` starts one, "
            f"or set {PG_URL_ENV}"
        )
    parts = urlsplit(url)
    return {
        "user": parts.username or "postgres",
        "password": parts.password,
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 5432,
    }


@pytest.fixture
def pg_url(pg_server: dict):
    """A new, empty database on the test server (pytest-postgresql's janitor makes it and drops it after), as the
    URL a `--state` flag takes."""
    import uuid

    from pytest_postgresql.janitor import DatabaseJanitor

    name = f"batchgen_test_{uuid.uuid4().hex[:12]}"
    with DatabaseJanitor(
        user=pg_server["user"],
        password=pg_server["password"],
        host=pg_server["host"],
        port=pg_server["port"],
        dbname=name,
    ):
        credentials = pg_server["user"] + (f":{pg_server['password']}" if pg_server["password"] else "")
        yield f"postgresql://{credentials}@{pg_server['host']}:{pg_server['port']}/{name}"
