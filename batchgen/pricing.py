"""Prices and estimates. Money is counted in whole micro-dollars (µUSD) so sums are exact.

A model's price table (``models.PriceTable``) prices a request by its first rule that matches the request's features
(its fields with the model's defaults filled in, plus ``seconds``, ``audio`` and ``voice``): that rule's figure for
the clip, or per second of it. A manifest's ``pricing:`` replaces figures of its model's rules. The provider's own
figure (``x-cost``, ``metrics.cost``) replaces the estimate whenever it is reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from batchgen.models import Model, PriceRule, PriceTable

MICROS_PER_USD = 1_000_000


@dataclass(frozen=True)
class ClipSpec:
    """What a request asks for once the provider's defaults are filled in."""

    seconds: int
    aspect_ratio: str  # "": the ratio of the first-frame image, not known from the request
    audio: bool
    voice: bool


def _resolved(payload: Mapping[str, Any], model: Model, where: str | bool | int | None) -> Any:
    """A ``clip`` entry of the model: the request's field (or its default) when it names one, else the fixed value."""
    if isinstance(where, str) and where in model.request_fields:
        return payload[where] if where in payload else model.field_default(where)
    return where


def clip_spec(payload: Mapping[str, Any], model: Model) -> ClipSpec:
    """The clip a payload asks for, with the model's defaults for what it leaves out."""
    clip = model.clip
    aspect = "" if clip.aspect == "image" else str(_resolved(payload, model, clip.aspect))
    return ClipSpec(
        seconds=int(_resolved(payload, model, clip.seconds)),
        aspect_ratio=aspect,
        audio=bool(_resolved(payload, model, clip.audio)),
        voice=bool(payload.get(clip.voice)) if clip.voice else False,
    )


def features(payload: Mapping[str, Any], model: Model) -> dict[str, Any]:
    """What a price rule may look at: every request field (defaults filled in), and the clip's seconds, audio and
    voice."""
    spec = clip_spec(payload, model)
    defaults = {name: schema["default"] for name, schema in model.request_fields.items() if "default" in schema}
    return {**defaults, **payload, "seconds": spec.seconds, "audio": spec.audio, "voice": spec.voice}


def price_rule(payload: Mapping[str, Any], model: Model, table: PriceTable | None = None) -> PriceRule:
    """The rule of ``table`` (the model's own by default) that prices ``payload``."""
    return (table or model.price).rule_for(features(payload, model))


def estimate_micros(payload: Mapping[str, Any], model: Model, table: PriceTable | None = None) -> int:
    """The estimated cost of one generation of ``payload``, in µUSD."""
    table = table or model.price
    rule = price_rule(payload, model, table)
    units = clip_spec(payload, model).seconds if table.per == "second" else 1
    return round(units * rule.usd * MICROS_PER_USD)


def price_class(payload: Mapping[str, Any], model: Model) -> str:
    """What the provider's price of a clip depends on (model × seconds × the price rule): jobs of one class cost the
    same, so the highest price the provider charged for one is what the next one reserves."""
    return f"{model.slug}:{clip_spec(payload, model).seconds}s:{price_rule(payload, model).label}"


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
    model: str
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

    def by_model(self) -> dict[str, tuple[int, int]]:
        """Each model's job count and estimate (µUSD), in the order the models first appear."""
        totals: dict[str, tuple[int, int]] = {}
        for row in self.rows:
            count, money = totals.get(row.model, (0, 0))
            totals[row.model] = (count + 1, money + row.estimate_micros)
        return totals

    @property
    def jobs_within_budget(self) -> int:
        """How many jobs, taken in manifest order, fit the budget."""
        return sum(1 for row in self.rows if row.fits_budget)


def make_plan(
    jobs: list[tuple[str, Model, Mapping[str, Any]]],
    tables: Mapping[str, PriceTable],
    budget_micros: int | None,
) -> Plan:
    """Price ``(job id, model, payload)`` triples (each at ``tables[model.slug]``, else its model's own table) and mark
    which fit ``budget_micros`` when taken in order."""
    rows = []
    running = 0
    for job_id, model, payload in jobs:
        estimate = estimate_micros(payload, model, tables.get(model.slug))
        fits = budget_micros is None or running + estimate <= budget_micros
        if fits:
            running += estimate
        rows.append(PlanRow(job_id, model.slug, clip_spec(payload, model), estimate, fits))
    return Plan(tuple(rows), budget_micros)
