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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import bare_loop, cli, env_for, manifest, settle_disk, simulator_process, warm_up

JOBS, CONCURRENCY = 5000, 64


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
    """Jobs/s of each, over ``repeats``, and the cost of creating a file just before each measured run (ms)."""
    figures: dict[str, list[float]] = {"baseline": [], "batchgen": [], "ratio": [], "file_ms": []}
    with simulator_process("--latency-s", "0") as url, tempfile.TemporaryDirectory() as tmp:
        warm_up(url)
        for _ in range(repeats):
            work = Path(tempfile.mkdtemp(dir=tmp))
            figures["file_ms"].append(settle_disk(work))
            base = jobs / asyncio.run(bare_loop(url, work, jobs, CONCURRENCY))
            figures["file_ms"].append(settle_disk(work))
            ours = batchgen_rate(url, work, jobs)
            figures["baseline"].append(base)
            figures["batchgen"].append(ours)
            figures["ratio"].append(ours / base)
    return figures


if __name__ == "__main__":
    print(main(repeats=1, jobs=int(sys.argv[1]) if len(sys.argv) > 1 else JOBS))
