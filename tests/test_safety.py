"""Files, secrets and paths: clear errors with the state intact, a key that appears nowhere, no path escapes,
TLS always verified, private permissions."""

from __future__ import annotations

import errno
import os
import re
import shutil
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchgen import expand, load_manifest, outputs
from batchgen.client import Client
from batchgen.errors import ExitCode, OutputError
from batchgen.launch import Target
from batchgen.outputs import RunDir
from batchgen.simulator.faults import FaultPlan, parse_script
from batchgen.simulator.server import SimSettings
from tests.conftest import batch_manifest
from tests.runs import assert_all_done, cli_env, read_state, run_cli_async, run_in_process

SECRET = "sk-live-SECRET-4f9c2a7e1b"


def _immutable(path: Path) -> bool:
    """Make ``path`` immutable even for root (chattr +i); False where the file system cannot."""
    if shutil.which("chattr") is None:
        return False
    return subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False).returncode == 0


def _mutable(path: Path) -> None:
    subprocess.run(["chattr", "-i", str(path)], capture_output=True, check=False)


async def test_an_output_directory_that_cannot_be_created(write_manifest, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    done = await run_cli_async(
        "run", str(write_manifest(batch_manifest(1))), "--simulate", "--out", str(blocker / "out"), env=cli_env(None)
    )
    assert done.code == 2 and "batchgen: error: cannot create the run directory" in done.stderr
    assert "Traceback" not in done.stderr


async def test_an_output_directory_that_is_not_writable(write_manifest, tmp_path: Path) -> None:
    parent = tmp_path / "locked"
    parent.mkdir()
    if not _immutable(parent):
        pytest.skip("this file system cannot make a directory read-only for root (chattr +i)")
    try:
        done = await run_cli_async(
            "run", str(write_manifest(batch_manifest(1))), "--simulate", "--out", str(parent / "out"), env=cli_env(None)
        )
    finally:
        _mutable(parent)
    assert done.code == 2 and "batchgen: error: cannot create the run directory" in done.stderr


async def test_disk_full_while_writing_a_video(make_sim, write_manifest, tmp_path: Path, monkeypatch) -> None:
    sim = await make_sim()
    path, out = write_manifest(batch_manifest(2, extra="concurrency: 1\n")), tmp_path / "out"
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".part"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(outputs.os, "write", full)
    with pytest.raises(OutputError, match=r"the disk is full while writing .*\.mp4\.part: free some space"):
        await run_in_process(path, out, sim)
    monkeypatch.undo()
    store = read_state(out)
    assert store.counts()["done"] == 0 and store.counts()["downloading"] >= 1
    assert store.money().reserved_micros + store.money().spent_micros > 0
    store.close()
    assert not list((out / "videos").iterdir())
    charges = len(sim.account().charges)
    result = await run_in_process(path, out, sim)  # space again: the paid clips are downloaded, not paid again
    assert result.exit_code == ExitCode.OK
    assert_all_done(out, 2)
    assert len(sim.account().charges) == 2 and charges >= 1


async def test_a_read_only_state_file(make_sim, write_manifest, tmp_path: Path) -> None:
    sim = await make_sim()
    path, out = write_manifest(batch_manifest(2)), tmp_path / "out"
    await run_in_process(path, out, sim)
    state = out / "state.db"
    before = state.read_bytes()
    if not _immutable(state):
        pytest.skip("this file system cannot make a file read-only for root (chattr +i)")
    try:
        done = await run_cli_async("run", str(path), "--out", str(out), "--no-progress", env=cli_env(sim))
    finally:
        _mutable(state)
    assert (
        done.code == 2
        and "batchgen: error: cannot write the state file" in done.stderr
        and "Traceback" not in done.stderr
    )
    assert state.read_bytes() == before
    assert_all_done(out, 2)


async def test_a_state_file_from_a_newer_schema(make_sim, write_manifest, tmp_path: Path) -> None:
    sim = await make_sim()
    path, out = write_manifest(batch_manifest(1)), tmp_path / "out"
    await run_in_process(path, out, sim)
    with sqlite3.connect(out / "state.db") as db:
        db.execute("PRAGMA user_version = 42")
    done = await run_cli_async("run", str(path), "--out", str(out), env=cli_env(sim))
    assert done.code == 2
    assert "written by a newer batchgen (state schema 42" in done.stderr and "upgrade batchgen" in done.stderr
    status = await run_cli_async("status", "--out", str(out), env=cli_env(sim))
    assert status.code == 2 and "newer batchgen" in status.stderr


async def test_the_key_appears_nowhere(make_sim, write_manifest, tmp_path: Path) -> None:
    faults = FaultPlan(script=parse_script("submit:1=500,submit:2=drop,download:1=drop@0.5,submit:4=400"))
    sim = await make_sim(SimSettings(keys=(SECRET,)), faults)
    path, out = write_manifest(batch_manifest(4, extra="concurrency: 1\n")), tmp_path / "out"
    env = cli_env(sim, key=SECRET)
    printed = []
    for args in (
        (
            "--debug",
            "run",
            str(path),
            "--out",
            str(out),
            "--rpm",
            "1000",
            "--backoff-base-s",
            "0",
            "--max-attempts",
            "3",
            "--poll-interval-s",
            "0.02",
        ),
        ("status", "--out", str(out), "--json"),
        ("--debug", "run", str(path), "--out", str(out), "--base-url", "http://127.0.0.1:9"),  # refused connection
    ):
        done = await run_cli_async(*args, env=env)
        printed += [done.stdout, done.stderr]
    wrong = {**env, "SEGMIND_API_KEY": SECRET + "-revoked"}
    done = await run_cli_async("--debug", "run", str(path), "--out", str(out), "--rpm", "1000", env=wrong)
    printed += [done.stdout, done.stderr]
    assert done.code in (0, 1, 4)
    assert not any(SECRET in text for text in printed)
    for file in out.rglob("*"):
        if file.is_file():
            assert SECRET.encode() not in file.read_bytes(), file
    client = Client(sim.base_url, SECRET)
    assert SECRET not in repr(client) and SECRET not in repr(Target(sim.base_url, SECRET))


async def test_files_are_private(make_sim, write_manifest, tmp_path: Path) -> None:
    sim = await make_sim()
    out = tmp_path / "out"
    await run_in_process(write_manifest(batch_manifest(2)), out, sim)
    for path in [out, *out.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path}: {oct(mode)}"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=4, unique=True))
def test_matrix_values_never_make_a_path_outside_the_run(tmp_path_factory, values: list[str]) -> None:
    tmp = tmp_path_factory.mktemp("paths")
    quoted = ", ".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
    text = f"version: 1\nname: p\nshots:\n  - id: s\n    prompt: 'x {{v}}'\n    matrix:\n      v: [{quoted}]\n"
    (tmp / "m.yaml").write_text(text, encoding="utf-8")
    try:
        jobs = expand(load_manifest(tmp / "m.yaml"))
    except Exception as exc:  # a value the manifest refuses (control characters...) is fine: it never runs
        assert type(exc).__name__ == "ManifestError"
        return
    videos = RunDir(tmp / "run").videos
    for job in jobs:
        assert re.fullmatch(r"[a-z0-9][a-z0-9_-]*-[0-9a-f]{8}", job.id), job.id
        target = (videos / f"{job.id}.mp4").resolve()
        assert target.parent == videos.resolve()


async def test_tls_certificates_are_always_verified(write_manifest, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    import ssl

    from aiohttp import web

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ],
        capture_output=True,
        check=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    seen = []

    async def anything(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.json_response({"request_id": "r"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        done = await run_cli_async(
            "run",
            str(write_manifest(batch_manifest(1))),
            "--out",
            str(tmp_path / "out"),
            "--base-url",
            f"https://127.0.0.1:{port}",
            "--max-attempts",
            "1",
            "--no-progress",
            env={**cli_env(None), "SEGMIND_API_KEY": "k"},
        )
    finally:
        await runner.cleanup()
    # A host whose certificate fails is a host the run cannot reach: it stops, once, naming it and the reason.
    assert done.code == 4, done.stderr
    assert seen == []  # no request ever reached the server behind the untrusted certificate
    assert "cannot reach the provider at 127.0.0.1" in done.stderr and "certificate verify failed" in done.stderr


async def test_an_empty_or_a_foreign_state_file_is_a_clear_word(make_sim, write_manifest, tmp_path: Path) -> None:
    sim = await make_sim()
    path, out = write_manifest(batch_manifest(1)), tmp_path / "out"
    out.mkdir()
    (out / "state.db").write_bytes(b"")
    status = await run_cli_async("status", "--out", str(out), env=cli_env(sim))
    assert status.code == 2 and "holds no state (it is empty" in status.stderr and "Traceback" not in status.stderr
    done = await run_cli_async("run", str(path), "--out", str(out), "--no-progress", env=cli_env(sim))
    assert done.code == 0, done.stderr  # an empty state is a new one
    (out / "state.db").write_bytes(b"this is not SQLite at all, but it is long enough to have a header" * 100)
    for suffix in ("-wal", "-shm"):
        (out / f"state.db{suffix}").unlink(missing_ok=True)
    broken = await run_cli_async("run", str(path), "--out", str(out), "--no-progress", env=cli_env(sim))
    assert broken.code == 2 and "file is not a database" in broken.stderr and "move it aside" in broken.stderr
    assert "Traceback" not in broken.stderr
