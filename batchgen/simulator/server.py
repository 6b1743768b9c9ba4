"""The simulator: Segmind's API as ``shared/segmind-api.md`` describes it, served by aiohttp on loopback.

Routes (one base URL, paths as the real API has them):

- ``POST /v1/{model}``: blocks for the generation latency, charges, answers the MP4 (or JSON naming it);
- ``POST /v2/{model}``, ``GET /v2/requests/{id}/status``, ``GET /v2/requests/{id}``: submit, then poll;
- ``GET /files/{id}.mp4``: the video, streamed with ``Content-Length``;
- ``GET /v1/get-user-credits``: the balance;
- ``POST /upload-asset``, ``GET /assets/{name}``: the storage, as Segmind's SDK uploads to it (``files.upload``:
  ``{"data_urls": [...]}`` answered ``{"file_urls": [...]}``), and the files it keeps;
- ``GET /inference-request/request-history[/{id}]``: the provider's record of every request (page shape: settings);
- ``GET /_sim/ledger``, ``POST /_sim/credits``: the books, and a top-up, for tests and people.

Models: every model of the catalogue (``schema/models``), each validated against its request schema and priced by
its table; a generation takes ``latency_s`` scaled by the model's typical time against Kling 3.0 Standard's (a
faster model is faster here too). An image-to-video clip starts on its first-frame image when that is a file of this
simulator's storage (a URL elsewhere is not fetched: the clip is a colour ramp); one naming a file the storage does
not have is refused, as a provider that cannot fetch it would.

Money: a v2 submit holds the price against the balance (a 406 when the balance less the holds cannot pay) and is
charged when the generation completes; a failed generation releases it. Only completed generations are charged, at
the time they complete. Time: generation completion is computed from the clock when anything looks, so nothing sleeps
at latency 0.

Hostility, beyond the faults of ``faults.py`` (each a setting, off by default):

- *trickle*: every answer body goes out in pieces of ``trickle_bytes``, ``trickle_gap_s`` apart, as over the internet;
- *foreign URLs*: the v2 submit answer names a status host that is not the API's (``foreign_origin``);
- *redirected polls*: v2 status and result GETs answer 307 to another origin (``redirect_polls_to``);
- *a key quoted back*: every error message ends with the ``x-api-key`` the request carried (``quote_key``);
- *history shapes*: the request history's pages in one of the shapes a client has to guess (``history_shape``).

Persistence: with a ``journal`` file, the simulator replays the file when built (generations, requests seen,
top-ups: the same books, the same request ids still answered) and appends a line per change (``journal.py``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import heapq
import json
import random
import re
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from batchgen.canonical import content_hash
from batchgen.errors import UsageError
from batchgen.images import EXTENSIONS, first_frame, image_slots, sniff
from batchgen.models import Model, known_models, load_model
from batchgen.pricing import clip_spec, estimate_micros, micros, usd
from batchgen.simulator import DEFAULT_KEY
from batchgen.simulator.clips import RESOLUTIONS, make_clip, padded_chunks, padded_size, palette_of
from batchgen.simulator.faults import Fault, FaultPlan
from batchgen.simulator.journal import Journal, Record
from batchgen.simulator.ledger import Account, Charge, Seen, Upload
from batchgen.validation import make_validator

RATE_WINDOW_S = 60.0
# The request history's page shapes: rows under ``data`` with ``total_pages`` (the default), under ``items`` with
# ``total`` and ``per_page``, under ``results`` with ``has_more``; ``epoch`` is ``data`` with each row's time as epoch
# seconds under ``model_created``; ``unknown`` is rows under ``records`` without any time: a page no client can read.
HISTORY_SHAPES = ("data", "items", "results", "epoch", "unknown")
JUNK_PAGE = "<html><body>upstream proxy error</body></html>"
MAX_UPLOAD_BODY_BYTES = 80 << 20  # a 50 MB image as a base64 data URL, and some
REFERENCE_MODEL_S = 175.0  # Kling 3.0 Standard's typical time: `latency_s` is its generation time here


@dataclass(frozen=True)
class SimSettings:
    """How the simulator behaves. Times in seconds, money in USD."""

    keys: tuple[str, ...] = (DEFAULT_KEY,)
    credits_usd: float = 100.0
    rpm: int = 50
    latency_s: float = 0.0
    latency_jitter_s: float = 0.0
    ttl_s: float = 3600.0
    v1_mode: str = "bytes"  # "bytes" (video/mp4), "url" (JSON with a URL) or "base64" (JSON with the bytes)
    retry_after: bool = False  # add a Retry-After header to 429s (the real API sends none)
    fault_429_reset_s: float = 1.0  # how far ahead an injected 429 sets the reset time
    slow_first_byte_s: float = 1.0
    video_size_bytes: int = 0  # pad every video to this size (0: the clip's own few kB)
    history_lag_s: float = 0.0  # how long after its submit a request shows in the request history
    forbidden_keys: tuple[str, ...] = ()
    retired_models: tuple[str, ...] = ()
    seed: int = 0
    trickle_bytes: int = 0  # send every answer body in pieces of at most this many bytes (0: at once)
    trickle_gap_s: float = 0.0  # the pause before each piece after the first, when trickling
    foreign_origin: str = ""  # the origin the v2 submit answer's URLs name, e.g. "http://127.0.0.2:8000" ("": ours)
    redirect_polls_to: str = ""  # answer v2 status and result GETs 307 to this origin, same path ("": answer them)
    quote_key: bool = False  # end every {"error": ...} message with " (key <the x-api-key sent>)", as a leaky provider
    stall_gap_s: float = 1.0  # the pause between the bytes of a stalled download (fault "stall_download")
    history_shape: str = "data"  # the request history's page and row shape: one of HISTORY_SHAPES
    price_factor: float = 1.0  # the provider's prices against the model's table (3.0: it charges three times it)
    resolution: str = ""  # "720p" or "1080p": clips of the real size, textured ("": small clips, quick to make)

    def __post_init__(self) -> None:
        if self.history_shape not in HISTORY_SHAPES:
            raise UsageError(f"history_shape is one of {', '.join(HISTORY_SHAPES)} (got {self.history_shape!r})")
        if self.resolution not in ("", *RESOLUTIONS):
            raise UsageError(f"resolution is one of {', '.join(RESOLUTIONS)} (got {self.resolution!r})")
        if not self.price_factor > 0:
            raise UsageError("the price factor (--price-factor) must be more than 0")
        if self.trickle_bytes < 0 or self.trickle_gap_s < 0 or self.stall_gap_s < 0:
            raise UsageError("trickle_bytes, trickle_gap_s and stall_gap_s are not negative")


@dataclass
class Generation:
    """One accepted generation request."""

    request_id: str
    key: str
    model: str
    payload: dict[str, Any]
    payload_hash: str
    price_micros: int
    created: float
    due: float
    will_fail: bool
    state: str = "QUEUED"
    settled: bool = False

    def status_at(self, now: float) -> str:
        """QUEUED for the first tenth of the latency, then PROCESSING until settled."""
        if self.settled:
            return self.state
        return "QUEUED" if now < self.created + (self.due - self.created) / 10 else "PROCESSING"


@dataclass
class _Limiter:
    times: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0


class Simulator:
    """The provider's stand-in: owns its ``web.Application``, its ledger, its clock and its journal (if any)."""

    def __init__(
        self,
        settings: SimSettings | None = None,
        faults: FaultPlan | None = None,
        clock: Callable[[], float] = time.time,
        journal: Path | str | None = None,
    ) -> None:
        self.settings = settings or SimSettings()
        self.faults = faults or FaultPlan(seed=self.settings.seed)
        self.clock = clock
        self.accounts = {key: Account(micros(self.settings.credits_usd)) for key in self.settings.keys}
        self.generations: dict[str, Generation] = {}
        self.assets: dict[str, tuple[bytes, str]] = {}  # the storage: file name → (bytes, type)
        self._due: list[tuple[float, str]] = []
        self._limiters: dict[str, _Limiter] = {}
        self._counter = 0
        self.hits: Counter[str] = Counter()  # every HTTP request, by route name, whatever its answer
        self._random = random.Random(f"{self.settings.seed}:latency")
        self._closed = asyncio.Event()  # set by close(): a stalled download stops instead of holding the shutdown up
        self.journal = Journal(Path(journal)) if journal is not None else None
        if self.journal is not None:
            self._replay(self.journal.replay())
        # Outermost first: every request is counted; error bodies get the key before the body is trickled.
        self.app = web.Application(
            middlewares=[self._count_hits, self._trickle, self._quote_key], client_max_size=MAX_UPLOAD_BODY_BYTES
        )
        self.app.add_routes(
            [
                web.post("/v1/{model}", self.submit_v1),
                web.post("/v2/{model}", self.submit_v2),
                web.get("/v2/requests/{request_id}/status", self.status),
                web.get("/v2/requests/{request_id}", self.result),
                web.get("/files/{request_id}.mp4", self.download),
                web.get("/v1/get-user-credits", self.credits),
                web.post("/upload-asset", self.upload),
                web.get("/assets/{name}", self.asset),
                web.get("/inference-request/request-history", self.history_list),
                web.get("/inference-request/request-history/{request_id}", self.history_get),
                web.get("/_sim/ledger", self.ledger_json),
                web.post("/_sim/credits", self.top_up_json),
            ]
        )
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    @web.middleware
    async def _count_hits(self, request: web.Request, handler: Any) -> web.StreamResponse:
        route = request.match_info.route.resource
        self.hits[route.canonical if route is not None else request.path] += 1
        response: web.StreamResponse = await handler(request)
        return response

    @web.middleware
    async def _trickle(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """With ``trickle_bytes``, turn a finished answer into one written in pieces (same status and headers)."""
        if not self.settings.trickle_bytes:
            response: web.StreamResponse = await handler(request)
            return response
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # aiohttp's own answers (no such route, wrong method) trickle too
            response = web.Response(body=exc.body, status=exc.status, reason=exc.reason, headers=exc.headers)
        if not isinstance(response, web.Response) or response.prepared or request.method == "HEAD":
            return response  # streamed by its handler (the download), or nothing to write
        if request.transport is None or request.transport.is_closing():
            return response  # a dropped answer: the connection is gone already
        return await self._write_in_pieces(request, response)

    async def _write_in_pieces(self, request: web.Request, response: web.Response) -> web.StreamResponse:
        body = response.body if isinstance(response.body, bytes) else b""
        headers = CIMultiDict(response.headers)
        headers.popall("Content-Length", None)
        stream = web.StreamResponse(status=response.status, reason=response.reason, headers=headers)
        stream.content_length = len(body)  # the whole length up front, as a real server sends it
        try:
            await stream.prepare(request)
            await self._send(stream, body, first=True)
            await stream.write_eof()
        except ConnectionError:  # the client went away part-way: nothing left to answer
            if request.transport is not None:
                request.transport.close()
        return stream

    async def _send(self, response: web.StreamResponse, data: bytes, first: bool) -> None:
        """Write ``data``: at once, or in pieces of ``trickle_bytes`` with ``trickle_gap_s`` before each but the
        body's first (``first``: ``data`` starts the body). Each piece goes to the socket on its own."""
        size = self.settings.trickle_bytes or len(data) or 1
        for start in range(0, len(data), size):
            if self.settings.trickle_bytes and not (first and start == 0):
                await asyncio.sleep(self.settings.trickle_gap_s)
            await response.write(data[start : start + size])

    @web.middleware
    async def _quote_key(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """With ``quote_key``, end every ``{"error": ...}`` message with the key the request carried."""
        response: web.StreamResponse = await handler(request)
        key = request.headers.get("x-api-key", "")
        if self.settings.quote_key and key and isinstance(response, web.Response) and not response.prepared:
            _append_to_error(response, f" (key {key})")
        return response

    # --- life ---------------------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: any free port) and return the base URL."""
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0]
        self.base_url = f"http://{host}:{bound[1]}"
        return self.base_url

    async def close(self) -> None:
        """Stop serving (and close the journal)."""
        self._closed.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.journal is not None:
            self.journal.close()

    # --- the books ----------------------------------------------------------------------------------------

    def account(self, key: str = DEFAULT_KEY) -> Account:
        """The account of ``key``, with every completion due by now settled."""
        self._advance()
        return self.accounts[key]

    def add_credits(self, amount_usd: float, key: str = DEFAULT_KEY) -> None:
        """Top up ``key``'s balance."""
        amount = micros(amount_usd)
        self.accounts[key].balance_micros += amount
        self._log({"type": "top_up", "key": key, "micros": amount})

    def ledger(self) -> dict[str, Any]:
        """Every account as JSON data, completions settled."""
        self._advance()
        return {key: account.as_json() for key, account in self.accounts.items()}

    def _advance(self) -> None:
        self._settle_until(self.clock())

    def _settle_until(self, now: float) -> None:
        while self._due and self._due[0][0] <= now:
            _, request_id = heapq.heappop(self._due)
            self._settle(self.generations[request_id])

    def _settle(self, generation: Generation) -> None:
        """End a generation: release its hold, and charge it if it completed. Charged at its ``due`` time, not at
        whenever someone looked, so that books replayed from a journal come out the same."""
        if generation.settled:
            return
        account = self.accounts[generation.key]
        account.finish()
        account.held_micros -= generation.price_micros
        generation.settled = True
        if generation.will_fail:
            generation.state = "FAILED"
            return
        generation.state = "COMPLETED"
        account.balance_micros -= generation.price_micros
        account.charges.append(
            Charge(generation.request_id, generation.payload_hash, generation.price_micros, generation.due)
        )

    # --- the journal --------------------------------------------------------------------------------------

    def _log(self, record: Record) -> None:
        if self.journal is not None:
            self.journal.append(record)

    def _replay(self, records: list[Record]) -> None:
        """Rebuild the books from a journal's records, settling generations in the order they happened (so that
        ``peak_in_progress`` comes out as it was); those due after now settle later, from the clock, as usual."""
        for record in records:
            kind = record.pop("type")
            self._journal_account(record.get("key"))
            if kind == "generation":
                self._counter = max(self._counter, record.pop("counter"))
                generation = Generation(**record)
                self._settle_until(generation.created)
                self._hold(generation)
            elif kind == "seen":
                self.accounts[record.pop("key")].requests.append(Seen(**record))
            elif kind == "top_up":
                self.accounts[record["key"]].balance_micros += record["micros"]
            elif kind == "upload":
                self._store_asset(base64.b64decode(record.pop("data")), record.pop("mime"))
                self.accounts[record.pop("key")].uploads.append(Upload(**record))

    def _journal_account(self, key: Any) -> None:
        if key not in self.accounts:
            raise UsageError(f"the journal names the key {key!r}, which this simulator does not accept: add it")

    # --- submit -------------------------------------------------------------------------------------------

    async def submit_v1(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/{model}``: the blocking call."""
        admitted = await self._admit(request, "v1")
        if isinstance(admitted, web.StreamResponse):
            return admitted
        generation, fault = admitted
        if generation.due > generation.created:
            await asyncio.sleep(generation.due - generation.created)
        self._settle(generation)
        if generation.will_fail:
            return _error(500, "Generation failed: the model could not render this request")
        if fault is not None and fault.kind == "drop":
            return _drop(request)
        return self._v1_answer(request, generation)

    def _v1_answer(self, request: web.Request, generation: Generation) -> web.StreamResponse:
        account = self.accounts[generation.key]
        headers = {
            "x-cost": f"{usd(generation.price_micros):.6f}",
            "x-remaining-credits": f"{usd(account.balance_micros):.6f}",
            "x-request-id": generation.request_id,
            "x-generation-time": f"{generation.due - generation.created:.3f}",
            **self._rate_headers(generation.key),
        }
        url = f"{_origin(request)}/files/{generation.request_id}.mp4"
        if self.settings.v1_mode == "url":
            return web.json_response({"status": "COMPLETED", "output": url}, headers=headers)
        if self.settings.v1_mode == "base64":
            video = base64.b64encode(self._clip(generation)).decode("ascii")
            return web.json_response({"status": "COMPLETED", "output": video}, headers=headers)
        return web.Response(body=self._clip(generation), content_type="video/mp4", headers=headers)

    async def submit_v2(self, request: web.Request) -> web.StreamResponse:
        """``POST /v2/{model}``: accept and answer at once with the request's URLs."""
        admitted = await self._admit(request, "v2")
        if isinstance(admitted, web.StreamResponse):
            return admitted
        generation, fault = admitted
        if fault is not None and fault.kind == "drop":
            return _drop(request)
        origin = self.settings.foreign_origin.rstrip("/") or _origin(request)
        rid = generation.request_id
        return web.json_response(
            {
                "request_id": rid,
                "status": "QUEUED",
                "poll_url": f"{origin}/v1/requests/{rid}",
                "status_url": f"{origin}/v2/requests/{rid}/status",
                "response_url": f"{origin}/v2/requests/{rid}",
            },
            headers=self._rate_headers(generation.key),
        )

    async def _admit(self, request: web.Request, route: str) -> tuple[Generation, Fault | None] | web.StreamResponse:
        """Every check of a submit, in the provider's order; a generation when it is accepted."""
        key = request.headers.get("x-api-key", "")
        refused = self._check_key(request, key) or self._check_model(request.match_info["model"])
        if refused:
            return refused
        self._advance()
        limited = self._rate_limit(key)
        if limited:
            self._record(key, route, "", 429, None)
            return limited
        payload = await _json_body(request)
        if not isinstance(payload, dict):
            return _error(400, "Invalid JSON body: expected an object with a prompt")
        model = load_model(request.match_info["model"])
        digest = content_hash({"model": model.slug, "payload": payload})  # what was asked: the model and the body
        invalid = _invalid(model.slug, payload) or self._unfetchable(model, payload)
        if invalid:
            self._record(key, route, digest, 400, None)
            return _error(400, invalid)
        price = max(1, round(estimate_micros(payload, model) * self.settings.price_factor))
        account = self.accounts[key]
        if account.balance_micros - account.held_micros < price:
            self._record(key, route, digest, 406, None)
            balance = usd(account.balance_micros - account.held_micros)
            return _error(
                406, f"Insufficient credits: your balance is ${balance:.4f}, this request needs ${usd(price):.4f}"
            )
        fault = self.faults.next("submit")
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(self.settings.slow_first_byte_s)
        if fault is not None and fault.kind == "status":
            self._record(key, route, digest, fault.status, None)
            return self._fault_answer(fault)
        generation = self._accept(
            key, model.slug, payload, digest, price, will_fail=fault is not None and fault.kind == "fail"
        )
        self._record(key, route, digest, 200, generation.request_id)
        return generation, fault

    def _accept(
        self, key: str, model: str, payload: dict[str, Any], digest: str, price: int, will_fail: bool
    ) -> Generation:
        self._counter += 1
        request_id = str(uuid.UUID(int=random.Random(f"{self.settings.seed}:id:{self._counter}").getrandbits(128)))
        now = self.clock()
        jitter = self.settings.latency_jitter_s
        scaled = self.settings.latency_s * load_model(model).typical_generation_s / REFERENCE_MODEL_S
        latency = max(0.0, scaled + (self._random.uniform(-jitter, jitter) if jitter else 0.0))
        generation = Generation(request_id, key, model, payload, digest, price, now, now + latency, will_fail)
        self._hold(generation)
        fields = {name: value for name, value in asdict(generation).items() if name not in ("state", "settled")}
        self._log({"type": "generation", "counter": self._counter, **fields})
        return generation

    def _hold(self, generation: Generation) -> None:
        """Take an accepted generation on: hold its price, count it in progress, and wait for it to be due."""
        self.generations[generation.request_id] = generation
        account = self.accounts[generation.key]
        account.held_micros += generation.price_micros
        account.start()
        heapq.heappush(self._due, (generation.due, generation.request_id))

    def _record(self, key: str, route: str, digest: str, status: int, request_id: str | None) -> None:
        seen = Seen(route, digest, self.clock(), status, request_id)
        self.accounts[key].requests.append(seen)
        self._log({"type": "seen", "key": key, **vars(seen)})

    def _check_key(self, request: web.Request, key: str) -> web.Response | None:
        if not key:
            bearer = request.headers.get("Authorization", "").startswith("Bearer ")
            hint = " (Bearer tokens are not accepted: send the key as x-api-key)" if bearer else ""
            return _error(401, f"Missing API key: send the x-api-key header{hint}")
        if key not in self.accounts:
            return _error(401, "Invalid API key")
        if key in self.settings.forbidden_keys:
            return _error(403, "Forbidden: this key may not use this model")
        return None

    def _check_model(self, slug: str) -> web.Response | None:
        if slug in self.settings.retired_models:
            return _error(410, f"Model {slug} has been retired")
        if slug not in known_models():
            return _error(404, f"Model {slug} not found")
        return None

    def _rate_limit(self, key: str) -> web.Response | None:
        now = self.clock()
        limiter = self._limiters.setdefault(key, _Limiter())
        while limiter.times and limiter.times[0] <= now - RATE_WINDOW_S:
            limiter.times.popleft()
        if len(limiter.times) >= self.settings.rpm or now < limiter.blocked_until:
            reset = max(limiter.blocked_until, limiter.times[0] + RATE_WINDOW_S if limiter.times else now)
            return self._too_many(reset)
        limiter.times.append(now)
        return None

    def _rate_headers(self, key: str) -> dict[str, str]:
        limiter = self._limiters.setdefault(key, _Limiter())
        reset = limiter.times[0] + RATE_WINDOW_S if limiter.times else self.clock()
        return {
            "x-rate-limit-remaining": str(max(0, self.settings.rpm - len(limiter.times))),
            "x-rate-limit-reset-at-utc": _utc(reset),
        }

    def _too_many(self, reset: float) -> web.Response:
        headers = {"x-rate-limit-remaining": "0", "x-rate-limit-reset-at-utc": _utc(reset)}
        if self.settings.retry_after:
            headers["Retry-After"] = str(max(0, round(reset - self.clock())))
        return _error(429, "Rate limit exceeded, please slow down", headers)

    def _fault_answer(self, fault: Fault) -> web.Response:
        if fault.status == 429:
            return self._too_many(self.clock() + self.settings.fault_429_reset_s)
        messages = {
            500: "Internal server error",
            502: "Bad gateway",
            503: "Service unavailable",
            504: "Gateway timeout",
        }
        return _error(fault.status, messages.get(fault.status, f"Error {fault.status}"))

    # --- poll, fetch, download ----------------------------------------------------------------------------

    async def status(self, request: web.Request) -> web.StreamResponse:
        """``GET /v2/requests/{id}/status``."""
        found = await self._lookup(request, "status")
        if isinstance(found, web.StreamResponse):
            return found
        state = found.status_at(self.clock())
        if state == "FAILED":
            return _failed(found)
        return web.json_response({"status": state, "request_id": found.request_id, "metrics": {}})

    async def result(self, request: web.Request) -> web.StreamResponse:
        """``GET /v2/requests/{id}``: the output URL and the metrics once completed."""
        found = await self._lookup(request, "result")
        if isinstance(found, web.StreamResponse):
            return found
        state = found.status_at(self.clock())
        if state == "FAILED":
            return _failed(found)
        if state != "COMPLETED":
            return web.json_response({"status": state, "request_id": found.request_id})
        metrics = {
            "cost": usd(found.price_micros),
            "remaining_credits": usd(self.accounts[found.key].balance_micros),
            "inference_time": round(found.due - found.created, 3),
        }
        url = f"{_origin(request)}/files/{found.request_id}.mp4"
        return web.json_response(
            {"status": "COMPLETED", "request_id": found.request_id, "output": url, "metrics": metrics}
        )

    async def _lookup(self, request: web.Request, route: str) -> Generation | web.StreamResponse:
        redirected = self._redirect(request)
        if redirected:
            return redirected
        key = request.headers.get("x-api-key", "")
        refused = self._check_key(request, key)
        if refused:
            return refused
        self._advance()
        fault = self.faults.next(route)
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(self.settings.slow_first_byte_s)
        if fault is not None and fault.kind == "status":
            return self._fault_answer(fault)
        if fault is not None and fault.kind == "junk":  # a proxy in the way answers its own page, with a 200
            return web.Response(text=JUNK_PAGE, content_type="text/html")
        generation = self.generations.get(request.match_info["request_id"])
        if generation is None or generation.key != key or self.clock() - generation.created > self.settings.ttl_s:
            return _error(404, "Request not found or expired")
        return generation

    def _redirect(self, request: web.Request) -> web.Response | None:
        """With ``redirect_polls_to``, a 307 to that origin and the same path, before any key check or fault."""
        origin = self.settings.redirect_polls_to.rstrip("/")
        if not origin:
            return None
        return web.Response(status=307, headers={"Location": f"{origin}{request.rel_url}"})

    async def download(self, request: web.Request) -> web.StreamResponse:
        """``GET /files/{id}.mp4``: the video, streamed; a download fault breaks it part-way, or stalls it."""
        self._advance()
        generation = self.generations.get(request.match_info["request_id"])
        if generation is None or generation.state != "COMPLETED":
            return _error(404, "File not found")
        fault = self.faults.next("download")
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(self.settings.slow_first_byte_s)
        clip = self._clip(generation)
        response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        response.content_length = padded_size(clip, self.settings.video_size_bytes)
        stalled = fault is not None and fault.kind == "stall"
        try:
            await response.prepare(request)
            whole = await (self._stall(response, clip) if stalled else self._video(response, clip, fault))
        except ConnectionError:  # the client went away (a killed runner): nothing to answer
            return response
        if not whole:
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response

    async def _video(self, response: web.StreamResponse, clip: bytes, fault: Fault | None) -> bool:
        """Write the video, up to where a ``drop`` or ``short`` fault cuts it; whether all of it went."""
        total = padded_size(clip, self.settings.video_size_bytes)
        cut = int(total * fault.at) if fault is not None and fault.kind in ("drop", "short") else total
        sent = 0
        for chunk in padded_chunks(clip, self.settings.video_size_bytes):
            part = chunk[: max(0, cut - sent)]
            await self._send(response, part, first=sent == 0)
            sent += len(part)
            if sent >= cut:
                break
        return sent == total

    async def _stall(self, response: web.StreamResponse, clip: bytes) -> bool:
        """The headers (with the whole ``Content-Length``) at once, then one byte per ``stall_gap_s``: a download
        that never times out on a per-read deadline. Stops when the client goes or the simulator closes.
        (A prepared ``StreamResponse`` has sent its headers already: aiohttp holds back only a ``Response``'s.)"""
        for chunk in padded_chunks(clip, self.settings.video_size_bytes):
            for index in range(len(chunk)):
                if not await self._pause(self.settings.stall_gap_s):
                    return False
                await response.write(chunk[index : index + 1])
        return True

    async def _pause(self, seconds: float) -> bool:
        """Wait ``seconds``, or less if the simulator closes meanwhile; whether it is still open."""
        with suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), seconds)
        return not self._closed.is_set()

    def _clip(self, generation: Generation) -> bytes:
        model = load_model(generation.model)
        spec = clip_spec(generation.payload, model)
        # The picture follows the prompt and the request, so that two takes of one prompt differ too.
        palette = palette_of(f"{generation.payload.get('prompt')}:{generation.request_id}")
        asset = self.assets.get(_asset_name(first_frame(generation.payload, model)) or "")
        image = asset[0] if asset else None
        return make_clip(spec.seconds, spec.aspect_ratio, spec.audio, palette, image, self.settings.resolution)

    def _unfetchable(self, model: Model, payload: dict[str, Any]) -> str | None:
        """The 400 of a request naming a file of this storage that it does not have (the provider fetches every
        image a request names; this stand-in can only look in its own storage)."""
        for slot, url in image_slots(payload, model.request_schema):
            name = _asset_name(url)
            if name is not None and name not in self.assets:
                where = ".".join(map(str, slot))
                return f"Invalid value for '{where}': could not fetch the image at {url}"
        return None

    # --- the storage (Segmind's SDK: files.py) -------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.StreamResponse:
        """``POST /upload-asset``: keep each file of ``data_urls``; answer the URL of each."""
        key = request.headers.get("x-api-key", "")
        refused = self._check_key(request, key)
        if refused:
            return refused
        body = await _json_body(request)
        fault = self.faults.next("upload")
        if fault is not None and fault.kind == "slow" and not await self._pause(self.settings.slow_first_byte_s):
            return _drop(request)  # the simulator is closing
        if fault is not None and fault.kind == "status":
            return self._fault_answer(fault)
        data_urls = body.get("data_urls") if isinstance(body, dict) else None
        if not isinstance(data_urls, list) or not data_urls or not all(isinstance(u, str) for u in data_urls):
            return _error(400, "data_urls: a list of base64 data URLs is required")
        files = [_decode_data_url(url) for url in data_urls]
        if any(file is None for file in files):
            return _error(400, "data_urls: every item must be a base64 data URL of an image (PNG, JPEG or WebP)")
        names = []
        for data, mime in (file for file in files if file is not None):
            name = self._store_asset(data, mime)
            upload = Upload(hashlib.sha256(data).hexdigest(), len(data), self.clock())
            self.accounts[key].uploads.append(upload)
            record = {"type": "upload", "key": key, "mime": mime, "data": base64.b64encode(data).decode("ascii")}
            self._log({**record, **vars(upload)})
            names.append(f"{_origin(request)}/assets/{name}")
        if fault is not None and fault.kind == "drop":
            return _drop(request)  # kept, and the answer lost: the client cannot tell, and uploads again
        return web.json_response({"file_urls": names, "message": "Files uploaded successfully"})

    def _store_asset(self, data: bytes, mime: str) -> str:
        name = f"{hashlib.sha256(data).hexdigest()}.{EXTENSIONS[mime]}"
        self.assets[name] = (data, mime)
        return name

    async def asset(self, request: web.Request) -> web.StreamResponse:
        """``GET /assets/{name}``: a stored file (no key needed: the storage's URLs are public)."""
        stored = self.assets.get(request.match_info["name"])
        if stored is None:
            return _error(404, "Not found")
        return web.Response(body=stored[0], content_type=stored[1])

    # --- the request history (Segmind's SDK: generations.py) ------------------------------------------------

    def _history_row(self, generation: Generation, origin: str) -> dict[str, Any]:
        """One request as the history records it, in the row shape of ``history_shape``."""
        state = generation.status_at(self.clock())
        completed = state == "COMPLETED"
        row = {
            "request_id": generation.request_id,
            "model_name": generation.model,
            "model_status": "PENDING" if state in ("QUEUED", "PROCESSING") else state,
            "credits_deduction": usd(generation.price_micros) if completed else 0.0,
            "request_body": generation.payload,
            "generation_url": f"{origin}/files/{generation.request_id}.mp4" if completed else None,
            "latency_ms": round((generation.due - generation.created) * 1000) if generation.settled else None,
            "created_at": _utc(generation.created),
            "updated_at": _utc(generation.due if generation.settled else generation.created),
            "error": "Generation failed: content could not be rendered" if state == "FAILED" else None,
        }
        return _shape_row(row, generation, self.settings.history_shape)

    def _visible(self, generation: Generation, key: str) -> bool:
        return generation.key == key and self.clock() >= generation.created + self.settings.history_lag_s

    async def history_list(self, request: web.Request) -> web.StreamResponse:
        """``GET /inference-request/request-history``: every request of the key, paginated, in a date window."""
        key = request.headers.get("x-api-key", "")
        refused = self._check_key(request, key)
        if refused:
            return refused
        self._advance()
        query = request.query
        window = self._history_window(query)
        if isinstance(window, web.Response):
            return window
        page, per_page, from_date, to_date = window
        matching = [
            g
            for g in self.generations.values()
            if self._visible(g, key) and from_date <= datetime.fromtimestamp(g.created, UTC).date() <= to_date
        ]
        matching.sort(key=lambda g: g.created, reverse=query.get("sort_order", "desc") == "desc")
        origin = _origin(request)
        rows = [
            row
            for row in (self._history_row(g, origin) for g in matching)
            if query.get("model_name") in (None, row["model_name"])
            and query.get("status") in (None, row["model_status"])
        ]
        start = (page - 1) * per_page
        return web.json_response(
            _history_page(rows[start : start + per_page], page, per_page, len(rows), self.settings.history_shape)
        )

    def _history_window(self, query: Any) -> tuple[int, int, date, date] | web.Response:
        """The page, its size and the date window a history query asks for, or the 400 of a bad one."""
        try:
            page, per_page = int(query.get("page", "1")), int(query.get("per_page", "100"))
            today = datetime.fromtimestamp(self.clock(), UTC).date()
            to_date = date.fromisoformat(query["to_date"]) if "to_date" in query else today
            from_date = date.fromisoformat(query["from_date"]) if "from_date" in query else to_date - timedelta(days=7)
        except ValueError:
            return _error(400, "page and per_page are whole numbers; dates are YYYY-MM-DD")
        if page < 1 or not 1 <= per_page <= 100:
            return _error(400, "page starts at 1; per_page is between 1 and 100")
        if not timedelta(0) <= to_date - from_date <= timedelta(days=31):
            return _error(400, "the date window is at most 31 days, from_date before to_date")
        return page, per_page, from_date, to_date

    async def history_get(self, request: web.Request) -> web.StreamResponse:
        """``GET /inference-request/request-history/{id}``: one request, of any age."""
        key = request.headers.get("x-api-key", "")
        refused = self._check_key(request, key)
        if refused:
            return refused
        self._advance()
        generation = self.generations.get(request.match_info["request_id"])
        if generation is None or not self._visible(generation, key):
            return _error(404, "Request not found")
        return web.json_response(self._history_row(generation, _origin(request)))

    # --- account and books over HTTP ----------------------------------------------------------------------

    async def credits(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/get-user-credits``."""
        key = request.headers.get("x-api-key", "")
        refused = self._check_key(request, key)
        if refused:
            return refused
        self._advance()
        return web.json_response({"credits": usd(self.accounts[key].balance_micros), "free-credits": 0.0})

    async def ledger_json(self, request: web.Request) -> web.StreamResponse:
        """``GET /_sim/ledger``: every account's books."""
        return web.json_response(self.ledger())

    async def top_up_json(self, request: web.Request) -> web.StreamResponse:
        """``POST /_sim/credits`` with ``{"key": ..., "add_usd": ...}``."""
        body = await _json_body(request)
        if not isinstance(body, dict) or body.get("key") not in self.accounts:
            return _error(400, 'expected {"key": <a key of this simulator>, "add_usd": <number>}')
        self.add_credits(float(body.get("add_usd", 0)), body["key"])
        return web.json_response({"credits": usd(self.accounts[body["key"]].balance_micros)})


@asynccontextmanager
async def running_simulator(
    settings: SimSettings | None = None,
    faults: FaultPlan | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    journal: Path | str | None = None,
) -> AsyncIterator[Simulator]:
    """A simulator serving on ``host:port`` for the duration of the block; its URL is ``.base_url``. With a
    ``journal``, it carries on from the books the file holds and keeps them there."""
    simulator = Simulator(settings, faults, journal=journal)
    await simulator.start(host, port)
    try:
        yield simulator
    finally:
        await simulator.close()


def parse_trickle(text: str) -> tuple[int, float]:
    """``700:4`` (``batchgen simulate --trickle BYTES:MS``) → ``trickle_bytes`` 700, ``trickle_gap_s`` 0.004."""
    size, _, gap_ms = text.partition(":")
    try:
        size_bytes, gap_s = int(size), float(gap_ms) / 1000
    except ValueError:
        size_bytes, gap_s = 0, -1.0
    if size_bytes < 1 or gap_s < 0:
        raise UsageError(f"--trickle takes BYTES:MS, pieces of 1 byte or more and a gap, e.g. 700:4 (got {text!r})")
    return size_bytes, gap_s


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _append_to_error(response: web.Response, suffix: str) -> None:
    """End the message of a ``{"error": ...}`` JSON body with ``suffix``; any other body is left alone."""
    if response.content_type != "application/json" or not isinstance(response.body, bytes):
        return
    body = json.loads(response.body)
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        response.body = json.dumps({**body, "error": body["error"] + suffix}).encode()


def _shape_row(row: dict[str, Any], generation: Generation, shape: str) -> dict[str, Any]:
    """A history row in ``shape``: ISO ``created_at`` and ``updated_at`` (most shapes), the creation time alone as
    epoch seconds under ``model_created`` (``epoch``), or no time at all (``unknown``)."""
    if shape in ("epoch", "unknown"):
        del row["created_at"], row["updated_at"]
    if shape == "epoch":
        row["model_created"] = round(generation.created, 3)
    return row


def _history_page(rows: list[dict[str, Any]], page: int, per_page: int, total: int, shape: str) -> dict[str, Any]:
    """A page of the request history in ``shape`` (see ``HISTORY_SHAPES``)."""
    pages = max(1, -(-total // per_page))
    if shape == "items":
        return {"items": rows, "page": page, "per_page": per_page, "total": total}
    if shape == "results":
        return {"results": rows, "has_more": page < pages}
    if shape == "unknown":
        return {"records": rows, "page": page}
    return {"data": rows, "page": page, "per_page": per_page, "total": total, "total_pages": pages}


def _failed(generation: Generation) -> web.Response:
    body = {
        "status": "FAILED",
        "error": "Generation failed: content could not be rendered",
        "request_id": generation.request_id,
    }
    return web.json_response(body, status=422)


def _asset_name(url: Any) -> str | None:
    """The file name of a URL of this simulator's storage (``…/assets/<sha256>.<ext>``), ``None`` for any other."""
    if not isinstance(url, str) or "/assets/" not in url:
        return None
    name = url.rsplit("/assets/", 1)[1]
    return name if re.fullmatch(r"[0-9a-f]{64}\.(png|jpg|webp)", name) else None


def _decode_data_url(url: str) -> tuple[bytes, str] | None:
    """The bytes and type of a ``data:<type>;base64,<data>`` URL of an image, ``None`` for anything else."""
    head, _, encoded = url.partition(",")
    if not head.startswith("data:") or not head.endswith(";base64"):
        return None
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    mime = sniff(data[:16])
    return (data, mime) if mime is not None else None


def _drop(request: web.Request) -> web.StreamResponse:
    """Close the connection without an answer: the client cannot tell whether it was accepted."""
    if request.transport is not None:  # None: the client has gone already
        request.transport.close()
    return web.Response()


def _origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError:  # not JSON, or not UTF-8
        return None


@cache
def _request_validator(model: str) -> Any:
    return make_validator(load_model(model).request_schema)


def _invalid(model: str, payload: dict[str, Any]) -> str | None:
    """The provider's 400 message for an invalid body, naming the failing field; ``None`` when valid."""
    validator = _request_validator(model)
    error = next(iter(sorted(validator.iter_errors(payload), key=lambda e: list(map(str, e.absolute_path)))), None)
    if error is None:
        return None
    field_name = ".".join(str(part) for part in error.absolute_path) or "body"
    return f"Invalid value for '{field_name}': {error.message}"
