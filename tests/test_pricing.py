"""Prices: the table of segmind-api.md, tiers, overrides, and exact sums in micro-dollars."""

from __future__ import annotations

from batchgen.models import PriceRow, load_model
from batchgen.pricing import clip_spec, estimate_micros, format_usd, make_plan

MODEL = load_model("kling-3-standard-text2video")


def test_price_range_of_the_model_page() -> None:
    assert estimate_micros({"prompt": "x", "duration": "3", "generate_audio": False}, MODEL) == 504_000
    assert estimate_micros({"prompt": "x"}, MODEL) == 5 * 252_000  # defaults: 5 s with audio
    # The page's top, $8.40, is 15 s at the voice rate the model file sets to reach it (a guess: see the file)
    assert estimate_micros({"prompt": "x", "duration": "15", "voice_ids": ["v"]}, MODEL) == 8_400_000


def test_defaults_fill_the_clip_spec() -> None:
    spec = clip_spec({"prompt": "x"}, MODEL)
    assert (spec.seconds, spec.aspect_ratio, spec.audio, spec.voice, spec.tier) == (5, "16:9", True, False, "audio")


def test_manifest_override_and_plan_budget() -> None:
    price = PriceRow(silent=0.1, audio=0.2, voice=0.3)
    jobs = [("a", {"prompt": "x", "duration": "10", "generate_audio": False}), ("b", {"prompt": "y", "duration": "5"})]
    plan = make_plan(jobs, MODEL, price, budget_micros=1_500_000)
    assert [r.estimate_micros for r in plan.rows] == [1_000_000, 1_000_000]
    assert [r.fits_budget for r in plan.rows] == [True, False]
    assert (plan.total_micros, plan.total_seconds, plan.jobs_within_budget) == (2_000_000, 15, 1)


def test_format_usd() -> None:
    assert [format_usd(m) for m in (0, 504_000, 1_260_000, 8_400_000, 3_276_000, 42)] == [
        "$0.000",
        "$0.504",
        "$1.260",
        "$8.400",
        "$3.276",
        "$0.000",
    ]
