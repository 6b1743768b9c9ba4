"""Are the finished videos still what was paid for: present, of their recorded size and sha256, playable MP4s.

``batchgen verify`` reads each one whole; a run looks only at presence and size when it starts (``full=False``).
What is missing or damaged is downloaded again by the runner (``Store.redownload``), never paid again.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from batchgen.errors import ProtocolError
from batchgen.outputs import hash_file, probe_video
from batchgen.store import DoneVideo, Store


def video_problem(root: Path, video: DoneVideo, *, full: bool = True) -> str | None:
    """What is wrong with a done job's video, or ``None``: missing, not a regular file (a link), of another size
    than recorded, and with ``full`` another sha256 or no playable MP4."""
    path = root / video.path
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return f"{video.path} is missing"
    if not stat.S_ISREG(info.st_mode):
        return f"{video.path} is not a regular file (a link?)"
    if video.size is not None and info.st_size != video.size:
        return f"{video.path} has {info.st_size:,} bytes, not the {video.size:,} received"
    if not full:
        return None
    try:
        sha256, _ = hash_file(path)
        if video.sha256 and sha256 != video.sha256:
            return f"{video.path} is not the video received (its sha256 differs)"
        probe_video(path)
    except ProtocolError as exc:
        return f"{video.path} does not play: {exc}"
    except OSError as exc:
        return f"{video.path} cannot be read: {exc.strerror}"
    return None


def find_bad_videos(open_store: Callable[[], Store], root: Path) -> list[tuple[DoneVideo, str]]:
    """The done videos of a run (placed in ``root``) that are missing or of another size, read through a connection
    of its own, ``open_store()`` (a run looks at them in a thread, beside its first submits)."""
    store = open_store()
    try:
        videos = store.done_videos()
    finally:
        store.close()
    return [(video, problem) for video in videos if (problem := video_problem(root, video, full=False))]
