"""A manifest file → a validated :class:`Manifest`, or a :class:`ManifestError` naming every problem at once.

Each shot runs one model (``model:`` at the top, in the shot, or as a matrix axis: ``matrix: {model: [a, b]}``), and
its request fields are the ones of that model; ``image:`` stands for the model's first-frame field, whatever its
name (``start_image_url``, ``first_frame_image``, ``image``), so that one still can be compared across models.
Validation runs in three layers, each reporting at the line:col of the YAML node at fault:

1. the YAML itself (``yamlsource``): syntax, encoding, duplicate keys, size; the shots of a ``shots_from`` file
   (``rows``: CSV or JSONL) are appended to the document's own, each value placed at its line and column in that
   file, so that every later problem names it;
2. the manifest's JSON Schema (``schema/manifest.schema.json``): its structure, and that every request field is a
   field of some model batchgen knows;
3. every matrix combination of every shot against its model's request schema (a field the model lacks, a value it
   does not take, each naming the model when the manifest uses several), and the rules a schema cannot state:
   templates refer to matrix variables and every variable is used, ``multi_prompt`` segments add up to ``duration``,
   ``<<<voice_N>>>`` refers to a listed voice, ``@ElementN`` to a listed element, a local image exists, is an image
   and is within the model's limit, shot ids are unique, the job count is bounded.

A problem found the same way by several combinations (a default every combination inherits) is reported once.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache, cached_property
from importlib import resources
from pathlib import Path
from typing import Any

from yarl import URL

from batchgen.errors import ManifestError, Problem
from batchgen.images import (
    MAX_IMAGE_BYTES,
    ImageProblem,
    LocalImage,
    Slot,
    image_slots,
    read_image,
    replace_images,
    slot_limit,
)
from batchgen.models import DEFAULT_MODEL, Model, PriceTable, known_models, load_model
from batchgen.rows import SUFFIXES, RowsFileProblem, parse_rows, read_rows
from batchgen.validation import did_you_mean, make_validator, schema_problems
from batchgen.yamlsource import Document, Path_, format_path, load_document

MAX_JOBS = 10_000
DEFAULT_CONCURRENCY = 4
DEFAULT_RPM = 5
TEMPLATE_FIELDS = ("prompt", "negative_prompt")
MODEL_AXIS = "model"
IMAGE_ALIAS = "image"  # a shot's first-frame image, under whichever name its model gives that field
SHOTS_FROM = "shots_from"
SHOT_KEYS = {"id": "string", "model": "string", "takes": "integer"}  # a shot's keys besides request fields and matrix
_TEMPLATE = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
_VOICE_REF = re.compile(r"<<<voice_(\d+)>>>")
_ELEMENT_REF = re.compile(r"@Element(\d+)\b")


@dataclass(frozen=True)
class Shot:
    """One shot of a manifest: its own request fields, its matrix (in file order) and its number of takes."""

    index: int
    id: str
    fields: Mapping[str, Any]
    matrix: tuple[tuple[str, tuple[Any, ...]], ...]
    takes: int
    model: str | None = None  # its own `model:`, when it names one

    @property
    def combination_count(self) -> int:
        """How many matrix combinations the shot has (1 without a matrix)."""
        return math.prod(len(values) for _, values in self.matrix)


@dataclass(frozen=True)
class Combination:
    """One matrix combination of a shot: its model, its matrix values and the rendered request fields (a local
    image stands as its content's reference: see ``images``)."""

    shot: Shot
    values: tuple[tuple[str, Any], ...]
    fields: Mapping[str, Any]
    model: Model


@dataclass(frozen=True)
class Manifest:
    """A validated manifest. Request fields are normalised per model when a combination is made (``duration: 5``
    is ``"5"`` for a model that takes it as text)."""

    file: str
    name: str
    model: Model
    """The model of every shot that does not name its own."""
    defaults: Mapping[str, Any]
    shots: tuple[Shot, ...]
    prices: Mapping[str, PriceTable] = field(default_factory=dict)
    """Price tables the manifest's ``pricing:`` changed, by model slug (the others are the models' own)."""
    budget_usd: float | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    rpm: int = DEFAULT_RPM
    max_attempts: int | None = None
    base_url: str | None = None
    transport: str | None = None
    notify: tuple[str, ...] = ()
    """URLs to notify of the run's end, stops and alarms (``notify.py``)."""
    data: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """The document it was built from (kept by a run's state: see ``manifest_from_data``)."""
    images: dict[str, LocalImage | ImageProblem] = field(default_factory=dict, compare=False, repr=False)
    """Every local image read so far, by its absolute path (each file is read once)."""
    row_files: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    """The ``shots_from`` file its shots were read from, by absolute path, with the sha256 of its bytes."""

    @property
    def job_count(self) -> int:
        """How many jobs the manifest expands to, counted without expanding it."""
        return sum(shot.combination_count * shot.takes for shot in self.shots)

    @cached_property
    def models(self) -> tuple[Model, ...]:
        """Every model the shots use, in the order they first appear (computed once: validation asks per shot)."""
        slugs = dict.fromkeys(slug for shot in self.shots for slug in self.shot_models(shot))
        return tuple(load_model(slug) for slug in slugs if slug in known_models())

    def shot_models(self, shot: Shot) -> tuple[str, ...]:
        """The slugs of the models ``shot`` runs (several with a matrix over ``model``)."""
        for name, values in shot.matrix:
            if name == MODEL_AXIS:
                return tuple(str(value) for value in values)
        return (shot.model or self.model.slug,)

    def price_table(self, model: Model) -> PriceTable:
        """The prices of ``model``'s jobs: its own table, with what the manifest's ``pricing:`` changed."""
        return self.prices.get(model.slug, model.price)

    def local_images(self) -> dict[str, LocalImage]:
        """Every local image the manifest's jobs send, by sha256."""
        return {image.sha256: image for image in self.images.values() if isinstance(image, LocalImage)}

    def combinations(self, shot: Shot) -> Iterator[Combination]:
        """Every matrix combination of ``shot``, in file order (the last variable varies fastest)."""
        for choices in _choices(shot):
            fields, _, model = _merge(self, shot, choices)
            fields, _ = _with_images(self, model, fields)
            yield Combination(shot, _values(shot, choices), fields, model)


def load_manifest(path: str | Path, *, max_jobs: int = MAX_JOBS, document: Document | None = None) -> Manifest:
    """Load and validate the manifest at ``path`` (``document``: already parsed from it); raise
    :class:`ManifestError` with every problem found."""
    doc = _with_rows(load_document(path) if document is None else document)
    data: dict[str, Any] = doc.data
    problems: list[Problem] = list(doc.problems)
    model = _model_of(doc, problems)
    structural = schema_problems(_manifest_validator(), data, _locator(doc))
    problems.extend(structural)
    if (
        _at(structural, ("version",))
        or _at(structural, ("shots",), exact=True)
        or not isinstance(data.get("shots"), list)
    ):
        raise ManifestError(problems)
    manifest = _build(doc, model)
    problems.extend(_pricing_problems(doc, model))
    for shot in manifest.shots:
        problems.extend(_unknown_models(doc, manifest, shot))
        if _at(structural, ("shots", shot.index)):
            problems.extend(_broken_shot_problems(doc, manifest, shot, structural))
            continue
        if shot.model is None or shot.model in known_models():
            problems.extend(_shot_problems(doc, manifest, shot, max_jobs))
    problems.extend(_duplicate_ids(doc, manifest))
    problems.extend(_job_limit(doc, manifest, max_jobs))
    if problems:
        raise ManifestError(list(dict.fromkeys(problems)))
    return manifest


def manifest_from_data(file: str, data: dict[str, Any]) -> Manifest:
    """The manifest of a document ``load_manifest`` validated before (its ``data``), rebuilt without checking it
    again: a run's state keeps it with the digest of the bytes it came from."""
    return _build(Document(file, data), load_model(str(data.get("model", DEFAULT_MODEL))))


def _with_rows(doc: Document) -> Document:
    """``doc`` with the shots of its ``shots_from`` file (relative to it) appended to its own: a copy, whose
    ``shots`` hold the rows' values at their places in that file."""
    source = doc.data.get(SHOTS_FROM)
    if not isinstance(source, str) or not source.endswith(SUFFIXES):
        return doc  # none, or the schema says what is wrong with it
    out = Document(doc.file, dict(doc.data), dict(doc.positions), dict(doc.key_positions), list(doc.problems))
    out.sources, out.included = dict(doc.sources), dict(doc.included)
    name = str(Path(doc.file).parent / source)
    try:
        raw = read_rows(name)
    except RowsFileProblem as exc:
        out.problems.append(out.problem((SHOTS_FROM,), str(exc)))
        return out
    rows = parse_rows(raw, name, column_types())
    rows.included[str(Path(name).resolve())] = hashlib.sha256(raw).hexdigest()
    own = out.data.get("shots")
    if own is None and not rows.data:
        message = "the file has no shots, and the manifest lists none: write one shot a line (a CSV after its header)"
        out.problems.extend(rows.problems or [Problem(name, 1, 1, "", message)])
        return out
    if not isinstance(own, list | None):
        out.problems.extend(rows.problems)  # the schema says `shots` is no list
        return out
    if own is None:
        own = []
        out.positions[("shots",)] = out.key_positions[("shots",)] = out.where((SHOTS_FROM,))
    out.data["shots"] = list(own)
    out.extend(("shots",), rows)
    return out


def rows_manifest(path: str, *, name: str | None = None, max_jobs: int = MAX_JOBS) -> Manifest:
    """The manifest of a CSV or JSONL shot list alone (``batchgen import``): version 1, ``name`` (else one made from
    the file's name) and the file's shots, validated like any manifest; every problem is placed in that file, and
    local images are relative to its directory."""
    if not path.endswith(SUFFIXES):
        message = "is neither a .csv nor a .jsonl file: a CSV has a header line, then one shot a line; a JSONL file "
        raise ManifestError([Problem(path, 1, 1, "", message + "one JSON object a line")])
    try:
        raw = read_rows(path)
    except RowsFileProblem as exc:
        raise ManifestError([Problem(path, 1, 1, "", str(exc))]) from None
    rows = parse_rows(raw, path, column_types())
    if not rows.data:  # nothing more to check: the rest of the manifest is made here
        raise ManifestError(rows.problems or [Problem(path, 1, 1, "", "the file has no shots: write one shot a line")])
    doc = Document(path, {"version": 1, "name": name or name_of(path), "shots": []})
    doc.extend(("shots",), rows)
    return load_manifest(path, max_jobs=max_jobs, document=doc)


def name_of(path: str) -> str:
    """A run name made from a file's name: ``Night Shots.csv`` → ``night-shots``."""
    stem = re.sub(r"[^a-z0-9_-]+", "-", Path(path).stem.lower()).strip("-_")
    return stem[:64] or "shots"


@cache
def column_types() -> dict[str, str]:
    """The JSON type of every key a shot of a CSV may have but ``matrix``: its cells are converted to it. A field
    whose models disagree on its type (none do yet) stays text; ``"5"`` for a model that takes durations as text
    is an integer, which that model's normalisation turns back into ``"5"``."""
    types = dict(SHOT_KEYS)
    types[IMAGE_ALIAS] = "string"
    for slug in known_models():
        for name, schema in load_model(slug).request_fields.items():
            kind = "integer" if schema.get("x-int-as-string") else str(schema.get("type", "string"))
            types[name] = kind if types.get(name, kind) == kind else "string"
    return types


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
        problems.append(doc.problem(("model",), _unknown_model_message(slug)))
    return load_model(DEFAULT_MODEL)


def _unknown_model_message(slug: str) -> str:
    hint = did_you_mean(slug, known_models()) or f" (known: {', '.join(known_models())}; see `batchgen models`)"
    return f'unknown model "{slug}"{hint}'


def _unknown_models(doc: Document, manifest: Manifest, shot: Shot) -> list[Problem]:
    """A shot's ``model:`` or a value of its matrix over ``model`` that batchgen has no model file for."""
    problems = []
    if shot.model is not None and shot.model not in known_models():
        problems.append(doc.problem(("shots", shot.index, MODEL_AXIS), _unknown_model_message(shot.model)))
    if shot.model is not None and any(name == MODEL_AXIS for name, _ in shot.matrix):
        message = "the shot names its models in its matrix too: keep `model:` or `matrix: {model: [...]}`, not both"
        problems.append(doc.problem(("shots", shot.index, MODEL_AXIS), message, key=True))
    for name, values in shot.matrix:
        for index, value in enumerate(values if name == MODEL_AXIS else ()):
            if str(value) not in known_models():
                path = ("shots", shot.index, "matrix", MODEL_AXIS, index)
                problems.append(doc.problem(path, _unknown_model_message(str(value))))
    return problems


@cache
def field_names() -> frozenset[str]:
    """Every request field of every model batchgen knows, and ``image``: what a manifest may write in ``defaults``
    and shots."""
    return frozenset({IMAGE_ALIAS, *(name for slug in known_models() for name in load_model(slug).request_fields)})


@cache
def _manifest_validator() -> Any:
    """The manifest schema with every known model's request fields where the manifest may write them; their values
    are checked per combination, against the model that combination runs."""
    text = resources.files("batchgen").joinpath("schema", "manifest.schema.json").read_text("utf-8")
    schema = json.loads(text)
    fields: dict[str, Any] = {name: {} for name in sorted(field_names())}
    schema["properties"]["defaults"]["properties"] = copy.deepcopy(fields)
    schema["$defs"]["shot"]["properties"].update(copy.deepcopy(fields))
    schema["$defs"]["matrix"]["properties"].update({name: {"type": "array", "minItems": 1} for name in fields})
    return make_validator(schema)


@cache
def _request_validator(model_slug: str) -> Any:
    return make_validator(load_model(model_slug).request_schema)


def _normalised(fields: Mapping[str, Any], model: Model) -> dict[str, Any]:
    """Whole numbers turned into the strings the model wants where its schema says so (``duration: 5`` → ``"5"``)."""
    schemas = model.request_fields
    return {name: _as_api_value(value, schemas[name]) if name in schemas else value for name, value in fields.items()}


def _as_api_value(value: Any, schema: Mapping[str, Any]) -> Any:
    if schema.get("x-int-as-string") and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if schema.get("type") == "integer" and isinstance(value, str) and value.isdigit():
        return int(value)  # "4" written for a model that takes 4 (Kling takes "4": a comparison writes either)
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_as_api_value(item, schema["items"]) for item in value]
    if isinstance(value, dict) and isinstance(schema.get("properties"), dict):
        props = schema["properties"]
        return {k: _as_api_value(v, props[k]) if k in props else v for k, v in value.items()}
    return value


