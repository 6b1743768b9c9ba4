"""1. Orchestration overhead: batchgen's whole pipeline against the least a client can do, same transport (v1).

5,000 jobs, zero latency, tiny videos, concurrency 64, against one simulator in its own process. The baseline is a
bare aiohttp loop under a semaphore that POSTs and writes each body to a file: no state, no budget, no checks.
Target: batchgen ≥ 0.8 × the baseline's jobs/s.

Beside the rates, where the machine's CPU goes, per job: the bare loop's, batchgen's (its whole process, start-up
left out as for its rate) and the simulator's during each; and what PyAV takes to check one of the run's videos, and
to check it and make its poster. From these, the ceiling of this machine: the ratio that a client doing the bare
loop's work plus PyAV's check (and poster) and nothing else could reach, its work spread over every core with no
time lost, against a simulator that costs what it cost the bare loop.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from batchgen.outputs import probe_video
from bench.common import Simulator, bare_loop, cli, env_for, manifest, settle_disk, simulator_process, warm_up

JOBS, CONCURRENCY = 5000, 64


def batchgen_run(simulator: Simulator, work: Path, jobs: int) -> tuple[float, float, float, Path]:
    """(jobs/s, its CPU ms a job, the simulator's CPU ms a job, the run directory); start-up left out of both."""
    path = manifest(work / f"m{jobs}.yaml", jobs, concurrency=CONCURRENCY)
    out = work / f"run{time.monotonic_ns()}"
    simulator_before = simulator.cpu_s()
    elapsed, done, usage = cli(
        "run", str(path), "--out", str(out), "--transport", "v1", "--no-progress", env=env_for(simulator.url)
    )
    simulator_cpu = simulator.cpu_s() - simulator_before
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    startup, _, startup_usage = cli("--version")
    cpu = (usage.ru_utime + usage.ru_stime) - (startup_usage.ru_utime + startup_usage.ru_stime)
    return jobs / (elapsed - startup), cpu * 1000 / jobs, simulator_cpu * 1000 / jobs, out


def bare_run(simulator: Simulator, work: Path, jobs: int) -> tuple[float, float, float]:
    """(jobs/s, its CPU ms a job, the simulator's CPU ms a job)."""
    simulator_before, before = simulator.cpu_s(), time.process_time()
    wall = asyncio.run(bare_loop(simulator.url, work, jobs, CONCURRENCY))
    cpu, simulator_cpu = time.process_time() - before, simulator.cpu_s() - simulator_before
    return jobs / wall, cpu * 1000 / jobs, simulator_cpu * 1000 / jobs


def cpu_ms(work: Callable[[], object], times: int = 200) -> float:
    """CPU ms of one call of ``work``: the median of ``times`` (after one untimed)."""
    work()
    costs = []
    for _ in range(times):
        before = time.process_time()
        work()
        costs.append(time.process_time() - before)
    return statistics.median(costs) * 1000


def check_costs(video: Path, poster: Path) -> tuple[float, float]:
    """CPU ms of PyAV's check of one video, and of the check with its poster."""
    return cpu_ms(lambda: probe_video(video)), cpu_ms(lambda: probe_video(video, poster))


def main(repeats: int = 3, jobs: int = JOBS) -> dict[str, list[float]]:
    """Jobs/s of each, over ``repeats``, the CPU figures and ceilings, and the cost of creating a file just before
    each measured run (ms)."""
    names = ["baseline", "batchgen", "ratio", "file_ms", "cpu_bare_ms", "cpu_batchgen_ms", "cpu_simulator_ms"]
    names += ["cpu_check_ms", "cpu_check_poster_ms", "ceiling_check", "ceiling_check_poster"]
    figures: dict[str, list[float]] = {name: [] for name in names}
    cores = os.cpu_count() or 1
    with simulator_process("--latency-s", "0") as simulator, tempfile.TemporaryDirectory() as tmp:
        warm_up(simulator.url)
        for _ in range(repeats):
            work = Path(tempfile.mkdtemp(dir=tmp))
            figures["file_ms"].append(settle_disk(work))
            base, bare_cpu, simulator_for_bare = bare_run(simulator, work, jobs)
            figures["file_ms"].append(settle_disk(work))
            ours, our_cpu, simulator_for_ours, out = batchgen_run(simulator, work, jobs)
            check, poster = check_costs(next((out / "videos").iterdir()), work / "poster.jpg")
            figures["baseline"].append(base)
            figures["batchgen"].append(ours)
            figures["ratio"].append(ours / base)
            figures["cpu_bare_ms"].append(bare_cpu)
            figures["cpu_batchgen_ms"].append(our_cpu)
            figures["cpu_simulator_ms"] += [simulator_for_bare, simulator_for_ours]
            figures["cpu_check_ms"].append(check)
            figures["cpu_check_poster_ms"].append(poster)
            # jobs/s if every core were busy with nothing else, over the bare loop's jobs/s
            for key, extra in (("ceiling_check", check), ("ceiling_check_poster", poster)):
                figures[key].append(cores * 1000 / (bare_cpu + extra + simulator_for_bare) / base)
    return figures


if __name__ == "__main__":
    print(main(repeats=1, jobs=int(sys.argv[1]) if len(sys.argv) > 1 else JOBS))
