"""Run every benchmark and rewrite bench/RESULTS.md: `python bench/run_all.py` (about 7 minutes on 2 cores)."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import inflight, makespan, memory, overhead, scale
from bench.common import spread

TARGETS = [
    (
        "overhead",
        "ratio",
        "batchgen jobs/s ÷ bare aiohttp loop jobs/s (5,000 jobs, v1, c=64)",
        "≥ 0.8",
        lambda v: v >= 0.8,
    ),
    ("overhead", "baseline", "bare aiohttp loop, jobs/s", "", None),
    ("overhead", "batchgen", "batchgen full pipeline, jobs/s", "", None),
    ("makespan", "bare", "bare aiohttp loop makespan ÷ ideal (the floor, same simulator)", "", None),
    ("makespan", "v1", "v1 makespan ÷ ideal (300 jobs, 0.5 s, c=20)", "≤ 1.05", lambda v: v <= 1.05),
    ("makespan", "v2", "v2 makespan ÷ ideal (300 jobs, 0.5 s, c=20)", "≤ 1.05", lambda v: v <= 1.05),
    ("memory", "rss_mb_64mb_videos", "peak RSS, 64 × 64 MB videos, c=16 (MB)", "≤ 150", lambda v: v <= 150),
    ("memory", "rss_mb_1mb_videos", "peak RSS, 64 × 1 MB videos, c=16 (MB)", "", None),
    ("memory", "ratio", "64 MB run ÷ 1 MB run", "≤ 1.10", lambda v: v <= 1.10),
    ("scale", "validate_10k_s", "validate, 10,000 jobs (s)", "< 3", lambda v: v < 3),
    ("scale", "plan_10k_s", "plan --json, 10,000 jobs (s)", "< 3", lambda v: v < 3),
    (
        "scale",
        "first_submit_100k_s",
        "run → first submit, 100,000-job run dir, manifest unchanged (s)",
        "< 3",
        lambda v: v < 3,
    ),
    (
        "scale",
        "first_submit_100k_edited_s",
        "run → first submit, same dir after a manifest edit (s)",
        "",
        None,
    ),
    ("scale", "status_100k_s", "status, 100,000-job run dir (s)", "< 3", lambda v: v < 3),
    (
        "inflight",
        "cpu_share_waiting",
        "CPU share of one core, 2,000 in flight, 30 s latency",
        "< 0.10",
        lambda v: v < 0.10,
    ),
]


def main() -> None:
    started = time.time()
    results = {
        "overhead": overhead.main(repeats=3),
        "makespan": makespan.main(repeats=3),
        "memory": memory.main(repeats=2),
        "scale": scale.main(repeats=3),
        "inflight": inflight.main(repeats=2),
    }
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} cores. ",
        f"Command: `python bench/run_all.py` ({time.time() - started:.0f} s, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}). All against the simulator over loopback.",
        "",
        "| measure | min / median / max | target | met |",
        "|---|---|---|---|",
    ]
    for bench, key, label, target, check in TARGETS:
        values = results[bench][key]
        met = "" if check is None else ("yes" if check(sorted(values)[len(values) // 2]) else "**no**")
        lines.append(f"| {label} | {spread(values, digits=3)} | {target} | {met} |")
    Path(__file__).with_name("RESULTS.md").write_text("\n".join(lines) + "\n" + NOTES)
    print("\n".join(lines))


NOTES = """
## Where the time goes

- **Overhead: not met, and not reachable on this machine while every video is checked with PyAV.** CPU measured
  apart here: the bare loop spends 0.65 ms a job in its own process and the simulator 0.70 ms a job, so the baseline
  already keeps both cores busy. At 0.8 × the baseline (~1,150 jobs/s) the two cores can spend at most 1.75 ms a
  job in all; the simulator takes 0.70, an aiohttp client at least 0.65, and batchgen's check of each video (PyAV
  opens it: duration, size, audio) 0.6 ms more, its poster frame 1.2 ms more (200 simulator clips, 3 rounds): over
  the limit before any state, budget or log. py-spy `--gil` of a 5,000-job run: the placer's PyAV work holds the
  GIL 30 % of the run and slows the loop beside it. Tried and kept: group commit (one `syncfs` for a batch of
  videos, the renames, one fsync of the directory, one transaction marking them done: the syncs are now 0.4 s of a
  5,000-job run, where two fsyncs a job also stalled every file creation on the loop behind the ext4 journal);
  posters from the same PyAV reading as the check, from the keyframe at or before the middle, with a reformatter
  kept per thread (probe + poster 4.9 → 1.8 ms); job logs written in a thread; the rate gate's deque (it filtered
  a list on every submit). Tried and dropped: two placer threads (slower: 29.7 s instead of 26 s for 5,000 jobs,
  GIL contention). Not tried: a process pool for the PyAV work; here it would share the second core with the
  simulator (at best ~0.4 by the figures above); with more cores, or against the real provider, it is the next step.
- **Makespan: at the edge of this machine's noise.** The bare loop itself measures 1.034 on the same simulator
  (the ±50 ms jitter of 15 jobs in a row adds up), which leaves 8 ms a cycle for everything else. v1 measured
  1.042-1.087 over the last two full runs; its cycle costs 3-5 ms more than the bare loop's (begin → POST 2 ms, the
  loop shared with the placer). v2 went from 1.14 to 1.06-1.08: each job is now polled on its own schedule, often
  across the window in which jobs finish (kept); a v2 cycle is three round trips (submit, status, result) where v1
  has one, so its floor here is higher.
- **Start of a 100,000-job run: met** by taking the jobs from the state when the manifest is unchanged (1.1 s). After
  an edit every job is checked and expanded again (15-18 s, shown for scale): about half of it is the request schema
  run on every combination (jsonschema's cost is per call, so checking each distinct field value alone was tried
  and was no faster); a second half is parsing and expansion.
- **Many in flight**: the earlier 6 % came from a 10 s window that saw a single round of polls; measured over 20 s
  the per-job polls at 5 s cost 16 % of a core (about 1 ms a poll in aiohttp). `--max-polls-per-s` (default 50)
  brings it to 7 %.
- validate and plan of 10,000 jobs are about 0.9 s of interpreter start and imports (aiohttp, PyAV, jsonschema)
  plus ~0.8 s of loading: the figures vary by ±30 % on this VM from one hour to the next.
"""


if __name__ == "__main__":
    main()
