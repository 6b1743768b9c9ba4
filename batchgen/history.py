"""Reading the provider's request history: its pages and rows, in whatever likely shape they come.

The shape of a history page is not documented anywhere we can read (``segmind-api.md``: Segmind's SDK returns "a
paginated dictionary" as it comes) [guess], so every likely variant is accepted:

- rows under ``data``, ``items`` or ``results`` (or one level deeper, ``{"data": {"items": [...]}}``), or the page
  being the list itself;
- more pages told by ``total_pages`` / ``pages`` / ``last_page``, by ``total`` with ``per_page``, or by a ``next`` /
  ``has_more`` flag; told by nothing, a full page means there may be another;
- a row's creation time as an ISO string or an epoch number (seconds, or milliseconds when it is that large), named
  ``created_at``, ``model_created`` (the SDK's sort key), ``createdAt``, ``created`` or ``timestamp``.

Anything else is :class:`HistoryShapeError`: a page batchgen cannot read is said out loud, never taken as "the
request is not there" (a row missed that way would be paid for twice). Pure functions, no I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

ROW_KEYS = ("data", "items", "results")
TIME_KEYS = ("created_at", "model_created", "createdAt", "created", "timestamp")
PAGE_COUNT_KEYS = ("total_pages", "pages", "last_page", "totalPages")
MORE_KEYS = ("has_more", "hasMore", "next", "next_page", "nextPage")
EPOCH_MS_ABOVE = 1e11  # an epoch in seconds passes this in the year 5138; in milliseconds it did in 1973


class HistoryShapeError(ValueError):
    """A history answer batchgen cannot read; the message says what was found instead."""


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


@dataclass(frozen=True)
class HistoryPage:
    """The rows of one page, and whether a later page may hold more."""

    rows: list[HistoryRow]
    more: bool


def parse_page(data: Any, page: int, per_page: int) -> HistoryPage:
    """One page of ``GET …/request-history`` (the ``page``-th, asked with ``per_page``). Its rows must carry their
    request body: a lost submit is found by it, and one that cannot be compared would be paid for again."""
    items = _rows_of(data)
    rows = [parse_row(item, need_body=True) for item in items]
    return HistoryPage(rows, _more(data, page, per_page, len(items)))


def parse_row(item: Any, *, need_body: bool = False) -> HistoryRow:
    """One row (also the answer of ``GET …/request-history/{id}``, where the body is not needed)."""
    if not isinstance(item, Mapping):
        raise HistoryShapeError(f"a row is not an object: {_show(item)}")
    request_id = item.get("request_id") or item.get("requestId") or item.get("id")
    if not isinstance(request_id, str) or not request_id:
        raise HistoryShapeError(f"a row has no request_id (its keys: {_keys(item)})")
    created = next((item[key] for key in TIME_KEYS if item.get(key) is not None), None)
    if created is None:
        raise HistoryShapeError(f"a row has no creation time under {'/'.join(TIME_KEYS)} (its keys: {_keys(item)})")
    body = _body(item.get("request_body"))
    if need_body and not isinstance(body, Mapping):
        raise HistoryShapeError(f"a row has no request_body object to compare (it has {_show(body)})")
    url = item.get("generation_url")
    return HistoryRow(
        request_id,
        str(item.get("model_name", "")),
        _status(item.get("model_status") or item.get("status")),
        cost_micros(item.get("credits_deduction")),
        body,
        url if isinstance(url, str) and url.startswith(("http://", "https://")) else None,
        parse_time(created),
    )


STATUSES = {
    "COMPLETED": "COMPLETED",
    "SUCCEEDED": "COMPLETED",
    "SUCCESS": "COMPLETED",
    "DONE": "COMPLETED",
    "FAILED": "FAILED",
    "FAILURE": "FAILED",
    "ERROR": "FAILED",
    "PENDING": "PENDING",
    "QUEUED": "PENDING",
    "PROCESSING": "PENDING",
    "RUNNING": "PENDING",
    "IN_PROGRESS": "PENDING",
}


def _status(value: Any) -> str:
    """COMPLETED, FAILED or PENDING, from the likely words for each; any other is a shape it cannot read (a row
    followed as "pending" for ever would be a wait without a bound)."""
    status = STATUSES.get(str(value or "").strip().upper().replace("-", "_").replace(" ", "_"))
    if status is None:
        raise HistoryShapeError(f"a row's status {str(value)[:30]!r} is none of {', '.join(sorted(STATUSES))}")
    return status


def _body(value: Any) -> Any:
    """A request body as sent: an object, or the same written as a JSON string."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def parse_time(value: Any) -> float:
    """An ISO date-time (UTC when it names no zone) or an epoch number → epoch seconds."""
    if isinstance(value, bool):
        raise HistoryShapeError(f"a row's time is not a time: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value) / 1000 if value > EPOCH_MS_ABOVE else float(value)
        if not math.isfinite(seconds) or seconds < 0:
            raise HistoryShapeError(f"a row's time is not a time: {value!r}")
        return seconds
    if isinstance(value, str):
        text = value.strip()
        if text.replace(".", "", 1).isdigit():
            return parse_time(float(text))
        try:
            at = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            try:
                at = parsedate_to_datetime(text)  # RFC 1123, as HTTP frameworks write dates
            except (TypeError, ValueError):
                raise HistoryShapeError(f"a row's time is not a date-time: {value[:40]!r}") from None
        return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()
    raise HistoryShapeError(f"a row's time is not a time: {_show(value)}")


MAX_COST_USD = 10_000.0  # no clip costs this much: a figure above it is a broken one


def cost_micros(value: Any) -> int | None:
    """A cost in USD as the provider writes it → µUSD; ``None`` when it is absent or no usable number."""
    return parse_cost(value)[0]


def parse_cost(value: Any) -> tuple[int | None, str | None]:
    """A cost the provider reported → (µUSD, ``None``), or (``None``, why it cannot be used) when it is not a
    positive finite number below ``MAX_COST_USD`` — the estimate stands in for it then, said, never silently. A cost
    under a micro-dollar is one micro-dollar, not free. ``(None, None)`` when there is none."""
    if value is None or value == "":
        return None, None
    try:
        cost = float(value)
    except (TypeError, ValueError):
        cost = math.nan
    if isinstance(value, bool) or not (0 < cost < MAX_COST_USD):
        return None, f"the provider reported a cost of {str(value)[:40]!r}, which is no price"
    return max(1, round(cost * 1_000_000)), None


def _rows_of(data: Any) -> list[Any]:
    if isinstance(data, list):
        return data
    if not isinstance(data, Mapping):
        raise HistoryShapeError(f"the page is not a JSON object or list: {_show(data)}")
    for key in ROW_KEYS:
        value = data.get(key)
        if isinstance(value, list):
            return value
        if isinstance(value, Mapping):
            inner = next((value[k] for k in ROW_KEYS if isinstance(value.get(k), list)), None)
            if inner is not None:
                return list(inner)
    raise HistoryShapeError(f"no list of rows under {'/'.join(ROW_KEYS)} (the page's keys: {_keys(data)})")


def _more(data: Any, page: int, per_page: int, count: int) -> bool:
    if not isinstance(data, Mapping):
        return count >= per_page
    for key in PAGE_COUNT_KEYS:
        pages = _whole(data.get(key))
        if pages is not None:
            return page < pages
    total = _whole(data.get("total"))
    if total is not None:
        return page * (_whole(data.get("per_page")) or per_page) < total
    for key in MORE_KEYS:
        if key in data:
            return _flag(data[key], key)
    return count >= per_page  # told nothing: a full page may be followed by another


def _flag(value: Any, key: str) -> bool:
    """``has_more``/``next`` as a boolean: true, false, "true", "false", 1, 0, null, or a next page's URL."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return value > 0  # 1/0, or the next page's number
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "false", "0", "no", "null", "none"):
            return False
        if text in ("true", "1", "yes") or text.startswith(("http://", "https://", "/", "?")):
            return True
    raise HistoryShapeError(f"{key} is neither a flag nor a link: {_show(value)}")


def _whole(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _keys(data: Mapping[str, Any]) -> str:
    return ", ".join(sorted(map(str, data))[:12]) or "none"


def _show(value: Any) -> str:
    return repr(value)[:80]
