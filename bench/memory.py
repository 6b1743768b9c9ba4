"""3. Memory: peak RSS of the runner for 64 jobs of 64 MB videos at concurrency 16, and the same with 1 MB videos.

Target: ≤ 150 MB, and within 10 % of the 1 MB run (flat in video size). The videos (4 GB) are deleted afterwards.

The runner is started by a small launcher, not by this process: Linux carries a process's peak RSS over fork and
exec into its child's (``ru_maxrss``), so a runner started by a benchmark process of 75 MB would read at least 75 MB
whatever it used itself (seen: every run of ``run_all`` at 75.609 MB, 64 MB and 1 MB videos alike, once the overhead
benchmark had grown its process).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, env_for, manifest, simulator_process

JOBS, CONCURRENCY = 64, 16

# Spawns its arguments, waits, writes the child's peak RSS (kB) to the file named first; exits with its code.
LAUNCHER = """import os, sys
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as report:
    report.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def cli_peak_rss_kb(*args: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run the CLI through ``LAUNCHER``; the finished launcher, and the CLI's own peak RSS in kB."""
    with tempfile.NamedTemporaryFile("r") as report:
        done = subprocess.run(
            [sys.executable, "-c", LAUNCHER, report.name, sys.executable, "-m", "batchgen", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        return done, int(report.read() or 0)


def peak_rss_mb(video_mb: int, transport: str = "v2") -> float:
    with (
        simulator_process("--latency-s", "0", "--video-size-mb", str(video_mb)) as (url, _),
        tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent / "output") as tmp,
    ):
        path = manifest(Path(tmp) / "m.yaml", JOBS, concurrency=CONCURRENCY, name=f"mem{video_mb}")
        done, rss_kb = cli_peak_rss_kb(
            "run",
            str(path),
            "--out",
            str(Path(tmp) / "out"),
            "--transport",
            transport,
            "--poll-interval-s",
            "0.05",
            "--no-progress",
            env=env_for(url),
        )
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
        shutil.rmtree(Path(tmp) / "out")
    return rss_kb / 1024


def main(repeats: int = 1) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {"rss_mb_64mb_videos": [], "rss_mb_1mb_videos": [], "ratio": []}
    for _ in range(repeats):
        large, small = peak_rss_mb(64), peak_rss_mb(1)
        figures["rss_mb_64mb_videos"].append(large)
        figures["rss_mb_1mb_videos"].append(small)
        figures["ratio"].append(large / small)
    return figures


if __name__ == "__main__":
    print(main())