def _build(doc: Document, model: Model) -> Manifest:
    """The manifest of a structurally valid document."""
    data = doc.data
    fields = field_names()
    shots = []
    for index, raw in enumerate(data.get("shots") or []):
        raw = raw if isinstance(raw, dict) else {}
        matrix_raw = raw["matrix"] if isinstance(raw.get("matrix"), dict) else {}
        matrix = tuple((k, tuple(v)) for k, v in matrix_raw.items() if isinstance(v, list))
        own = {k: v for k, v in raw.items() if k in fields}
        takes = raw.get("takes", 1)
        shot_model = raw.get(MODEL_AXIS) if isinstance(raw.get(MODEL_AXIS), str) else None
        shots.append(
            Shot(index, str(raw.get("id", "")), own, matrix, takes if isinstance(takes, int) else 1, shot_model)
        )
    pricing = data["pricing"] if isinstance(data.get("pricing"), dict) else {}
    rates = {k: float(v) for k, v in pricing.items() if k in model.price.labels and _number(v, None) is not None}
    api = data["api"] if isinstance(data.get("api"), dict) else {}
    defaults = data["defaults"] if isinstance(data.get("defaults"), dict) else {}
    return Manifest(
        file=doc.file,
        name=str(data.get("name", "")),
        model=model,
        defaults={k: v for k, v in defaults.items() if k in fields},
        shots=tuple(shots),
        prices={model.slug: model.price.with_rates(rates)} if rates else {},
        budget_usd=_number(data.get("budget"), None),
        concurrency=int(_number(data.get("concurrency"), DEFAULT_CONCURRENCY)),
        rpm=int(_number(data.get("rpm"), DEFAULT_RPM)),
        max_attempts=None if data.get("max_attempts") is None else int(_number(data["max_attempts"], 5)),
        base_url=api.get("base_url"),
        transport=api.get("transport"),
        notify=tuple(url for url in data.get("notify") or [] if isinstance(url, str)),
        data=data,
        row_files=dict(doc.included),
    )


