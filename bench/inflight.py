"""5. Many in flight: v2 with 2,000 jobs in flight at once and a 30 s latency; the runner's CPU use while it waits.

Measured from /proc over 20 s after every job is submitted and before the first can finish (several rounds of
polls: a window shorter than the poll interval would see one round or none).
Target: < 10 % of one core (polling must not spin).
"""

from __future__ import annotations

import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import cpu_s, manifest, simulator_process, start_run, wait_for_log

JOBS, LATENCY_S, WINDOW_S = 2000, 30.0, 20.0


def waiting_cpu_share(poll_interval_s: float = 5.0) -> float:
    with simulator_process("--latency-s", str(LATENCY_S)) as simulator, tempfile.TemporaryDirectory() as tmp:
        path = manifest(Path(tmp) / "m.yaml", JOBS, concurrency=JOBS, name="inflight")
        out = Path(tmp) / "out"
        process = start_run(path, out, simulator.url, "--poll-interval-s", str(poll_interval_s))
        try:
            wait_for_log(process, out / "run.log", "→ submitted", JOBS, every_s=0.2)
            before, started = cpu_s(process.pid), time.monotonic()
            time.sleep(WINDOW_S)
            return (cpu_s(process.pid) - before) / (time.monotonic() - started)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait()


def main(repeats: int = 1) -> dict[str, list[float]]:
    return {"cpu_share_waiting": [waiting_cpu_share() for _ in range(repeats)]}


if __name__ == "__main__":
    print(main())
