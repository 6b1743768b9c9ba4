"""Models are data: one JSON file per provider model under ``schema/models/``.

A model file holds the model's slug, its kind (text- or image-to-video), the page it was read from, its typical
generation time, its price row (USD per second of video, without audio, with audio, with voice), the page's own
price range (which the row must reproduce: a test), what in it is a guess, and the JSON Schema of its request body.
Adding a model is adding a file.
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
    kind: str = "text2video"  # or image2video
    source: str = ""  # the provider's page the file was read from
    price_range_usd: tuple[float, float] | None = None  # the page's own range per generation
    guesses: tuple[str, ...] = ()  # what the file says that the page does not (each a guess)

    @property
    def durations(self) -> list[int]:
        """Every duration (seconds) the model allows."""
        field = self.request_fields.get("duration", {})
        values = field.get("enum") or ([field["default"]] if "default" in field else [])
        return sorted(int(value) for value in values)

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
    low_high = data.get("price_range_usd")
    return Model(
        slug=data["slug"],
        title=data["title"],
        typical_generation_s=float(data["typical_generation_s"]),
        price=PriceRow(**data["price_usd_per_s"]),
        request_schema=data["request"],
        kind=data.get("kind", "text2video"),
        source=data.get("source", ""),
        price_range_usd=(float(low_high[0]), float(low_high[1])) if low_high else None,
        guesses=tuple(data.get("guesses", ())),
    )
