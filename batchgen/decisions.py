"""What an answer of the provider means: one pure function over the table of ``segmind-api.md``.

``classify(phase, status, headers, body)`` → :class:`Decision`, where ``phase`` is one of submit, poll, result,
download, credits, upload or history. ``status`` is ``None`` when no answer arrived
(``body`` then says whether the request was surely not sent: ``"unsent"``). Nothing else in batchgen looks at a
status code.

======  ==========================================  ======================================  ========
status  meaning                                      action                                  billed
======  ==========================================  ======================================  ========
2xx     ok                                           ok                                      yes
400     bad parameters                               fail_job (permanent, show the message)  no
401/403 missing/invalid key, forbidden               stop_run                                no
404     submit: model not found; poll: expired      stop_run / lost                         no / unknown
406     insufficient credits                         stop_submits (in-flight jobs finish)    no
410     model retired                                stop_run                                no
422     v2 job FAILED                                retry (a new attempt)                   no
429     rate limited                                 pause_submits until the reset time      no
5xx     server error, bad gateway, timeout           retry with backoff                      no
none    no answer to a submit that was sent          retry, possibly billed                  unknown
======  ==========================================  ======================================  ========
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from batchgen.canonical import canonical_json
from batchgen.history import HistoryRow

MAX_PAUSE_S = 3600.0
# Why a run stopped, as its notifications say: the provider's reasons (from a decision), a signal, the money or time.
StopReason = Literal["interrupted", "auth", "credits", "unreachable", "provider", "budget", "deadline", "error"]


@dataclass(frozen=True)
class Decision:
    """What to do after an answer: ``action`` and whether the attempt was ``billed`` (yes, no, unknown)."""

    action: str  # ok, retry, fail_job, pause_submits, stop_submits, stop_run, lost
    billed: str
    message: str
    status: int | None = None
    pause_until: float | None = None  # epoch seconds, for pause_submits
    # answer: the provider answered; unreadable: it answered something batchgen cannot read (or a host that was
    # not given the key did); silence: sent, no answer; unreachable: not sent (no connection to the host)
    cause: str = "answer"

    def with_message(self, message: str) -> Decision:
        """The same decision with another message."""
        return replace(self, message=message)


def classify(phase: str, status: int | None, headers: Mapping[str, str], body: bytes | str, now: float) -> Decision:
    """The decision for one answer (or silence) of the provider in ``phase``, at time ``now``."""
    message = provider_message(status, body)
    if status is None:
        unsent = body == "unsent"
        billed = "unknown" if phase == "submit" and not unsent else "no"
        cause = "unreachable" if unsent else "silence"
        return Decision("retry", billed, message or "no answer from the provider", cause=cause)
    if 200 <= status < 300:
        return Decision("ok", "yes", "", status)
    action = _ACTIONS.get(status) or ("retry" if status >= 500 else "fail_job")
    if status == 404:
        action = "stop_run" if phase in ("submit", "upload") else "lost" if phase in ("poll", "result") else "fail_job"
    if status == 429:
        return Decision("pause_submits", "no", message, status, pause_until(headers, now))
    billed = "unknown" if action == "lost" else "no"
    return Decision(action, billed, message, status)


_ACTIONS = {400: "fail_job", 401: "stop_run", 403: "stop_run", 406: "stop_submits", 410: "stop_run", 422: "retry"}


def stop_reason(decision: Decision) -> StopReason:
    """Why a decision that stops the run stops it: the host could not be reached, the key was refused (401/403), the
    account is out of credits (406), or the provider said so otherwise (a model gone: 404, 410)."""
    if decision.cause == "unreachable":
        return "unreachable"
    if decision.status in (401, 403):
        return "auth"
    if decision.action == "stop_submits":
        return "credits"
    return "provider"


def pause_until(headers: Mapping[str, str], now: float, default_s: float = 60.0) -> float:
    """When a 429 lets submits resume: Retry-After, else ``x-rate-limit-reset-at-utc``, capped to an hour.

    A reset time in the past means "now"; one absurdly far ahead is capped, so a broken header cannot stall a run.
    """
    lower = {key.lower(): value for key, value in headers.items()}
    retry_after = lower.get("retry-after", "")
    if retry_after.strip().isdigit():
        return now + min(float(retry_after), MAX_PAUSE_S)
    reset = lower.get("x-rate-limit-reset-at-utc")
    if reset:
        try:
            at = datetime.fromisoformat(reset.replace("Z", "+00:00")).timestamp()
        except ValueError:
            at = now + default_s
        return min(max(at, now), now + MAX_PAUSE_S)
    return now + default_s


def provider_message(status: int | None, body: bytes | str, limit: int = 300) -> str:
    """The provider's words: ``{"error": ...}`` when the body has it, else the start of the body."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    if text == "unsent":
        return "could not connect to the provider"
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])[:limit]
    snippet = " ".join(text.split())[:limit]
    prefix = f"HTTP {status}" if status else ""
    return f"{prefix}: {snippet}" if snippet and prefix else snippet or prefix


