"""A manifest file → a validated :class:`Manifest`, or a :class:`ManifestError` naming every problem at once.

Validation runs in three layers, each reporting at the line:col of the YAML node at fault:

1. the YAML itself (``yamlsource``): syntax, encoding, duplicate keys, size;
2. the JSON Schemas (``schema/manifest.schema.json`` with the model's request fields filled in);
3. the rules a schema cannot state, checked on every matrix combination of every shot: templates refer to matrix
   variables and every variable is used, ``multi_prompt`` segments add up to ``duration``, ``<<<voice_N>>>`` refers
   to a listed voice, the rendered request is valid, shot ids are unique, the job count is bounded.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from batchgen.errors import ManifestError, Problem
from batchgen.models import DEFAULT_MODEL, Model, PriceRow, known_models, load_model
from batchgen.validation import did_you_mean, make_validator, schema_problems
from batchgen.yamlsource import Document, Path_, format_path, load_document

MAX_JOBS = 10_000
DEFAULT_CONCURRENCY = 4
DEFAULT_RPM = 5
TEMPLATE_FIELDS = ("prompt", "negative_prompt")
_TEMPLATE = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
_VOICE_REF = re.compile(r"<<<voice_(\d+)>>>")


@dataclass(frozen=True)
class Shot:
    """One shot of a manifest: its own request fields, its matrix (in file order) and its number of takes."""

    index: int
    id: str
    fields: Mapping[str, Any]
    matrix: tuple[tuple[str, tuple[Any, ...]], ...]
    takes: int

    @property
    def combination_count(self) -> int:
        """How many matrix combinations the shot has (1 without a matrix)."""
        return math.prod(len(values) for _, values in self.matrix)


@dataclass(frozen=True)
class Combination:
    """One matrix combination of a shot: its matrix values and the rendered request fields."""

    shot: Shot
    values: tuple[tuple[str, Any], ...]
    fields: Mapping[str, Any]


@dataclass(frozen=True)
class Manifest:
    """A validated manifest. Request fields are normalised (``duration: 5`` is ``"5"``)."""

    file: str
    name: str
    model: Model
    defaults: Mapping[str, Any]
    shots: tuple[Shot, ...]
    price: PriceRow
    budget_usd: float | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    rpm: int = DEFAULT_RPM
    max_attempts: int | None = None
    base_url: str | None = None
    transport: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """The normalised document it was built from (kept by a run's state: see ``manifest_from_data``)."""

    @property
    def job_count(self) -> int:
        """How many jobs the manifest expands to, counted without expanding it."""
        return sum(shot.combination_count * shot.takes for shot in self.shots)

    def combinations(self, shot: Shot) -> Iterator[Combination]:
        """Every matrix combination of ``shot``, in file order (the last variable varies fastest)."""
        for choices in _choices(shot):
            fields, _ = _merge(self, shot, choices)
            yield Combination(shot, _values(shot, choices), fields)


def load_manifest(path: str | Path, *, max_jobs: int = MAX_JOBS, document: Document | None = None) -> Manifest:
    """Load and validate the manifest at ``path`` (``document``: already parsed from it); raise
    :class:`ManifestError` with every problem found."""
    doc = load_document(path) if document is None else document
    data: dict[str, Any] = doc.data
    problems: list[Problem] = list(doc.problems)
    model = _model_of(doc, problems)
    _normalise(data, model)
    structural = schema_problems(_manifest_validator(model.slug), data, _locator(doc))
    problems.extend(structural)
    if (
        _at(structural, ("version",))
        or _at(structural, ("shots",), exact=True)
        or not isinstance(data.get("shots"), list)
    ):
        raise ManifestError(problems)
    broken_defaults = {name for name in model.request_fields if _at(structural, ("defaults", name))}
    manifest = _build(doc, model, leave_out=broken_defaults)
    for shot in manifest.shots:
        if _at(structural, ("shots", shot.index)):
            problems.extend(_broken_shot_problems(doc, manifest, shot, structural))
            continue
        problems.extend(_shot_problems(doc, manifest, shot, max_jobs))
    problems.extend(_duplicate_ids(doc, manifest))
    problems.extend(_job_limit(doc, manifest, max_jobs))
    if problems:
        raise ManifestError(problems)
    return manifest


def manifest_from_data(file: str, data: dict[str, Any]) -> Manifest:
    """The manifest of a document ``load_manifest`` validated and normalised before (its ``data``), rebuilt without
    checking it again: a run's state keeps it with the digest of the bytes it came from."""
    return _build(Document(file, data), load_model(str(data.get("model", DEFAULT_MODEL))), leave_out=set())


def _at(problems: list[Problem], prefix: Path_, *, exact: bool = False) -> bool:
    text = format_path(prefix)
    return any(p.path == text or (not exact and p.path.startswith((text + ".", text + "["))) for p in problems)


def _locator(doc: Document) -> Any:
    return lambda path, key: doc.problem(path, "", key=key)


def _model_of(doc: Document, problems: list[Problem]) -> Model:
    slug = doc.data.get("model", DEFAULT_MODEL)
    if isinstance(slug, str) and slug in known_models():
        return load_model(slug)
    if isinstance(slug, str):
        hint = did_you_mean(slug, known_models()) or f" (known: {', '.join(known_models())})"
        problems.append(doc.problem(("model",), f'unknown model "{slug}"{hint}'))
    return load_model(DEFAULT_MODEL)


@cache
def _manifest_validator(model_slug: str) -> Any:
    """The manifest schema with the model's request fields filled in where the manifest may write them."""
    text = resources.files("batchgen").joinpath("schema", "manifest.schema.json").read_text("utf-8")
    schema = json.loads(text)
    fields = load_model(model_slug).request_fields
    schema["properties"]["defaults"]["properties"] = copy.deepcopy(fields)
    schema["$defs"]["shot"]["properties"].update(copy.deepcopy(fields))
    schema["$defs"]["matrix"]["properties"] = {
        name: {"type": "array", "minItems": 1, "items": copy.deepcopy(field)} for name, field in fields.items()
    }
    return make_validator(schema)


@cache
def _request_validator(model_slug: str) -> Any:
    return make_validator(load_model(model_slug).request_schema)


def _normalise(data: dict[str, Any], model: Model) -> None:
    """Turn whole numbers into the strings the API wants where the schema says so (``duration: 5`` → ``"5"``)."""
    fields = model.request_fields
    places: list[Any] = [data.get("defaults")]
    shots = data.get("shots")
    for shot in shots if isinstance(shots, list) else []:
        places.append(shot)
        matrix = shot.get("matrix") if isinstance(shot, dict) else None
        for name, values in matrix.items() if isinstance(matrix, dict) else []:
            if name in fields and isinstance(values, list):
                values[:] = [_as_api_value(v, fields[name]) for v in values]
    for place in places:
        if isinstance(place, dict):
            for name in fields.keys() & place.keys():
                place[name] = _as_api_value(place[name], fields[name])


def _as_api_value(value: Any, schema: Mapping[str, Any]) -> Any:
    if schema.get("x-int-as-string") and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_as_api_value(item, schema["items"]) for item in value]
    if isinstance(value, dict) and isinstance(schema.get("properties"), dict):
        props = schema["properties"]
        return {k: _as_api_value(v, props[k]) if k in props else v for k, v in value.items()}
    return value


