"""Segmind's HTTP protocol (v1 and v2, the request history, the storage): the only user of aiohttp's client, and
the :class:`~batchgen.provider.Provider` the runner uses.

Every error of aiohttp is mapped here, at one seam (``_exchange``), to an :class:`AnswerError` carrying the
:class:`Decision` of ``decisions.classify``. What holds off loopback (``DESIGN.md``, invariants 6-8):

- **The key stays home.** ``x-api-key`` goes only to the origins the user configured (the API's base URL, the
  request history's and the storage's, where local images are uploaded). Poll and result URLs are derived from the
  base URL and the request id, as Segmind's SDK derives them, never taken from an answer; video URLs on other hosts
  are fetched without the key. Redirects are followed here, hop by hop: a hop to another origin drops the key, and
  one from https to plain http is refused.
  Any text of the provider is stripped of the key before it leaves this module (a provider may quote it back).
- **An answer is read whole**, to its end, under a size cap, however many pieces it arrives in; a partial read is
  never data.
- **Every wait is bounded.** Each call has a timeout; a download must keep above a floor of bytes per second over a
  window and end before a deadline proportionate to its size.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Concatenate, ParamSpec, TypeVar

import aiohttp
from yarl import URL

from batchgen.decisions import Decision, classify, provider_message
from batchgen.history import HistoryRow, HistoryShapeError, parse_cost, parse_page, parse_row
from batchgen.provider import AnswerError, Completed, Sink

DEFAULT_BASE_URL = "https://api.segmind.com"
DEFAULT_HISTORY_URL = "https://api.spotprod.segmind.com"
# Segmind's storage, as its SDK uploads to it (segmind 1.3.0, ``Files.STORAGE_BASE_URL`` + "/upload-asset", JSON
# ``{"data_urls": [...]}`` answered ``{"file_urls": [...]}``); the pages do not document it.
DEFAULT_UPLOAD_URL = "https://workflows-api.segmind.com"
UPLOAD_PATH = "/upload-asset"
HISTORY_PATH = "/inference-request/request-history"
HISTORY_WINDOW_DAYS = 31
HISTORY_PER_PAGE = 100
MAX_HISTORY_PAGES = 2_000  # 200,000 requests in the window: a provider that always says "more" is stopped here
MAX_JSON_BYTES = 1 << 20
MAX_ERROR_BYTES = 64 << 10  # an error body is read up to this much (whole, when it is smaller), then cut
MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)
REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")
# aiohttp quotes its inner errors as reprs (<ContentLengthError: 400, message='Not enough data ...'>): their words
_LIBRARY_REPR = re.compile(r"<\w+: \d+, message='([^']*)'>")
REDACTED = "[the API key]"  # what stands where the provider quoted the key
SHORTEST_REDACTED_KEY = 6  # a shorter "key" (a test's "k") would blank every such letter of every message
P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait for each kind of call, and the progress a download must keep.

    A download slower than ``download_floor_bps`` over any ``download_window_s`` (or silent that long) is
    abandoned, and so is one not over by ``download_grace_s`` + its size at the floor's rate.
    """

    submit_s: float = 60.0
    poll_s: float = 30.0
    v1_s: float = 15 * 60.0
    download_floor_bps: float = 16 * 1024
    download_window_s: float = 30.0
    download_grace_s: float = 60.0

    def download_deadline_s(self, size: int) -> float:
        """How long a download of ``size`` bytes may take at most."""
        return self.download_grace_s + size / self.download_floor_bps


