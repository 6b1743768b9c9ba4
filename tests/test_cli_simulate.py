"""`batchgen simulate` as a person uses it: start, call it by hand, Ctrl-C, read the ledger summary."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import aiohttp

from tests.conftest import ROOT


async def test_simulate_serves_until_ctrl_c_and_prints_the_ledger() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "batchgen", "simulate", "--latency-s", "0", "--key", "k-test", "--credits", "5"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        match = re.search(r"serving (http://127\.0\.0\.1:\d+)", first)
        assert match, first
        assert process.stdout.readline().strip() == f"export SEGMIND_BASE_URL={match.group(1)}"
        assert process.stdout.readline().strip() == "export SEGMIND_API_KEY=k-test"
        async with aiohttp.ClientSession(headers={"x-api-key": "k-test"}) as http:
            url = f"{match.group(1)}/v2/kling-3-standard-text2video"
            async with http.post(url, data='{"prompt":"x"}') as r:
                assert r.status == 200 and (await r.json())["status"] == "QUEUED"
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert "k-test: 1 generation requests, 1 charged, spent $1.260, balance $3.740" in out
