"""1. Orchestration overhead: batchgen's whole pipeline against the least a client can do, same transport (v1).

5,000 jobs, zero latency, tiny videos, concurrency 64, against one simulator in its own process. The baseline is a
bare aiohttp loop under a semaphore that POSTs and writes each body to a file: no state, no budget, no checks.
Target: batchgen ≥ 0.8 × the baseline's jobs/s.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import KEY, cli, env_for, manifest, simulator_process

JOBS, CONCURRENCY = 5000, 64


async def baseline(url: str, out: Path, jobs: int) -> float:
    """POST every job under a semaphore and write the body: the physical limit of this machine and server."""
    limit = asyncio.Semaphore(CONCURRENCY)
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(headers={"x-api-key": KEY}, connector=connector) as session:

        async def one(n: int) -> None:
            body = {"prompt": f"Benchmark clip {n}", "duration": "3", "generate_audio": False}
            async with limit, session.post(f"{url}/v1/kling-3-standard-text2video", json=body) as response:
                (out / f"{n}.mp4").write_bytes(await response.read())

        started = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(jobs)))
        return jobs / (time.perf_counter() - started)


def batchgen_rate(url: str, work: Path, jobs: int) -> float:
    path = manifest(work / f"m{jobs}.yaml", jobs, concurrency=CONCURRENCY)
    elapsed, done, _ = cli(
        "run",
        str(path),
        "--out",
        str(work / f"run{time.monotonic_ns()}"),
        "--transport",
        "v1",
        "--no-progress",
        env=env_for(url),
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    startup, _, _ = cli("--version")
    return jobs / (elapsed - startup)


def main(repeats: int = 3, jobs: int = JOBS) -> dict[str, list[float]]:
    """Jobs/s of each, over ``repeats``."""
    figures: dict[str, list[float]] = {"baseline": [], "batchgen": [], "ratio": []}
    with simulator_process("--latency-s", "0") as url, tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            work = Path(tempfile.mkdtemp(dir=tmp))
            base = asyncio.run(baseline(url, work, jobs))
            ours = batchgen_rate(url, work, jobs)
            figures["baseline"].append(base)
            figures["batchgen"].append(ours)
            figures["ratio"].append(ours / base)
    return figures


if __name__ == "__main__":
    print(main(repeats=1, jobs=int(sys.argv[1]) if len(sys.argv) > 1 else JOBS))
