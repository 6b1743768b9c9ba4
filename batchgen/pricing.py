"""Prices and estimates. Money is counted in whole micro-dollars (µUSD) so sums are exact.

price = seconds × rate, where the rate (USD per second, from the model's price row or the manifest's `pricing:`)
depends on what the clip carries: voice (``voice_ids`` given) > audio (``generate_audio``) > silent.
The provider's own figure (``x-cost``, ``metrics.cost``) replaces the estimate whenever it is reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from batchgen.models import Model, PriceRow

MICROS_PER_USD = 1_000_000


@dataclass(frozen=True)
class ClipSpec:
    """What a request asks for once the provider's defaults are filled in."""

    seconds: int
    aspect_ratio: str
    audio: bool
    voice: bool

    @property
    def tier(self) -> str:
        """The price-row column this clip is charged at."""
        return "voice" if self.voice else "audio" if self.audio else "silent"


def clip_spec(payload: Mapping[str, Any], model: Model) -> ClipSpec:
    """The clip a payload asks for, with the model's defaults for what it leaves out."""

    def field(name: str) -> Any:
        return payload[name] if name in payload else model.field_default(name)

    return ClipSpec(
        seconds=int(field("duration")),
        aspect_ratio=str(field("aspect_ratio")),
        audio=bool(field("generate_audio")),
        voice=bool(payload.get("voice_ids")),
    )


def estimate_micros(payload: Mapping[str, Any], model: Model, price: PriceRow | None = None) -> int:
    """The estimated cost of one generation of ``payload``, in µUSD."""
    spec = clip_spec(payload, model)
    rate: float = getattr(price or model.price, spec.tier)
    return round(spec.seconds * rate * MICROS_PER_USD)


def price_class(payload: Mapping[str, Any], model: Model) -> str:
    """What the provider's price of a clip depends on (model × seconds × silent/audio/voice): jobs of one class
    cost the same, so the highest price the provider charged for one is what the next one reserves."""
    spec = clip_spec(payload, model)
    return f"{model.slug}:{spec.seconds}s:{spec.tier}"


def usd(micros: int) -> float:
    """µUSD → USD."""
    return micros / MICROS_PER_USD


def micros(amount_usd: float) -> int:
    """USD → µUSD, rounded to the nearest micro-dollar."""
    return round(amount_usd * MICROS_PER_USD)


def format_dollars(amount_usd: float) -> str:
    """An amount in USD (as JSON data carries it) in ``format_usd``'s one format."""
    return format_usd(micros(amount_usd))


def format_usd(micros_: int) -> str:
    """µUSD as ``$0.504``, ``$2.520``, ``$1,008.000``: always to the thousandth of a dollar, the precision of the
    provider's prices ($0.168 a second), in every command, log and the gallery alike."""
    sign = "-" if micros_ < 0 else ""
    return f"{sign}${usd(abs(micros_)):,.3f}"


@dataclass(frozen=True)
class PlanRow:
    """One job of a plan, with what it asks for and its estimate."""

    job_id: str
    spec: ClipSpec
    estimate_micros: int
    fits_budget: bool


@dataclass(frozen=True)
class Plan:
    """The jobs of a manifest priced, and how many fit the budget in manifest order."""

    rows: tuple[PlanRow, ...]
    budget_micros: int | None

    @property
    def total_micros(self) -> int:
        """The estimate of every job together."""
        return sum(row.estimate_micros for row in self.rows)

    @property
    def total_seconds(self) -> int:
        """Seconds of video the plan asks for."""
        return sum(row.spec.seconds for row in self.rows)

    @property
    def jobs_within_budget(self) -> int:
        """How many jobs, taken in manifest order, fit the budget."""
        return sum(1 for row in self.rows if row.fits_budget)


def make_plan(
    jobs: list[tuple[str, Mapping[str, Any]]], model: Model, price: PriceRow, budget_micros: int | None
) -> Plan:
    """Price ``(job id, payload)`` pairs and mark which fit ``budget_micros`` when taken in order."""
    rows = []
    running = 0
    for job_id, payload in jobs:
        estimate = estimate_micros(payload, model, price)
        fits = budget_micros is None or running + estimate <= budget_micros
        if fits:
            running += estimate
        rows.append(PlanRow(job_id, clip_spec(payload, model), estimate, fits))
    return Plan(tuple(rows), budget_micros)
