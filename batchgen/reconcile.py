"""The provider's books next to the state's: `batchgen reconcile`.

For the run's time window, the request history (every request of the account, billed or not) is matched with the
request ids the state knows: requests the provider billed that the state does not know (matched to jobs by their
payload where possible), jobs the state thinks paid that the provider does not show, and both totals.
"""

from __future__ import annotations

from typing import Any

from batchgen import journal
from batchgen.canonical import canonical_json
from batchgen.images import with_urls
from batchgen.models import load_model
from batchgen.outputs import RunDir
from batchgen.pricing import format_dollars, usd
from batchgen.provider import Provider
from batchgen.store import JobRow, Store

WINDOW_SKEW_S = 2.0  # run.log's times are whole seconds, and the provider's clock may differ a little


async def reconcile(store: Store, client: Provider, run_dir: RunDir | None = None) -> dict[str, Any]:
    """The comparison, as JSON data; ``agree`` says whether the books match."""
    attempts = store.all_attempts()
    # From the run directory's first start (run.log's first line, outside the state's WAL): a state that lost rows
    # would otherwise start the window after what it lost.
    first = journal.first_time(run_dir.run_log) if run_dir is not None else None
    starts = [a.started_at for a in attempts] + ([first - WINDOW_SKEW_S] if first is not None else [])
    since = min(starts, default=None)
    models = sorted({job.model for job in store.jobs()})
    rows = [row for model in models for row in await client.history_since(since, model)] if since is not None else []
    named = journal.read_requests(run_dir.run_log).requests if run_dir is not None else {}
    job_of = {request_id: job_id for job_id, request_id in named.items()}
    billed = {row.request_id: row for row in rows if row.status == "COMPLETED" and (row.cost_micros or 0) > 0}
    paid = {a.request_id: a for a in attempts if a.request_id and a.money == "settled"}
    by_payload = {canonical_json(_sent(store, job)): job.id for job in store.jobs()}
    unknown = [
        {
            "request_id": row.request_id,
            "cost_usd": usd(row.cost_micros or 0),
            "job": by_payload.get(canonical_json(row.request_body)),
            "in_run_log": job_of.get(row.request_id),
        }
        for row in billed.values()
        if row.request_id not in paid
    ]
    missing = [
        {"request_id": rid, "job": attempt.job_id, "cost_usd": usd(attempt.settled_micros)}
        for rid, attempt in paid.items()
        if rid not in billed
    ]
    provider_micros = sum(row.cost_micros or 0 for row in billed.values())
    state_micros = sum(a.settled_micros for a in paid.values())
    money = store.money()
    return {
        "window_from": since,
        "provider_requests": len(rows),
        "provider_billed_usd": usd(provider_micros),
        "state_settled_usd": usd(state_micros),
        "state_possibly_billed_usd": usd(money.ambiguous_micros),
        "billed_unknown_to_state": unknown,
        "paid_in_state_not_billed": missing,
        "agree": not unknown and not missing and provider_micros == state_micros,
    }


def reconcile_text(data: dict[str, Any]) -> str:
    """``reconcile`` for people."""
    lines = [
        f"provider: {data['provider_requests']} requests, {format_dollars(data['provider_billed_usd'])} billed; "
        f"state: {format_dollars(data['state_settled_usd'])} settled "
        f"(+ {format_dollars(data['state_possibly_billed_usd'])} possibly billed)"
    ]
    for row in data["billed_unknown_to_state"]:
        job = f" (job {row['job']}, by its payload)" if row["job"] else ""
        if row.get("in_run_log"):
            job = f" (job {row['in_run_log']}: run.log names it; the state lost it)"
        lines.append(
            f"  billed by the provider, unknown to the state: request {row['request_id']} "
            f"{format_dollars(row['cost_usd'])}{job}"
        )
    for row in data["paid_in_state_not_billed"]:
        lines.append(f"  paid in the state, not billed by the provider: request {row['request_id']} (job {row['job']})")
    lines.append("the books agree" if data["agree"] else "the books differ")
    return "\n".join(lines)


def _sent(store: Store, job: JobRow) -> Any:
    """A job's payload as the provider received it (local images as their uploaded URLs)."""
    return with_urls(job.payload, load_model(job.model).request_schema, store.image_url)