def _redacting(
    method: Callable[Concatenate[Client, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[Client, P], Coroutine[Any, Any, R]]:
    """Strip the key from the message of any :class:`AnswerError` a public method raises."""

    @functools.wraps(method)
    async def wrapper(client: Client, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(client, *args, **kwargs)
        except AnswerError as exc:
            raise AnswerError(exc.decision.with_message(client.redact(exc.decision.message))) from exc

    return wrapper


class Client:
    """Calls the provider's models with one key (each call names its model)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        max_video_bytes: int = 2 << 30,
        timeouts: Timeouts | None = None,
        clock: Callable[[], float] = time.time,
        connections: int = 100,
        history_url: str | None = None,
        upload_url: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.history_url = history_url.rstrip("/") if history_url else None
        self.upload_url = upload_url.rstrip("/") if upload_url else None
        self.max_video_bytes = max_video_bytes
        self.timeouts = timeouts or Timeouts()
        self.clock = clock
        self.reached_at: float | None = None  # when the API's origin last answered anything (``clock`` time)
        self._key = api_key
        origins = [self.base_url, *(url for url in (self.history_url, self.upload_url) if url)]
        self._trusted = {_origin(URL(origin)) for origin in origins}
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never the key
        return f"Client({self.base_url!r})"

    async def __aenter__(self) -> Client:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self._connections))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def host(self) -> str:
        """The API's host, for messages."""
        return URL(self.base_url).host or self.base_url

    @property
    def upload_host(self) -> str:
        """The storage's host, for messages."""
        return (URL(self.upload_url).host or self.upload_url) if self.upload_url else "(none set)"

    def redact(self, text: str) -> str:
        """``text`` without the key."""
        if len(self._key) < SHORTEST_REDACTED_KEY:
            return text
        return text.replace(self._key, REDACTED)

    def scrub(self, body: bytes) -> bytes:
        """A body as received, without the key: done before anything of it is cut, parsed or quoted (a quote cut
        short would keep part of the key)."""
        if len(self._key) < SHORTEST_REDACTED_KEY:
            return body
        return body.replace(self._key.encode(), REDACTED.encode())

    def _keyless(self, url: str | None, what: str = "video URL") -> str | None:
        """A URL the provider named (of a video, of an uploaded file), refused when it carries the key: it would be
        stored, and sent to the host it names (the key goes only to the hosts the user named)."""
        if _carries_key(url):
            raise _protocol(f"the provider named a {what} that carries the API key: it is not used")
        return url

    def _row(self, row: HistoryRow) -> HistoryRow:
        """A history row whose generation URL carries the key has none usable."""
        if _carries_key(row.generation_url):
            return replace(row, generation_url=None)
        return row

    def _reason(self, exc: BaseException) -> str:
        """An error of aiohttp in a few words (its text stripped of the key, then cut)."""
        text = _LIBRARY_REPR.sub(r"\1", self.redact(str(exc)).split("\n", 1)[0])[:200]
        if text:
            return text
        return "no answer in time" if isinstance(exc, TimeoutError) else f"the connection failed ({type(exc).__name__})"

    def trusts(self, url: str | URL) -> bool:
        """Whether ``url`` is on an origin the user sent the key to."""
        return _origin(URL(url)) in self._trusted

    # --- v2 -----------------------------------------------------------------------------------------------

    @_redacting
    async def submit(self, model: str, payload: Mapping[str, Any]) -> str:
        """``POST /v2/{model}``: the request id (the URLs of the answer are not used: see the module's doc)."""
        async with self._exchange(
            "submit", "POST", f"{self.base_url}/v2/{model}", self.timeouts.submit_s, json=payload
        ) as response:
            try:
                data = await _json_of(response, "submit", scrub=self.scrub)
            except AnswerError as exc:  # a 200 we cannot read may still have started (and billed) a generation
                raise AnswerError(replace(exc.decision, billed="unknown", status=200)) from None
        request_id = data.get("request_id")
        if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
            what = "an unusable request_id" if isinstance(request_id, str) and request_id else "no request_id"
            message = f"the submit answer has {what}: {_show(data)}"
            raise AnswerError(Decision("retry", "unknown", message, 200, cause="unreadable"))
        return request_id

    def status_url(self, request_id: str) -> str:
        """Where a request's status is: derived from the base URL, as Segmind's SDK derives it."""
        return str(URL(self.base_url) / "v2" / "requests" / request_id / "status")

    def result_url(self, request_id: str) -> str:
        """Where a request's result is."""
        return str(URL(self.base_url) / "v2" / "requests" / request_id)

    @_redacting
    async def status(self, request_id: str) -> str:
        """The request's status: QUEUED, PROCESSING or COMPLETED (FAILED raises, as the provider answers 422)."""
        async with self._exchange("poll", "GET", self.status_url(request_id), self.timeouts.poll_s) as response:
            data = await _json_of(response, "status", scrub=self.scrub)
        status = str(data.get("status", "")).upper()
        if status == "FAILED":
            raise AnswerError(_failed(data))
        if status not in ("QUEUED", "PROCESSING", "COMPLETED"):
            raise _protocol(f"unknown status in the status answer {_show(data)}")
        return status

    @_redacting
    async def result(self, request_id: str) -> Completed | None:
        """The video URL and the cost of a request, or ``None`` while it is not completed."""
        async with self._exchange("result", "GET", self.result_url(request_id), self.timeouts.poll_s) as response:
            data = await _json_of(response, "result", scrub=self.scrub)
        status = str(data.get("status", "")).upper()
        if status == "FAILED":
            raise AnswerError(_failed(data))
        if status != "COMPLETED":
            return None
        metrics = data["metrics"] if isinstance(data.get("metrics"), dict) else {}
        video_url = self._keyless(_video_url(data))
        return Completed(_str(data.get("request_id")), video_url, *parse_cost(metrics.get("cost")))

    # --- v1 -----------------------------------------------------------------------------------------------

    @_redacting
    async def generate(
        self, model: str, payload: Mapping[str, Any], sink: Sink, on_billed: Callable[[Completed], None]
    ) -> Completed:
        """``POST /v1/{model}``: wait for the video; bytes go to ``sink``, a URL is returned for download.

        ``on_billed`` is called as soon as a 200 arrives (the clip is paid), before the body is read.
        """
        url = f"{self.base_url}/v1/{model}"
        async with self._exchange("submit", "POST", url, self.timeouts.v1_s, json=payload) as response:
            billed = Completed(response.headers.get("x-request-id"), None, *parse_cost(response.headers.get("x-cost")))
            on_billed(billed)
            if response.content_type.startswith("video/"):
                await self._stream(response, sink)
                return billed
            if response.content_type != "application/json":
                head = self.scrub(await _read_capped(response, 200))
                raise _protocol(f"the answer is neither a video nor JSON ({response.content_type}): {_text(head)}")
            data = await _json_of(
                response, "submit", limit=self.max_video_bytes * 4 // 3 + MAX_JSON_BYTES, scrub=self.scrub
            )
        video_url = self._keyless(_video_url(data))
        if video_url:
            return replace(billed, video_url=video_url)
        encoded = data.get("output") or data.get("video")
        if isinstance(encoded, str):
            try:
                sink.write(base64.b64decode(encoded, validate=True))
            except (binascii.Error, ValueError):
                raise _protocol(f"the answer names no video: {_show(data)}") from None
            return billed
        raise _protocol(f"the answer names no video: {_show(data)}")

    # --- download and account -----------------------------------------------------------------------------

    @_redacting
    async def download(self, url: str, sink: Sink) -> int:
        """Stream the video at ``url`` into ``sink``; the byte count. No key is sent to hosts the user did not name."""
        if URL(url).scheme not in ("http", "https"):
            raise AnswerError(Decision("fail_job", "no", f"the video URL is not http(s): {url[:100]}"))
        async with self._exchange("download", "GET", url, None) as response:
            if response.content_type in ("text/html", "application/json", "text/plain"):
                head = self.scrub(await _read_capped(response, 200))
                raise _protocol(f"the download is not a video ({response.content_type}): {_text(head)}")
            return await self._stream(response, sink)

    @_redacting
    async def credits(self) -> float:
        """``GET /v1/get-user-credits``: the account's balance in USD (credits + free credits)."""
        async with self._exchange("credits", "GET", f"{self.base_url}/v1/get-user-credits", 30.0) as response:
            data = await _json_of(response, "credits", scrub=self.scrub)
        try:
            return float(data.get("credits") or 0) + float(data.get("free-credits") or 0)
        except (TypeError, ValueError):
            raise _protocol(f"the balance is not a number: {_show(data)}") from None

    # --- the request history ------------------------------------------------------------------------------

    @_redacting
    async def history_get(self, request_id: str) -> HistoryRow | None:
        """The provider's record of one request, of any age; ``None`` when it does not know it (yet)."""
        if not REQUEST_ID.fullmatch(request_id):
            return None
        url = str(URL(self._history()) / HISTORY_PATH.strip("/") / request_id)
        try:
            async with self._exchange("history", "GET", url, 30.0) as response:
                data = await _json_of(response, "history", whole=True, scrub=self.scrub)
        except AnswerError as exc:
            if exc.decision.status == 404:
                return None
            raise
        try:
            return self._row(parse_row(data.get("data", data) if isinstance(data, dict) else data))
        except HistoryShapeError as exc:
            raise _unreadable_history(exc) from exc

    @_redacting
    async def upload(self, data_url: str) -> str:
        """Put one file (a ``data:`` URL) in the provider's storage: the URL it answers for it. Free, so an answer
        that is lost is simply asked again."""
        if not self.upload_url:
            raise AnswerError(Decision("stop_run", "no", "no storage URL is set to upload local images to"))
        url = f"{self.upload_url}{UPLOAD_PATH}"
        body = {"data_urls": [data_url]}
        async with self._exchange("upload", "POST", url, self.timeouts.submit_s, json=body) as response:
            data = await _json_of(response, "upload", scrub=self.scrub)
        urls = data.get("file_urls")
        stored = urls[0] if isinstance(urls, list) and len(urls) == 1 else None
        if not isinstance(stored, str) or not _web_url(stored):
            raise AnswerError(
                Decision("retry", "no", f"the upload answer names no file URL: {_show(data)}", 200, cause="unreadable")
            )
        return str(self._keyless(stored, "file URL"))

    @_redacting
    async def history_since(self, since: float, model: str) -> list[HistoryRow]:
        """Every request of ``model`` created since ``since`` (epoch), all pages, one row per request id.

        The window starts on the day of ``since`` (at most 31 days back, as the provider allows). A page in a shape
        batchgen cannot read is an error (``cause`` unreadable), never "no rows".
        """
        today = datetime.fromtimestamp(self.clock(), UTC).date()
        start = max(datetime.fromtimestamp(since, UTC).date(), today - timedelta(days=HISTORY_WINDOW_DAYS))
        rows: dict[str, HistoryRow] = {}
        for page in range(1, MAX_HISTORY_PAGES + 1):
            query = {
                "page": page,
                "per_page": HISTORY_PER_PAGE,
                "from_date": start.isoformat(),
                "to_date": today.isoformat(),
                "model_name": model,
                "sort_by": "model_created",
                "sort_order": "desc",
            }
            url = f"{self._history()}{HISTORY_PATH}"
            async with self._exchange("history", "GET", url, 30.0, params=query) as response:
                data = await _json_of(response, "history", whole=True, scrub=self.scrub)
            try:
                parsed = parse_page(data, page, HISTORY_PER_PAGE)
            except HistoryShapeError as exc:
                raise _unreadable_history(exc) from exc
            for row in parsed.rows:
                if row.created_at >= since and row.model in ("", model):
                    rows.setdefault(
                        row.request_id, self._row(row)
                    )  # a request with several outputs shows once per output
            if not parsed.more:
                return list(rows.values())
        raise _unreadable_history(HistoryShapeError(f"it still said there was more after {MAX_HISTORY_PAGES} pages"))

    def _history(self) -> str:
        if not self.history_url:
            raise AnswerError(Decision("retry", "no", "no request-history URL is set"))
        return self.history_url

    # --- one exchange -------------------------------------------------------------------------------------

    async def _stream(self, response: aiohttp.ClientResponse, sink: Sink) -> int:
        """The body into ``sink``, whole, under the cap, the progress floor and the deadline."""
        # An encoded body (gzip, though identity was asked for) is decoded by aiohttp: its length is not the video's.
        encoded = response.headers.get("Content-Encoding", "identity").lower() not in ("identity", "")
        declared = None if encoded else response.content_length
        if declared is not None and declared > self.max_video_bytes:
            raise _protocol(f"the video is {declared:,} bytes, over the cap of {self.max_video_bytes:,}")
        pace = _Pace(self.timeouts, declared if declared is not None else self.max_video_bytes)
        received = 0
        try:
            while chunk := await pace.next(response.content):
                received += len(chunk)
                if received > self.max_video_bytes:
                    raise _protocol(f"the video passed the cap of {self.max_video_bytes:,} bytes")
                sink.write(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            message = f"the download broke after {received:,} bytes: {self._reason(exc)}"
            raise AnswerError(Decision("retry", "no", message, cause="silence")) from exc
        except _Stalled as exc:
            message = f"the download was abandoned after {received:,} bytes: {exc}"
            raise AnswerError(Decision("retry", "no", message, cause="silence")) from None
        if declared is not None and received != declared:
            raise AnswerError(Decision("retry", "no", f"the body has {received:,} of {declared:,} announced bytes"))
        if received == 0:
            raise _protocol("the answer is empty")
        return received

    @asynccontextmanager
    async def _exchange(
        self, phase: str, method: str, url: str, timeout_s: float | None, **kwargs: Any
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One request, its redirects followed here; a non-2xx answer or any error of aiohttp becomes an
        :class:`AnswerError`. The body is the caller's to read, inside the block."""
        # A download has no total bound (its size sets one, in ``_Pace``), but its headers and each read do: a host that
        # never answers is given up after 1.5 progress windows (``_Pace`` says it first for a body).
        read_s = self.timeouts.download_window_s * 1.5 if timeout_s is None else None
        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=30.0, sock_read=read_s)
        try:
            response, keyed = await self._open(phase, method, URL(url, encoded="%" in url), timeout, kwargs)
            try:
                if response.status >= 300:
                    body = self.scrub(await _read_capped(response, MAX_ERROR_BYTES))
                    raise AnswerError(self._refused(phase, response, body, keyed))
                yield response
            finally:
                response.release()
        except aiohttp.ClientConnectorError as exc:
            decision = classify(phase, None, {}, "unsent", self.clock())
            raise AnswerError(decision.with_message(self._reason(exc))) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AnswerError(classify(phase, None, {}, "", self.clock()).with_message(self._reason(exc))) from exc

    async def _open(
        self, phase: str, method: str, url: URL, timeout: aiohttp.ClientTimeout, kwargs: dict[str, Any]
    ) -> tuple[aiohttp.ClientResponse, bool]:
        """Send the request and follow its redirects: the key only to a trusted origin at each hop, and never from
        https down to plain http. The final answer, and whether it was sent the key."""
        assert self._session is not None, "use the client as an async context manager"
        for _ in range(MAX_REDIRECTS + 1):
            keyed = self.trusts(url)
            headers = {"x-api-key": self._key} if keyed else {}
            if phase == "download":
                headers["Accept-Encoding"] = "identity"  # the bytes as stored: checked, hashed, sized as sent
            response = await self._session.request(
                method, url, headers=headers, timeout=timeout, allow_redirects=False, **kwargs
            )
            if keyed and url.host == URL(self.base_url).host:
                self.reached_at = self.clock()
            location = response.headers.get("Location") if response.status in REDIRECTS else None
            if location is None:
                return response, keyed
            response.release()
            hop = redirect(url, method, response.status, location)
            if isinstance(hop, str):
                action = "fail_job" if phase == "download" else "retry"
                refusal = redirect(url, method, response.status, self.redact(location))  # quoted: without the key
                raise AnswerError(Decision(action, "no", str(refusal), response.status, cause="unreadable"))
            url, method = hop
            if method == "GET":
                kwargs = {key: value for key, value in kwargs.items() if key not in ("json", "data")}
        action = "fail_job" if phase == "download" else "retry"
        raise AnswerError(Decision(action, "no", f"more than {MAX_REDIRECTS} redirects", cause="unreadable"))

    def _refused(self, phase: str, response: aiohttp.ClientResponse, body: bytes, keyed: bool) -> Decision:
        """What a non-2xx answer means. One from a host that was not sent the key says nothing of the key, the
        model or the account: a failed read to try again (a 404 there is no forgotten request either)."""
        if keyed:
            return classify(phase, response.status, response.headers, body, self.clock())
        words = provider_message(response.status, body, 120)
        message = f"{response.url.host} answered HTTP {response.status}: {words}"
        return Decision("retry", "no", message, response.status, cause="unreadable")


def redirect(url: URL, method: str, status: int, location: str) -> tuple[URL, str] | str:
    """Where a redirect leads and with which method (303, and 301/302 after a POST, become a GET, as browsers do);
    or why it is refused: a scheme that is not http(s), or a step down from https to plain http."""
    try:
        target = url.join(URL(location))
        host = target.host
    except ValueError:
        return f"refused a redirect to an invalid URL: {location[:100]!r}"
    if target.scheme not in ("http", "https") or not host:
        return f"refused a redirect to a URL that is not http(s): {location[:100]!r}"
    if url.scheme == "https" and target.scheme != "https":
        return f"refused a redirect from https://{url.host} down to plain http://{host}"
    if status == 303 or (status in (301, 302) and method == "POST"):
        method = "GET"
    return target, method


class _Stalled(Exception):
    """A download fell under the progress floor, or past its deadline."""


class _Pace:
    """The progress a download must keep: the floor over each window, and the deadline (the loop's clock)."""

    def __init__(self, timeouts: Timeouts, size: int) -> None:
        self.floor_bps = timeouts.download_floor_bps
        self.window_s = timeouts.download_window_s
        self.limit_s = timeouts.download_deadline_s(size)
        self.clock = asyncio.get_running_loop().time
        self.window_start = self.clock()
        self.deadline = self.window_start + self.limit_s
        self.window_bytes = 0

    async def next(self, content: aiohttp.StreamReader) -> bytes:
        """The next piece of the body (``b""`` at its end), or :class:`_Stalled`."""
        while True:
            wait = min(self.window_start + self.window_s, self.deadline) - self.clock()
            try:
                async with asyncio.timeout(max(0.0, wait)):
                    chunk = await content.readany()
            except TimeoutError:
                self._check(0)
                continue
            if chunk:
                self._check(len(chunk))
            return chunk

    def _check(self, received: int) -> None:
        now = self.clock()
        if now >= self.deadline:
            raise _Stalled(f"not over within {self.limit_s:.0f} s")
        self.window_bytes += received
        elapsed = now - self.window_start
        if elapsed >= self.window_s:
            if self.window_bytes < self.floor_bps * elapsed:
                raise _Stalled(
                    f"{self.window_bytes:,} bytes in {elapsed:.1f} s, under the floor of "
                    f"{self.floor_bps:,.0f} bytes a second"
                )
            self.window_start, self.window_bytes = now, 0


def _web_url(text: str) -> bool:
    """Whether ``text`` is an http(s) URL with a host, and no credentials in it (a URL yarl cannot read is not)."""
    try:
        url = URL(text)
        return url.scheme in ("http", "https") and bool(url.host) and not url.user and not url.password
    except ValueError:
        return False


def _carries_key(url: str | None) -> bool:
    """Whether a URL the provider named had the key in it (scrubbed when its answer was read)."""
    return url is not None and REDACTED in url


def _origin(url: URL) -> tuple[str, str, int | None]:
    return (url.scheme, (url.host or "").lower(), url.port)


def _failed(data: Mapping[str, Any]) -> Decision:
    """A FAILED generation, however it was told: the same decision as the provider's 422."""
    return Decision("retry", "no", str(data.get("error") or "the generation failed"), 422)


def _protocol(message: str) -> AnswerError:
    return AnswerError(Decision("retry", "no", message, cause="unreadable"))


def _unreadable_history(exc: HistoryShapeError) -> AnswerError:
    return _protocol(f"the request history answered in a shape batchgen cannot read: {exc}")


async def _read_body(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body, however many pieces it arrives in; ``None`` when it is larger than ``limit``."""
    pieces: list[bytes] = []
    size = 0
    async for piece in response.content.iter_any():
        size += len(piece)
        if size > limit:
            return None
        pieces.append(piece)
    return b"".join(pieces)


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """At most ``limit`` bytes of the body: all of it when it is smaller (an error's message, a sample)."""
    pieces: list[bytes] = []
    size = 0
    async for piece in response.content.iter_any():
        pieces.append(piece[: limit - size])
        size += len(piece)
        if size >= limit:
            break
    return b"".join(pieces)


async def _json_of(
    response: aiohttp.ClientResponse,
    phase: str,
    limit: int = MAX_JSON_BYTES,
    *,
    scrub: Callable[[bytes], bytes],
    whole: bool = False,
) -> Any:
    """The answer's JSON, read to its end and ``scrub``-bed of the key: an object (or, with ``whole``, any JSON
    value)."""
    raw = await _read_body(response, limit)
    if raw is None:
        raise _protocol(f"the {phase} answer is larger than {limit:,} bytes")
    raw = scrub(raw)
    try:
        data = json.loads(raw)
    except ValueError:
        raise _protocol(f"the {phase} answer is not JSON: {provider_message(response.status, raw, 120)}") from None
    if not isinstance(data, dict) and not whole:
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


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _show(data: Any) -> str:
    return json.dumps(data)[:200]


def _text(raw: bytes) -> str:
    return " ".join(raw.decode("utf-8", "replace").split())[:120] or "(empty)"
