"""3. Memory: peak RSS of the runner for 64 jobs of 64 MB videos at concurrency 16, and the same with 1 MB videos.

Target: ≤ 150 MB, and within 10 % of the 1 MB run (flat in video size). The videos (4 GB) are deleted afterwards.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import cli, env_for, manifest, simulator_process

JOBS, CONCURRENCY = 64, 16


def peak_rss_mb(video_mb: int, transport: str = "v2") -> float:
    with (
        simulator_process("--latency-s", "0", "--video-size-mb", str(video_mb)) as (url, _),
        tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent / "output") as tmp,
    ):
        path = manifest(Path(tmp) / "m.yaml", JOBS, concurrency=CONCURRENCY, name=f"mem{video_mb}")
        _, done, usage = cli(
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
    return usage.ru_maxrss / 1024


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
