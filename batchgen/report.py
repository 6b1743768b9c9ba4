"""What a run looks like from outside: its status (data, text), ``summary.json`` and the ``index.html`` gallery."""

from __future__ import annotations

import contextlib
import hashlib
import html
import json
import os
import time
from pathlib import Path
from typing import Any

import av

from batchgen.budget import Budget
from batchgen.errors import BatchgenError
from batchgen.images import ref_sha
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
    }


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

SUMMARY_VERSION = 1


def write_report(store: Store, run_dir: RunDir) -> dict[str, Any]:
    """Make the posters a checked video lacks (one made when it was checked failed, or an older run) and the
    small copies of the local input images, then write ``summary.json`` and ``index.html``; the summary. One read of
    the jobs, one listing of the posters."""
    rows = store.jobs()
    posters = {entry.name for entry in os.scandir(run_dir.posters)} if run_dir.posters.is_dir() else set()
    for job in rows:
        name = f"{job.id}.jpg"
        if job.state == "done" and job.video_path and name not in posters:
            with contextlib.suppress(BatchgenError, OSError, av.FFmpegError):  # a gallery without one still
                make_poster(run_dir.root / job.video_path, run_dir.posters / name)
                posters.add(name)
    summary = summary_data(store, rows, posters, _input_copies(store, run_dir))
    write_text(run_dir.root / "summary.json", summary_text(summary))
    write_text(run_dir.root / "index.html", gallery_html(summary), durable=False)
    return summary


def summary_text(summary: dict[str, Any]) -> str:
    """``summary.json`` as text: indented, with one line per job (quick to write for 100,000 jobs, easy to grep)."""
    head = json.dumps({k: v for k, v in summary.items() if k != "jobs"}, indent=2, ensure_ascii=False)
    jobs = ",\n".join(f"    {json.dumps(job, ensure_ascii=False)}" for job in summary["jobs"])
    return f'{head[:-2]},\n  "jobs": [\n{jobs}\n  ]\n}}\n'


def _input_copies(store: Store, run_dir: RunDir) -> dict[str, str]:
    """The gallery's copy of each local image (made once, from the file while it holds the same content), by
    sha256: its path in the run directory."""
    copies = {}
    for image in store.images():
        name = f"{image.sha256[:16]}.jpg"
        target = run_dir.inputs / name
        if not target.exists():
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
    field = load_model(job.model).clip.image if job.model in known_models() else None
    value = job.payload.get(field) if field else None
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


def summary_data(
    store: Store, rows: list[JobRow], posters: set[str], inputs: dict[str, str] | None = None
) -> dict[str, Any]:
    """``summary.json``: stable keys, documented in the README (``rows``: every job; ``posters``: the names in
    ``posters/``; ``inputs``: the gallery's copies of local images, by sha256)."""
    status = status_data(store)
    costs = store.costs()
    last_run = store.get_meta("last_run", {})
    names = {image.sha256: Path(image.path).name for image in store.images()}
    inputs = inputs or {}
    jobs = []
    for job in rows:
        cost, attempts = costs.get(job.id, (0, 0))
        poster = f"{job.id}.jpg"
        jobs.append(
            {
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
                "poster": f"posters/{poster}" if poster in posters else None,
            }
        )
    return {
        "summary_version": SUMMARY_VERSION,
        "name": status["name"],
        "manifest": status["manifest"],
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "counts": status["counts"],
        "total": status["total"],
        "money": status["money"],
        "possibly_billed_twice": status["possibly_billed_twice"],
        "charged_above_estimate": status["charged_above_estimate"],
        "wall_time_s": last_run.get("wall_s"),
        "last_exit_code": last_run.get("exit_code"),
        "jobs": jobs,
    }


_CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#111;color:#eee}
header{padding:16px 24px;background:#1b1b1b;border-bottom:1px solid #333;position:sticky;top:0}
h1{margin:0 0 4px;font-size:22px}.stats{margin:0;color:#bbb}.stats b{color:#fff}
nav{margin-top:8px}nav button{background:#2a2a2a;color:#eee;border:1px solid #444;border-radius:4px;
padding:3px 10px;margin-right:4px;cursor:pointer}nav button.on{background:#3d6ee0;border-color:#3d6ee0}
main{padding:8px 24px 40px;display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:14px}
section,.cards{display:contents}section h2{grid-column:1/-1;font-size:17px;margin:14px 0 0;color:#ddd}
.card{background:#1c1c1c;border:1px solid #333;border-radius:8px;padding:10px;box-sizing:border-box;min-width:0}
.card video{width:100%;aspect-ratio:16/9;object-fit:contain;border-radius:4px;display:block;background:#000}
.card h3{font-size:13px;margin:8px 0 2px;word-break:break-all;color:#9cf}
.prompt{white-space:pre-wrap;margin:6px 0;color:#ddd}.meta{color:#aaa;font-size:13px;margin:0}
.badge{display:inline-block;border-radius:3px;padding:0 6px;font-size:12px;background:#333}
.state-done .badge{background:#1f6f3a}.state-failed .badge,.state-lost .badge{background:#8a2323}
.state-skipped .badge,.state-pending .badge{background:#6b5a12}
.reason{background:#2a1414;border-left:3px solid #c44;padding:6px;color:#f0c0c0;white-space:pre-wrap}
.warn{color:#f0c060;font-size:13px}summary{cursor:pointer;list-style:none}
.pair{display:grid;grid-template-columns:1fr 3fr;gap:6px;align-items:center}
.pair img{width:100%;border-radius:4px;border:1px solid #444}.model{color:#c9b6ff}
.compare .grid{grid-column:1/-1;display:grid;grid-template-columns:repeat(var(--models),minmax(260px,1fr));gap:14px;
overflow-x:auto}.colhead{font-weight:600;color:#c9b6ff;padding:4px 2px;border-bottom:1px solid #444}
section h2 small{color:#999;font-weight:400}
body[data-filter] .card{display:none}body[data-filter=all] .card{display:block}
"""

_SCRIPT = """
document.querySelectorAll('nav button').forEach(function (b) {
  b.addEventListener('click', function () {
    document.body.dataset.filter = b.dataset.state;
    document.querySelectorAll('nav button').forEach(function (o) { o.classList.toggle('on', o === b); });
    document.querySelectorAll('.card').forEach(function (c) {
      c.style.display = (b.dataset.state === 'all' || c.dataset.state === b.dataset.state) ? 'block' : 'none';
    });
  });
});
"""


def gallery_html(summary: dict[str, Any]) -> str:
    """``index.html``: self-contained (inline CSS, no network), relative links; every text from the manifest or
    the provider is escaped."""
    counts = summary["counts"]
    money = summary["money"]
    spent = format_dollars(money["spent_usd"])
    of = f" of {format_dollars(money['budget_usd'])}" if money["budget_usd"] is not None else ""
    wall = summary["wall_time_s"]
    stats = " · ".join(
        f"<b>{counts[s]}</b> {s}" for s in ("done", "failed", "lost", "skipped", "pending") if counts.get(s)
    )
    stats += f" · <b>{_e(spent)}</b> spent{_e(of)}"
    if wall is not None:
        stats += f" · wall time {_e(_duration(wall))}"
    stats += f" · {_e(summary['generated_at'])}"
    states = ["all", *(s for s in ("done", "failed", "lost", "skipped", "pending") if counts.get(s))]
    buttons = "".join(f'<button data-state="{s}"{" class=on" if s == "all" else ""}>{s}</button>' for s in states)
    shots: dict[str, list[dict[str, Any]]] = {}
    for job in summary["jobs"]:
        shots.setdefault(job["shot"], []).append(job)
    sections = "".join(_section(shot, jobs) for shot, jobs in shots.items())
    title = _e(summary["name"] or "batchgen run")
    above = summary["charged_above_estimate"]
    if above["attempts"]:
        stats += f'</p><p class="warn">{_e(_above_text(above))}'
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
        f'content="width=device-width,initial-scale=1"><title>{title} · batchgen</title><style>{_CSS}</style></head>'
        f'<body data-filter="all"><header><h1>{title}</h1><p class="stats">{stats}</p><nav>{buttons}</nav></header>'
        f"<main>{sections}</main><script>{_SCRIPT}</script></body></html>\n"
    )


def _section(shot: str, jobs: list[dict[str, Any]]) -> str:
    """A shot's cards; a shot run on several models (a matrix over ``model``) as a comparison: one column per
    model, one row per combination of its other variables and take, each column headed by its model."""
    models = list(dict.fromkeys(job.get("model", "") for job in jobs))
    if len(models) < 2:
        cards = "".join(map(_card, jobs))
        return f'<section data-shot="{_e(shot)}"><h2>{_e(shot)}</h2><div class="cards">{cards}</div></section>'
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for job in jobs:
        others = {k: v for k, v in job["variables"].items() if k != "model"}
        rows.setdefault(json.dumps([others, job["take"]], sort_keys=True), {})[job.get("model", "")] = job
    heads = "".join(f'<div class="colhead">{_e(model)}</div>' for model in models)
    cells = "".join(
        _card(row[model]) if model in row else '<div class="empty"></div>' for row in rows.values() for model in models
    )
    return (
        f'<section data-shot="{_e(shot)}" class="compare"><h2>{_e(shot)} <small>· {len(models)} models side by side'
        f'</small></h2><div class="grid" style="--models:{len(models)}">{heads}{cells}</div></section>'
    )


def _card(job: dict[str, Any]) -> str:
    state = job["state"]
    if state == "done" and job["video"]:
        poster = f' poster="{_e(job["poster"])}"' if job["poster"] else ""
        # One click plays: the still is the video's own poster; nothing is fetched until then (preload=none).
        picture = f'<video controls preload="none"{poster} src="{_e(job["video"])}" title="{_e(job["id"])}"></video>'
    else:
        picture = f'<p class="reason">{_e(job["reason"] or state)}</p>'
    if job.get("input_image"):
        source = f'<img class="input" loading="lazy" src="{_e(job["input_image"])}" alt="input image" title="input">'
        picture = f'<div class="pair">{source}{picture}</div>'
    params = parameters_text(job["parameters"])
    duration = f"{job['duration_s']} s" if job["duration_s"] is not None else "-"
    warnings = "".join(f'<p class="warn">⚠ {_e(w)}</p>' for w in job["warnings"])
    twice = '<p class="warn">possibly billed twice</p>' if job["possibly_billed_twice"] else ""
    return (
        f'<article class="card state-{_e(state)}" data-state="{_e(state)}">{picture}'
        f'<h3>{_e(job["id"])}</h3><p class="meta"><span class="badge">{_e(state)}</span> '
        f'<span class="model">{_e(job.get("model", ""))}</span> · take {job["take"]} · '
        f"{_e(format_dollars(job['cost_usd']))} · {_e(duration)} · {job['attempts']} "
        f"attempt{'s' * (job['attempts'] != 1)}</p>"
        f'<p class="prompt">{_e(job["prompt"])}</p><p class="meta">{_e(params)}</p>{warnings}{twice}</article>'
    )


def parameters_text(parameters: dict[str, Any]) -> str:
    """A job's request fields as a person reads them: ``5 s · 16:9 · audio · cfg 0.7 · 2 segments``."""
    words = []
    for name, value in parameters.items():
        if name == "duration":
            words.append(f"{value} s")
        elif name == "aspect_ratio":
            words.append(str(value))
        elif name == "generate_audio":
            words.append("audio" if value else "silent")
        elif name == "cfg_scale":
            words.append(f"cfg {value}")
        elif name == "multi_prompt" and isinstance(value, list):
            words.append(f"{len(value)} segment{'s' * (len(value) != 1)}")
        elif name == "voice_ids" and isinstance(value, list):
            words.append(f"voices {', '.join(map(str, value))}")
        elif name == "negative_prompt":
            words.append(f"avoid: {value}")
        else:
            words.append(f"{name.replace('_', ' ')}: {value if isinstance(value, str) else json.dumps(value)}")
    return " · ".join(words)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)
