"""The provider's HTTP protocol (v1 and v2): the only user of aiohttp's client.

Every error of aiohttp is mapped here, at one seam (``_exchange``), to an :class:`AnswerError` carrying the
:class:`Decision` of ``decisions.classify``. The API key is sent only to the API's own base URL, never to the
hosts videos are downloaded from, and it appears in no message.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import aiohttp
from yarl import URL

from batchgen.decisions import Decision, classify, provider_message
from batchgen.errors import ProviderError

DEFAULT_BASE_URL = "https://api.segmind.com"
DEFAULT_HISTORY_URL = "https://api.spotprod.segmind.com"
HISTORY_PATH = "/inference-request/request-history"
HISTORY_WINDOW_DAYS = 31
CHUNK = 1 << 16
MAX_JSON_BYTES = 1 << 20
MAX_REDIRECTS = 5


class AnswerError(ProviderError):
    """An attempt ended on an answer (or a silence) of the provider; ``decision`` says what it means."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        super().__init__(decision.message)


class Sink(Protocol):
    """Where downloaded bytes go (``outputs.PartFile``)."""

    def write(self, chunk: bytes) -> None: ...


@dataclass(frozen=True)
class Submitted:
    """A v2 submit's answer."""

    request_id: str
    status_url: str
    response_url: str


@dataclass(frozen=True)
class Completed:
    """A finished generation: where its video is and what it cost (µUSD, when the provider says)."""

    request_id: str | None
    video_url: str | None
    cost_micros: int | None
    inline: bytes | None = None  # v1: the video arrived in the answer (already written to the sink)


