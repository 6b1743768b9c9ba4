"""Shared fixtures: paths of the project, and running the real CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"


@pytest.fixture
def write_manifest(tmp_path: Path):
    """Write YAML text to a manifest file in tmp_path and return its path."""

    def write(text: str, name: str = "manifest.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 60):
    """Run ``python -m batchgen ARGS`` in a subprocess and return the completed process."""
    return subprocess.run(
        [sys.executable, "-m", "batchgen", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env=env,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
async def make_sim():
    """Start simulators on loopback (closed after the test): ``await make_sim(SimSettings(...), FaultPlan(...))``."""
    from batchgen.simulator.server import Simulator

    started = []

    async def make(settings=None, faults=None, clock=None):
        sim = Simulator(settings, faults, clock=clock) if clock else Simulator(settings, faults)
        await sim.start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        await sim.close()


def batch_manifest(count: int, *, name: str = "batch", duration: int = 3, audio: bool = False, extra: str = "") -> str:
    """A manifest of ``count`` jobs: one shot with a matrix of ``count`` numbered variants."""
    values = ", ".join(str(i) for i in range(count))
    return (
        f"version: 1\nname: {name}\n{extra}defaults:\n  duration: {duration}\n  generate_audio: {str(audio).lower()}\n"
        f"shots:\n  - id: clip\n    prompt: 'Clip number {{n}} of a test batch'\n    matrix:\n      n: [{values}]\n"
    )
