"""4. Scale: `validate` + `plan` of a 10,000-job manifest (target < 3 s each); a run directory of 100,000 jobs,
most done: time from `batchgen run` to its first submit, and `batchgen status` (target < 3 s each).

The first submit is timed twice: resuming with the manifest unchanged (the target: the state's jobs are used as
they are), and after an edit of the manifest (every job checked and expanded again; no target, shown for scale)."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from batchgen.launch import load_run_manifest, open_run
from bench.common import cli, manifest, simulator_process, start_run, wait_for_log

BIG, HUGE, LEFT = 10_000, 100_000, 100


def validate_and_plan(tmp: Path) -> tuple[float, float]:
    path = manifest(tmp / "big.yaml", BIG, concurrency=8, name="big")
    validate, done, _ = cli("validate", str(path))
    assert done.returncode == 0, done.stderr
    plan, done, _ = cli("plan", str(path), "--json")
    assert done.returncode == 0, done.stderr
    return validate, plan


def huge_run_dir(tmp: Path) -> tuple[Path, Path]:
    """A run directory whose state knows 100,000 jobs, all but 100 done, as a run leaves it (made directly, not by
    running: open_run with the manifest's digest, then the states set)."""
    path = manifest(tmp / "huge.yaml", HUGE, concurrency=8, name="huge")
    out = tmp / "huge-out"
    loaded = load_run_manifest(str(path), HUGE, str(out))
    with open_run(out, loaded.manifest, loaded.jobs, None, loaded.digest):
        pass
    db = sqlite3.connect(out / "state.db")
    with db:
        db.execute("UPDATE jobs SET state = 'done', video_path = 'videos/' || id || '.mp4' WHERE idx >= ?", (LEFT,))
        done = [row[0] for row in db.execute("SELECT id FROM jobs WHERE state = 'done'")]
    db.close()  # before the directory is copied: a connection left to the collector removes its WAL mid-copy
    for job_id in done:  # a run looks at every done job's video when it starts: they are there, as a run leaves them
        (out / "videos" / f"{job_id}.mp4").touch()
    return path, out


def first_submit(path: Path, prepared: Path, work: Path, url: str) -> float:
    """From `batchgen run` to its first submit, on a fresh copy of the prepared directory (a copy each time: a run
    stopped after its first submits leaves requests in flight, and the next one would wait for a free slot)."""
    out = work / f"run-{time.monotonic_ns()}"
    shutil.copytree(prepared, out)
    started = time.perf_counter()
    process = start_run(path, out, url, "--max-jobs", str(HUGE))
    wait_for_log(process, out / "run.log", "→ submit", every_s=0.005)
    elapsed = time.perf_counter() - started
    process.send_signal(signal.SIGTERM)
    process.wait()
    shutil.rmtree(out)
    return elapsed


def main(repeats: int = 3) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {
        "validate_10k_s": [],
        "plan_10k_s": [],
        "first_submit_100k_s": [],
        "first_submit_100k_edited_s": [],
        "status_100k_s": [],
    }
    with tempfile.TemporaryDirectory() as tmp, simulator_process("--latency-s", "60") as (url, _):
        path, out = huge_run_dir(Path(tmp))
        edited = Path(tmp) / "huge-edited.yaml"  # a comment more: new bytes, so every job is checked again
        edited.write_text(path.read_text() + "# edited\n")
        for _ in range(repeats):
            validate, plan = validate_and_plan(Path(tmp))
            figures["validate_10k_s"].append(validate)
            figures["plan_10k_s"].append(plan)
            figures["first_submit_100k_s"].append(first_submit(path, out, Path(tmp), url))
            figures["first_submit_100k_edited_s"].append(first_submit(edited, out, Path(tmp), url))
            status, done, _ = cli("status", "--out", str(out))
            assert done.returncode == 0, done.stderr
            figures["status_100k_s"].append(status)
    return figures


if __name__ == "__main__":
    print(main(repeats=1))