def _build(doc: Document, model: Model, *, leave_out: set[str]) -> Manifest:
    """The manifest of a structurally valid document, without the defaults named in ``leave_out``."""
    data = doc.data
    fields = model.request_fields
    shots = []
    for index, raw in enumerate(data.get("shots") or []):
        raw = raw if isinstance(raw, dict) else {}
        matrix_raw = raw["matrix"] if isinstance(raw.get("matrix"), dict) else {}
        matrix = tuple((k, tuple(v)) for k, v in matrix_raw.items() if isinstance(v, list))
        own = {k: v for k, v in raw.items() if k in fields}
        takes = raw.get("takes", 1)
        shots.append(Shot(index, str(raw.get("id", "")), own, matrix, takes if isinstance(takes, int) else 1))
    pricing = data["pricing"] if isinstance(data.get("pricing"), dict) else {}
    price = PriceRow(
        **{k: float(_number(pricing.get(k), getattr(model.price, k))) for k in ("silent", "audio", "voice")}
    )
    api = data["api"] if isinstance(data.get("api"), dict) else {}
    defaults = data["defaults"] if isinstance(data.get("defaults"), dict) else {}
    return Manifest(
        file=doc.file,
        name=str(data.get("name", "")),
        model=model,
        defaults={k: v for k, v in defaults.items() if k in fields and k not in leave_out},
        shots=tuple(shots),
        price=price,
        budget_usd=_number(data.get("budget"), None),
        concurrency=int(_number(data.get("concurrency"), DEFAULT_CONCURRENCY)),
        rpm=int(_number(data.get("rpm"), DEFAULT_RPM)),
        max_attempts=None if data.get("max_attempts") is None else int(_number(data["max_attempts"], 5)),
        base_url=api.get("base_url"),
        transport=api.get("transport"),
        data=data,
    )


