"""The CLI as a newcomer meets it: one voice on stderr, each thing said once, help with examples and only the exit
codes a command can return."""

from __future__ import annotations

import asyncio
import re
import signal
from collections import Counter
from pathlib import Path

import pytest

from batchgen.simulator.server import SimSettings
from tests.conftest import MANIFESTS, batch_manifest, run_cli
from tests.runs import cli_env, run_cli_async, start_cli

# What each command can return (0 ok, 1 jobs failed / bad videos / books differ, 2 usage, 3 budget, 4 provider,
# 130 interrupted), written here from what the commands do, not read from the code's own table.
RETURNS = {
    "validate": {0, 2},
    "plan": {0, 2},
    "run": {0, 1, 2, 3, 4, 130},
    "status": {0, 2},
    "report": {0, 2},
    "reconcile": {0, 1, 2, 4},
    "retry": {0, 2},
    "verify": {0, 1, 2},
    "simulate": {0, 2},
    "import": {0, 2},
    "account": {0, 2},
}
CLASS_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception)\b")


@pytest.mark.parametrize("command", sorted(RETURNS))
def test_every_commands_help_has_examples_defaults_and_only_its_exit_codes(command: str) -> None:
    done = run_cli(command, "--help")
    assert done.returncode == 0
    text = done.stdout
    examples = text.split("examples:\n", 1)[1].split("\n\n", 1)[0]
    assert examples.count(f"batchgen {command}") >= 1, text
    listed = {int(code) for code in re.findall(r"^  (\d+) ", text.split("exit codes:\n", 1)[1], re.M)}
    assert listed and listed <= RETURNS[command], (command, listed)


def test_the_top_level_help_has_the_whole_table_once() -> None:
    text = run_cli("--help").stdout
    assert text.count("exit codes:") == 1 and all(f"  {code} " in text for code in (0, 1, 2, 3, 4, 130))


def _lines(*texts: str) -> list[str]:
    return [line for text in texts for line in text.splitlines() if line.strip()]


def _check_voice(stderr: str) -> None:
    lines = _lines(stderr)
    assert not CLASS_NAME.search(stderr), stderr
    assert not [line for line, n in Counter(lines).items() if n > 1], stderr
    assert "Traceback" not in stderr


async def test_a_dozen_ways_to_fail_each_said_once_in_one_voice(make_sim, write_manifest, tmp_path: Path) -> None:
    manifest = write_manifest(batch_manifest(3))
    out = str(tmp_path / "out")
    sim = await make_sim(SimSettings(latency_s=0.05))
    env = cli_env(sim)
    fast = ("--rpm", "1000", "--poll-interval-s", "0.02", "--backoff-base-s", "0")
    cases: list[tuple[tuple[str, ...], dict[str, str], int]] = [
        (("run", str(manifest), "--bogus"), env, 2),
        (("validate", str(tmp_path / "missing.yaml")), env, 2),
        (("run", str(MANIFESTS / "demo.yaml"), "--out", out + "-nokey"), cli_env(None), 2),
        (("run", str(manifest), "--out", out + "-http", "--base-url", "http://203.0.113.7"), {**env}, 2),
        (("run", str(manifest), "--out", out + "-dns", "--base-url", "https://example.invalid"), env, 4),
        (("run", str(manifest), "--out", out + "-auth", *fast), {**env, "SEGMIND_API_KEY": "wrong-key"}, 4),
        (("status", "--out", str(tmp_path / "nothing-here")), env, 2),
    ]
    for args, environment, code in cases:
        done = await run_cli_async(*args, env=environment)
        assert done.code == code, (args, done.stderr)
        _check_voice(done.stderr)
        assert done.stderr.startswith(("batchgen: error:", "usage: batchgen", str(tmp_path))), done.stderr
    bogus = await run_cli_async("run", str(manifest), "--bogus", env=env)
    assert bogus.stderr.startswith("usage: batchgen run ")  # the command's usage, not the top level's

    poor = await make_sim(SimSettings(latency_s=0.05, credits_usd=0.6))  # one clip, then 406
    done = await run_cli_async("run", str(manifest), "--out", out + "-credits", *fast, env=cli_env(poor))
    assert done.code == 4 and "Insufficient credits" in done.stderr
    _check_voice(done.stderr)

    forgetful = await make_sim(SimSettings(latency_s=0.2, ttl_s=0.01))  # every request forgotten: lost
    lost_env = {**cli_env(forgetful), "SEGMIND_HISTORY_URL": "off"}
    done = await run_cli_async("run", str(manifest), "--out", out + "-lost", *fast, env=lost_env)
    assert done.code == 1, done.stderr
    _check_voice(done.stderr)
    failures = [line for line in _lines(done.stderr) if "error:" in line]
    assert failures and all(re.search(r"error: clip-\d-[0-9a-f]{8}: ", line) for line in failures), failures
    assert "--lost` pays again for the lost ones" in done.stderr

    busy = await make_sim(SimSettings(latency_s=5))
    process = await start_cli("run", str(manifest), "--out", out + "-int", *fast, env=cli_env(busy))
    async with asyncio.timeout(30):
        while "→ submitted" not in (
            (tmp_path / "out-int" / "run.log").read_text() if (tmp_path / "out-int" / "run.log").exists() else ""
        ):
            await asyncio.sleep(0.02)
    locked = await run_cli_async("run", str(manifest), "--out", out + "-int", env=cli_env(busy))
    assert locked.code == 2 and locked.stderr.startswith("batchgen: error: another batchgen run")
    process.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 130
    _check_voice(err.decode())
    assert err.decode().count("interrupted") == 1 and err.decode().count("run the same command again") == 1


def test_a_schema_error_and_a_cross_field_error_are_reported_in_one_run(write_manifest) -> None:
    path = write_manifest(
        "version: 1\nname: both\nshots:\n  - id: a\n    prompt: 'x {undefined}'\n    aspect_ratio: '4:3'\n"
        "  - id: b\n    duration: 10\n    multi_prompt:\n      - {prompt: one, duration: 4}\n"
        "      - {prompt: two, duration: 4}\n"
    )
    done = run_cli("validate", str(path))
    assert done.returncode == 2
    assert "aspect_ratio" in done.stderr and "{undefined}" in done.stderr and "add up" in done.stderr, done.stderr


async def test_a_run_stopped_by_a_write_failure_says_it_once(write_manifest, tmp_path: Path) -> None:
    import asyncio
    import contextlib
    import shutil

    from batchgen.errors import StateError
    from tests.runs import cli_env, read_state, start_cli

    out = tmp_path / "out"
    process = await start_cli(
        "run",
        str(write_manifest(batch_manifest(2, extra="rpm: 1000\n"))),
        "--out",
        str(out),
        "--simulate",
        "--sim-latency-s",
        "2",
        "--no-progress",
        env=cli_env(None),
    )
    try:
        for _ in range(400):
            await asyncio.sleep(0.025)
            with contextlib.suppress(StateError):  # not created yet, or created and not yet written
                store = read_state(out)
                try:
                    if store.counts()["submitted"] == 2:
                        break
                finally:
                    store.close()
        shutil.rmtree(out / "videos")  # where the clips are to be written, gone before they arrive
        _, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()
    text = err.decode()
    assert process.returncode == 2 and text.count("cannot write") == 1, text
