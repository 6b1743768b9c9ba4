"""What a run looks like from outside: its status (data, text), ``summary.json`` and the ``index.html`` gallery
(``gallery.py``), made in proportion to what changed since the last report."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import av

from batchgen import __version__
from batchgen.budget import Budget
from batchgen.errors import BatchgenError
from batchgen.gallery import GALLERY_VERSION, ROW_KEYS, compact, gallery_html, gallery_row, header, ordered
from batchgen.images import first_frame, ref_sha
from batchgen.models import known_models, load_model
from batchgen.outputs import RunDir, make_poster, make_thumbnail, write_text
from batchgen.pricing import format_dollars, usd
from batchgen.store import IN_FLIGHT, JobRow, Store


def status_data(store: Store) -> dict[str, Any]:
    """Counts by state, money against the budget, failures, jobs in flight, jobs no longer in the manifest.

    Only the jobs that need a line are read: a run of 100,000 finished jobs answers at once.
    """
    money = store.money()
    budget = Budget(store.get_meta("budget_micros"))
    left = budget.left_micros(money)
    counts = store.counts()
    twice, gone = store.flagged()
    return {
        "name": store.get_meta("name"),
        "manifest": store.get_meta("manifest"),
        "counts": counts,
        "total": sum(counts.values()),
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
            for job in store.jobs(["failed", "lost"])
        ],
        "skipped": [{"job": job.id, "reason": job.reason} for job in store.jobs(["skipped"])],
        "in_flight": [
            {"job": job.id, "state": job.state, "request_id": job.request_id, "last_problem": job.reason}
            for job in store.jobs(IN_FLIGHT)
        ],
        "possibly_billed_twice": twice,
        "history_trouble": store.get_meta("history_trouble"),
        "last_run": store.get_meta("last_run"),
        "charged_above_estimate": _above_estimate(store),
        "not_in_manifest": [{"job": job_id, "state": state} for job_id, state in gone],
        **_shared_status(store),
    }


def _shared_status(store: Store) -> dict[str, Any]:
    """A shared state's workers (each with its heartbeat's age) and its account's ledger and pace."""
    if not store.shared:
        return {}
    now = store.db_now()
    workers = [worker.summary(now) for worker in store.workers()]
    ledger = store.account_money()
    account = None
    if ledger is not None:
        submits, paused = store.pace()
        left = ledger.left_micros()
        account = {
            "budget": None if ledger.cap_micros is None else ledger.describe_cap(),
            "spent_usd": usd(ledger.spent_micros),
            "reserved_usd": usd(ledger.reserved_micros),
            "left_usd": None if left is None else usd(left),
            "submits_last_minute": submits,
            "paused_for_s": round(paused, 1),
        }
    return {"workers": workers, "account": account}


def _above_estimate(store: Store) -> dict[str, Any]:
    above = store.charged_above_estimate()
    return {
        "attempts": len(above),
        "extra_usd": usd(sum(charged - reserved for _, charged, reserved in above)),
        "jobs": sorted({job_id for job_id, _, _ in above}),
    }


def _above_text(above: dict[str, Any]) -> str:
    count = above["attempts"]
    return (
        f"charged above the estimate: {count} attempt{'s' * (count != 1)}, {format_dollars(above['extra_usd'])} more "
        "than reserved (the provider's price is above the table; later jobs like them reserve what it charged)"
    )


