"""The real CLI in a subprocess: validate, plan, exit codes, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

from batchgen import __version__
from tests.conftest import MANIFESTS, ROOT, run_cli


def test_validate_all_examples_exits_0() -> None:
    paths = sorted(str(p) for p in MANIFESTS.glob("*.yaml"))
    result = run_cli("validate", *paths)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok: ") == len(paths)


def test_validate_points_at_the_bad_duration(write_manifest) -> None:
    path = write_manifest("version: 1\nname: x\nshots:\n  - id: a\n    prompt: x\n    duration: 20\n")
    result = run_cli("validate", str(path))
    assert result.returncode == 2
    assert f'{path}:6:15: shots[0].duration: "20" is not one of "3".."15"' in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_reports_every_file(write_manifest) -> None:
    good = MANIFESTS / "temple.yaml"
    bad = write_manifest("version: 1\nname: x\nshots: []\n")
    result = run_cli("validate", str(good), str(bad))
    assert result.returncode == 2
    assert "temple.yaml: ok: 1 shot, 1 job" in result.stdout
    assert f"{bad}:3:8: shots: needs at least 1 item" in result.stderr


def test_missing_file_is_a_clear_error(tmp_path) -> None:
    result = run_cli("plan", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "nope.yaml:1:1: cannot read the file: No such file or directory" in result.stderr


def test_plan_json_has_jobs_and_total() -> None:
    result = run_cli("plan", str(MANIFESTS / "demo.yaml"), "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert len(plan["jobs"]) == 6
    assert plan["total"]["jobs"] == 6
    assert plan["total"]["seconds"] == 18
    assert plan["total"]["estimate_usd"] == 5 * 0.504 + 0.756
    assert plan["total"]["budget_usd"] == 10.0
    assert plan["total"]["jobs_within_budget"] == 6


def test_plan_table_counts_jobs_that_fit_a_smaller_budget() -> None:
    result = run_cli("plan", str(MANIFESTS / "matrix.yaml"), "--budget", "5")
    assert result.returncode == 0, result.stderr
    assert "16 jobs, 80 s of video, estimated $13.440" in result.stdout
    assert "budget $5.000: 5 of 16 jobs fit" in result.stdout
    assert result.stdout.count("over budget") == 11


def test_version_and_help() -> None:
    assert run_cli("--version").stdout.strip() == f"batchgen {__version__}"
    help_text = run_cli("--help").stdout
    assert "130  interrupted" in help_text and "validate" in help_text and "plan" in help_text


HEAVY = ["aiohttp", "av", "tqdm", "asyncio"]


def _heavy_modules_after(*commands: list[str]) -> str:
    """Which of ``HEAVY`` a fresh interpreter has imported after running ``commands`` through ``cli.main``."""
    script = (
        "import contextlib, io, json, sys\n"
        "from batchgen.cli import main\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main(argv)\n"
        "print(sorted(name for name in sys.argv[2:] if name in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(commands), *HEAVY], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_validate_plan_and_help_load_no_http_video_or_progress_library() -> None:
    """They start in a third of the time: aiohttp, PyAV, tqdm and asyncio are for the commands that run jobs."""
    temple = str(MANIFESTS / "temple.yaml")
    assert _heavy_modules_after(["validate", temple], ["plan", "--json", temple], ["--help"]) == "[]"
    assert _heavy_modules_after(["status", "--out", "nowhere"]) != "[]"  # the check sees them when they are loaded
