"""The one exception tree of batchgen, and the exit codes the CLI maps it to.

::

    BatchgenError                 exit_code
    ├── UsageError                    2   bad flags, missing key, nothing to do
    ├── ManifestError                 2   every problem of a manifest, each with FILE:LINE:COL
    ├── StateError                    2   the run directory or its state file cannot be used (or another process
    │   │                                 took the run over)
    │   └── RunLockedError            2   another run holds the directory
    ├── OutputError                   2   a file could not be written (disk full, permissions, a symbolic link)
    └── ProviderError                 4   an answer of the provider (or of the network) that ends an attempt
        ├── client.AnswerError        4   the seam's own: every error of aiohttp, every non-2xx answer and every
        │                                 answer it cannot read, mapped to a ``Decision`` (``decisions.py``)
        └── ProtocolError             4   a download that is no video of the kind asked for (``outputs.py``)

Only the CLI catches ``BatchgenError``, prints ``batchgen: error: message`` and exits with ``exit_code``. No
message of this tree ever contains the API key: the client strips it from everything the provider says before any
of it is quoted.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass


class ExitCode(enum.IntEnum):
    """The documented exit codes of every batchgen command."""

    OK = 0
    JOBS_FAILED = 1
    USAGE = 2
    BUDGET = 3
    PROVIDER = 4
    INTERRUPTED = 130


class BatchgenError(Exception):
    """The base of every error batchgen raises on purpose."""

    exit_code: ExitCode = ExitCode.USAGE
    said: bool = False  # already told to the user (as a run's stop, when it happened): the CLI says it once


class UsageError(BatchgenError):
    """The command line or the environment asks for something that cannot be done."""


@dataclass(frozen=True)
class Problem:
    """One problem in a manifest, at a 1-based line and column of its file."""

    file: str
    line: int
    col: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}:{self.col}: {where}{self.message}"


class ManifestError(BatchgenError):
    """A manifest has one or more problems; all of them are carried, in file order."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = sorted(set(problems), key=lambda p: (p.file, p.line, p.col, p.path, p.message))
        super().__init__("\n".join(str(p) for p in self.problems))


class StateError(BatchgenError):
    """The run directory or its state file cannot be used as it is."""


class RunLockedError(StateError):
    """Another batchgen process holds the run directory."""


class JobGone(StateError):
    """A job is no longer in the state an action on it needs (another worker or command changed it)."""


class OutputError(BatchgenError):
    """A file of the run directory could not be written."""


class ProviderError(BatchgenError):
    """An attempt ended on an answer (or a silence) of the provider."""

    exit_code = ExitCode.PROVIDER


class ProtocolError(ProviderError):
    """An answer arrived that does not follow the provider's protocol."""
