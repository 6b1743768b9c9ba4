"""classify() against the error table of segmind-api.md, status by status."""

from __future__ import annotations

import pytest

from batchgen.canonical import canonical_json
from batchgen.decisions import (
    MAX_PAUSE_S,
    Decision,
    attempt_outcome,
    classify,
    match_history,
    pause_until,
    provider_message,
)
from batchgen.history import HistoryRow

NOW = 1_800_000_000.0
ERROR = b'{"error": "the provider says so"}'


@pytest.mark.parametrize(
    ("phase", "status", "action", "billed"),
    [
        ("submit", 200, "ok", "yes"),
        ("submit", 400, "fail_job", "no"),
        ("submit", 401, "stop_run", "no"),
        ("submit", 403, "stop_run", "no"),
        ("submit", 404, "stop_run", "no"),
        ("poll", 404, "lost", "unknown"),
        ("result", 404, "lost", "unknown"),
        ("download", 404, "fail_job", "no"),
        ("submit", 405, "fail_job", "no"),
        ("submit", 406, "stop_submits", "no"),
        ("submit", 410, "stop_run", "no"),
        ("poll", 422, "retry", "no"),
        ("submit", 429, "pause_submits", "no"),
        ("submit", 500, "retry", "no"),
        ("submit", 502, "retry", "no"),
        ("submit", 503, "retry", "no"),
        ("submit", 504, "retry", "no"),
        ("download", 500, "retry", "no"),
    ],
)
def test_every_status_of_the_table(phase: str, status: int, action: str, billed: str) -> None:
    decision = classify(phase, status, {}, ERROR, NOW)
    assert (decision.action, decision.billed, decision.status) == (action, billed, status)
    if status >= 300:
        assert decision.message == "the provider says so"


def test_no_answer_to_a_sent_submit_is_possibly_billed() -> None:
    assert (classify("submit", None, {}, "", NOW).action, classify("submit", None, {}, "", NOW).billed) == (
        "retry",
        "unknown",
    )
    assert classify("submit", None, {}, "unsent", NOW).billed == "no"
    assert classify("poll", None, {}, "", NOW).billed == "no"


def test_429_waits_for_retry_after_or_the_reset_time_within_bounds() -> None:
    # NOW is 2027-01-15T08:00:00Z
    assert pause_until({"Retry-After": "12"}, NOW) == NOW + 12
    assert pause_until({"x-rate-limit-reset-at-utc": "2027-01-15T08:00:30.000Z"}, NOW) == NOW + 30
    assert pause_until({"x-rate-limit-reset-at-utc": "2031-01-01T00:00:00Z"}, NOW) == NOW + MAX_PAUSE_S  # years ahead
    assert pause_until({"x-rate-limit-reset-at-utc": "2001-01-01T00:00:00Z"}, NOW) == NOW  # in the past: now
    assert pause_until({"x-rate-limit-reset-at-utc": "garbage"}, NOW) == NOW + 60
    assert pause_until({}, NOW) == NOW + 60
    decision = classify("submit", 429, {"x-rate-limit-reset-at-utc": "2027-01-15T08:00:30Z"}, ERROR, NOW)
    assert (decision.action, decision.pause_until) == ("pause_submits", NOW + 30)


def test_provider_message_shows_the_start_of_a_body_that_is_not_json() -> None:
    assert provider_message(405, b"<html><body>Method Not Allowed</body></html>") == (
        "HTTP 405: <html><body>Method Not Allowed</body></html>"
    )
    assert provider_message(502, b"") == "HTTP 502"


# --- the runner's money and retry rules, as tables ------------------------------------------------------------


@pytest.mark.parametrize(
    ("decision", "used", "expected"),
    [
        # action, billed, status, cause            used   next       money        refund backoff stop
        (Decision("lost", "unknown", "gone", 404), 1, ("lost", "ambiguous", False, False, None)),
        (Decision("fail_job", "no", "bad", 400), 1, ("failed", "released", False, False, None)),
        (Decision("retry", "no", "5xx", 502), 1, ("pending", "released", False, True, None)),
        (Decision("retry", "no", "5xx", 502), 5, ("failed", "released", False, False, None)),
        (Decision("retry", "unknown", "silence", cause="silence"), 2, ("pending", "ambiguous", False, True, None)),
        (Decision("retry", "unknown", "silence", cause="silence"), 5, ("failed", "ambiguous", False, False, None)),
        (Decision("pause_submits", "no", "429", 429, 99.0), 5, ("pending", "released", True, False, None)),
        (Decision("stop_submits", "no", "406", 406), 5, ("pending", "released", True, False, "credits")),
        (Decision("stop_run", "no", "401", 401), 1, ("pending", "released", True, False, "provider")),
        (Decision("retry", "no", "refused", cause="unreachable"), 5, ("pending", "released", True, False, None)),
    ],
)
def test_attempt_outcome_table(decision: Decision, used: int, expected: tuple[object, ...]) -> None:
    out = attempt_outcome(decision, used, 5, "req-1")
    assert (out.next_state, out.money, out.refund, out.backoff, out.stop) == expected
    assert out.pause_until == decision.pause_until and out.unreachable == (decision.cause == "unreachable")


def test_attempt_outcome_messages_name_the_request_and_the_attempts() -> None:
    lost = attempt_outcome(Decision("lost", "unknown", "Not found", 404), 1, 5, "req-1")
    assert lost.message == "the provider no longer knows request req-1: Not found" and lost.outcome == "lost"
    spent = attempt_outcome(Decision("retry", "no", "HTTP 502", 502), 5, 5, None)
    assert spent.message == "gave up after 5 attempts: HTTP 502" and spent.outcome == "failed"


def _row(request_id: str, created_at: float, body: object, status: str = "COMPLETED") -> HistoryRow:
    return HistoryRow(request_id, "m", status, 1, body, None, created_at)


@pytest.mark.parametrize(
    ("rows", "now", "verdict", "request_id"),
    [
        ([], 105.0, "wait", None),  # within the lag: the history may not show it yet
        ([], 125.0, "resubmit", None),  # after the lag: it never arrived
        ([_row("other", 101.0, {"p": 2})], 125.0, "resubmit", None),  # another body
        ([_row("mine", 101.0, {"p": 1})], 125.0, "adopt", "mine"),
        ([_row("owned", 101.0, {"p": 1})], 125.0, "resubmit", None),  # another job's request
        ([_row("late", 140.0, {"p": 1})], 125.0, "resubmit", None),  # made after the attempt ended
        ([_row("early", 99.5, {"p": 1}), _row("after", 102.0, {"p": 1})], 125.0, "adopt", "after"),
        ([_row("early", 99.5, {"p": 1})], 125.0, "adopt", "early"),  # within the skew, none after
        ([_row("x", 101.0, {"p": 1}, "FAILED")], 125.0, "failed", "x"),
    ],
)
def test_match_history_table(rows: list[HistoryRow], now: float, verdict: str, request_id: str | None) -> None:
    found = match_history(
        rows,
        body=canonical_json({"p": 1}),
        owned={"owned"},
        started_at=100.0,
        ended_at=110.0,
        now=now,
        skew_s=2.0,
        lag_s=20.0,
    )
    assert (found.verdict, found.request_id) == (verdict, request_id)
