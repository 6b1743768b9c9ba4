"""Notifications: a JSON event POSTed to each URL of ``--notify`` (and of the manifest's ``notify:``) when a run
finishes or stops, when it crosses 80 % of its budget, and when it submits a job again that may have been billed.

Building an event is pure (:func:`build_event`, :func:`event_text`): the run's counts, money and wall time so far,
where its gallery and manifest are, and ``text``, one or two lines a person reads. The one body reads as it is in
an incoming webhook of Slack and Mattermost (they show ``text``), Discord (``content``, the same words) and ntfy
(2.10 and later fill the message from ``text`` through the template headers sent with every event; an older ntfy,
or any other URL, gets the JSON).

Sending is :class:`Notifier`'s, on an aiohttp session of its own that carries no key (invariant 6: the key goes to
the provider's origins only; that is why this module, and not ``client.py``, holds the session): each event POSTed
in a background task, tried ``tries`` times with ``timeout_s`` each and a short backoff between, and a URL that
fails only said (``run.log``, a warning), never raised into the run. A run waits for its last event at most
``final_wait_s``. URLs are named in what is said by their origin alone: a webhook's path is its secret.

No prompt leaves with an event unless asked (``prompts``): events name jobs by id; with ``prompts`` the event of a
job possibly billed twice carries its prompt.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from yarl import URL

from batchgen import __version__
from batchgen.budget import Budget
from batchgen.errors import UsageError
from batchgen.pricing import format_usd, usd
from batchgen.store import Money, Store

NotifyKind = Literal["finished", "stopped", "budget", "billed_twice"]
# What the run's own events are notified as (the others are progress, not news).
NOTIFIED: dict[str, NotifyKind] = {"budget": "budget", "billed_twice": "billed_twice"}
# Why a run stopped, in words (``runner.RunResult.stop_reason``).
REASONS = {
    "interrupted": "interrupted",
    "auth": "the provider refused the key",
    "credits": "the account is out of credits",
    "unreachable": "the provider cannot be reached",
    "provider": "stopped by the provider",
    "budget": "the budget is spent",
    "deadline": "the deadline came",
    "error": "an error",
}
# ntfy (2.10 and later) makes its message of the JSON body's ``text`` with these; every other service ignores them.
NTFY_HEADERS = {"X-Template": "yes", "X-Title": "batchgen: {{.run}}", "X-Message": "{{.text}}"}
PROMPT_CHARS = 200  # a prompt in an event's text is cut to this many characters (the JSON's ``prompt`` is whole)


@dataclass(frozen=True)
class NotifySettings:
    """How notifications are sent; durations in seconds."""

    timeout_s: float = 10.0  # one try, from the connection to the answer's head
    tries: int = 3
    backoff_s: float = 1.0  # before the second try; doubled before each later one
    final_wait_s: float = 15.0  # how long the end of a run waits for its events still on their way
    prompts: bool = False  # the event of a job possibly billed twice carries its prompt


@dataclass(frozen=True)
class RunFacts:
    """What every event says of its run."""

    name: str
    manifest: str
    gallery: str
    counts: Mapping[str, int]
    money: Money
    budget_micros: int | None
    wall_s: float


def check_notify_url(url: str) -> str:
    """``url`` when it is an http(s) URL with a host (plain http is allowed: webhooks on a LAN are common, and an
    event carries no key); :class:`UsageError` otherwise."""
    try:
        parsed = URL(url)
    except ValueError:
        parsed = URL()
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise UsageError(f"--notify {url!r}: not an http(s) URL (e.g. https://hooks.slack.com/services/…)")
    return url


def origin_of(url: str) -> str:
    """A notify URL as it is said in logs and warnings: its origin, the path (a webhook's secret) left out."""
    try:
        return f"{URL(url).origin()}/…"
    except ValueError:
        return "a URL that cannot be read"


def retry_delay_s(tries_done: int, backoff_s: float) -> float:
    """The wait before the next try after ``tries_done`` failed ones: ``backoff_s × 2^(tries_done - 1)``."""
    return backoff_s * 2.0 ** max(0, tries_done - 1)


def format_wall(seconds: float) -> str:
    """A wall time as a person says it: ``42 s``, ``2 min 13 s``, ``3 h 05 min``."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole // 60 % 60:02d} min"


def event_text(
    kind: NotifyKind,
    facts: RunFacts,
    *,
    exit_code: int | None = None,
    reason: str | None = None,
    job_id: str | None = None,
    prompt: str | None = None,
) -> str:
    """The event in two lines: what happened and the counts; then the money, the wall time and the gallery."""
    heads: dict[NotifyKind, str] = {
        "finished": "finished" if not exit_code else "finished, with failures",
        "stopped": f"stopped: {REASONS.get(reason or '', reason or 'stopped')}",
        "budget": "80 % of the budget is spent",
        "billed_twice": f"{job_id} submitted again, possibly billed twice",
    }
    shown = ", ".join(f"{count} {state}" for state, count in facts.counts.items() if count) or "no jobs"
    spent = format_usd(facts.money.spent_micros)
    left = Budget(facts.budget_micros).left_micros(facts.money)
    money = f"{spent} spent" if facts.budget_micros is None else f"{spent} spent of {format_usd(facts.budget_micros)}"
    if left is not None:
        money += f" ({format_usd(max(0, left))} left)"
    quoted = ""
    if prompt:
        cut = prompt if len(prompt) <= PROMPT_CHARS else prompt[: PROMPT_CHARS - 1] + "…"
        quoted = f'"{" ".join(cut.split())}" · '
    first = f"batchgen {facts.name}: {heads[kind]} ({shown})"
    return f"{first}\n{quoted}{money}, {format_wall(facts.wall_s)} · {facts.gallery}"


def build_event(
    kind: NotifyKind,
    facts: RunFacts,
    *,
    at: float,
    exit_code: int | None = None,
    reason: str | None = None,
    message: str | None = None,
    job_id: str | None = None,
    prompt: str | None = None,
) -> dict[str, Any]:
    """The JSON body of one event (``at``: epoch seconds). ``exit_code`` and ``reason`` belong to the end of a run,
    ``message`` to a stop (its words, as the run said them), ``job_id`` and ``prompt`` to a job possibly billed
    twice (the prompt only when the user allowed it)."""
    text = event_text(kind, facts, exit_code=exit_code, reason=reason, job_id=job_id, prompt=prompt)
    left = Budget(facts.budget_micros).left_micros(facts.money)
    event: dict[str, Any] = {
        "kind": kind,
        "run": facts.name,
        "text": text,
        "content": text,  # Discord's name for it
        # Discord pings nobody for text it is sent (a prompt may say @everyone); Slack and Mattermost ignore this
        "allowed_mentions": {"parse": []},
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)),
        "counts": dict(facts.counts),
        "total": sum(facts.counts.values()),
        "money": {
            "spent_usd": usd(facts.money.spent_micros),
            "budget_usd": None if facts.budget_micros is None else usd(facts.budget_micros),
            "left_usd": None if left is None else usd(left),
            "possibly_billed_usd": usd(facts.money.ambiguous_micros),
        },
        "wall_time_s": round(facts.wall_s, 1),
        "gallery": facts.gallery,
        "manifest": facts.manifest,
        "batchgen": __version__,
    }
    if kind in ("finished", "stopped"):
        event["exit_code"] = exit_code
    if kind == "stopped":
        event["reason"], event["message"] = reason, message
    if job_id is not None:
        event["job"] = {"id": job_id} | ({"prompt": prompt} if prompt is not None else {})
    return event


class Notifier:
    """POSTs events to the notify URLs in background tasks, on a session of its own without any key; a URL that
    fails is retried, then said through ``on_problem``, never raised."""

    def __init__(
        self, urls: Sequence[str], on_problem: Callable[[str], None], settings: NotifySettings | None = None
    ) -> None:
        self.urls = tuple(urls)
        self.on_problem = on_problem
        self.settings = settings or NotifySettings()
        self._session: aiohttp.ClientSession | None = None
        self._sending: dict[asyncio.Task[None], str] = {}  # each POST under way → what it is, for a warning

    async def __aenter__(self) -> Notifier:
        if not self.urls:
            return self
        self._session = aiohttp.ClientSession(
            headers={"User-Agent": f"batchgen/{__version__}"},
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.finish(0.0)

    def send(self, event: Mapping[str, Any]) -> None:
        """Start POSTing ``event`` to every URL; returns at once."""
        if self._session is None or self._session.closed:
            return
        body = json.dumps(event, ensure_ascii=False).encode()
        for url in self.urls:
            what = f"notify {origin_of(url)}: the {event['kind']} event"
            task = asyncio.create_task(self._deliver(url, body, what), name=what)
            self._sending[task] = what
            task.add_done_callback(self._collect)

    async def finish(self, wait_s: float | None = None) -> None:
        """Wait at most ``wait_s`` (default ``final_wait_s``) for the events on their way, abandon the rest (each
        said), and close the session. A cancel meanwhile abandons them at once."""
        wait_s = self.settings.final_wait_s if wait_s is None else wait_s
        why = "interrupted"
        try:
            if self._sending and wait_s > 0:
                await asyncio.wait(set(self._sending), timeout=wait_s)
            why = f"after waiting {wait_s:g} s for it"
        finally:
            late = {task: what for task, what in self._sending.items() if not task.done()}
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
            for what in late.values():
                self.on_problem(f"{what} was abandoned ({why})")
            if self._session is not None:
                await self._session.close()

    def _collect(self, task: asyncio.Task[None]) -> None:
        what = self._sending.pop(task, "notify")
        if not task.cancelled() and task.exception() is not None:
            self.on_problem(f"{what} was not sent, by a bug: {task.exception()!r}")  # a bug, said, the run unharmed

    async def _deliver(self, url: str, body: bytes, what: str) -> None:
        """POST ``body`` to ``url``, tried again after a failure that may pass (no answer, 5xx, 408, 429)."""
        tries = self.settings.tries
        for done in range(1, tries + 1):
            problem, again = await self._post(url, body)
            if problem is None:
                return
            if not again or done == tries:
                break
            await asyncio.sleep(retry_delay_s(done, self.settings.backoff_s))
        self.on_problem(f"{what} was not delivered after {done} tr{'ies' if done > 1 else 'y'}: {problem}")

    async def _post(self, url: str, body: bytes) -> tuple[str | None, bool]:
        """One try: ``(None, _)`` when delivered, else ``(what went wrong, whether to try again)``."""
        assert self._session is not None
        headers = {"Content-Type": "application/json", **NTFY_HEADERS}
        try:
            # A redirect is not followed: aiohttp would send a 302's event on as a GET without it (lost, yet "sent"),
            # and a webhook answers where it is.
            async with self._session.post(url, data=body, headers=headers, allow_redirects=False) as response:
                if 200 <= response.status < 300:
                    return None, False
                if 300 <= response.status < 400:
                    location = response.headers.get("Location", "")
                    where = origin_of(location) if location.startswith(("http://", "https://")) else "the same host"
                    return f"HTTP {response.status}, a redirect to {where}: not followed (give the URL it names)", False
                return f"HTTP {response.status}", response.status >= 500 or response.status in (408, 429)
        except TimeoutError:
            return f"no answer within {self.settings.timeout_s:g} s", True
        except aiohttp.ClientError as exc:
            words = str(exc).split("\n", 1)[0].replace(url, origin_of(url))[:200]
            return words or f"the connection failed ({type(exc).__name__})", True


@dataclass
class RunNotices:
    """The notifications of one run: each event built from its state when it happens, sent by ``notifier``."""

    notifier: Notifier
    store: Store
    name: str
    manifest: str
    gallery: str
    budget_micros: int | None
    started_at: float  # epoch seconds
    prompts: bool = False
    clock: Callable[[], float] = time.time

    def on_event(self, kind: str, job_id: str | None) -> None:
        """One of the runner's events: notified when it is news (80 % of the budget, a job possibly billed twice)."""
        notified = NOTIFIED.get(kind)
        if notified is None:
            return
        prompt = None
        if notified == "billed_twice" and self.prompts and job_id is not None:
            prompt = str(self.store.job(job_id).payload.get("prompt", ""))
        self.notifier.send(build_event(notified, self._facts(), at=self.clock(), job_id=job_id, prompt=prompt))

    def ended(self, exit_code: int, reason: str | None, message: str | None) -> None:
        """The run is over: ``finished`` (exit 0 or 1), else ``stopped`` with its reason and message."""
        kind: NotifyKind = "finished" if exit_code in (0, 1) else "stopped"
        event = build_event(kind, self._facts(), at=self.clock(), exit_code=exit_code, reason=reason, message=message)
        self.notifier.send(event)

    def _facts(self) -> RunFacts:
        now = self.clock()
        return RunFacts(
            self.name,
            self.manifest,
            self.gallery,
            self.store.counts(),
            self.store.money(),
            self.budget_micros,
            max(0.0, now - self.started_at),
        )
