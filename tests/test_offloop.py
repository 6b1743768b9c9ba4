"""The promises off loopback: answers read whole over a trickling link, the key only where the user sent it, no
wait without a bound, a provider that cannot be reached stopping the run once, and a demo that resumes."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import pytest
from aiohttp import web
from yarl import URL

from batchgen.client import Timeouts, redirect
from batchgen.errors import ExitCode
from batchgen.simulator import DEFAULT_KEY
from batchgen.simulator.faults import FaultPlan, parse_script
from batchgen.simulator.server import SimSettings, Simulator
from tests.conftest import MANIFESTS, batch_manifest
from tests.runs import assert_all_done, cli_env, read_state, run_cli_async, run_in_process, start_cli

SECRET = "sk-offloop-4f7d2c9a1b"
TRICKLE = {"trickle_bytes": 700, "trickle_gap_s": 0.001}


# --- redirects: a pure decision -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "method", "status", "location", "expected"),
    [
        ("https://api.x/v2/requests/r", "GET", 302, "/v2/requests/r2", ("https://api.x/v2/requests/r2", "GET")),
        ("https://api.x/a", "GET", 307, "https://cdn.y/a", ("https://cdn.y/a", "GET")),
        ("https://api.x/v2/m", "POST", 307, "/v2/m2", ("https://api.x/v2/m2", "POST")),
        ("https://api.x/v2/m", "POST", 302, "/v2/m2", ("https://api.x/v2/m2", "GET")),
        ("https://api.x/v2/m", "POST", 303, "/r", ("https://api.x/r", "GET")),
        ("http://127.0.0.1:5/a", "GET", 302, "http://127.0.0.2:6/b", ("http://127.0.0.2:6/b", "GET")),
        ("https://api.x/a", "GET", 302, "http://api.x/a", "down to plain http"),
        ("https://api.x/a", "GET", 302, "ftp://api.x/a", "not http(s)"),
        ("https://api.x/a", "GET", 302, "file:///etc/passwd", "not http(s)"),
    ],
)
def test_where_a_redirect_may_lead(url: str, method: str, status: int, location: str, expected) -> None:
    hop = redirect(URL(url), method, status, location)
    if isinstance(expected, str):
        assert isinstance(hop, str) and expected in hop
    else:
        assert (str(hop[0]), hop[1]) == expected  # type: ignore[index]


# --- a recorder on another origin -----------------------------------------------------------------------------


class Recorder:
    """A server on 127.0.0.2 that records every request's headers and answers a 401, as a host would that is not
    the provider's API (or that wants the key it was never sent)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.anything)
        self.runner = web.AppRunner(self.app)
        self.origin = ""

    async def anything(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, dict(request.headers)))
        return web.json_response({"error": "Unauthorized: no x-api-key"}, status=401)

    async def start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.2", 0).start()
        self.origin = f"http://127.0.0.2:{self.runner.addresses[0][1]}"

    def keys_seen(self) -> list[str]:
        return [path for path, headers in self.seen if any(name.lower() == "x-api-key" for name in headers)]


@pytest.fixture
async def recorder():
    server = Recorder()
    await server.start()
    yield server
    await server.runner.cleanup()


def _ledger_of(sim: Simulator, key: str = DEFAULT_KEY) -> tuple[int, dict[str, int]]:
    account = sim.account(key)
    return len(account.charges), account.paid_twice()


# --- answers read whole ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["v2", "v1"])
async def test_dropped_submits_found_in_a_history_that_arrives_in_pieces(
    make_sim, write_manifest, tmp_path: Path, transport: str
) -> None:
    """40 jobs, 15 % of submit answers dropped after the provider charged them, every answer in 512-byte pieces
    (a history page of 40 rows is ~20 kB): every lost submit is found in the history, none is paid twice."""
    settings = SimSettings(trickle_bytes=512, trickle_gap_s=0.0005, v1_mode="base64")
    sim = await make_sim(settings, FaultPlan(rates={"drop_submit": 0.15}, seed=3))
    out = tmp_path / "out"
    result = await run_in_process(
        write_manifest(batch_manifest(40, extra="concurrency: 8\n")), out, sim, transport=transport, history_lag_s=2
    )
    assert result.exit_code == ExitCode.OK
    assert sim.faults.injected["drop_submit"] >= 4
    assert _ledger_of(sim) == (40, {})
    assert_all_done(out, 40)
    store = read_state(out)
    assert not any(job.possibly_billed_twice for job in store.jobs())
    store.close()


# --- the key stays home ---------------------------------------------------------------------------------------


