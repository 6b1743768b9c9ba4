"""Prices: the table of segmind-api.md, tiers, overrides, and exact sums in micro-dollars."""

from __future__ import annotations

from batchgen.models import load_model
from batchgen.pricing import clip_spec, estimate_micros, format_usd, make_plan, price_class

MODEL = load_model("kling-3-standard-text2video")


def test_price_range_of_the_model_page() -> None:
    assert estimate_micros({"prompt": "x", "duration": "3", "generate_audio": False}, MODEL) == 504_000
    assert estimate_micros({"prompt": "x"}, MODEL) == 5 * 252_000  # defaults: 5 s with audio
    # The page's top, $8.40, is 15 s at the voice rate the model file sets to reach it (a guess: see the file)
    assert estimate_micros({"prompt": "x", "duration": "15", "voice_ids": ["v"]}, MODEL) == 8_400_000


def test_defaults_fill_the_clip_spec() -> None:
    spec = clip_spec({"prompt": "x"}, MODEL)
    assert (spec.seconds, spec.aspect_ratio, spec.audio, spec.voice) == (5, "16:9", True, False)
    assert price_class({"prompt": "x"}, MODEL) == "kling-3-standard-text2video:5s:audio"


def test_rules_match_fields_with_their_defaults_and_per_clip_prices() -> None:
    pixverse = load_model("pixverse-4.5-video")  # per clip, by quality x length x motion (defaults 540p, 5 s, normal)
    assert pixverse.price.per == "clip"
    assert estimate_micros({"prompt": "x"}, pixverse) == 375_000
    assert estimate_micros({"prompt": "x", "quality": "1080p"}, pixverse) == 1_000_000
    assert estimate_micros({"prompt": "x", "quality": "720p", "duration": 8}, pixverse) == 1_000_000
    wan = load_model("wan-2.6-i2v")  # per second, by resolution
    assert estimate_micros({"prompt": "x", "image": "https://x/y.png", "duration": 15, "resolution": "1080p"}, wan) == (
        2_812_500
    )
    # a boolean condition never matches a count, nor a count a boolean (True == 1 in Python)
    veo = load_model("veo-3")
    assert price_class({"prompt": "x", "generate_audio": False}, veo) == "veo-3:8s:silent"


def test_manifest_override_and_plan_budget() -> None:
    price = MODEL.price.with_rates({"silent": 0.1, "audio": 0.2, "voice": 0.3})
    jobs = [
        ("a", MODEL, {"prompt": "x", "duration": "10", "generate_audio": False}),
        ("b", MODEL, {"prompt": "y", "duration": "5"}),
    ]
    plan = make_plan(jobs, {MODEL.slug: price}, budget_micros=1_500_000)
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
