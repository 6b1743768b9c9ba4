"""2. Makespan against the ideal: 300 jobs, latency 0.5 s ± 0.05 s, concurrency 20.

ratio = measured wall time ÷ (ceil(N / C) × L). Target ≤ 1.05 for v1 and for v2 (v2 polls every L / 10, and
the cap on polls a second is raised to match: 20 jobs in flight polled every 50 ms are 400 polls a second, where
the default cap of 50 would stretch each job's interval to 0.4 s).
The wall time is the run's own (from the first attempt in the state to the last video), so process start-up is
out. The bare loop of the overhead benchmark is measured beside them, on the same simulator: the floor of this
machine (the jitter of 15 jobs in a row, the simulator answering 20 requests that fall due together).

The jitter's share is measured too, per run: the makespan of the run's own latencies (the simulator's request
history: each request's creation and latency, in the order they came) on 20 slots with no time lost between them,
each job to the first free slot. What a run takes beyond that (its ``excess``) is the client's and the machine's.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import math
import sqlite3
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import KEY, bare_loop, cli, env_for, manifest, simulator_process, warm_up

JOBS, CONCURRENCY, LATENCY_S = 300, 20, 0.5


def _window(out: Path) -> tuple[float, float]:
    """From the first attempt to the last video, by the state file's own clock (epoch seconds)."""
    with sqlite3.connect(out / "state.db") as db:
        first = db.execute("SELECT MIN(started_at) FROM attempts").fetchone()[0]
        last = db.execute("SELECT MAX(finished_at) FROM jobs").fetchone()[0]
    return float(first), float(last)


def _latencies(url: str, start: float, end: float) -> list[float]:
    """The latency of every request the simulator took between ``start`` and ``end``, in the order it took them."""
    rows: list[tuple[float, float]] = []
    page, pages = 1, 1
    while page <= pages:
        request = urllib.request.Request(
            f"{url}/inference-request/request-history?per_page=100&page={page}", headers={"x-api-key": KEY}
        )
        with urllib.request.urlopen(request) as answer:
            data = json.load(answer)
        for row in data["data"]:
            created = datetime.fromisoformat(row["created_at"].replace("Z", "+00:00")).timestamp()
            if start - 0.001 <= created <= end:
                rows.append((created, row["latency_ms"] / 1000))
        page, pages = page + 1, data["total_pages"]
    if len(rows) != JOBS:
        raise RuntimeError(f"{len(rows)} requests in the run's window of the history, not {JOBS}")
    return [latency for _, latency in sorted(rows)]


def _zero_overhead(latencies: list[float]) -> float:
    """The makespan of these latencies on ``CONCURRENCY`` slots, each to the first free slot, no time between."""
    slots = [0.0] * CONCURRENCY
    for latency in latencies:
        heapq.heappush(slots, heapq.heappop(slots) + latency)
    return max(slots)


def main(repeats: int = 3) -> dict[str, list[float]]:
    """Per run: its makespan ÷ ideal (``bare``, ``v1``, ``v2``), its own latencies' zero-overhead makespan ÷ ideal
    (``floor``, every run), and the difference (``excess-bare``...)."""
    kinds = ("bare", "v1", "v2")
    figures: dict[str, list[float]] = {name: [] for name in (*kinds, "floor", *(f"excess-{kind}" for kind in kinds))}
    ideal = math.ceil(JOBS / CONCURRENCY) * LATENCY_S

    def record(kind: str, start: float, end: float) -> None:
        ratio, floor = (end - start) / ideal, _zero_overhead(_latencies(url, start, end)) / ideal
        figures[kind].append(ratio)
        figures["floor"].append(floor)
        figures[f"excess-{kind}"].append(ratio - floor)

    with (
        simulator_process("--latency-s", str(LATENCY_S), "--jitter-s", "0.05") as (url, _),
        tempfile.TemporaryDirectory() as tmp,
    ):
        warm_up(url)
        for repeat in range(repeats):
            bare = Path(tmp) / f"bare{repeat}"
            bare.mkdir()
            start = time.time()
            record("bare", start, start + asyncio.run(bare_loop(url, bare, JOBS, CONCURRENCY)))
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
                record(transport, *_window(out))
    return figures


if __name__ == "__main__":
    print(datetime.now().isoformat(), main(repeats=1))