def _pricing_problems(doc: Document, model: Model) -> list[Problem]:
    """A ``pricing:`` entry that names no price of the manifest's model."""
    pricing = doc.data.get("pricing")
    labels = model.price.labels
    problems = []
    for label in pricing if isinstance(pricing, dict) else {}:
        if label not in labels:
            message = (
                f'"{label}" is not a price of {model.slug} (its prices: {", ".join(labels)})'
                f"{did_you_mean(label, labels)}; `pricing:` changes the prices of the manifest's `model:`"
            )
            problems.append(doc.problem(("pricing", label), message, key=True))
    return problems


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
) -> tuple[dict[str, Any], dict[str, Path_], Model]:
    """defaults ← shot ← the matrix values at ``choices``, normalised for the combination's model and rendered;
    with where each field was written, and the model."""
    fields: dict[str, Any] = {}
    origin: dict[str, Path_] = {}
    for name, value in manifest.defaults.items():
        fields[name], origin[name] = value, ("defaults", name)
    for name, value in shot.fields.items():
        fields[name], origin[name] = value, ("shots", shot.index, name)
    variables: dict[str, Any] = {}
    slug = shot.model or manifest.model.slug
    for (name, values), choice in zip(shot.matrix, choices, strict=True):
        value = values[choice]
        if name == MODEL_AXIS:
            slug = variables[MODEL_AXIS] = str(value)  # {model} in a prompt is the model's slug
        elif name in field_names():
            fields[name], origin[name] = value, ("shots", shot.index, "matrix", name, choice)
        else:
            variables[name] = value
    model = load_model(slug) if slug in known_models() else manifest.model
    target = model.clip.image
    if IMAGE_ALIAS in fields and target and target != IMAGE_ALIAS and target not in fields:
        # `image:` is each model's first-frame field, whatever the model calls it: one still, several models.
        fields[target], origin[target] = fields.pop(IMAGE_ALIAS), origin.pop(IMAGE_ALIAS)
    fields = _normalised(fields, model)
    if not render:
        return fields, origin, model
    fields = _render_fields(fields, variables)
    if "prompt" not in fields and isinstance(fields.get("multi_prompt"), list):
        # The API requires `prompt`; a multi-shot written as segments only sends them joined.
        fields["prompt"] = " ".join(str(s.get("prompt", "")) for s in fields["multi_prompt"] if isinstance(s, dict))
        origin["prompt"] = origin["multi_prompt"]
    return fields, origin, model


