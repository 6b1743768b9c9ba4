"""The gallery, ``index.html``: one self-contained page that stays quick at 10,000 jobs and more.

The page carries its jobs as one compact JSON block (texts that repeat, as prompts do across takes and matrix values,
stored once) and renders them itself: a screenful of cards at a time as the reader scrolls, each poster fetched only
when its card comes into view, so a 10,000-job page opens at once and pulls only what it shows. Filters (state, shot,
model) and a search over ids, prompts and parameters work on the data in the page and answer at once. A shot run on
several models is a grid, one column per model. Served by ``batchgen serve`` the page asks ``live.json`` every two
seconds for the jobs that changed and updates itself (cards, counts, money, ETA) without a reload; opened from disk it
is the run as it was when written.

Everything from the manifest or the provider reaches the page as JSON data and is put in as text, never as markup.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from typing import Any

GALLERY_VERSION = 2
LIVE_POLL_S = 2.0

# A gallery row: the readable form of one job, as live.json sends it and the page keeps it.
ROW_KEYS = (
    "id",
    "shot",
    "model",
    "take",
    "state",
    "prompt",
    "params",
    "cost",
    "dur",
    "att",
    "video",
    "poster",
    "input",
    "reason",
    "warn",
    "twice",
    "group",
)
_INTERNED = {"shot": "shots", "model": "models", "prompt": "prompts", "params": "params", "group": "groups"}


def gallery_row(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A job's row of the gallery, from its ``summary.json`` entry."""
    return {
        "id": entry["id"],
        "shot": entry["shot"],
        "model": entry.get("model", ""),
        "take": entry["take"],
        "state": entry["state"],
        "prompt": entry["prompt"],
        "params": parameters_text(entry["parameters"]),
        "cost": entry["cost_usd"],
        "dur": entry["duration_s"],
        "att": entry["attempts"],
        "video": entry["video"],
        "poster": entry["poster"],
        "input": entry.get("input_image"),
        "reason": entry["reason"],
        "warn": [
            *entry["warnings"],
            *(["possibly billed twice"] if entry["possibly_billed_twice"] else []),
            *([] if entry["in_manifest"] else ["no longer in the manifest (an earlier version of it)"]),
        ],
        "twice": bool(entry["possibly_billed_twice"]),
        # A comparison's row: one combination of the shot's other variables and take (a job of an earlier manifest
        # has a row of its own: it never hides the current one)
        "group": json.dumps(
            [{k: v for k, v in entry["variables"].items() if k != "model"}, entry["take"], entry["in_manifest"]]
        ),
    }


def ordered(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in manifest order, the jobs of a shot together (those of an earlier manifest after its current ones), a
    shot run on several models row by row (each row: one combination of its other variables and take, across the
    models), so that the page can lay the models out side by side."""
    models: dict[str, list[str]] = {}
    by_shot: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        shot_models = models.setdefault(row["shot"], [])
        if row["model"] not in shot_models:
            shot_models.append(row["model"])
        by_shot.setdefault(row["shot"], []).append(row)
    result: list[dict[str, Any]] = []
    for shot, members in by_shot.items():
        order = models[shot]
        if len(order) < 2:
            result.extend({**member, "group": ""} for member in members)
            continue
        groups: dict[str, list[dict[str, Any]]] = {}
        for member in members:
            groups.setdefault(member["group"], []).append(member)
        for group in groups.values():
            result.extend(sorted(group, key=lambda member: order.index(member["model"])))
    return result


def compact(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The page's data: each row as a list in ``ROW_KEYS`` order, the texts that repeat as indices into tables."""
    tables: dict[str, dict[str, int]] = {name: {} for name in _INTERNED.values()}
    packed = []
    for row in rows:
        values = []
        for key in ROW_KEYS:
            value = row[key]
            if key in _INTERNED:
                table = tables[_INTERNED[key]]
                value = table.setdefault(str(value), len(table))
            values.append(value)
        packed.append(values)
    return {"keys": ROW_KEYS, "tables": {name: list(table) for name, table in tables.items()}, "jobs": packed}


def header(
    summary: Mapping[str, Any], eta_s: float | None = None, *, live: bool = False, running: bool = False
) -> dict[str, Any]:
    """What the page's header shows: counts, money, time; served live, whether a run is going on."""
    above = summary.get("charged_above_estimate") or {}
    return {
        "running": running,
        "name": summary.get("name") or "batchgen run",
        "counts": summary["counts"],
        "total": summary["total"],
        "money": summary["money"],
        "wall_s": summary.get("wall_time_s"),
        "generated_at": summary.get("generated_at"),
        "above": above.get("text"),
        "eta_s": eta_s,
        "live": live,
    }


def gallery_html(head: Mapping[str, Any], data: Mapping[str, Any], version: int = 0) -> str:
    """``index.html``: self-contained (inline CSS and script, no network but its own files), relative links."""
    title = html.escape(str(head["name"]), quote=True)
    payload = {"v": GALLERY_VERSION, "version": version, "header": head, **data}
    # Every "<" as \u003c: no text of a prompt can close the block or open a comment in it (<!-- then <script
    # keeps an HTML parser in the block past its end)
    block = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
    style, script = _asset("gallery.css"), _asset("gallery.js")
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
        f'content="width=device-width,initial-scale=1"><title>{title} · batchgen</title><style>{style}</style></head>'
        f'<body><header><h1 id="title">{title}</h1><p class="stats" id="stats"></p><p class="warn" id="above" hidden>'
        '</p><nav><span id="states"></span><select id="shot" aria-label="shot"><option value="">every shot</option>'
        '</select><select id="model" aria-label="model"><option value="">every model</option></select>'
        '<input id="q" type="search" placeholder="search ids, prompts, parameters" aria-label="search">'
        '<span id="shown"></span></nav></header><main id="grid"></main><div id="more"></div>'
        f'<script id="data" type="application/json">{block}</script><script>{script}</script></body></html>\n'
    )


def parameters_text(parameters: Mapping[str, Any]) -> str:
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


@cache
def _asset(name: str) -> str:
    """A file of ``batchgen/static/`` (the page's style and script), read once."""
    return resources.files("batchgen").joinpath("static", name).read_text("utf-8")
