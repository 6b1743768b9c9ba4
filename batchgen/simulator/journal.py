"""The simulator's journal: one JSON line per change of its books, so that a restarted simulator is the same provider.

Each line is a JSON object with a ``type``:

- ``generation``: an accepted generation, every field of it, and the request counter that named it;
- ``seen``: one generation request as it arrived (the fields of a ``ledger.Seen``, and its ``key``);
- ``top_up``: credits added to a ``key``, in ``micros``;
- ``upload``: a file put in the storage by a ``key`` (the fields of a ``ledger.Upload``, its ``mime`` and its
  ``data`` in base64).

Charges are not written: they follow from the generations and the clock, as they do while the simulator runs.
Each line is written with a plain ``write`` and ``flush`` (no fsync: a killed simulator loses nothing the kernel has,
which is all a stand-in needs). A torn last line (the process died in the middle of a write) is cut off at replay.
The file is created 0600: it names API keys.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

from batchgen.errors import UsageError

Record = dict[str, Any]


class Journal:
    """An append-only file of JSON lines: read back whole at start, then appended to one line per change."""

    def __init__(self, path: Path) -> None:
        if path.is_symlink():
            raise UsageError(f"{path} is a symbolic link: the simulator's journal is not written through links")
        self.path = path
        self._out: IO[str] | None = None

    def replay(self) -> list[Record]:
        """Every record of the file, in order (none when there is no file yet); a torn last line is cut off."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]  # what follows the last newline was never finished
        if len(whole) < len(data):
            with self.path.open("r+b") as file:
                file.truncate(len(whole))
        return [self._parse(number, line) for number, line in enumerate(whole.splitlines(), 1) if line.strip()]

    def _parse(self, number: int, line: bytes) -> Record:
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or "type" not in record:
            raise UsageError(f"{self.path}:{number}: not a line of a simulator journal")
        return record

    def append(self, record: Record) -> None:
        """Write one record as a line and flush it, so that a kill right after loses nothing."""
        if self._out is None:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            self._out = os.fdopen(fd, "a", encoding="utf-8")
        self._out.write(json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n")
        self._out.flush()

    def close(self) -> None:
        """Close the file (a later append opens it again)."""
        if self._out is not None:
            self._out.close()
            self._out = None