def _with_images(
    manifest: Manifest, model: Model, fields: dict[str, Any]
) -> tuple[dict[str, Any], list[tuple[Slot, str]]]:
    """``fields`` with each local image replaced by its content's reference; and the images that cannot be sent,
    each with its place in ``fields`` and why."""
    problems: list[tuple[Slot, str]] = []
    schema = model.request_schema
    for slot, value in image_slots(fields, schema):
        try:
            _image(manifest, value, slot_limit(schema, slot), model.slug)
        except ImageProblem as exc:
            problems.append((slot, str(exc)))
    if problems:
        return fields, problems
    changed = replace_images(fields, schema, lambda value: _image(manifest, value, 0))
    return changed, problems


def _https_url(value: str) -> bool:
    """Whether ``value`` is an https URL with a host and nothing odd in it."""
    try:
        url = URL(value)
    except ValueError:
        return False
    return url.scheme.lower() == "https" and bool(url.host) and not any(c.isspace() for c in value)


def _image(manifest: Manifest, value: str, max_bytes: int, model_slug: str = "") -> str:
    """An image field's value as a request sends it: an https URL as it is, a local file as its reference (read and
    checked once per file); :class:`ImageProblem` when it cannot be sent."""
    if "://" in value or value.lower().startswith("data:"):
        if _https_url(value):
            return value
        raise ImageProblem(f'"{value[:60]}" is neither an https URL (with a host) nor a local file: write one of those')
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = Path(manifest.file).resolve().parent / path
    key = str(path)
    if key not in manifest.images:
        try:
            manifest.images[key] = read_image(path, MAX_IMAGE_BYTES)[0]
        except ImageProblem as exc:
            manifest.images[key] = exc
    image = manifest.images[key]
    if isinstance(image, ImageProblem):
        raise image
    if max_bytes and image.size > max_bytes:
        raise ImageProblem(
            f"{path} is {image.size / 1_048_576:.1f} MB, more than the model's limit of "
            f"{max_bytes / 1_048_576:.1f} MB ({model_slug}): make it smaller"
        )
    return image.ref


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
    if shot.combination_count * shot.takes > max_jobs:
        return problems  # the job limit reports it
    # With a broken template, the first combination alone (each of the others would say the same again).
    every = _choices(shot) if not problems else iter([(0,) * len(shot.matrix)])
    seen: set[str] = set()
    several = len(manifest.models) > 1
    for choices in every:
        if any(
            name == MODEL_AXIS and str(values[c]) not in known_models()
            for (name, values), c in zip(shot.matrix, choices, strict=True)
        ):
            continue  # an unknown model: said once, by `_unknown_models`
        fields, origin, model = _merge(manifest, shot, choices)
        found, images, sent = _request_problems(doc, manifest, shot, model, fields, origin)
        problems.extend([*(_naming(found, model) if several else found), *images])
        if found or images:
            continue
        # Compared as sent: one image under two paths (a copy, a link) is one request, bought twice.
        key = json.dumps([model.slug, sent], sort_keys=True)
        if key in seen:
            message = "two matrix combinations give the same request (the same image counts once); remove one"
            problems.append(doc.problem(("shots", shot.index, "matrix"), message))
            continue
        seen.add(key)
    return problems


