"""What a run looks like from outside: the status of its state file, as data and as text."""

from __future__ import annotations

from typing import Any

from batchgen.budget import Budget
from batchgen.pricing import format_usd, micros, usd
from batchgen.store import IN_FLIGHT, Store


def status_data(store: Store) -> dict[str, Any]:
    """Counts by state, money against the budget, failures, jobs in flight, jobs no longer in the manifest."""
    jobs = store.jobs()
    money = store.money()
    budget = Budget(store.get_meta("budget_micros"))
    left = budget.left_micros(money)
    return {
        "name": store.get_meta("name"),
        "manifest": store.get_meta("manifest"),
        "counts": store.counts(),
        "total": sum(1 for job in jobs if job.in_manifest),
        "money": {
            "budget_usd": None if budget.cap_micros is None else usd(budget.cap_micros),
            "spent_usd": usd(money.spent_micros),
            "settled_usd": usd(money.settled_micros),
            "possibly_billed_usd": usd(money.ambiguous_micros),
            "reserved_usd": usd(money.reserved_micros),
            "left_usd": None if left is None else usd(left),
        },
        "failures": [
            {"job": job.id, "state": job.state, "reason": job.reason, "request_id": job.request_id}
            for job in jobs
            if job.state in ("failed", "lost")
        ],
        "skipped": [{"job": job.id, "reason": job.reason} for job in jobs if job.state == "skipped"],
        "in_flight": [
            {"job": job.id, "state": job.state, "request_id": job.request_id} for job in jobs if job.state in IN_FLIGHT
        ],
        "possibly_billed_twice": [job.id for job in jobs if job.possibly_billed_twice],
        "not_in_manifest": [{"job": job.id, "state": job.state} for job in jobs if not job.in_manifest],
    }


def status_text(data: dict[str, Any]) -> str:
    """``status_data`` for people."""
    counts = data["counts"]
    shown = ", ".join(f"{counts[state]} {state}" for state in counts if counts[state])
    money = data["money"]
    lines = [f"{data['name']}: {data['total']} jobs: {shown or 'none'}"]
    spent = _dollars(money["spent_usd"])
    maybe = (
        f" (of which {_dollars(money['possibly_billed_usd'])} possibly billed)" if money["possibly_billed_usd"] else ""
    )
    reserved = f", {_dollars(money['reserved_usd'])} reserved" if money["reserved_usd"] else ""
    if money["budget_usd"] is None:
        lines.append(f"money: {spent} spent{maybe}{reserved}, no budget")
    else:
        left, budget = _dollars(money["left_usd"]), _dollars(money["budget_usd"])
        lines.append(f"money: {spent} spent{maybe}{reserved}, {left} left of {budget}")
    for row in data["in_flight"]:
        lines.append(f"  in flight  {row['job']}  {row['state']}  request {row['request_id'] or '-'}")
    for row in data["failures"]:
        request = f" (request {row['request_id']})" if row["request_id"] else ""
        lines.append(f"  {row['state']:<9}  {row['job']}: {row['reason']}{request}")
    for row in data["skipped"]:
        lines.append(f"  skipped    {row['job']}: {row['reason']}")
    for job_id in data["possibly_billed_twice"]:
        lines.append(f"  possibly billed twice  {job_id}")
    for row in data["not_in_manifest"]:
        lines.append(f"  not in manifest  {row['job']}  ({row['state']})")
    return "\n".join(lines)


def _dollars(amount_usd: float) -> str:
    return format_usd(micros(amount_usd))