def status_text(data: dict[str, Any]) -> str:
    """``status_data`` for people."""
    counts = data["counts"]
    shown = ", ".join(f"{counts[state]} {state}" for state in counts if counts[state])
    money = data["money"]
    lines = [f"{data['name'] or 'this run'}: {data['total']} jobs: {shown or 'none'}"]
    spent = format_dollars(money["spent_usd"])
    maybe = (
        f" (of which {format_dollars(money['possibly_billed_usd'])} possibly billed)"
        if money["possibly_billed_usd"]
        else ""
    )
    reserved = f", {format_dollars(money['reserved_usd'])} reserved" if money["reserved_usd"] else ""
    if money["budget_usd"] is None:
        lines.append(f"money: {spent} spent{maybe}{reserved}, no budget")
    else:
        left, budget = format_dollars(money["left_usd"]), format_dollars(money["budget_usd"])
        lines.append(f"money: {spent} spent{maybe}{reserved}, {left} left of {budget}")
    account = data.get("account")
    if account:
        budget = account["budget"] or "no budget"
        left = "" if account["left_usd"] is None else f", {format_dollars(account['left_usd'])} left"
        lines.append(
            f"account: {budget}; {format_dollars(account['spent_usd'])} spent by all its runs{left}; "
            f"{account['submits_last_minute']} submit(s) in the last minute"
            + (f", paused for {account['paused_for_s']:.0f} s" if account["paused_for_s"] else "")
        )
    for worker in data.get("workers", []):
        alive = "alive" if worker["alive"] else "silent past its lease"
        lines.append(
            f"  worker  {worker['host']} pid {worker['pid']} ({worker['directory']}): heard from "
            f"{worker['heard_from_s_ago']:.0f} s ago, {alive}"
        )
    for row in data["in_flight"]:
        problem = f"  (last problem: {row['last_problem']})" if row["last_problem"] else ""
        lines.append(f"  in flight  {row['job']}  {row['state']}  request {row['request_id'] or '-'}{problem}")
    last = data["last_run"] or {}
    if last.get("stop"):
        lines.append(f"  last run (exit {last['exit_code']}): {last['stop']}")
    above = data["charged_above_estimate"]
    if above["attempts"]:
        lines.append(f"  warning: {_above_text(above)}")
    trouble = data["history_trouble"]
    if trouble:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(trouble["at"]))
        lines.append(f"  warning: at {at}, {trouble['message']}")
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


# --- the morning-after view: summary.json and index.html ------------------------------------------------------

SUMMARY_VERSION = 2  # 2: each job says where its video was placed (``placed_on``: ``host:run directory``)
CACHE_NAME = ".report-cache.json"
ETA_WINDOW_S = 600.0  # the ETA follows the pace of the last ten minutes