def _naming(problems: list[Problem], model: Model) -> list[Problem]:
    """Problems of a manifest that uses several models, each saying which model it is about."""
    return [
        problem
        if model.slug in problem.message
        else Problem(**{**problem.__dict__, "message": f"{problem.message} ({model.slug})"})
        for problem in problems
    ]


def _broken_shot_problems(doc: Document, manifest: Manifest, shot: Shot, structural: list[Problem]) -> list[Problem]:
    """The rules a schema cannot state, on what of a shot the schema did accept: every problem of a file is
    reported in one pass, not the next ones after the first are fixed."""
    if any(not values for _, values in shot.matrix):
        return []  # an empty matrix axis (the schema says so): there is no combination to look at
    problems = _template_problems(doc, manifest, shot)
    fields, origin, model = _merge(manifest, shot, (0,) * len(shot.matrix), render=False)

    def sound(*names: str) -> bool:
        return all(not _at(structural, origin[name]) for name in names if name in origin)

    if sound("multi_prompt", "duration"):
        problems.extend(_segment_problems(doc, model, fields, origin))
    if sound("voice_ids", *TEMPLATE_FIELDS, "multi_prompt"):
        problems.extend(_voice_problems(doc, fields, origin))
    return problems


def _template_problems(doc: Document, manifest: Manifest, shot: Shot) -> list[Problem]:
    problems: list[Problem] = []
    variables = [name for name, _ in shot.matrix if name not in field_names() and name != MODEL_AXIS]
    axis = [name for name, _ in shot.matrix if name == MODEL_AXIS]  # may be written as {model}, need not be
    fields, origin, _ = _merge(manifest, shot, (0,) * len(shot.matrix), render=False)
    used: set[str] = set()
    for path, text in _templates(fields, origin):
        for match in _TEMPLATE.finditer(text):
            name = match.group(1)
            if name is None:
                continue
            used.add(name)
            if name not in variables and name not in axis:
                message = f'{{{name}}} is not defined: add `{name}: [...]` to the matrix of shot "{shot.id}"'
                problems.append(doc.problem(path, message))
    for name in variables:
        if name not in used:
            own = {
                f
                for slug in manifest.shot_models(shot)
                if slug in known_models()
                for f in load_model(slug).request_fields
            }
            hint = did_you_mean(name, sorted(own))
            message = f'matrix variable "{name}" is not used by any prompt (write {{{name}}} in one){hint}'
            problems.append(doc.problem(("shots", shot.index, "matrix", name), message, key=True))
    return problems


