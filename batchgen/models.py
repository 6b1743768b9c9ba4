"""Models are data: one JSON file per provider model under ``schema/models/``.

A model file holds the model's slug, its kind (text- or image-to-video), the page it was read from, its typical
generation time, where a request says what clip it asks for (``clip``: which field holds the seconds, the aspect
ratio, the audio switch, the voices, the first-frame image — or a fixed value where the model has no such field), its
price table (``price``: per second or per clip, the first rule whose ``when`` matches the request), the page's own
price range (which the table must reproduce: a test), what in it is a guess, and the JSON Schema of its request body.
Adding a model is adding a file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from typing import Any

DEFAULT_MODEL = "kling-3-standard-text2video"
KINDS = ("text2video", "image2video")


@dataclass(frozen=True)
class PriceRule:
    """One line of a price table: ``usd`` (a clip, or a second of it) when every ``when`` condition holds.

    A condition names a request field (its value with the model's default filled in) or one of the clip's features
    (``seconds``, ``audio``, ``voice``) and the values it may have."""

    label: str
    usd: float
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def matches(self, features: Mapping[str, Any]) -> bool:
        """Whether every condition holds for a request's ``features``."""
        return all(_same_value(features.get(name), values) for name, values in self.when)


def _same_value(value: Any, allowed: tuple[Any, ...]) -> bool:
    # `True == 1` in Python: a boolean condition must not match a count, nor a count a boolean.
    return any(value == choice and isinstance(value, bool) == isinstance(choice, bool) for choice in allowed)


@dataclass(frozen=True)
class PriceTable:
    """A model's prices: ``per`` "second" (rate × seconds) or "clip" (one figure a clip), by the first rule that
    matches; the last rule matches everything."""

    per: str
    rules: tuple[PriceRule, ...]

    @property
    def labels(self) -> tuple[str, ...]:
        """Every rule's label, in order."""
        return tuple(rule.label for rule in self.rules)

    def rule_for(self, features: Mapping[str, Any]) -> PriceRule:
        """The rule a request with these ``features`` is priced by."""
        return next(rule for rule in self.rules if rule.matches(features))

    def with_rates(self, usd_by_label: Mapping[str, float]) -> PriceTable:
        """The table with the figures of the rules named in ``usd_by_label`` replaced (a manifest's ``pricing:``)."""
        rules = tuple(replace(rule, usd=float(usd_by_label.get(rule.label, rule.usd))) for rule in self.rules)
        return replace(self, rules=rules)


@dataclass(frozen=True)
class ClipFields:
    """Where a request of the model says what clip it asks for: a field's name, or the fixed value the model always
    makes (a model with no duration field makes clips of one length)."""

    seconds: str | int
    aspect: str  # a field, a fixed "W:H", or "image": the clip takes its first-frame image's ratio
    audio: str | bool
    voice: str | None = None
    image: str | None = None  # the field of the first-frame image, when the model takes one


@dataclass(frozen=True)
class Model:
    """A provider model: its request schema and its price table."""

    slug: str
    title: str
    typical_generation_s: float
    price: PriceTable
    request_schema: dict[str, Any]
    clip: ClipFields
    kind: str = "text2video"  # or image2video
    source: str = ""  # the provider's page the file was read from
    price_range_usd: tuple[float, float] | None = None  # the page's own range per generation
    guesses: tuple[str, ...] = ()  # what the file says that the page does not (each a guess)

    @property
    def durations(self) -> list[int]:
        """Every clip length (seconds) the model allows."""
        if not isinstance(self.clip.seconds, str):
            return [int(self.clip.seconds)]
        field = self.request_fields.get(self.clip.seconds, {})
        if "enum" in field:
            return sorted(int(value) for value in field["enum"])
        if "minimum" in field and "maximum" in field:
            return list(range(int(field["minimum"]), int(field["maximum"]) + 1))
        return [int(field["default"])] if "default" in field else []

    @property
    def request_fields(self) -> dict[str, Any]:
        """The schema of each request field, by name."""
        fields: dict[str, Any] = self.request_schema["properties"]
        return fields

    @property
    def image_fields(self) -> tuple[str, ...]:
        """The request fields that hold an image (their schema, or their items', says ``x-image``)."""
        return tuple(name for name, schema in self.request_fields.items() if image_limit(schema) is not None)

    @property
    def required(self) -> tuple[str, ...]:
        """The request fields a request must carry."""
        return tuple(self.request_schema.get("required", ()))

    def field_default(self, name: str) -> Any:
        """The provider's default for a request field (``None`` when it has none)."""
        return self.request_fields.get(name, {}).get("default")


def image_limit(schema: Mapping[str, Any]) -> int | None:
    """The size limit in bytes of an image field's schema (``x-image``), ``None`` for a field that is no image."""
    marker = schema.get("x-image")
    return int(marker.get("max_bytes", 0)) if isinstance(marker, dict) else None


def _models_dir() -> resources.abc.Traversable:
    return resources.files("batchgen").joinpath("schema", "models")


@cache
def known_models() -> tuple[str, ...]:
    """The slugs of every model batchgen has a data file for (package data: listed once)."""
    return tuple(sorted(p.name.removesuffix(".json") for p in _models_dir().iterdir() if p.name.endswith(".json")))


@cache
def load_model(slug: str) -> Model:
    """The model named ``slug``; ``KeyError`` when batchgen has no data file for it."""
    if slug not in known_models():
        raise KeyError(slug)
    return model_from_data(json.loads(_models_dir().joinpath(f"{slug}.json").read_text("utf-8")))


def model_from_data(data: Mapping[str, Any]) -> Model:
    """A model from the JSON of its file."""
    low_high = data.get("price_range_usd")
    clip = data["clip"]
    price = data["price"]
    return Model(
        slug=data["slug"],
        title=data["title"],
        typical_generation_s=float(data["typical_generation_s"]),
        price=PriceTable(
            per=price["per"],
            rules=tuple(
                PriceRule(
                    label=rule["label"],
                    usd=float(rule["usd"]),
                    when=tuple(
                        (name, tuple(value) if isinstance(value, list) else (value,))
                        for name, value in rule.get("when", {}).items()
                    ),
                )
                for rule in price["rules"]
            ),
        ),
        request_schema=data["request"],
        clip=ClipFields(
            seconds=clip["seconds"],
            aspect=clip["aspect"],
            audio=clip["audio"],
            voice=clip.get("voice"),
            image=clip.get("image"),
        ),
        kind=data.get("kind", "text2video"),
        source=data.get("source", ""),
        price_range_usd=(float(low_high[0]), float(low_high[1])) if low_high else None,
        guesses=tuple(data.get("guesses", ())),
    )
