"""Shared pieces of the benchmarks: a simulator in its own process, manifests, timing, figures."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-key"


class Simulator(NamedTuple):
    """A simulator in its own process."""

    url: str
    pid: int

    def cpu_s(self) -> float:
        """The CPU seconds it has used so far."""
        return cpu_s(self.pid)


def cpu_s(pid: int) -> float:
    """The CPU seconds (user + system) a running process has used so far, read from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def simulator_process(*args: str) -> Iterator[Simulator]:
    """`batchgen simulate` in a process of its own (so it does not share the runner's core)."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batchgen",
            "simulate",
            "--key",
            KEY,
            "--credits",
            "1000000000",
            "--rpm",
            "100000000",
            *args,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"(http://\S+)", line)
        if not match:
            raise RuntimeError(f"the simulator did not start: {line}{process.stderr.read() if process.stderr else ''}")
        yield Simulator(match.group(1), process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)


async def bare_loop(url: str, out: Path, jobs: int, concurrency: int) -> float:
    """The least a client can do, the baseline of the benchmarks: POST every job (v1, the prompts of ``manifest``)
    under a semaphore and write each body to a file; no state, no budget, no checks. Its wall time, in seconds."""
    limit = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(headers={"x-api-key": KEY}, connector=connector) as session:

        async def one(n: int) -> None:
            body = {"prompt": f"Benchmark clip {n}", "duration": "3", "generate_audio": False}
            async with limit, session.post(f"{url}/v1/kling-3-standard-text2video", json=body) as response:
                (out / f"{n}.mp4").write_bytes(await response.read())

        started = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(jobs)))
        return time.perf_counter() - started


def warm_up(url: str) -> None:
    """Ask the simulator for the first 200 prompts of ``manifest`` at once, so that no measured run pays for the
    encoding of its clips (cached per palette, 16 of them, ~12 ms each; 200 prompts miss one with p ≈ 4e-5)."""
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(bare_loop(url, Path(tmp), 200, 200))


def file_creation_ms(parent: Path, files: int = 500) -> float:
    """Milliseconds to create (and close) one empty file, over ``files`` in a new directory under ``parent``, kept."""
    directory = Path(tempfile.mkdtemp(dir=parent, prefix="probe"))
    started = time.perf_counter()
    for n in range(files):
        (directory / str(n)).touch()
    return (time.perf_counter() - started) * 1000 / files


def settle_disk(parent: Path, limit_ms: float = 0.15, patience_s: float = 360.0) -> float:
    """Wait until creating a file under ``parent`` costs what it should (at most ``limit_ms``), for at most
    ``patience_s``; the last cost measured, in milliseconds.

    On an ext4 without a journal (this project's CI VMs: ``/sys/fs/ext4/*/journal_task`` is ``<none>``), an inode
    freed within the last minute or five is skipped, not reused, and every file creation in its block group walks
    past all of them: after the tests or another benchmark removed their files, creating one costs ~1 ms instead of
    ~0.03, and a benchmark that creates a file a job measures the file system's memory instead of the client. Seen
    here: the bare loop at 808 jobs/s right after 20,000 files were removed, 1,736-1,955 in the runs after.
    """
    deadline = time.monotonic() + patience_s
    cost = file_creation_ms(parent)
    while cost > limit_ms and time.monotonic() < deadline:
        time.sleep(20)
        cost = file_creation_ms(parent)
    return cost


def manifest(path: Path, jobs: int, *, concurrency: int, name: str = "bench", duration: int = 3) -> Path:
    """A manifest of ``jobs`` distinct jobs."""
    values = ", ".join(str(i) for i in range(jobs))
    path.write_text(
        f"version: 1\nname: {name}\nconcurrency: {concurrency}\nrpm: 100000\n"
        f"defaults: {{duration: {duration}, generate_audio: false}}\n"
        f"shots:\n  - id: clip\n    prompt: 'Benchmark clip {{n}}'\n    matrix:\n      n: [{values}]\n"
    )
    return path


def cli(
    *args: str, env: dict[str, str] | None = None
) -> tuple[float, subprocess.CompletedProcess[str], resource.struct_rusage]:
    """Run the CLI; (wall seconds, the finished process, its resource use read with wait4: ``ru_utime + ru_stime``
    its CPU seconds; not its peak RSS, which counts this process's own: see ``memory.py``)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "batchgen", *args], cwd=ROOT, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        done = subprocess.CompletedProcess(process.args, process.returncode, out.read(), err.read())
    return elapsed, done, usage


def env_for(url: str) -> dict[str, str]:
    """The environment of a CLI aimed at the benchmark simulator (its request history too: the real one is not
    reachable from here, and a run that asks it waits for its timeout)."""
    return {**os.environ, "SEGMIND_API_KEY": KEY, "SEGMIND_BASE_URL": url, "SEGMIND_HISTORY_URL": url}


def spread(values: list[float], unit: str = "", digits: int = 2) -> str:
    """min / median / max."""
    return f"{min(values):.{digits}f} / {statistics.median(values):.{digits}f} / {max(values):.{digits}f}{unit}"


def start_run(path: Path, out: Path, url: str, *args: str) -> subprocess.Popen[bytes]:
    """`batchgen run` in the background, its output discarded."""
    return subprocess.Popen(
        [sys.executable, "-m", "batchgen", "run", str(path), "--out", str(out), "--no-progress", *args],
        cwd=ROOT,
        env=env_for(url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_for_log(
    process: subprocess.Popen[bytes], run_log: Path, text: str, count: int = 1, every_s: float = 0.01
) -> None:
    """Wait until ``text`` stands ``count`` times in run.log, looking every ``every_s`` (an error if the run ends
    first)."""
    while not (run_log.exists() and run_log.read_text().count(text) >= count):
        if process.poll() is not None:
            raise RuntimeError(f"the run ended before {count} × {text!r} in {run_log}")
        time.sleep(every_s)
