"""The simulator against segmind-api.md: every route, error, header, the ledger, each fault, TTL, determinism;
the hostile network and provider it can play (trickle, foreign and redirected URLs, a quoted key, stalls, junk pages,
history shapes), and its journal across restarts."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import aiohttp
import av
import pytest

from batchgen.errors import UsageError
from batchgen.simulator import DEFAULT_KEY
from batchgen.simulator.clips import make_clip
from batchgen.simulator.faults import KINDS, Fault, FaultPlan, parse_script
from batchgen.simulator.server import SimSettings, Simulator
from tests.conftest import ROOT, run_cli

MODEL = "kling-3-standard-text2video"
KEY = {"x-api-key": DEFAULT_KEY}
BODY = {"prompt": "A fox in the snow", "duration": "3", "generate_audio": False}


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def probe(data: bytes) -> tuple[float, int, int, bool]:
    with av.open(io.BytesIO(data)) as container:
        video = container.streams.video[0]
        assert video.duration is not None
        seconds = float(video.duration * video.time_base)
        return seconds, video.codec_context.width, video.codec_context.height, bool(container.streams.audio)


async def test_v2_submit_poll_fetch_download(make_sim, http) -> None:
    sim = await make_sim()
    async with http.post(f"{sim.base_url}/v2/{MODEL}", json={**BODY, "aspect_ratio": "9:16"}, headers=KEY) as r:
        assert r.status == 200
        submitted = await r.json()
    rid = submitted["request_id"]
    assert submitted["status"] == "QUEUED"
    assert submitted["status_url"] == f"{sim.base_url}/v2/requests/{rid}/status"
    assert submitted["response_url"] == f"{sim.base_url}/v2/requests/{rid}"
    assert submitted["poll_url"] == f"{sim.base_url}/v1/requests/{rid}"
    async with http.get(submitted["status_url"], headers=KEY) as r:
        assert (r.status, (await r.json())["status"]) == (200, "COMPLETED")
    async with http.get(submitted["response_url"], headers=KEY) as r:
        result = await r.json()
    assert result["metrics"]["cost"] == 0.504
    assert result["metrics"]["remaining_credits"] == pytest.approx(100 - 0.504)
    async with http.get(result["output"]) as r:
        assert r.headers["Content-Type"] == "video/mp4"
        data = await r.read()
        assert int(r.headers["Content-Length"]) == len(data)
    assert probe(data) == (3.0, 180, 320, False)
    account = sim.account()
    assert [c.request_id for c in account.charges] == [rid]
    assert account.spent_micros == 504_000 and account.balance_micros == 100_000_000 - 504_000


async def test_v1_answers_the_video_with_its_headers(make_sim, http) -> None:
    sim = await make_sim(SimSettings(rpm=7))
    body = {"prompt": "Rain on a window", "duration": 5, "generate_audio": True}
    async with http.post(f"{sim.base_url}/v1/{MODEL}", json={**body, "duration": "5"}, headers=KEY) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "video/mp4"
        assert float(r.headers["x-cost"]) == 1.26
        assert float(r.headers["x-remaining-credits"]) == pytest.approx(98.74)
        assert r.headers["x-rate-limit-remaining"] == "6"
        datetime.fromisoformat(r.headers["x-rate-limit-reset-at-utc"])
        assert r.headers["x-request-id"] and "x-generation-time" in r.headers
        data = await r.read()
    assert probe(data) == (5.0, 320, 180, True)


@pytest.mark.parametrize("mode", ["url", "base64"])
async def test_v1_json_modes(make_sim, http, mode: str) -> None:
    sim = await make_sim(SimSettings(v1_mode=mode))
    async with http.post(f"{sim.base_url}/v1/{MODEL}", json=BODY, headers=KEY) as r:
        assert r.content_type == "application/json"
        output = (await r.json())["output"]
    if mode == "url":
        async with http.get(output) as r:
            data = await r.read()
    else:
        data = base64.b64decode(output)
    assert probe(data)[:3] == (3.0, 320, 180)


@pytest.mark.parametrize(
    ("path", "headers", "body", "status", "message"),
    [
        (f"/v2/{MODEL}", {}, BODY, 401, "Missing API key: send the x-api-key header"),
        (f"/v2/{MODEL}", {"Authorization": "Bearer sim-key"}, BODY, 401, "Bearer tokens are not accepted"),
        (f"/v2/{MODEL}", {"x-api-key": "nope"}, BODY, 401, "Invalid API key"),
        (f"/v2/{MODEL}", {"x-api-key": "blocked"}, BODY, 403, "Forbidden"),
        ("/v2/no-such-model", KEY, BODY, 404, "Model no-such-model not found"),
        ("/v1/old-model", KEY, BODY, 410, "retired"),
        (f"/v2/{MODEL}", KEY, {"prompt": "x", "duration": "20"}, 400, "Invalid value for 'duration'"),
        (f"/v1/{MODEL}", KEY, {"duration": "5"}, 400, "'prompt' is a required property"),
        (f"/v2/{MODEL}", KEY, {"prompt": "x", "cfg_scale": 3}, 400, "Invalid value for 'cfg_scale'"),
    ],
)
async def test_errors_of_the_table(make_sim, http, path, headers, body, status, message) -> None:
    settings = SimSettings(keys=(DEFAULT_KEY, "blocked"), forbidden_keys=("blocked",), retired_models=("old-model",))
    sim = await make_sim(settings)
    async with http.post(f"{sim.base_url}{path}", json=body, headers=headers) as r:
        assert r.status == status
        assert message in (await r.json())["error"]
    assert sim.account().charges == []


async def test_body_that_is_not_json_is_a_400(make_sim, http) -> None:
    sim = await make_sim()
    async with http.post(f"{sim.base_url}/v2/{MODEL}", data=b"\xff{", headers=KEY) as r:
        assert r.status == 400


async def test_406_names_the_balance_and_the_amount(make_sim, http) -> None:
    sim = await make_sim(SimSettings(credits_usd=1.0))
    async with http.post(f"{sim.base_url}/v2/{MODEL}", json=BODY, headers=KEY) as r:
        assert r.status == 200
    async with http.post(f"{sim.base_url}/v2/{MODEL}", json=BODY, headers=KEY) as r:
        assert r.status == 406
        assert (await r.json())["error"] == "Insufficient credits: your balance is $0.4960, this request needs $0.5040"
    sim.add_credits(1.0)
    async with http.post(f"{sim.base_url}/v2/{MODEL}", json=BODY, headers=KEY) as r:
        assert r.status == 200
    async with http.get(f"{sim.base_url}/v1/get-user-credits", headers=KEY) as r:
        assert await r.json() == {"credits": pytest.approx(2.0 - 2 * 0.504), "free-credits": 0.0}


async def test_rate_limit_429_until_the_reset_time(make_sim, http) -> None:
    clock = FakeClock()
    sim = await make_sim(SimSettings(rpm=2), clock=clock)
    for _ in range(2):
        async with http.post(f"{sim.base_url}/v2/{MODEL}", json=BODY, headers=KEY) as r:
            assert r.status == 200
    clock.now += 10
    async with http.post(f"{sim.base_url}/v2/{MODEL}", json=BODY, headers=KEY) as r:
        assert r.status == 429
        assert "Retry-After" not in r.headers
        reset = datetime.fromisoformat(r.headers["x-rate-limit-reset-at-utc"]).timestamp()
        assert reset == pytest.approx(clock.now - 10 + 60)
    clock.now = reset
    async with http.post(f"{sim.base_url}/v2/{MODEL}", json=BODY, headers=KEY) as r:
        assert r.status == 200
    assert len(sim.account().charges) == 3


async def test_retry_after_switch(make_sim, http) -> None:
    clock = FakeClock()
    sim = await make_sim(SimSettings(rpm=1, retry_after=True), clock=clock)
    await (await http.post(f"{sim.base_url}/v2/{MODEL}", json=BODY, headers=KEY)).release()
    clock.now += 15
    async with http.post(f"{sim.base_url}/v2/{MODEL}", json=BODY, headers=KEY) as r:
        assert (r.status, r.headers["Retry-After"]) == (429, "45")


async def test_v2_progress_and_expiry_follow_the_clock(make_sim, http) -> None:
    clock = FakeClock()
    sim = await make_sim(SimSettings(latency_s=100, ttl_s=3600), clock=clock)
    async with http.post(f"{sim.base_url}/v2/{MODEL}", json=BODY, headers=KEY) as r:
        status_url = (await r.json())["status_url"]

    async def status() -> tuple[int, str | None]:
        async with http.get(status_url, headers=KEY) as r:
            return r.status, (await r.json()).get("status")

    assert await status() == (200, "QUEUED")
    assert sim.account().in_progress == 1
    clock.now += 50
    assert await status() == (200, "PROCESSING")
    assert sim.account().charges == []
    clock.now += 50
    assert await status() == (200, "COMPLETED")
    assert sim.account().in_progress == 0 and len(sim.account().charges) == 1
    clock.now += 3600
    async with http.get(status_url, headers=KEY) as r:
        assert (r.status, await r.json()) == (404, {"error": "Request not found or expired"})


async def test_another_keys_request_is_not_found(make_sim, http) -> None:
    sim = await make_sim(SimSettings(keys=(DEFAULT_KEY, "other")))
    async with http.post(f"{sim.base_url}/v2/{MODEL}", json=BODY, headers=KEY) as r:
        status_url = (await r.json())["status_url"]
    async with http.get(status_url, headers={"x-api-key": "other"}) as r:
        assert r.status == 404


async def test_peak_in_progress_is_counted(make_sim, http) -> None:
    clock = FakeClock()
    sim = await make_sim(SimSettings(latency_s=10), clock=clock)
    for _ in range(3):
        await (await http.post(f"{sim.base_url}/v2/{MODEL}", json=BODY, headers=KEY)).release()
    clock.now += 11
    await (await http.post(f"{sim.base_url}/v2/{MODEL}", json=BODY, headers=KEY)).release()
    account = sim.account()
    assert (account.peak_in_progress, account.in_progress, len(account.charges)) == (3, 1, 3)


async def test_failed_job_is_422_on_both_endpoints_and_not_billed(make_sim, http) -> None:
    sim = await make_sim(faults=FaultPlan(script={("submit", 1): Fault("fail")}))
    async with http.post(f"{sim.base_url}/v2/{MODEL}", json=BODY, headers=KEY) as r:
        submitted = await r.json()
    for url in (submitted["status_url"], submitted["response_url"]):
        async with http.get(url, headers=KEY) as r:
            body = await r.json()
            assert r.status == 422
            assert body["status"] == "FAILED" and body["error"] and body["request_id"] == submitted["request_id"]
    assert sim.account().charges == [] and sim.account().balance_micros == 100_000_000


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
async def test_scripted_status_faults_are_not_billed(make_sim, http, status: int) -> None:
    sim = await make_sim(faults=FaultPlan(script=parse_script(f"submit:2={status}")))
    statuses = []
    for _ in range(3):
        async with http.post(f"{sim.base_url}/v1/{MODEL}", json=BODY, headers=KEY) as r:
            statuses.append(r.status)
            if status == 429 and r.status == 429:
                assert "x-rate-limit-reset-at-utc" in r.headers
            await r.read()
    assert statuses == [200, status, 200]
    assert len(sim.account().charges) == 2


@pytest.mark.parametrize("route", ["v1", "v2"])
async def test_dropped_submit_is_charged_but_unanswered(make_sim, http, route: str) -> None:
    sim = await make_sim(faults=FaultPlan(script={("submit", 1): Fault("drop")}))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with http.post(f"{sim.base_url}/{route}/{MODEL}", json=BODY, headers=KEY) as r:
            await r.read()
    assert len(sim.account().charges) == 1


@pytest.mark.parametrize("kind", ["drop", "short"])
async def test_broken_downloads_stop_part_way(make_sim, http, kind: str) -> None:
    sim = await make_sim(SimSettings(v1_mode="url"), FaultPlan(script=parse_script(f"download:1={kind}@0.4")))
    async with http.post(f"{sim.base_url}/v1/{MODEL}", json=BODY, headers=KEY) as r:
        url = (await r.json())["output"]
    received = bytearray()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.get(url) as r:
            total = int(r.headers["Content-Length"])
            async for chunk in r.content.iter_any():
                received += chunk
    assert len(received) == int(total * 0.4)
    async with http.get(url) as r:  # the next download of the same file is whole: the clip is paid
        assert len(await r.read()) == total
    assert len(sim.account().charges) == 1


async def test_slow_first_byte(make_sim, http) -> None:
    sim = await make_sim(SimSettings(slow_first_byte_s=0.05), FaultPlan(script={("status", 1): Fault("slow")}))
    async with http.post(f"{sim.base_url}/v2/{MODEL}", json=BODY, headers=KEY) as r:
        status_url = (await r.json())["status_url"]
    loop_time = __import__("asyncio").get_running_loop().time
    started = loop_time()
    async with http.get(status_url, headers=KEY) as r:
        assert r.status == 200
    assert loop_time() - started >= 0.05


def test_same_seed_same_faults_in_the_same_order() -> None:
    def draws(seed: int) -> list[Fault | None]:
        plan = FaultPlan(total_rate=0.5, seed=seed)
        return [plan.next(route) for route in ["submit", "download", "status"] * 50]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    faults = [f for f in draws(7) if f is not None]
    assert 40 <= len(faults) <= 110
    assert {f.kind for f in faults} >= {"status", "drop", "short", "fail"}


def test_per_kind_rates_and_bad_rates() -> None:
    plan = FaultPlan(rates={"rate_502": 1.0})
    assert [plan.next("submit") for _ in range(3)] == [Fault("status", 502)] * 3
    assert plan.next("download") is None
    with pytest.raises(Exception, match="unknown fault kind"):
        FaultPlan(rates={"rate_999": 0.1})
    with pytest.raises(Exception, match="bad fault script item"):
        parse_script("submit:x=503")


async def test_ledger_over_http_names_payloads_paid_twice(make_sim, http) -> None:
    sim = await make_sim()
    for _ in range(2):
        await (await http.post(f"{sim.base_url}/v2/{MODEL}", json=BODY, headers=KEY)).release()
    async with http.get(f"{sim.base_url}/_sim/ledger") as r:
        ledger = (await r.json())[DEFAULT_KEY]
    assert ledger["spent_micros"] == 2 * 504_000
    assert list(ledger["paid_twice"].values()) == [2]
    assert [seen["status"] for seen in ledger["requests"]] == [200, 200]
    async with http.post(f"{sim.base_url}/_sim/credits", json={"key": DEFAULT_KEY, "add_usd": 5}) as r:
        assert (await r.json())["credits"] == pytest.approx(105 - 2 * 0.504)


async def test_large_videos_are_padded_valid_mp4s(make_sim, http) -> None:
    sim = await make_sim(SimSettings(video_size_bytes=3_000_000, v1_mode="url"))
    async with http.post(f"{sim.base_url}/v1/{MODEL}", json=BODY, headers=KEY) as r:
        url = (await r.json())["output"]
    async with http.get(url) as r:
        data = await r.read()
    assert len(data) == 3_000_000
    assert probe(data)[0] == 3.0


@pytest.mark.parametrize(("aspect", "size"), [("16:9", (320, 180)), ("9:16", (180, 320)), ("1:1", (240, 240))])
@pytest.mark.parametrize("audio", [False, True])
def test_clips_are_real_mp4s_of_the_request(aspect: str, size: tuple[int, int], audio: bool) -> None:
    for seconds in (3, 15):
        assert probe(make_clip(seconds, aspect, audio)) == (float(seconds), *size, audio)
    assert make_clip(3, aspect, audio, 1) != make_clip(3, aspect, audio, 2)


# --- a hostile network and provider ---------------------------------------------------------------------------


async def read_in_pieces(response: aiohttp.ClientResponse) -> tuple[bytes, int]:
    """The whole body, and how many reads it took (each read returns what had arrived)."""
    pieces = [piece async for piece in response.content.iter_any()]
    return b"".join(pieces), len(pieces)


async def test_trickle_sends_a_history_page_in_pieces(make_sim, http) -> None:
    sim = await make_sim(SimSettings(rpm=1000, trickle_bytes=700, trickle_gap_s=0.001))
    for n in range(100):
        prompt = f"Shot {n}: a slow dolly across a rainy street at night, neon in the puddles. " * 3
        await (await http.post(f"{sim.base_url}/v2/{MODEL}", json={**BODY, "prompt": prompt}, headers=KEY)).release()
    async with http.get(f"{sim.base_url}/inference-request/request-history", headers=KEY) as r:
        trickled, pieces = await read_in_pieces(r)
        assert int(r.headers["Content-Length"]) == len(trickled) and r.content_type == "application/json"
    sim.settings = replace(sim.settings, trickle_bytes=0)
    async with http.get(f"{sim.base_url}/inference-request/request-history", headers=KEY) as r:
        whole = await r.read()
    assert len(json.loads(trickled)["data"]) == 100 and json.loads(trickled) == json.loads(whole)
    assert len(trickled) > 50_000 and pieces >= len(trickled) // 700 // 4  # many pieces, however the reads group them


async def test_trickle_sends_a_v1_base64_answer_in_pieces(make_sim, http) -> None:
    clock = FakeClock()  # two simulators alike but for the trickle: the same ids, the same clip, the same answer
    plain = await make_sim(SimSettings(v1_mode="base64"), clock=clock)
    trickling = await make_sim(SimSettings(v1_mode="base64", trickle_bytes=700, trickle_gap_s=0.001), clock=clock)
    async with http.post(f"{plain.base_url}/v1/{MODEL}", json=BODY, headers=KEY) as r:
        whole = await r.read()
    async with http.post(f"{trickling.base_url}/v1/{MODEL}", json=BODY, headers=KEY) as r:
        trickled, pieces = await read_in_pieces(r)
        assert (r.status, int(r.headers["Content-Length"])) == (200, len(trickled))
        assert r.headers["x-cost"] == "0.504000"
    assert json.loads(trickled) == json.loads(whole)
    assert pieces > 1 and pieces >= len(trickled) // 700 // 4


async def test_trickle_reaches_downloads_errors_and_aiohttps_own_answers(make_sim, http) -> None:
    sim = await make_sim(SimSettings(v1_mode="url", trickle_bytes=300, trickle_gap_s=0.001))
    async with http.post(f"{sim.base_url}/v1/{MODEL}", json=BODY, headers=KEY) as r:
        url = (await r.json())["output"]
    async with http.get(url) as r:
        video, pieces = await read_in_pieces(r)
        assert int(r.headers["Content-Length"]) == len(video)
    assert pieces >= len(video) // 300 // 4 > 1 and probe(video)[0] == 3.0
    sim.settings = replace(sim.settings, trickle_bytes=5, trickle_gap_s=0.002)  # small bodies, small pieces
    async with http.post(f"{sim.base_url}/v2/{MODEL}", json=BODY, headers={"x-api-key": "nope"}) as r:
        body, pieces = await read_in_pieces(r)
    assert r.status == 401 and json.loads(body) == {"error": "Invalid API key"} and pieces > 1
    async with http.get(f"{sim.base_url}/no/such/route") as r:
        body, pieces = await read_in_pieces(r)
    assert (r.status, body, r.headers["Content-Length"]) == (404, b"404: Not Found", "14") and pieces > 1


async def test_foreign_origin_names_the_status_urls(make_sim, http) -> None:
    sim = await make_sim(SimSettings(foreign_origin="http://127.0.0.2:8123/"))
    async with http.post(f"{sim.base_url}/v2/{MODEL}", json=BODY, headers=KEY) as r:
        submitted = await r.json()
    rid = submitted["request_id"]
    assert submitted["status_url"] == f"http://127.0.0.2:8123/v2/requests/{rid}/status"
    assert submitted["response_url"] == f"http://127.0.0.2:8123/v2/requests/{rid}"
    assert submitted["poll_url"] == f"http://127.0.0.2:8123/v1/requests/{rid}"
    async with http.get(f"{sim.base_url}/v2/requests/{rid}", headers=KEY) as r:
        assert (await r.json())["output"].startswith(sim.base_url)  # the video stays where it is


async def test_redirected_polls_answer_307_before_the_key_and_the_faults(make_sim, http) -> None:
    faults = FaultPlan(script=parse_script("status:1=500,result:1=500"))
    sim = await make_sim(SimSettings(redirect_polls_to="http://127.0.0.2:8123"), faults)
    async with http.post(f"{sim.base_url}/v2/{MODEL}", json=BODY, headers=KEY) as r:
        submitted = await r.json()
    rid = submitted["request_id"]
    for url, path in [
        (submitted["status_url"], f"/v2/requests/{rid}/status"),
        (f"{submitted['response_url']}?n=1", f"/v2/requests/{rid}?n=1"),
    ]:
        async with http.get(url, allow_redirects=False) as r:  # no key: the redirect comes first
            assert (r.status, r.headers["Location"]) == (307, f"http://127.0.0.2:8123{path}")
    assert sim.faults.counts["status"] == sim.faults.counts["result"] == 0
    async with http.get(f"{sim.base_url}/inference-request/request-history/{rid}", headers=KEY) as r:
        assert r.status == 200  # only the v2 polls move


async def test_quote_key_ends_every_error_message_with_the_key_sent(make_sim, http) -> None:
    sim = await make_sim(SimSettings(quote_key=True), FaultPlan(script={("submit", 1): Fault("fail")}))
    base = sim.base_url
    async with http.post(f"{base}/v2/{MODEL}", json=BODY, headers={"x-api-key": "sk-secret"}) as r:
        assert (r.status, await r.json()) == (401, {"error": "Invalid API key (key sk-secret)"})
    async with http.post(f"{base}/v2/{MODEL}", json={"prompt": "x", "duration": "20"}, headers=KEY) as r:
        assert r.status == 400 and (await r.json())["error"].endswith(f"'15'] (key {DEFAULT_KEY})")
    async with http.post(f"{base}/v2/{MODEL}", json=BODY, headers=KEY) as r:
        failed = await r.json()
    async with http.get(failed["status_url"], headers=KEY) as r:
        body = await r.json()
    assert r.status == 422 and body["status"] == "FAILED" and body["error"].endswith(f"rendered (key {DEFAULT_KEY})")
    async with http.post(f"{base}/v2/{MODEL}", json=BODY) as r:
        assert (await r.json())["error"] == "Missing API key: send the x-api-key header"  # no key, nothing to quote
    async with http.get(f"{base}/v1/get-user-credits", headers=KEY) as r:
        assert set(await r.json()) == {"credits", "free-credits"}  # answers that are not errors are left alone


async def test_stalled_download_promises_the_whole_file_then_trickles_bytes(make_sim, http) -> None:
    sim = await make_sim(
        SimSettings(v1_mode="url", stall_gap_s=0.02), FaultPlan(script=parse_script("download:1=stall"))
    )
    async with http.post(f"{sim.base_url}/v1/{MODEL}", json=BODY, headers=KEY) as r:
        url = (await r.json())["output"]
    async with http.get(url) as r:
        total = int(r.headers["Content-Length"])
        firsts = [await r.content.readany() for _ in range(3)]
    assert [len(piece) for piece in firsts] == [1, 1, 1]
    async with http.get(url) as r:  # the next download is whole
        video = await r.read()
    assert len(video) == total and b"".join(firsts) == video[:3]


async def test_a_stalled_download_does_not_hold_up_close(make_sim, http) -> None:
    sim = await make_sim(
        SimSettings(v1_mode="url", stall_gap_s=600), FaultPlan(script=parse_script("download:1=stall"))
    )
    async with http.post(f"{sim.base_url}/v1/{MODEL}", json=BODY, headers=KEY) as r:
        url = (await r.json())["output"]
    loop_time = asyncio.get_running_loop().time
    async with http.get(url) as r:  # the headers came before any byte of the body
        assert int(r.headers["Content-Length"]) > 1000 and r.content.total_bytes == 0
        started = loop_time()
        await sim.close()
        assert loop_time() - started < 5
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()


async def test_junk_status_is_a_200_html_page_on_status_and_result(make_sim, http) -> None:
    sim = await make_sim(faults=FaultPlan(script=parse_script("status:1=junk,result:1=junk")))
    async with http.post(f"{sim.base_url}/v2/{MODEL}", json=BODY, headers=KEY) as r:
        submitted = await r.json()
    for url in (submitted["status_url"], submitted["response_url"]):
        async with http.get(url, headers=KEY) as r:
            assert (r.status, r.content_type) == (200, "text/html")
            assert await r.text() == "<html><body>upstream proxy error</body></html>"
        async with http.get(url, headers=KEY) as r:  # the next poll is the API again
            assert (r.status, (await r.json())["status"]) == (200, "COMPLETED")


def test_new_fault_kinds_by_rate_and_script_only() -> None:
    assert {"stall_download", "junk_status"} <= set(KINDS)
    plan = FaultPlan(rates={"junk_status": 1.0, "stall_download": 1.0})
    assert [plan.next(route) for route in ("status", "result", "download")] == [
        Fault("junk"),
        Fault("junk"),
        Fault("stall"),
    ]
    assert parse_script("download:4=stall,status:2=junk,result:1=junk") == {
        ("download", 4): Fault("stall"),
        ("status", 2): Fault("junk"),
        ("result", 1): Fault("junk"),
    }
    for bad in ("submit:1=junk", "download:1=junk", "status:1=stall"):
        with pytest.raises(UsageError, match="bad fault script item"):
            parse_script(bad)
    mixed = FaultPlan(total_rate=0.5, rates={"stall_download": 0.25}, seed=1)
    kinds = Counter(fault.kind for fault in (mixed.next("download") for _ in range(2000)) if fault is not None)
    assert 350 < kinds["stall"] < 650 and kinds["short"] > 0  # its own rate, beside the shared one


def test_total_rate_alone_draws_what_it_drew_before_the_new_kinds() -> None:
    plan = FaultPlan(total_rate=0.5, seed=3)
    drawn = [plan.next(route) for route in ["download", "status", "result"] * 6]
    s, f = Fault("slow"), Fault("short")
    assert drawn == [
        *(None, s, Fault("status", 504), s, Fault("status", 500), Fault("status", 504), s, s, None),
        *(f, s, None, Fault("drop"), None, None, f, None, None),
    ]  # the sequence of seed 3 written down before stall_download and junk_status existed
    every = FaultPlan(total_rate=1.0, seed=5)
    faults = [every.next(route) for route in ["download", "status", "result"] * 1000]
    assert {fault.kind if fault else None for fault in faults} == {"status", "drop", "short", "slow"}


HISTORY_KEYS = {
    "data": ("data", {"data", "page", "per_page", "total", "total_pages"}),
    "items": ("items", {"items", "page", "per_page", "total"}),
    "results": ("results", {"results", "has_more"}),
    "epoch": ("data", {"data", "page", "per_page", "total", "total_pages"}),
    "unknown": ("records", {"records", "page"}),
}


@pytest.mark.parametrize("shape", list(HISTORY_KEYS))
async def test_history_shapes(make_sim, http, shape: str) -> None:
    clock = FakeClock()
    sim = await make_sim(SimSettings(history_shape=shape), clock=clock)
    for _ in range(3):
        await (await http.post(f"{sim.base_url}/v2/{MODEL}", json=BODY, headers=KEY)).release()
    history = f"{sim.base_url}/inference-request/request-history"
    rows_key, page_keys = HISTORY_KEYS[shape]
    pages = []
    for page in (1, 2):
        async with http.get(history, params={"per_page": "2", "page": str(page)}, headers=KEY) as r:
            pages.append(await r.json())
    assert [set(page) for page in pages] == [page_keys] * 2
    assert [len(page[rows_key]) for page in pages] == [2, 1]
    row = pages[0][rows_key][0]
    async with http.get(f"{history}/{row['request_id']}", headers=KEY) as r:
        assert await r.json() == row  # the single row has the list's shape
    times = {name: row[name] for name in ("created_at", "updated_at", "model_created") if name in row}
    if shape == "epoch":
        assert times == {"model_created": clock.now}
    elif shape == "unknown":
        assert times == {}
    else:
        assert datetime.fromisoformat(times["created_at"]).timestamp() == clock.now
    if shape == "results":
        assert [page["has_more"] for page in pages] == [True, False]
    if shape == "items":
        assert pages[0]["total"] == 3 and pages[0]["per_page"] == 2


def test_bad_history_shape_is_refused() -> None:
    with pytest.raises(UsageError, match="history_shape is one of"):
        SimSettings(history_shape="rows")


# --- persistence ------------------------------------------------------------------------------------------------


@asynccontextmanager
async def journaled(journal: Path, clock: FakeClock, settings: SimSettings | None = None) -> AsyncIterator[Simulator]:
    """A simulator on a journal, on a fresh port, closed after the block."""
    sim = Simulator(settings or SimSettings(v1_mode="url"), clock=clock, journal=journal)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.close()


async def test_a_journal_carries_the_books_and_the_requests_over_a_restart(tmp_path, http) -> None:
    journal, clock = tmp_path / "sim.jsonl", FakeClock()
    async with journaled(journal, clock) as first:
        async with http.post(f"{first.base_url}/v1/{MODEL}", json=BODY, headers=KEY) as r:
            v1_id, v1_url = r.headers["x-request-id"], (await r.json())["output"]
        async with http.post(f"{first.base_url}/v2/{MODEL}", json={**BODY, "prompt": "Two"}, headers=KEY) as r:
            v2_id = (await r.json())["request_id"]
        await (await http.post(f"{first.base_url}/v2/{MODEL}", json={"prompt": ""}, headers=KEY)).release()
        await (await http.post(f"{first.base_url}/_sim/credits", json={"key": DEFAULT_KEY, "add_usd": 5})).release()
        first.settings = replace(first.settings, latency_s=100)  # one still running when the simulator stops
        async with http.post(f"{first.base_url}/v2/{MODEL}", json={**BODY, "prompt": "Late"}, headers=KEY) as r:
            late_id = (await r.json())["request_id"]
        async with http.get(v1_url) as r:
            v1_video = await r.read()
        books = first.ledger()
    assert journal.stat().st_mode & 0o777 == 0o600
    assert books[DEFAULT_KEY]["balance_usd"] == pytest.approx(105 - 2 * 0.504)
    assert [seen["status"] for seen in books[DEFAULT_KEY]["requests"]] == [200, 200, 400, 200]

    async with journaled(journal, clock) as second:
        assert second.base_url != first.base_url and second.ledger() == books
        base = second.base_url
        async with http.get(f"{base}/v2/requests/{v2_id}/status", headers=KEY) as r:
            assert (r.status, (await r.json())["status"]) == (200, "COMPLETED")
        async with http.get(f"{base}/v2/requests/{v2_id}", headers=KEY) as r:
            assert (await r.json())["output"] == f"{base}/files/{v2_id}.mp4"
        async with http.get(f"{base}/inference-request/request-history/{v1_id}", headers=KEY) as r:
            row = await r.json()
        assert row["model_status"] == "COMPLETED" and row["generation_url"] == f"{base}/files/{v1_id}.mp4"
        async with http.get(row["generation_url"]) as r:
            assert await r.read() == v1_video
        async with http.post(f"{base}/v2/{MODEL}", json=BODY, headers=KEY) as r:
            new_id = (await r.json())["request_id"]
        assert new_id not in {v1_id, v2_id, late_id}
        assert [charge.request_id for charge in second.account().charges] == [v1_id, v2_id, new_id]
        clock.now += 100  # the late one completes after the restart: charged there, once, when it completed
        charges = second.account().charges
        assert [charge.request_id for charge in charges] == [v1_id, v2_id, new_id, late_id]
        assert charges[-1].at == second.generations[late_id].due == clock.now
        books = second.ledger()

    async with journaled(journal, clock) as third:  # a replay settles from the clock as the live simulator did
        assert third.ledger() == books


async def test_a_torn_last_line_is_cut_and_a_stranger_key_refused(tmp_path) -> None:
    journal, clock = tmp_path / "sim.jsonl", FakeClock()
    async with journaled(journal, clock) as sim:
        sim.add_credits(2.0)
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"type": "top_up", "key": "sim-')  # the process died in the middle of a write
    async with journaled(journal, clock) as sim:
        assert sim.account().balance_micros == 102_000_000
        sim.add_credits(1.0)
    assert journal.read_bytes().count(b"\n") == 2 and b"sim-\n" not in journal.read_bytes()
    with pytest.raises(UsageError, match="does not accept"):
        Simulator(SimSettings(keys=("other",)), journal=journal)


async def test_cli_simulate_with_hostile_flags_and_a_journal(tmp_path) -> None:
    journal = tmp_path / "sim.jsonl"
    flags = ("--latency-s", "0", "--journal", str(journal), "--trickle", "50:1", "--quote-key")
    first = await start_cli_simulator(*flags, "--history-shape", "items")
    try:
        async with aiohttp.ClientSession(headers=KEY) as session:
            async with session.post(f"{first.url}/v2/{MODEL}", json=BODY) as r:
                rid = (await r.json())["request_id"]
            async with session.post(f"{first.url}/v2/no-such-model", json=BODY) as r:
                assert (await r.json())["error"].endswith(f"(key {DEFAULT_KEY})")
            async with session.get(f"{first.url}/inference-request/request-history") as r:
                assert [row["request_id"] for row in (await r.json())["items"]] == [rid]
    finally:
        out = first.stop()
    assert f"{DEFAULT_KEY}: 1 generation requests, 1 charged" in out
    second = await start_cli_simulator(*flags, "--redirect-polls-to", "http://127.0.0.2:9")
    try:
        async with aiohttp.ClientSession(headers=KEY) as session:
            async with session.get(f"{second.url}/inference-request/request-history/{rid}") as r:
                assert (await r.json())["model_status"] == "COMPLETED"
            async with session.get(f"{second.url}/v2/requests/{rid}", allow_redirects=False) as r:
                assert r.headers["Location"] == f"http://127.0.0.2:9/v2/requests/{rid}"
    finally:
        out = second.stop()
    assert f"{DEFAULT_KEY}: 1 generation requests, 1 charged, spent $0.504" in out


@pytest.mark.parametrize("value", ["700", "x:4", "0:4", "700:-1"])
def test_cli_refuses_a_bad_trickle(value: str) -> None:
    done = run_cli("simulate", "--trickle", value)
    assert done.returncode == 2 and "batchgen: error: --trickle takes BYTES:MS" in done.stderr


class CliSimulator:
    """``batchgen simulate`` in a subprocess, its URL read from what it prints."""

    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process, self.url = process, url

    def stop(self) -> str:
        """Ctrl-C it; what it printed after its banner."""
        self.process.send_signal(signal.SIGINT)
        out, err = self.process.communicate(timeout=20)
        assert self.process.returncode == 0, err
        return out


async def start_cli_simulator(*flags: str) -> CliSimulator:
    process = subprocess.Popen(
        [sys.executable, "-m", "batchgen", "simulate", *flags], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    banner = [process.stdout.readline() for _ in range(4)]
    url = banner[0].split("serving ")[1].split()[0]
    assert [line.strip() for line in banner[1:]] == [
        f"export SEGMIND_BASE_URL={url}",
        f"export SEGMIND_API_KEY={DEFAULT_KEY}",
        f"export SEGMIND_HISTORY_URL={url}",
    ]
    return CliSimulator(process, url)
