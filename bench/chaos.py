"""The chaos suite, longer than CI's: `python bench/chaos.py [JOBS] [KILLS]` (defaults 200 jobs, 25 kills)."""

from __future__ import annotations

import asyncio
import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.chaos import chaos_run


async def main(jobs: int, kills: int) -> None:
    for transport in ("v2", "v1"):
        with tempfile.TemporaryDirectory() as tmp:
            report = await chaos_run(Path(tmp), transport=transport, jobs=jobs, stops=kills, sig=signal.SIGKILL, seed=3)
            print(report.line())


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200, int(sys.argv[2]) if len(sys.argv) > 2 else 25))