async def test_urls_an_answer_names_on_another_origin_are_not_used(
    make_sim, recorder, write_manifest, tmp_path: Path
) -> None:
    sim = await make_sim(SimSettings(keys=(SECRET,), foreign_origin=recorder.origin))
    out = tmp_path / "out"
    result = await run_in_process(write_manifest(batch_manifest(3)), out, sim, key=SECRET)
    assert result.exit_code == ExitCode.OK and _ledger_of(sim, SECRET) == (3, {})
    assert recorder.seen == []  # polled at the base URL the user gave, by request id
    assert_all_done(out, 3)


async def test_a_redirect_to_another_origin_never_carries_the_key(
    make_sim, recorder, write_manifest, tmp_path: Path
) -> None:
    """Status and result GETs redirected to 127.0.0.2: followed there without the key; that host's 401 is no
    verdict on the key; after a few unreadable answers the requests are followed in the history and finish."""
    sim = await make_sim(SimSettings(keys=(SECRET,), redirect_polls_to=recorder.origin))
    out = tmp_path / "out"
    result = await run_in_process(write_manifest(batch_manifest(3)), out, sim, key=SECRET)
    assert result.exit_code == ExitCode.OK and _ledger_of(sim, SECRET) == (3, {})
    assert recorder.seen and recorder.keys_seen() == []
    assert_all_done(out, 3)
    run_log = (out / "run.log").read_text()
    assert "127.0.0.2 answered HTTP 401" in run_log and "following it in the history" in run_log


async def test_a_provider_that_quotes_the_key_back_never_gets_it_stored_or_printed(
    make_sim, write_manifest, tmp_path: Path
) -> None:
    faults = FaultPlan(script=parse_script("submit:1=500,status:1=502,submit:3=400"))
    sim = await make_sim(SimSettings(keys=(SECRET,), quote_key=True), faults)
    path, out = write_manifest(batch_manifest(3, extra="concurrency: 1\n")), tmp_path / "out"
    env = cli_env(sim, key=SECRET)
    args = ("--rpm", "1000", "--backoff-base-s", "0", "--poll-interval-s", "0.02")
    printed = []
    for command in (("--debug", "run", str(path), "--out", str(out), *args), ("status", "--out", str(out))):
        done = await run_cli_async(*command, env=env)
        printed += [done.stdout, done.stderr]
    assert done.code == 0
    assert not any(SECRET in text for text in printed)
    files = [file for file in out.rglob("*") if file.is_file()]
    assert not any(SECRET.encode() in file.read_bytes() for file in files)
    assert "(key [the API key])" in (out / "run.log").read_text()  # the provider did quote it


# --- nothing waits forever ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gap_s", "said"),
    [
        (1.0, "the download was abandoned after 0 bytes"),  # a byte a second: nothing in a whole window
        # 20 bytes a second: every read gets something (a read timeout would wait for ever); the floor says no
        (0.05, "under the floor of 4,096 bytes a second"),
    ],
)
async def test_a_download_trickling_under_the_floor_is_abandoned_and_fetched_again(
    make_sim, write_manifest, tmp_path: Path, gap_s: float, said: str
) -> None:
    sim = await make_sim(SimSettings(stall_gap_s=gap_s), FaultPlan(script=parse_script("download:1=stall")))
    out = tmp_path / "out"
    timeouts = Timeouts(download_floor_bps=4096, download_window_s=0.3)
    started = time.monotonic()
    result = await run_in_process(write_manifest(batch_manifest(3)), out, sim, timeouts=timeouts)
    assert time.monotonic() - started < 10
    assert result.exit_code == ExitCode.OK and _ledger_of(sim) == (3, {})
    assert_all_done(out, 3)
    assert said in (out / "run.log").read_text()


async def test_a_status_endpoint_down_for_a_while_is_waited_out_not_given_up(
    make_sim, write_manifest, tmp_path: Path
) -> None:
    """24 polls answered 502 (an outage of the status endpoint), no history: every paid clip still comes home."""
    script = ",".join(f"status:{n}=502" for n in range(1, 25))
    sim = await make_sim(faults=FaultPlan(script=parse_script(script)))
    out = tmp_path / "out"
    result = await run_in_process(write_manifest(batch_manifest(4)), out, sim, history=False)
    assert result.exit_code == ExitCode.OK and _ledger_of(sim) == (4, {})
    assert_all_done(out, 4)


async def test_unreadable_status_answers_are_followed_in_the_history(make_sim, write_manifest, tmp_path) -> None:
    sim = await make_sim(faults=FaultPlan(rates={"junk_status": 1.0}))
    out = tmp_path / "out"
    result = await run_in_process(write_manifest(batch_manifest(2)), out, sim)
    assert result.exit_code == ExitCode.OK and _ledger_of(sim) == (2, {})
    assert_all_done(out, 2)
    assert (out / "run.log").read_text().count("could not be read 6 times in a row") == 2


