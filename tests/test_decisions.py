"""classify() against the error table of segmind-api.md, status by status."""

from __future__ import annotations

import pytest

from batchgen.decisions import MAX_PAUSE_S, classify, pause_until, provider_message

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