def _number(value: Any, default: Any) -> Any:
    """``value`` when it is a number (a wrong one is reported by the schema), else ``default``."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else default


# --- the rules a schema cannot state ------------------------------------------------------------------------


def _choices(shot: Shot) -> Iterator[tuple[int, ...]]:
    """Every matrix combination as the index of its value under each variable, in file order."""
    return itertools.product(*(range(len(values)) for _, values in shot.matrix))


def _values(shot: Shot, choices: tuple[int, ...]) -> tuple[tuple[str, Any], ...]:
    return tuple((name, values[choice]) for (name, values), choice in zip(shot.matrix, choices, strict=True))


def _merge(
    manifest: Manifest, shot: Shot, choices: tuple[int, ...], *, render: bool = True
) -> tuple[dict[str, Any], dict[str, Path_]]:
    """defaults ← shot ← the matrix values at ``choices``, rendered; with where each field was written."""
    fields: dict[str, Any] = {}
    origin: dict[str, Path_] = {}
    for name, value in manifest.defaults.items():
        fields[name], origin[name] = value, ("defaults", name)
    for name, value in shot.fields.items():
        fields[name], origin[name] = value, ("shots", shot.index, name)
    variables: dict[str, Any] = {}
    for (name, values), choice in zip(shot.matrix, choices, strict=True):
        value = values[choice]
        if name in manifest.model.request_fields:
            fields[name], origin[name] = value, ("shots", shot.index, "matrix", name, choice)
        else:
            variables[name] = value
    if not render:
        return fields, origin
    fields = _render_fields(fields, variables)
    if "prompt" not in fields and isinstance(fields.get("multi_prompt"), list):
        # The API requires `prompt`; a multi-shot written as segments only sends them joined.
        fields["prompt"] = " ".join(str(s.get("prompt", "")) for s in fields["multi_prompt"] if isinstance(s, dict))
        origin["prompt"] = origin["multi_prompt"]
    return fields, origin


def _render(text: str, variables: Mapping[str, Any]) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return match.group(0)[0]
        return _as_text(variables[name]) if name in variables else match.group(0)

    return _TEMPLATE.sub(substitute, text)


def _as_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) else str(value)


def _render_fields(fields: dict[str, Any], variables: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(fields)
    for name in TEMPLATE_FIELDS:
        if isinstance(out.get(name), str):
            out[name] = _render(out[name], variables)
    if isinstance(out.get("multi_prompt"), list):
        out["multi_prompt"] = [
            {**s, "prompt": _render(s["prompt"], variables)} if isinstance(s.get("prompt"), str) else s
            for s in out["multi_prompt"]
        ]
    return out


def _templates(fields: Mapping[str, Any], origin: Mapping[str, Path_]) -> Iterator[tuple[Path_, str]]:
    """Every prompt text of the unrendered fields, with its path."""
    for name in TEMPLATE_FIELDS:
        if isinstance(fields.get(name), str):
            yield origin[name], fields[name]
    segments = fields.get("multi_prompt")
    for i, segment in enumerate(segments if isinstance(segments, list) else []):
        if isinstance(segment, dict) and isinstance(segment.get("prompt"), str):
            yield (*origin["multi_prompt"], i, "prompt"), segment["prompt"]


def _shot_problems(doc: Document, manifest: Manifest, shot: Shot, max_jobs: int) -> list[Problem]:
    problems = _template_problems(doc, manifest, shot)
    if problems or shot.combination_count * shot.takes > max_jobs:
        return problems  # rendering is unsafe, or the job limit reports it
    seen: set[str] = set()
    for choices in _choices(shot):
        fields, origin = _merge(manifest, shot, choices)
        key = json.dumps(fields, sort_keys=True)
        if key in seen:
            message = "two matrix combinations give the same request; remove the repeated value"
            problems.append(doc.problem(("shots", shot.index, "matrix"), message))
            continue
        seen.add(key)
        problems.extend(_request_problems(doc, manifest, shot, fields, origin))
    return problems


def _broken_shot_problems(doc: Document, manifest: Manifest, shot: Shot, structural: list[Problem]) -> list[Problem]:
    """The rules a schema cannot state, on what of a shot the schema did accept: every problem of a file is
    reported in one pass, not the next ones after the first are fixed."""
    if any(not values for _, values in shot.matrix):
        return []  # an empty matrix axis (the schema says so): there is no combination to look at
    problems = _template_problems(doc, manifest, shot)
    fields, origin = _merge(manifest, shot, (0,) * len(shot.matrix), render=False)

    def sound(*names: str) -> bool:
        return all(not _at(structural, origin[name]) for name in names if name in origin)

    if sound("multi_prompt", "duration"):
        problems.extend(_segment_problems(doc, manifest, fields, origin))
    if sound("voice_ids", *TEMPLATE_FIELDS, "multi_prompt"):
        problems.extend(_voice_problems(doc, fields, origin))
    return problems


def _template_problems(doc: Document, manifest: Manifest, shot: Shot) -> list[Problem]:
    problems: list[Problem] = []
    variables = [name for name, _ in shot.matrix if name not in manifest.model.request_fields]
    fields, origin = _merge(manifest, shot, (0,) * len(shot.matrix), render=False)
    used: set[str] = set()
    for path, text in _templates(fields, origin):
        for match in _TEMPLATE.finditer(text):
            name = match.group(1)
            if name is None:
                continue
            used.add(name)
            if name not in variables:
                message = f'{{{name}}} is not defined: add `{name}: [...]` to the matrix of shot "{shot.id}"'
                problems.append(doc.problem(path, message))
    for name in variables:
        if name not in used:
            hint = did_you_mean(name, list(manifest.model.request_fields))
            message = f'matrix variable "{name}" is not used by any prompt (write {{{name}}} in one){hint}'
            problems.append(doc.problem(("shots", shot.index, "matrix", name), message, key=True))
    return problems


def _request_problems(
    doc: Document, manifest: Manifest, shot: Shot, fields: dict[str, Any], origin: dict[str, Path_]
) -> list[Problem]:
    def locate(path: Path_, key: bool) -> Problem:
        base = origin.get(str(path[0]), ("shots", shot.index)) if path else ("shots", shot.index)
        return doc.problem((*base, *path[1:]), "", key=key)

    problems = schema_problems(_request_validator(manifest.model.slug), fields, locate)
    if problems:
        return problems
    return [*_segment_problems(doc, manifest, fields, origin), *_voice_problems(doc, fields, origin)]


def _segment_problems(
    doc: Document, manifest: Manifest, fields: Mapping[str, Any], origin: Mapping[str, Path_]
) -> list[Problem]:
    segments = fields.get("multi_prompt")
    if not segments:
        return []
    segment_default = manifest.model.request_fields["multi_prompt"]["items"]["properties"]["duration"]["default"]
    seconds = [int(s.get("duration", segment_default)) for s in segments]
    total = int(fields.get("duration", manifest.model.field_default("duration")))
    if sum(seconds) == total:
        return []
    parts = " + ".join(str(s) for s in seconds)
    message = (
        f"the segment durations add up to {sum(seconds)} s ({parts}) but duration is {total} s; "
        "Kling requires them to be equal: change a segment or the duration"
    )
    return [doc.problem(origin["multi_prompt"], message)]


def _voice_problems(doc: Document, fields: Mapping[str, Any], origin: Mapping[str, Path_]) -> list[Problem]:
    voices = len(fields.get("voice_ids") or [])
    problems = []
    unrendered = {name: fields[name] for name in (*TEMPLATE_FIELDS, "multi_prompt") if name in fields}
    for path, text in _templates(unrendered, origin):
        for match in _VOICE_REF.finditer(text):
            number = int(match.group(1))
            if not 1 <= number <= voices:
                listed = f"voice_ids lists {voices}" if voices else "there is no voice_ids"
                problems.append(doc.problem(path, f"{match.group(0)} refers to voice {number}, but {listed}"))
    return problems


def _duplicate_ids(doc: Document, manifest: Manifest) -> list[Problem]:
    first: dict[str, int] = {}
    problems = []
    for shot in manifest.shots:
        if shot.id in first:
            line = doc.where(("shots", first[shot.id], "id"))[0]
            message = f'shot id "{shot.id}" is already used at line {line}; shot ids must be unique'
            problems.append(doc.problem(("shots", shot.index, "id"), message))
        else:
            first[shot.id] = shot.index
    return problems


def _job_limit(doc: Document, manifest: Manifest, max_jobs: int) -> list[Problem]:
    count = manifest.job_count
    if count <= max_jobs:
        return []
    message = f"the manifest expands to {count:,} jobs, more than the limit of {max_jobs:,}; pass --max-jobs {count}"
    return [doc.problem(("shots",), message, key=True)]