def _request_problems(
    doc: Document, manifest: Manifest, shot: Shot, model: Model, fields: dict[str, Any], origin: dict[str, Path_]
) -> tuple[list[Problem], list[Problem], dict[str, Any]]:
    """The problems of one combination's request against its model; those of its local images (the same for every
    model, so said once); and the request as it is sent (local images as their references)."""

    def place(path: Path_) -> Path_:
        base = origin.get(str(path[0]), ("shots", shot.index)) if path else ("shots", shot.index)
        return (*base, *path[1:])

    def locate(path: Path_, key: bool) -> Problem:
        return doc.problem(place(path), "", key=key)

    problems = []
    for name in [name for name in fields if name not in model.request_fields]:
        if name == IMAGE_ALIAS and model.clip.image:
            message = f'"image" is {model.clip.image} for {model.slug}, which is given too: give the image once'
        else:
            hint = did_you_mean(name, list(model.request_fields))
            message = (
                f'"{name}" is not a field of {model.slug}{hint}: remove it, or give this shot a model that takes it'
            )
        problems.append(doc.problem(origin[name], message, key=True))
    known = {name: value for name, value in fields.items() if name in model.request_fields}
    problems.extend(schema_problems(_request_validator(model.slug), known, locate))
    sent, bad_images = _with_images(manifest, model, known)
    images = [doc.problem(place(slot), message) for slot, message in bad_images]
    if problems:
        return problems, images, sent
    return (
        [
            *_segment_problems(doc, model, known, origin),
            *_voice_problems(doc, known, origin),
            *_element_problems(doc, model, known, origin),
        ],
        images,
        sent,
    )