@dataclass(frozen=True)
class HistoryRow:
    """One request as the provider's request history records it."""

    request_id: str
    model: str
    status: str  # COMPLETED, FAILED or PENDING
    cost_micros: int | None
    request_body: Any
    generation_url: str | None
    created_at: float  # epoch seconds

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> HistoryRow | None:
        """A row from the provider's JSON (``None`` when it lacks what matching needs)."""
        request_id, created = data.get("request_id"), data.get("created_at")
        if not isinstance(request_id, str) or not isinstance(created, str):
            return None
        try:
            at = datetime.fromisoformat(created.replace("Z", "+00:00"))
        except ValueError:
            return None
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        url = data.get("generation_url")
        return cls(
            request_id,
            str(data.get("model_name", "")),
            str(data.get("model_status", "")).upper(),
            _cost(data.get("credits_deduction")),
            data.get("request_body"),
            url if isinstance(url, str) and url.startswith(("http://", "https://")) else None,
            at.timestamp(),
        )


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait for each kind of call."""

    submit_s: float = 60.0
    poll_s: float = 30.0
    v1_s: float = 15 * 60.0
    download_read_s: float = 60.0


class Client:
    """Calls one model of the provider with one key."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        model: str,
        *,
        max_video_bytes: int = 2 << 30,
        timeouts: Timeouts | None = None,
        clock: Callable[[], float] = time.time,
        connections: int = 100,
        history_url: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.history_url = history_url.rstrip("/") if history_url else None
        self.model = model
        self.max_video_bytes = max_video_bytes
        self.timeouts = timeouts or Timeouts()
        self.clock = clock
        self._key = api_key
        self._connections = connections
        self._api: aiohttp.ClientSession | None = None
        self._files: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never the key
        return f"Client({self.base_url!r}, model={self.model!r})"

    async def __aenter__(self) -> Client:
        connector = aiohttp.TCPConnector(limit=self._connections)
        self._api = aiohttp.ClientSession(headers={"x-api-key": self._key}, connector=connector)
        self._files = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self._connections))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for session in (self._api, self._files):
            if session is not None:
                await session.close()

    # --- v2 -----------------------------------------------------------------------------------------------

    async def submit(self, payload: Mapping[str, Any]) -> Submitted:
        """``POST /v2/{model}``: the request id and the URLs to poll."""
        async with self._exchange(
            "submit", "POST", f"{self.base_url}/v2/{self.model}", self.timeouts.submit_s, json=payload
        ) as response:
            try:
                data = await _json_of(response, "submit")
            except AnswerError as exc:  # a 200 we cannot read may still have started (and billed) a generation
                raise AnswerError(replace(exc.decision, billed="unknown", status=200)) from None
        request_id = data.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise AnswerError(Decision("retry", "unknown", f"the submit answer has no request_id: {_show(data)}", 200))
        return Submitted(
            request_id,
            _url_or(data.get("status_url"), f"{self.base_url}/v2/requests/{request_id}/status"),
            _url_or(data.get("response_url"), f"{self.base_url}/v2/requests/{request_id}"),
        )

    async def status(self, status_url: str) -> str:
        """``GET status_url``: QUEUED, PROCESSING or COMPLETED (FAILED raises, as the provider answers 422)."""
        async with self._exchange("poll", "GET", status_url, self.timeouts.poll_s) as response:
            data = await _json_of(response, "poll")
        status = str(data.get("status", "")).upper()
        if status == "FAILED":
            raise AnswerError(_failed(data))
        if status not in ("QUEUED", "PROCESSING", "COMPLETED"):
            raise _protocol(f"unknown status in {_show(data)}")
        return status

    async def result(self, response_url: str) -> Completed | None:
        """``GET response_url``: the video URL and the cost, or ``None`` while not completed."""
        async with self._exchange("result", "GET", response_url, self.timeouts.poll_s) as response:
            data = await _json_of(response, "result")
        status = str(data.get("status", "")).upper()
        if status == "FAILED":
            raise AnswerError(_failed(data))
        if status != "COMPLETED":
            return None
        metrics = data["metrics"] if isinstance(data.get("metrics"), dict) else {}
        return Completed(_str(data.get("request_id")), _video_url(data), _cost(metrics.get("cost")))

    # --- v1 -----------------------------------------------------------------------------------------------

    async def generate(
        self, payload: Mapping[str, Any], sink: Sink, on_billed: Callable[[Completed], None]
    ) -> Completed:
        """``POST /v1/{model}``: wait for the video; bytes go to ``sink``, a URL is returned for download.

        ``on_billed`` is called as soon as a 200 arrives (the clip is paid), before the body is read.
        """
        url = f"{self.base_url}/v1/{self.model}"
        async with self._exchange("submit", "POST", url, self.timeouts.v1_s, json=payload) as response:
            billed = Completed(response.headers.get("x-request-id"), None, _cost(response.headers.get("x-cost")))
            on_billed(billed)
            if response.content_type.startswith("video/"):
                await self._stream(response, sink)
                return billed
            if response.content_type != "application/json":
                head = await response.content.read(200)
                raise _protocol(f"the answer is neither a video nor JSON ({response.content_type}): {_text(head)}")
            data = await _json_of(response, "submit", limit=self.max_video_bytes * 4 // 3 + MAX_JSON_BYTES)
        video_url = _video_url(data)
        if video_url:
            return Completed(billed.request_id, video_url, billed.cost_micros)
        encoded = data.get("output") or data.get("video")
        if isinstance(encoded, str):
            try:
                sink.write(base64.b64decode(encoded, validate=True))
            except (binascii.Error, ValueError):
                raise _protocol(f"the answer names no video: {_show(data)}") from None
            return billed
        raise _protocol(f"the answer names no video: {_show(data)}")

    # --- download and account -----------------------------------------------------------------------------

    async def download(self, url: str, sink: Sink) -> int:
        """Stream the video at ``url`` into ``sink``; the byte count. No API key is sent to file hosts."""
        if URL(url).scheme not in ("http", "https"):
            raise AnswerError(Decision("fail_job", "no", f"the video URL is not http(s): {url[:100]}"))
        async with self._exchange("download", "GET", url, None, files=True) as response:
            if response.content_type in ("text/html", "application/json", "text/plain"):
                head = await response.content.read(200)
                raise _protocol(f"the download is not a video ({response.content_type}): {_text(head)}")
            return await self._stream(response, sink)

    async def credits(self) -> float:
        """``GET /v1/get-user-credits``: the account's balance in USD (credits + free credits)."""
        async with self._exchange("credits", "GET", f"{self.base_url}/v1/get-user-credits", 30.0) as response:
            data = await _json_of(response, "credits")
        return float(data.get("credits") or 0) + float(data.get("free-credits") or 0)

    # --- the request history ------------------------------------------------------------------------------

    async def history_get(self, request_id: str) -> HistoryRow | None:
        """The provider's record of one request, of any age; ``None`` when it does not know it (yet)."""
        url = f"{self._history()}{HISTORY_PATH}/{request_id}"
        try:
            async with self._exchange("history", "GET", url, 30.0) as response:
                data = await _json_of(response, "history")
        except AnswerError as exc:
            if exc.decision.status == 404:
                return None
            raise
        return HistoryRow.parse(data)

    async def history_since(self, since: float) -> list[HistoryRow]:
        """Every request of this model created since ``since`` (epoch), all pages, one row per request id.

        The window starts on the day of ``since`` (at most 31 days back, as the provider allows).
        """
        today = datetime.fromtimestamp(self.clock(), UTC).date()
        start = max(datetime.fromtimestamp(since, UTC).date(), today - timedelta(days=HISTORY_WINDOW_DAYS))
        rows: dict[str, HistoryRow] = {}
        page, pages = 1, 1
        while page <= pages:
            query = {
                "page": page,
                "per_page": 100,
                "from_date": start.isoformat(),
                "to_date": today.isoformat(),
                "model_name": self.model,
                "sort_by": "model_created",
                "sort_order": "desc",
            }
            async with self._exchange(
                "history", "GET", f"{self._history()}{HISTORY_PATH}", 30.0, params=query
            ) as response:
                data = await _json_of(response, "history")
            for item in data.get("data") or []:
                row = HistoryRow.parse(item) if isinstance(item, dict) else None
                if row is not None and row.created_at >= since:
                    rows.setdefault(row.request_id, row)  # a request with several outputs shows once per output
            pages = int(data.get("total_pages") or 1)
            page += 1
        return list(rows.values())

    def _history(self) -> str:
        if not self.history_url:
            raise AnswerError(Decision("retry", "no", "no request-history URL is set"))
        return self.history_url

    async def _stream(self, response: aiohttp.ClientResponse, sink: Sink) -> int:
        declared = response.content_length
        if declared is not None and declared > self.max_video_bytes:
            raise _protocol(f"the video is {declared:,} bytes, over the cap of {self.max_video_bytes:,}")
        received = 0
        try:
            async for chunk in response.content.iter_chunked(CHUNK):
                received += len(chunk)
                if received > self.max_video_bytes:
                    raise _protocol(f"the video passed the cap of {self.max_video_bytes:,} bytes")
                sink.write(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            message = f"the download broke after {received:,} bytes: {_reason(exc)}"
            raise AnswerError(Decision("retry", "no", message)) from None
        if declared is not None and received != declared:
            raise AnswerError(Decision("retry", "no", f"the body has {received:,} of {declared:,} announced bytes"))
        if received == 0:
            raise _protocol("the answer is empty")
        return received

    @asynccontextmanager
    async def _exchange(
        self, phase: str, method: str, url: str, timeout_s: float | None, *, files: bool = False, **kwargs: Any
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One request; a non-2xx answer or any error of aiohttp becomes an :class:`AnswerError`."""
        session = self._files if files else self._api
        assert session is not None, "use the client as an async context manager"
        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_read=self.timeouts.download_read_s if files else None)
        try:
            async with session.request(method, url, timeout=timeout, max_redirects=MAX_REDIRECTS, **kwargs) as response:
                if response.status >= 300:
                    body = await response.content.read(4096)
                    raise AnswerError(classify(phase, response.status, response.headers, body, self.clock()))
                yield response
        except aiohttp.ClientConnectorError as exc:
            raise AnswerError(classify(phase, None, {}, "unsent", self.clock()).with_message(_reason(exc))) from None
        except aiohttp.TooManyRedirects:
            raise AnswerError(Decision("fail_job" if files else "retry", "no", "too many redirects")) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AnswerError(classify(phase, None, {}, "", self.clock()).with_message(_reason(exc))) from None


def _reason(exc: BaseException) -> str:
    name = type(exc).__name__
    text = str(exc).split("\n", 1)[0][:200]
    return f"{name}: {text}" if text else name


def _failed(data: Mapping[str, Any]) -> Decision:
    """A FAILED generation, however it was told: the same decision as the provider's 422."""
    return Decision("retry", "no", str(data.get("error") or "the generation failed"), 422)


def _protocol(message: str) -> AnswerError:
    return AnswerError(Decision("retry", "no", message))


async def _json_of(response: aiohttp.ClientResponse, phase: str, limit: int = MAX_JSON_BYTES) -> dict[str, Any]:
    raw = await response.content.read(limit + 1)
    if len(raw) > limit:
        raise _protocol(f"the {phase} answer is larger than {limit:,} bytes")
    try:
        data = json.loads(raw)
    except ValueError:
        raise _protocol(f"the {phase} answer is not JSON: {provider_message(response.status, raw, 120)}") from None
    if not isinstance(data, dict):
        raise _protocol(f"the {phase} answer is not a JSON object: {_show(data)}")
    return data


def _video_url(data: Mapping[str, Any]) -> str | None:
    for key in ("output", "video", "url"):
        value = data.get(key)
        if isinstance(value, list) and value:
            value = value[0]
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            return value
    return None


def _url_or(value: Any, default: str) -> str:
    return value if isinstance(value, str) and value.startswith(("http://", "https://")) else default


def _cost(value: Any) -> int | None:
    try:
        cost = float(value)
    except (TypeError, ValueError):
        return None
    return round(cost * 1_000_000) if 0 <= cost < 10_000 else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _show(data: Any) -> str:
    return json.dumps(data)[:200]


def _text(raw: bytes) -> str:
    return " ".join(raw.decode("utf-8", "replace").split())[:120] or "(empty)"
