"""Models are data: one JSON file per provider model under ``schema/models/``.

A model file holds the model's slug, its typical generation time, its price row (USD per second of video, without
audio, with audio, with voice) and the JSON Schema of its request body. Adding a model is adding a file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

DEFAULT_MODEL = "kling-3-standard-text2video"


@dataclass(frozen=True)
class PriceRow:
    """USD per second of generated video, by what the clip carries."""

    silent: float
    audio: float
    voice: float


@dataclass(frozen=True)
class Model:
    """A provider model: its request schema and its price row."""

    slug: str
    title: str
    typical_generation_s: float
    price: PriceRow
    request_schema: dict[str, Any]

    @property
    def request_fields(self) -> dict[str, Any]:
        """The schema of each request field, by name."""
        fields: dict[str, Any] = self.request_schema["properties"]
        return fields

    def field_default(self, name: str) -> Any:
        """The provider's default for a request field (``None`` when it has none)."""
        return self.request_fields.get(name, {}).get("default")


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
    data = json.loads(_models_dir().joinpath(f"{slug}.json").read_text("utf-8"))
    return Model(
        slug=data["slug"],
        title=data["title"],
        typical_generation_s=float(data["typical_generation_s"]),
        price=PriceRow(**data["price_usd_per_s"]),
        request_schema=data["request"],
    )
