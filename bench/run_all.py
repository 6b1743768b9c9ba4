"""Run every benchmark and rewrite bench/RESULTS.md: `python bench/run_all.py` (about 6 minutes on 2 cores)."""

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

- **Overhead: not met, and out of reach of this design on 2 cores.** CPU per thread, read from `/proc` during a
  5,000-job run (zero latency): the runner's event loop ~10 s, the thread that checks videos and makes posters
  (PyAV) ~7 s, the simulator ~3 s, in an 18 s run: the two runner threads add up to the wall time, serialised by
  the GIL. With the PyAV work switched off altogether (a local experiment, not a mode of batchgen) the same run
  does 436-452 jobs/s instead of 276-282: moving PyAV to a process pool could reach ~0.25 of the bare loop at best,
  and then the loop thread alone spends ~1.9 ms a job against the bare loop's whole ~0.5 ms — the money path's
  transactions (the intent before each POST, billed on the answer, done in groups), the job log, the aiohttp
  client. The pool was not built: child processes, Ctrl-C and a broken pool on the path that places paid clips,
  for a figure that stays far from 0.8 and no gain against a provider that takes 3 minutes a clip.
  Kept, this round: PyAV opened each poster's MJPEG encoder with an automatic thread count, two threads started
  and joined per video (strace: 6,004 `clone3` in a 3,000-job run); with one, encoding a still takes 0.29 ms
  instead of 0.92. The MP4 demuxer is named instead of guessed (the API answers `video/mp4`): opening 0.39 ms
  instead of 0.53. Before: group commit (one `syncfs`, the renames, one fsync of the directory, one transaction
  for a batch of videos), posters from the check's own reading, job logs written in a thread, the rate gate's
  deque. Dropped: two placer threads (slower, GIL).
  A quirk of this VM lowers the figure: its ext4 has no journal (`/sys/fs/ext4/vda/journal_task` is `<none>`),
  and without one ext4 will not reuse an inode freed in the last minute or more, so every file creation walks past
  the recently freed ones (perf: `find_inode_bit` → `recently_deleted`, a quarter of the runner's CPU just after a
  benchmark's temporary directory was removed). batchgen creates three files a job (video, poster, log), the bare
  loop one.
- **Makespan: v1 met, v2 a hair over; both at this machine's floor.** The bare loop, measured beside v1 and v2 on the
  same warmed simulator, is the floor (its row above). The ±50 ms jitter alone makes 1.027 (300 jobs on 20 slots, a
  job to the first free slot, 2,000 draws), and each of the bare loop's requests takes 5-6 ms longer than its latency
  even without jitter: 20 answers due at once on a 2-core box, and waking up — one request at a time, an answer due
  after 0.1 s comes 2.3 ms after it where an immediate one takes 0.9 ms, while `asyncio.sleep` itself overshoots 0.4
  ms: the rest is two idle processes woken on a VM. v1 and v2 land within 0.005 of the bare loop's median (v1 below it
  in some runs): batchgen's own part of the makespan is within this noise. v2 asks each job 20 times across the window
  in which jobs finish; 5, 10 and 40 were measured (medians 1.079, 1.066, 1.061 against 1.061 for 20).
- **Start of a 100,000-job run: met** by taking the jobs from the state when the manifest is unchanged. After an
  edit every job is checked and expanded again (shown for scale): about half of it is the request schema run on
  every combination (jsonschema's cost is per call; checking each distinct field value alone was no faster), the
  other half parsing and expansion.
- **validate and plan**: the CLI imports aiohttp, PyAV, tqdm and asyncio only for the commands that run jobs
  (`--help` 0.21 s, was 0.74 s); what remains of 10,000 jobs is PyYAML, jsonschema and expansion.
- **Many in flight**: per-job polls at 5 s would cost 16 % of a core for 2,000 jobs (about 1 ms a poll in
  aiohttp); `--max-polls-per-s` (default 50) stretches the interval with the number in flight.
"""


if __name__ == "__main__":
    main()
