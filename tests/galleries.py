"""Run directories made directly, as a finished run leaves them, for the gallery's tests and benchmark: thousands of
done jobs without running them (open_run with the manifest's jobs, their states set, each poster a hard link to one
real thumbnail, each video an empty file)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from batchgen.launch import load_run_manifest, open_run


def batch_yaml(jobs: int, name: str = "big") -> str:
    """A manifest of ``jobs`` jobs over two shots, with prompts that differ."""
    half = jobs // 2
    values = ", ".join(str(i) for i in range(half))
    rest = ", ".join(str(i) for i in range(jobs - half))
    return (
        f"version: 1\nname: {name}\nrpm: 1000\ndefaults: {{duration: 3, generate_audio: false}}\nshots:\n"
        f"  - id: harbour\n    prompt: 'Boats in a harbour, take {{n}}, slow pan'\n    matrix: {{n: [{values}]}}\n"
        f"  - id: valley\n    prompt: 'Fog in the valley, variant {{n}}, aerial'\n    matrix: {{n: [{rest}]}}\n"
    )


def done_run(tmp: Path, jobs: int, poster: bytes) -> Path:
    """A run directory of ``jobs`` done jobs (each poster the bytes ``poster``); its path."""
    manifest = tmp / "big.yaml"
    manifest.write_text(batch_yaml(jobs))
    out = tmp / "out"
    loaded = load_run_manifest(str(manifest), jobs, str(out))
    with open_run(out, loaded.manifest, loaded.jobs, None, loaded.digest):
        pass
    db = sqlite3.connect(out / "state.db")
    with db:
        db.execute(
            "UPDATE jobs SET state = 'done', video_path = 'videos/' || id || '.mp4', finished_at = updated_at, "
            """probe = '{"duration_s": 3.0, "width": 1920, "height": 1080, "audio": false}'"""
        )
        ids = [row[0] for row in db.execute("SELECT id FROM jobs")]
    db.close()
    first = out / "posters" / "first.jpg"
    first.write_bytes(poster)
    for job_id in ids:
        (out / "videos" / f"{job_id}.mp4").touch()
        os.link(first, out / "posters" / f"{job_id}.jpg")
    first.unlink()
    return out
