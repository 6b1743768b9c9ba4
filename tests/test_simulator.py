"""The simulator against segmind-api.md: every route, error, header, the ledger, each fault, TTL, determinism."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from datetime import datetime

import aiohttp
import av
import pytest

from batchgen.simulator import DEFAULT_KEY
from batchgen.simulator.clips import make_clip
from batchgen.simulator.faults import Fault, FaultPlan, parse_script
from batchgen.simulator.server import SimSettings

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