def _segment_problems(
    doc: Document, model: Model, fields: Mapping[str, Any], origin: Mapping[str, Path_]
) -> list[Problem]:
    segments = fields.get("multi_prompt")
    if not segments or "multi_prompt" not in model.request_fields:
        return []
    segment_default = model.request_fields["multi_prompt"]["items"]["properties"]["duration"]["default"]
    seconds = [int(s.get("duration", segment_default)) for s in segments]
    total = int(fields.get("duration", model.field_default("duration")))
    if sum(seconds) == total:
        return []
    parts = " + ".join(str(s) for s in seconds)
    message = (
        f"the segment durations add up to {sum(seconds)} s ({parts}) but duration is {total} s; "
        "Kling requires them to be equal: change a segment or the duration"
    )
    return [doc.problem(origin["multi_prompt"], message)]


def _element_problems(
    doc: Document, model: Model, fields: Mapping[str, Any], origin: Mapping[str, Path_]
) -> list[Problem]:
    """``@ElementN`` in a prompt names one of the request's ``elements`` (Kling image-to-video: at most 3)."""
    if "elements" not in model.request_fields:
        return []
    count = len(fields.get("elements") or [])
    problems = []
    unrendered = {name: fields[name] for name in (*TEMPLATE_FIELDS, "multi_prompt") if name in fields}
    for path, text in _templates(unrendered, origin):
        for match in _ELEMENT_REF.finditer(text):
            number = int(match.group(1))
            if not 1 <= number <= count:
                listed = f"elements lists {count}" if count else "there are no elements"
                problems.append(doc.problem(path, f"{match.group(0)} refers to element {number}, but {listed}"))
    return problems


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
            path, earlier = ("shots", shot.index, "id"), ("shots", first[shot.id], "id")
            line, file = doc.where(earlier)[0], doc.file_of(earlier)
            place = f"line {line}" if file == doc.file_of(path) else f"{file}:{line}"
            message = f'shot id "{shot.id}" is already used at {place}; shot ids must be unique'
            problems.append(doc.problem(path, message))
        else:
            first[shot.id] = shot.index
    return problems


def _job_limit(doc: Document, manifest: Manifest, max_jobs: int) -> list[Problem]:
    count = manifest.job_count
    if count <= max_jobs:
        return []
    message = f"the manifest expands to {count:,} jobs, more than the limit of {max_jobs:,}; pass --max-jobs {count}"
    return [doc.problem(("shots",), message, key=True)]
