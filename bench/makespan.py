"""2. Makespan against the ideal: 300 jobs, latency 0.5 s ± 0.05 s, concurrency 20.

ratio = measured wall time ÷ (ceil(N / C) × L). Target ≤ 1.05 for v1 and for v2 (v2 polls every L / 10, and
the cap on polls a second is raised to match: 20 jobs in flight polled every 50 ms are 400 polls a second, where
the default cap of 50 would stretch each job's interval to 0.4 s).
The wall time is the run's own (from the first attempt in the state to the last video), so process start-up is
out. The bare loop of the overhead benchmark is measured beside them, on the same simulator: the floor of this
machine (the jitter of 15 jobs in a row, the simulator answering 20 requests that fall due together).
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import sys
import tempfile
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import bare_loop, cli, env_for, manifest, simulator_process, warm_up

JOBS, CONCURRENCY, LATENCY_S = 300, 20, 0.5


def _span(out: Path) -> float:
    """From the first attempt to the last video, by the state file's own clock."""
    with sqlite3.connect(out / "state.db") as db:
        first = db.execute("SELECT MIN(started_at) FROM attempts").fetchone()[0]
        last = db.execute("SELECT MAX(finished_at) FROM jobs").fetchone()[0]
    return float(last - first)


def main(repeats: int = 3) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {"bare": [], "v1": [], "v2": []}
    ideal = math.ceil(JOBS / CONCURRENCY) * LATENCY_S
    with (
        simulator_process("--latency-s", str(LATENCY_S), "--jitter-s", "0.05") as url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        warm_up(url)
        for repeat in range(repeats):
            bare = Path(tmp) / f"bare{repeat}"
            bare.mkdir()
            figures["bare"].append(asyncio.run(bare_loop(url, bare, JOBS, CONCURRENCY)) / ideal)
            for transport in ("v1", "v2"):
                path = manifest(
                    Path(tmp) / f"{transport}{repeat}.yaml", JOBS, concurrency=CONCURRENCY, name=f"m{transport}{repeat}"
                )
                out = Path(tmp) / f"out-{transport}-{repeat}"
                _, done, _ = cli(
                    "run",
                    str(path),
                    "--out",
                    str(out),
                    "--transport",
                    transport,
                    "--no-progress",
                    "--poll-interval-s",
                    str(LATENCY_S / 10),
                    "--max-polls-per-s",
                    "1000",
                    env=env_for(url),
                )
                if done.returncode != 0:
                    raise RuntimeError(done.stderr[-2000:])
                figures[transport].append(_span(out) / ideal)
    return figures


if __name__ == "__main__":
    print(datetime.now().isoformat(), main(repeats=1))
