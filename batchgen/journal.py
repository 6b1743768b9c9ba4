"""``run.log`` as the run's journal: append-only, written outside the state's WAL, so that a state that lost rows
(a damaged ``state.db-wal``, a copy restored from a backup) is caught, not trusted.

Every request the provider accepted for a job is named in it (``→ submitted: request …``, ``→ found request …``,
``→ billed: request …``) after the state stored it, and its first line dates the run directory's first start.
Pure parsing; the runner adopts what the state does not know, ``reconcile`` widens its window to the first line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

LINE = re.compile(r"^(\S+) (\S+) (?:→ submitted: request|→ found request|→ billed: request) ([A-Za-z0-9][\w.:-]*)")


@dataclass(frozen=True)
class Journal:
    """What ``run.log`` says from a byte offset on: the last request named per job, and where it ends."""

    requests: dict[str, str]  # job id → the last request id named for it
    end: int  # the offset of the log's end (the next read starts there)


def read_requests(path: Path, offset: int = 0) -> Journal:
    """The requests ``run.log`` names from ``offset`` (from the start when the log is shorter: it was replaced)."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(offset if 0 <= offset <= size else 0)
            data = handle.read()
    except FileNotFoundError:
        return Journal({}, 0)
    requests: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        match = LINE.match(line)
        if match:
            requests[match.group(2)] = match.group(3)
    return Journal(requests, size)


def first_time(path: Path) -> float | None:
    """When ``run.log`` was first written (its first line's time), ``None`` without one."""
    try:
        with path.open("rb") as handle:
            first = handle.readline().decode("utf-8", "replace")
    except FileNotFoundError:
        return None
    try:
        stamp = datetime.strptime(first.split(" ", 1)[0], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    return stamp.timestamp()