async def test_unreadable_status_answers_without_a_history_end_the_job_lost_with_the_answer(
    make_sim, write_manifest, tmp_path: Path
) -> None:
    sim = await make_sim(faults=FaultPlan(rates={"junk_status": 1.0}))
    out = tmp_path / "out"
    result = await run_in_process(write_manifest(batch_manifest(2)), out, sim, history=False)
    assert result.exit_code == ExitCode.JOBS_FAILED
    store = read_state(out)
    jobs = store.jobs()
    store.close()
    assert {job.state for job in jobs} == {"lost"}
    for job in jobs:
        assert job.request_id and "could not be read 6 times in a row" in (job.reason or "")
        assert "upstream proxy error" in (job.reason or "")  # the answer, quoted
    assert len(sim.account().charges) == 2  # paid once each; only `retry --lost` would pay again


async def test_an_unresolvable_host_stops_the_run_in_seconds_once(write_manifest, tmp_path: Path) -> None:
    path, out = write_manifest(batch_manifest(6)), tmp_path / "out"
    started = time.monotonic()
    done = await run_cli_async(
        "run",
        str(path),
        "--out",
        str(out),
        "--base-url",
        "https://example.invalid",
        "--history-url",
        "off",
        env={**cli_env(None), "SEGMIND_API_KEY": SECRET},
    )
    assert done.code == ExitCode.PROVIDER, done.stderr
    assert time.monotonic() - started < 10
    assert done.stderr.count("cannot reach the provider at example.invalid") == 1, done.stderr
    assert "failed" not in done.stderr
    store = read_state(out)
    assert {(job.state, job.attempts_used) for job in store.jobs()} == {("pending", 0)}
    store.close()


async def test_refused_connections_mid_run_stop_it_after_the_bound(make_sim, write_manifest, tmp_path) -> None:
    """Connections refused: no attempt is used up (nothing was sent), submits pause, and the run stops once the
    host has not answered for ``unreachable_s``: a resumable stop, exit 4, nothing reserved."""
    sim = await make_sim()
    out = tmp_path / "out"
    result = await run_in_process(
        write_manifest(batch_manifest(4)),
        out,
        sim,
        base_url="http://127.0.0.1:9",
        check_credits=False,
        unreachable_s=0.5,
        unreachable_pause_s=0.05,
    )
    assert result.exit_code == ExitCode.PROVIDER
    assert "cannot reach the provider at 127.0.0.1" in (result.stop_message or "")
    store = read_state(out)
    assert {(job.state, job.attempts_used) for job in store.jobs()} == {("pending", 0)}
    assert store.money().reserved_micros == 0 and store.money().spent_micros == 0
    store.close()


async def test_without_a_terminal_a_line_comes_even_when_nothing_changes(make_sim, write_manifest, tmp_path) -> None:
    sim = await make_sim(SimSettings(latency_s=1.5))
    path, out = write_manifest(batch_manifest(1)), tmp_path / "out"
    done = await run_cli_async(
        "run", str(path), "--out", str(out), "--poll-interval-s", "1", "--progress-every-s", "0.3", env=cli_env(sim)
    )
    assert done.code == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "finished" in line]
    assert len(lines) >= 3 and all("0/1 finished, 0 failed, 1 at the provider" in line for line in lines[1:3]), lines


# --- the demo resumes -----------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("transport", ["v2", "v1"])
async def test_simulate_interrupted_then_run_again_finishes_paying_each_clip_once(
    tmp_path: Path, transport: str
) -> None:
    out = tmp_path / "out"
    args = ("run", str(MANIFESTS / "demo.yaml"), "--simulate", "--out", str(out), "--transport", transport)
    env = cli_env(None)
    process = await start_cli(*args, "--sim-latency-s", "1", env=env)
    async with asyncio.timeout(30):
        while "→ submit" not in ((out / "run.log").read_text() if (out / "run.log").exists() else ""):
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    process.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == ExitCode.INTERRUPTED, err.decode()
    again = await run_cli_async(*args, "--sim-latency-s", "0.2", env=env, timeout=60)
    assert again.code == 0, again.stderr
    assert_all_done(out, 6)
    sim = Simulator(journal=out / "simulator.jsonl")  # the run's own simulator, its books read back
    store = read_state(out)
    paid = {job.request_id for job in store.jobs()}
    store.close()
    charges = sim.account().charges
    assert len(charges) == 6 and {charge.request_id for charge in charges} == paid
    reconcile = await run_cli_async("reconcile", "--out", str(out), "--simulate", env=env)
    assert reconcile.code == 0 and "the books agree" in reconcile.stdout, reconcile.stdout + reconcile.stderr


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]