# --- what an attempt's end does: the runner's money and retry rules, as data --------------------------------


@dataclass(frozen=True)
class Outcome:
    """What the end of an attempt does to its job, its money and the run (decided from the answer alone).

    ``next_state`` is pending (another attempt, after ``backoff`` when set, and not before ``pause_until``),
    failed or lost; ``money`` is released (not billed) or ambiguous (perhaps billed: kept until the provider's books
    tell); ``refund`` gives the attempt back (the provider stopped us, or nothing was sent: not the job's fault);
    ``stop`` is credits (no new submits) or provider (the whole run)."""

    next_state: str
    money: str
    refund: bool
    backoff: bool
    message: str
    pause_until: float | None = None
    stop: str | None = None
    unreachable: bool = False

    @property
    def outcome(self) -> str:
        """The attempt's outcome as the state records it."""
        return {"pending": "retry", "failed": "failed", "lost": "lost"}[self.next_state]


def attempt_outcome(decision: Decision, attempts_used: int, max_attempts: int, request_id: str | None) -> Outcome:
    """The outcome of an attempt that ended on ``decision``, the job having used ``attempts_used`` of
    ``max_attempts`` (``request_id``: the provider's id of the job's request, when it has one).

    ======================  =========  ===========  =======  ==========================
    decision                next       money        refund   run
    ======================  =========  ===========  =======  ==========================
    lost                    lost       ambiguous    no       (the history may find it)
    fail_job                failed     as billed    no
    retry, attempts left    pending    as billed    no       backoff
    retry, none left        failed     as billed    no
    pause_submits (429)     pending    released     yes      submits paused until reset
    stop_submits (406)      pending    released     yes      stop: credits
    stop_run (401/403/410)  pending    released     yes      stop: provider
    unreachable (unsent)    pending    released     yes      paused; the outage is timed
    ======================  =========  ===========  =======  ==========================
    """
    money = "ambiguous" if decision.billed == "unknown" else "released"
    unreachable = decision.cause == "unreachable"
    refund = decision.action in ("pause_submits", "stop_submits", "stop_run") or unreachable
    stop = {"stop_submits": "credits", "stop_run": "provider"}.get(decision.action)

    def outcome(next_state: str, money: str, message: str) -> Outcome:
        retry = next_state == "pending"
        return Outcome(
            next_state, money, retry and refund, retry and not refund, message, decision.pause_until, stop, unreachable
        )

    if decision.action == "lost":
        message = decision.message
        if decision.status == 404:
            message = f"the provider no longer knows request {request_id}: {decision.message}"
        return outcome("lost", "ambiguous", message)
    if decision.action == "fail_job":
        return outcome("failed", money, decision.message)
    if not refund and attempts_used >= max_attempts:
        return outcome("failed", money, f"gave up after {attempts_used} attempts: {decision.message}")
    return outcome("pending", money, decision.message)


@dataclass(frozen=True)
class HistoryMatch:
    """What the request history says of an attempt whose submit answer was lost: ``verdict`` is adopt (the request
    is there: follow it, never pay again), failed (there, FAILED: not billed), wait (not there yet, within the
    history's lag) or resubmit (not there after the lag: submit again, possibly billed twice)."""

    verdict: str
    request_id: str | None = None
    row: HistoryRow | None = None


def match_history(
    rows: list[HistoryRow],
    *,
    body: str,
    owned: set[str],
    started_at: float,
    ended_at: float,
    now: float,
    skew_s: float,
    lag_s: float,
) -> HistoryMatch:
    """Find an attempt's request among the history's ``rows``: one of the same ``body`` (canonical JSON) that no
    other job owns, created between the attempt's intent (``started_at``, less ``skew_s``) and its end (plus
    ``skew_s``); the first one after the intent, one in the skew before it only when there is none after."""
    until = ended_at + skew_s
    candidates = [
        row
        for row in rows
        if row.request_id not in owned and row.created_at <= until and canonical_json(row.request_body) == body
    ]
    match = min(candidates, key=lambda row: (row.created_at < started_at, row.created_at), default=None)
    if match is None:
        return HistoryMatch("wait" if now < started_at + lag_s else "resubmit")
    if match.status == "FAILED":
        return HistoryMatch("failed", match.request_id, match)
    return HistoryMatch("adopt", match.request_id, match)
