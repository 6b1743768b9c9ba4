"""Hostile or broken provider answers: each ends as a clear failed attempt or a clear stop, and nothing that is
not a video is ever saved as one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from batchgen import expand, load_manifest
from batchgen.client import Client, Timeouts
from batchgen.errors import ExitCode
from batchgen.launch import open_run
from batchgen.runner import Runner, RunResult, RunSettings
from batchgen.simulator.clips import make_clip
from tests.conftest import batch_manifest
from tests.runs import read_state

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CLIP = make_clip(3, "16:9", False)


class Hostile:
    """A server that answers the v2 protocol with whatever a test wants at each step."""

    def __init__(self, *, submit: Handler | None = None, result: Handler | None = None, video: Handler | None = None):
        self.app = web.Application()
        self.app.add_routes(
            [
                web.post("/v2/{model}", submit or self.submit),
                web.post("/v1/{model}", submit or self.submit),
                web.get("/v2/requests/{rid}/status", self.status),
                web.get("/v2/requests/{rid}", result or self.result),
                web.get("/files/{name}", video or self.video),
                web.get("/v1/get-user-credits", self.credits),
            ]
        )
        self.base_url = ""
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def submit(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"request_id": "r1", "status": "QUEUED"})

    async def status(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "COMPLETED"})

    async def result(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "COMPLETED", "output": f"{self.base_url}/files/v.mp4", "metrics": {}})

    async def video(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=CLIP, content_type="video/mp4")

    async def credits(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"credits": 100.0})


@pytest.fixture
async def hostile():
    servers: list[Hostile] = []

    async def make(**handlers: Handler) -> Hostile:
        server = Hostile(**handlers)
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        assert server.runner is not None
        await server.runner.cleanup()


async def _run(server: Hostile, tmp_path: Path, write_manifest, **settings: object) -> RunResult:
    manifest = load_manifest(write_manifest(batch_manifest(1)))
    options = {"poll_interval_s": 0.01, "backoff_base_s": 0.0, "max_attempts": 2, "rpm": 1000, **settings}
    with open_run(tmp_path / "out", manifest, expand(manifest), None) as (run_dir, store):
        max_bytes = int(options.pop("max_video_bytes", 2 << 30))  # type: ignore[call-overload]
        timeouts: Timeouts | None = options.pop("timeouts", None)  # type: ignore[assignment]
        key = str(options.pop("key", "k"))
        client = Client(server.base_url, key, max_video_bytes=max_bytes, timeouts=timeouts)
        async with client:
            return await Runner(store, run_dir, client, RunSettings(**options)).run()  # type: ignore[arg-type]


def _job(tmp_path: Path):
    store = read_state(tmp_path / "out")
    (job,) = store.jobs()
    attempts = store.attempts(job.id)
    store.close()
    assert not list((tmp_path / "out" / "videos").glob("*.mp4")) or job.state == "done"
    assert not list((tmp_path / "out" / "videos").glob("*.part"))
    return job, attempts


def _answer(body: bytes | str, content_type: str, status: int = 200, **headers: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        data = body.encode() if isinstance(body, str) else body
        return web.Response(body=data, status=status, content_type=content_type, headers=headers)

    return handler


async def test_html_instead_of_json_on_submit_is_possibly_billed(hostile, tmp_path, write_manifest) -> None:
    server = await hostile(submit=_answer("<html>Welcome</html>", "text/html"))
    result = await _run(server, tmp_path, write_manifest)
    job, attempts = _job(tmp_path)
    assert (result.exit_code, job.state) == (ExitCode.JOBS_FAILED, "failed")
    assert "not JSON" in (job.reason or "") and "Welcome" in (job.reason or "")
    assert [a.money for a in attempts] == ["ambiguous", "ambiguous"]


async def test_json_without_the_fields(hostile, tmp_path, write_manifest) -> None:
    server = await hostile(submit=_answer('{"status": "QUEUED"}', "application/json"))
    await _run(server, tmp_path, write_manifest)
    job, _ = _job(tmp_path)
    assert job.state == "failed" and "no request_id" in (job.reason or "")


async def test_completed_without_a_video_url(hostile, tmp_path, write_manifest) -> None:
    server = await hostile(result=_answer('{"status": "COMPLETED", "output": "ftp://x/v.mp4"}', "application/json"))
    result = await _run(server, tmp_path, write_manifest)
    job, attempts = _job(tmp_path)
    assert (result.exit_code, job.state) == (ExitCode.JOBS_FAILED, "failed")
    assert "no video URL" in (job.reason or "") or "named no video" in (job.reason or "")
    assert attempts[-1].money == "settled"  # the provider says it completed: paid


async def test_a_video_body_that_is_not_a_video_is_never_saved(hostile, tmp_path, write_manifest) -> None:
    server = await hostile(video=_answer(b"\x00\x00\x00\x18ftypjunk" + b"x" * 5000, "video/mp4"))
    result = await _run(server, tmp_path, write_manifest)
    job, _ = _job(tmp_path)
    assert (result.exit_code, job.state) == (ExitCode.JOBS_FAILED, "failed")
    assert "not a playable MP4 video" in (job.reason or "")
    assert job.download_failures == 2


async def test_a_body_bigger_than_the_cap(hostile, tmp_path, write_manifest) -> None:
    server = await hostile()
    await _run(server, tmp_path, write_manifest, max_video_bytes=1000)
    job, _ = _job(tmp_path)
    assert job.state == "failed" and "over the cap of 1,000" in (job.reason or "")


async def test_a_content_length_that_lies(hostile, tmp_path, write_manifest) -> None:
    async def lying(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "video/mp4", "Content-Length": str(len(CLIP) * 2)})
        await response.prepare(request)
        await response.write(CLIP)
        assert request.transport is not None
        request.transport.close()
        return response

    server = await hostile(video=lying)
    await _run(server, tmp_path, write_manifest)
    job, _ = _job(tmp_path)
    assert job.state == "failed" and "the download broke" in (job.reason or "")
    assert "Error" not in (job.reason or ""), job.reason  # the library's words, not its class names


async def test_endless_redirects(hostile, tmp_path, write_manifest) -> None:
    async def loop(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(str(request.url))

    server = await hostile(video=loop)
    await _run(server, tmp_path, write_manifest)
    job, _ = _job(tmp_path)
    assert job.state == "failed" and "more than 5 redirects" in (job.reason or "")
    assert job.download_failures == 1  # permanent: not retried


async def test_a_429_whose_reset_is_in_the_past_is_retried_at_once(hostile, tmp_path, write_manifest) -> None:
    calls = []

    async def limited(request: web.Request) -> web.StreamResponse:
        calls.append(1)
        if len(calls) == 1:
            return web.json_response(
                {"error": "slow down"}, status=429, headers={"x-rate-limit-reset-at-utc": "2001-01-01T00:00:00Z"}
            )
        return web.json_response({"request_id": "r1", "status": "QUEUED"})

    server = await hostile(submit=limited)
    result = await _run(server, tmp_path, write_manifest)
    assert result.exit_code == ExitCode.OK and len(calls) == 2


async def test_v1_200_with_an_empty_body_is_a_paid_clip_lost(hostile, tmp_path, write_manifest) -> None:
    server = await hostile(submit=_answer(b"", "video/mp4", **{"x-request-id": "r9", "x-cost": "0.504"}))
    result = await _run(server, tmp_path, write_manifest, transport="v1")
    job, attempts = _job(tmp_path)
    assert (result.exit_code, job.state) == (ExitCode.JOBS_FAILED, "lost")
    assert "r9" in (job.reason or "") and "empty" in (job.reason or "")
    assert attempts[-1].money == "settled" and attempts[-1].settled_micros == 504_000


async def test_v1_answer_neither_video_nor_json_shows_its_start(hostile, tmp_path, write_manifest) -> None:
    server = await hostile(submit=_answer("<html>Maintenance</html>", "text/html"))
    await _run(server, tmp_path, write_manifest, transport="v1")
    job, _ = _job(tmp_path)
    assert job.state == "lost" and "Maintenance" in (job.reason or "")


async def test_a_gzip_encoded_video_is_decoded_then_checked(hostile, tmp_path, write_manifest) -> None:
    import gzip

    async def gzipped(request: web.Request) -> web.StreamResponse:
        assert request.headers.get("Accept-Encoding") == "identity"  # asked for the bytes as stored
        return web.Response(body=gzip.compress(CLIP), content_type="video/mp4", headers={"Content-Encoding": "gzip"})

    server = await hostile(video=gzipped)
    result = await _run(server, tmp_path, write_manifest)
    job, _ = _job(tmp_path)
    assert result.exit_code == ExitCode.OK and job.state == "done"
    assert (tmp_path / "out" / (job.video_path or "")).read_bytes() == CLIP


@pytest.mark.parametrize(
    ("cost", "settled", "said"),
    [
        (1e-300, 1, False),  # under a micro-dollar: not free
        (0.7, 700_000, False),
        ("NaN", 504_000, True),
        (-1.0, 504_000, True),
        ("free", 504_000, True),
        (0, 504_000, True),
    ],
)
async def test_a_cost_that_is_no_price_is_replaced_by_the_estimate_and_said(
    hostile, tmp_path, write_manifest, cost: object, settled: int, said: bool
) -> None:
    async def priced(request: web.Request) -> web.StreamResponse:
        body = {"status": "COMPLETED", "output": f"http://{request.host}/files/v.mp4", "metrics": {"cost": cost}}
        return web.json_response(body)

    server = await hostile(result=priced)
    result = await _run(server, tmp_path, write_manifest)
    _, attempts = _job(tmp_path)
    assert result.exit_code == ExitCode.OK and attempts[-1].settled_micros == settled
    assert ("which is no price: counted at its estimate, $0.504" in (tmp_path / "out" / "run.log").read_text()) is said


async def test_a_video_host_that_never_answers_is_given_up_and_asked_again(hostile, tmp_path, write_manifest) -> None:
    import asyncio

    calls = []
    released = asyncio.Event()

    async def silent_once(request: web.Request) -> web.StreamResponse:
        calls.append(1)
        if len(calls) == 1:
            await released.wait()  # no headers until the test is over
        return web.Response(body=CLIP, content_type="video/mp4")

    server = await hostile(video=silent_once)
    result = await _run(server, tmp_path, write_manifest, timeouts=Timeouts(download_window_s=0.2))
    released.set()
    job, _ = _job(tmp_path)
    assert result.exit_code == ExitCode.OK and job.state == "done" and len(calls) == 2
    assert "↻ download again in" in (log := (tmp_path / "out" / "run.log").read_text()) and "Timeout on reading" in log


KEY = "sk-SECRETKEY-0123456789abcdef"


def _no_part_of_the_key_in(root: Path) -> None:
    pieces = {KEY[i : i + 8] for i in range(len(KEY) - 7)}
    for file in root.rglob("*"):
        if file.is_file():
            data = file.read_bytes()
            assert not any(piece.encode() in data for piece in pieces), file


async def test_a_long_message_quoting_the_key_leaves_no_part_of_it(hostile, tmp_path, write_manifest) -> None:
    """The key is taken out of what the provider said before anything of it is cut to length."""
    words = "x" * 285 + " key=" + KEY
    server = await hostile(submit=_answer(f'{{"error": "{words}"}}', "application/json", status=500))
    await _run(server, tmp_path, write_manifest, key=KEY)
    job, _ = _job(tmp_path)
    assert job.state == "failed" and "key=[the API k" in (job.reason or "")
    _no_part_of_the_key_in(tmp_path / "out")


async def test_a_video_url_that_carries_the_key_is_never_used_or_stored(hostile, tmp_path, write_manifest) -> None:
    async def leaky(request: web.Request) -> web.StreamResponse:
        url = f"http://{request.host}/files/v.mp4?api_key={KEY}"
        return web.json_response({"status": "COMPLETED", "output": url, "metrics": {}})

    fetched = []

    async def video(request: web.Request) -> web.StreamResponse:
        fetched.append(request.query_string)
        return web.Response(body=CLIP, content_type="video/mp4")

    server = await hostile(result=leaky, video=video)
    await _run(server, tmp_path, write_manifest, key=KEY, max_unreadable_polls=2)
    job, _ = _job(tmp_path)
    assert job.state == "lost" and "carries the API key" in (job.reason or "")
    assert fetched == []
    _no_part_of_the_key_in(tmp_path / "out")
