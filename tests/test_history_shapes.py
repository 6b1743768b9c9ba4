"""Reading the request history in whatever likely shape it comes, and saying so when it cannot be read."""

from __future__ import annotations

from typing import Any

import pytest

from batchgen.history import HistoryShapeError, parse_page, parse_row, parse_time

ROW = {
    "request_id": "r1",
    "model_name": "kling-3-standard-text2video",
    "model_status": "COMPLETED",
    "credits_deduction": 0.504,
    "request_body": {"prompt": "x"},
    "generation_url": "https://cdn.example/r1.mp4",
    "created_at": "2027-01-15T08:00:00.000Z",
}
AT = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def _row(**changes: Any) -> dict[str, Any]:
    row = {**ROW, **changes}
    return {key: value for key, value in row.items() if value is not None}


@pytest.mark.parametrize(
    "page",
    [
        {"data": [ROW], "total_pages": 1},  # the simulator's, after what the SDK's callers read
        {"items": [ROW], "total": 1, "per_page": 100},
        {"results": [ROW], "has_more": False},
        {"results": [ROW], "next": None},
        {"data": {"items": [ROW]}, "total": 1},
        [ROW],
    ],
)
def test_the_likely_shapes_of_a_page(page: Any) -> None:
    parsed = parse_page(page, 1, 100)
    assert [(row.request_id, row.status, row.cost_micros, row.created_at) for row in parsed.rows] == [
        ("r1", "COMPLETED", 504_000, AT)
    ]
    assert parsed.more is False


@pytest.mark.parametrize(
    ("page", "number", "more"),
    [
        ({"data": [ROW], "total_pages": 3}, 2, True),
        ({"data": [ROW], "total_pages": 3}, 3, False),
        ({"items": [ROW], "total": 250, "per_page": 100}, 2, True),
        ({"items": [ROW], "total": 250, "per_page": 100}, 3, False),
        ({"results": [ROW], "has_more": True}, 1, True),
        ({"results": [ROW], "next": "https://api/…?page=2"}, 1, True),
        ({"data": [ROW] * 100}, 1, True),  # told nothing: a full page may be followed by another
        ({"data": [ROW] * 99}, 1, False),
    ],
)
def test_more_pages_told_every_likely_way(page: Any, number: int, more: bool) -> None:
    assert parse_page(page, number, 100).more is more


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2027-01-15T08:00:00.000Z", AT),
        ("2027-01-15T08:00:00+00:00", AT),
        ("2027-01-15T09:00:00+01:00", AT),
        ("2027-01-15T08:00:00", AT),  # no zone: UTC
        (AT, AT),
        (int(AT), AT),
        (AT * 1000, AT),  # milliseconds
        (str(int(AT)), AT),
    ],
)
def test_times_iso_or_epoch(value: Any, seconds: float) -> None:
    assert parse_time(value) == seconds
    assert parse_row(_row(created_at=None, model_created=value)).created_at == seconds


@pytest.mark.parametrize(
    ("page", "says"),
    [
        ({"records": [ROW]}, "no list of rows under data/items/results (the page's keys: records)"),
        ("<html>", "not a JSON object or list"),
        ({"data": [_row(created_at=None)]}, "a row has no creation time"),
        ({"data": [_row(request_id=None)]}, "a row has no request_id"),
        ({"data": [_row(created_at="yesterday")]}, "not a date-time"),
        ({"data": [_row(created_at=True)]}, "not a time"),
        ({"data": ["r1"]}, "a row is not an object"),
    ],
)
def test_a_shape_it_cannot_read_is_an_error_that_says_what_it_found(page: Any, says: str) -> None:
    with pytest.raises(HistoryShapeError, match=says.replace("(", r"\(").replace(")", r"\)")):
        parse_page(page, 1, 100)


def test_one_unreadable_row_makes_the_page_unreadable() -> None:
    """A row skipped could be the very request a lost submit made: paid twice if taken as "not there"."""
    with pytest.raises(HistoryShapeError):
        parse_page({"data": [ROW, _row(request_id="r2", created_at=None)]}, 1, 100)


def test_costs_that_are_no_number_are_unknown_not_zero() -> None:
    for value in ("n/a", None, -1, float("nan"), 1e9):
        assert parse_row(_row(credits_deduction=value)).cost_micros is None


def test_a_body_written_as_json_text_is_read_and_a_row_without_one_cannot_be_matched() -> None:
    (row,) = parse_page({"data": [_row(request_body='{"prompt": "x"}')]}, 1, 100).rows
    assert row.request_body == {"prompt": "x"}
    with pytest.raises(HistoryShapeError, match="no request_body object to compare"):
        parse_page({"data": [_row(request_body=None)]}, 1, 100)
    assert parse_row(_row(request_body=None)).request_id == "r1"  # one request by id needs no body


@pytest.mark.parametrize(("flag", "more"), [("false", False), ("true", True), (0, False), (3, True), ("", False)])
def test_flags_written_as_text_or_numbers(flag: Any, more: bool) -> None:
    assert parse_page({"results": [ROW], "has_more": flag}, 1, 100).more is more


def test_a_flag_that_is_neither_is_unreadable() -> None:
    with pytest.raises(HistoryShapeError, match="neither a flag nor a link"):
        parse_page({"results": [ROW], "has_more": {"maybe": True}}, 1, 100)


@pytest.mark.parametrize(
    ("word", "status"),
    [("SUCCEEDED", "COMPLETED"), ("error", "FAILED"), ("in-progress", "PENDING"), ("queued", "PENDING")],
)
def test_the_likely_words_for_a_status(word: str, status: str) -> None:
    assert parse_row(_row(model_status=word)).status == status


def test_a_status_it_does_not_know_is_unreadable_not_pending_for_ever() -> None:
    with pytest.raises(HistoryShapeError, match="status 'ARCHIVED' is none of"):
        parse_row(_row(model_status="ARCHIVED"))


def test_http_dates() -> None:
    assert parse_time("Fri, 15 Jan 2027 08:00:00 GMT") == AT