class ReportCache:
    """Per job, what the report made of it when it last changed: its ``updated_at`` in the state, its
    ``summary.json`` line and its gallery row. A report reads only the jobs whose ``updated_at`` moved, so its cost
    follows what changed, not the size of the run (the file, ``.report-cache.json``, is only a cache: a bad or older
    one is ignored)."""

    def __init__(self, entries: dict[str, list[Any]] | None = None) -> None:
        self.entries: dict[str, list[Any]] = entries or {}  # id → [updated_at, summary line, gallery row, version]
        self.order: list[str] = list(self.entries)
        self.version = max((entry[3] for entry in self.entries.values()), default=0)

    @classmethod
    def load(cls, path: Path) -> ReportCache:
        """The cache at ``path``, or an empty one when it is missing, older, or not what this code writes (any entry
        not of its shape: the cache is ignored whole, and the report made from the state)."""
        try:
            data = json.loads(path.read_bytes())
            if not isinstance(data, dict) or data.get("v") != [SUMMARY_VERSION, GALLERY_VERSION, __version__]:
                return cls()
            entries = data["entries"]
            if isinstance(entries, dict) and all(_sound(key, entry) for key, entry in entries.items()):
                return cls({key: list(entry) for key, entry in entries.items()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        return cls()

    def save(self, path: Path) -> None:
        """Write the cache (not fsynced: it is rebuilt from the state when lost)."""
        data = {"v": [SUMMARY_VERSION, GALLERY_VERSION, __version__], "entries": self.entries}
        write_text(path, json.dumps(data, ensure_ascii=False, separators=(",", ":")), durable=False)

    def refresh(self, store: Store, run_dir: RunDir, *, writing: bool) -> list[str]:
        """Bring the entries up to the state; the ids that changed. ``writing``: also make the posters and the input
        copies the changed jobs lack (a read-only view only shows what is there)."""
        stamps = store.job_stamps()
        changed = [job_id for job_id, at in stamps if self.entries.get(job_id, [None])[0] != at]
        if writing:  # a poster deleted since it was made is made again
            posters = {entry.name for entry in os.scandir(run_dir.posters)} if run_dir.posters.is_dir() else set()
            known = set(changed)
            changed += [
                job_id
                for job_id, entry in self.entries.items()
                if entry[2].get("poster") and f"{job_id}.jpg" not in posters and job_id not in known
            ]
        self.order = [job_id for job_id, _ in stamps]
        if len(self.entries) != len(stamps):
            self.entries = {job_id: self.entries[job_id] for job_id in self.order if job_id in self.entries}
        if not changed:
            return []
        self.version += 1
        inputs = _input_copies(store, run_dir, writing=writing)
        names = {image.sha256: Path(image.path).name for image in store.images()}
        costs = store.costs(changed)
        for job in store.jobs_by_id(changed):
            poster = _poster(job, run_dir, writing=writing)
            cost, attempts = costs.get(job.id, (0, 0))
            entry = _summary_entry(job, cost, attempts, poster, inputs, names)
            line = json.dumps(entry, ensure_ascii=False)
            self.entries[job.id] = [job.updated_at, line, gallery_row(entry), self.version]
        return changed

    def lines(self) -> list[str]:
        """Every job's ``summary.json`` line, in order."""
        return [self.entries[job_id][1] for job_id in self.order]

    def rows(self, since: int = 0) -> list[dict[str, Any]]:
        """The gallery rows, in order (only those changed after version ``since``)."""
        return [self.entries[job_id][2] for job_id in self.order if self.entries[job_id][3] > since]


def _sound(key: Any, entry: Any) -> bool:
    """Whether a cache entry has the shape this code writes: [updated_at, summary line, gallery row, version]."""
    return (
        isinstance(key, str)
        and isinstance(entry, list)
        and len(entry) == 4
        and isinstance(entry[0], int | float)
        and isinstance(entry[1], str)
        and entry[1].startswith(f'{{"id": {json.dumps(key, ensure_ascii=False)}, ')
        and isinstance(entry[2], dict)
        and all(name in entry[2] for name in (*ROW_KEYS, "group"))
        and isinstance(entry[3], int)
    )


def write_report(store: Store, run_dir: RunDir, *, full: bool = False) -> dict[str, Any]:
    """Make what the jobs that changed since the last report lack (a poster for a checked video, copies of the local
    input images), then write ``summary.json`` and ``index.html``; the summary without its jobs. ``full``: from
    scratch, as if no report had been made."""
    cache_path = run_dir.root / CACHE_NAME
    cache = ReportCache() if full else ReportCache.load(cache_path)
    cache.refresh(store, run_dir, writing=True)
    head = summary_head(store)
    write_text(run_dir.root / "summary.json", summary_text(head, cache.lines()))
    rows = cache.rows()
    page = gallery_html(header(head), compact(ordered(rows)), cache.version)
    write_text(run_dir.root / "index.html", page, durable=False)
    cache.save(cache_path)
    return head


def summary_text(head: dict[str, Any], lines: list[str]) -> str:
    """``summary.json`` as text: indented, with one line per job (quick to write for 100,000 jobs, easy to grep)."""
    top = json.dumps(head, indent=2, ensure_ascii=False)
    jobs = ",\n".join(f"    {line}" for line in lines)
    return f'{top[:-2]},\n  "jobs": [\n{jobs}\n  ]\n}}\n'


def summary_head(store: Store) -> dict[str, Any]:
    """``summary.json`` without its jobs: stable keys, documented in docs/running.md."""
    status = status_data(store)
    last_run = store.get_meta("last_run", {})
    above = status["charged_above_estimate"]
    return {
        "summary_version": SUMMARY_VERSION,
        "name": status["name"],
        "manifest": status["manifest"],
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "counts": status["counts"],
        "total": status["total"],
        "money": status["money"],
        "possibly_billed_twice": status["possibly_billed_twice"],
        "charged_above_estimate": {**above, "text": _above_text(above) if above["attempts"] else None},
        "wall_time_s": last_run.get("wall_s"),
        "last_exit_code": last_run.get("exit_code"),
    }


def eta_s(store: Store, now: float | None = None) -> float | None:
    """Seconds until the jobs left are done, at the pace of the last ten minutes of this run (``None`` before it has
    one)."""
    now = time.time() if now is None else now
    started = float(store.get_meta("started_at", 0.0) or 0.0)
    window = min(ETA_WINDOW_S, now - started) if started else ETA_WINDOW_S
    counts = store.counts()
    left = sum(counts[state] for state in ("pending", *IN_FLIGHT) if state in counts)
    finished = store.finished_since(now - window)
    if not left or not finished or window <= 0:
        return None
    return left * window / finished


def _poster(job: JobRow, run_dir: RunDir, *, writing: bool) -> str | None:
    """The job's poster in the run directory (made now for a checked video that lacks one, when ``writing``)."""
    name = f"posters/{job.id}.jpg"
    if job.state != "done" or not job.video_path:
        return None
    path = run_dir.root / name
    if path.exists():
        return name
    if writing:
        with contextlib.suppress(BatchgenError, OSError, av.FFmpegError):  # a card without a still
            make_poster(run_dir.root / job.video_path, path)
            return name
    return None


def _input_copies(store: Store, run_dir: RunDir, *, writing: bool) -> dict[str, str]:
    """The gallery's copy of each local image (made once when ``writing``, from the file while it holds the same
    content), by sha256: its path in the run directory."""
    copies = {}
    for image in store.images():
        name = f"{image.sha256[:16]}.jpg"
        target = run_dir.inputs / name
        if writing and not target.exists():
            with contextlib.suppress(BatchgenError, OSError, av.FFmpegError):  # a card without it
                source = Path(image.path)
                if hashlib.sha256(source.read_bytes()).hexdigest() == image.sha256:
                    run_dir.inputs.mkdir(mode=0o700, exist_ok=True)
                    make_thumbnail(source, target)
        if target.exists():
            copies[image.sha256] = f"inputs/{name}"
    return copies


def _input_image(job: JobRow, copies: dict[str, str]) -> str | None:
    """What the gallery shows as a job's input: its first-frame image (a local image's copy, or the URL)."""
    value = first_frame(job.payload, load_model(job.model)) if job.model in known_models() else None
    sha = ref_sha(value)
    if sha is not None:
        return copies.get(sha)
    return value if isinstance(value, str) and value.startswith("https://") else None


def _readable(value: Any, names: dict[str, str]) -> Any:
    """A request value with each local image's reference shown as its file's name."""
    sha = ref_sha(value)
    if sha is not None:
        return names.get(sha, "a local image")
    if isinstance(value, list):
        return [_readable(item, names) for item in value]
    if isinstance(value, dict):
        return {key: _readable(item, names) for key, item in value.items()}
    return value


def _summary_entry(
    job: JobRow, cost: int, attempts: int, poster: str | None, inputs: dict[str, str], names: dict[str, str]
) -> dict[str, Any]:
    """One job of ``summary.json``."""
    return {
        "id": job.id,
        "shot": job.shot_id,
        "model": job.model,
        "take": job.take,
        "variables": dict(job.variables),
        "state": job.state,
        "in_manifest": job.in_manifest,
        "prompt": job.payload.get("prompt", ""),
        "input_image": _input_image(job, inputs),
        "parameters": {k: _readable(v, names) for k, v in job.payload.items() if k != "prompt"},
        "cost_usd": usd(cost),
        "duration_s": (job.probe or {}).get("duration_s"),
        "attempts": attempts,
        "warnings": job.warnings,
        "reason": job.reason,
        "request_id": job.request_id,
        "possibly_billed_twice": job.possibly_billed_twice,
        "video": job.video_path,
        "placed_on": job.placed_on,  # the machine and run directory holding the video (workers of a shared state)
        "poster": poster,
    }
