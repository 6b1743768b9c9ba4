"""The catalogue: models as data, each file true to its page (its price table reproduces the page's range), each
runnable against the simulator, listed by `batchgen models`."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from batchgen.errors import ExitCode
from batchgen.models import known_models, load_model
from batchgen.pricing import estimate_micros, usd
from tests.conftest import run_cli
from tests.runs import assert_all_done, run_in_process

IMAGE = "https://images.segmind.com/assets/still.png"  # the simulator does not fetch it: Segmind would


def _tiers(slug: str) -> list[dict[str, object]]:
    """A payload for each way the model's price can vary besides the duration."""
    fields = load_model(slug).request_fields
    tiers: list[dict[str, object]] = [{}]
    if "generate_audio" in fields:
        tiers = [{"generate_audio": False}, {"generate_audio": True}]
    if "voice_ids" in fields:
        tiers.append({"generate_audio": True, "voice_ids": ["v1"]})
    return tiers


@pytest.mark.parametrize("slug", known_models())
def test_each_models_price_table_reproduces_its_pages_range(slug: str) -> None:
    model = load_model(slug)
    assert model.source == f"https://www.segmind.com/models/{slug}/api"
    assert model.price_range_usd is not None, "the page's own range is the check of the table"
    prices = [
        usd(estimate_micros({"prompt": "x", "duration": _duration(slug, seconds), **tier}, model))
        for seconds, tier in itertools.product(model.durations, _tiers(slug))
    ]
    low, high = model.price_range_usd
    assert min(prices) == pytest.approx(low, abs=0.005) and max(prices) == pytest.approx(high, abs=0.005), prices


def _duration(slug: str, seconds: int) -> object:
    field = load_model(slug).request_fields["duration"]
    return str(seconds) if field.get("type") == "string" else seconds


@pytest.mark.parametrize("slug", known_models())
async def test_each_model_runs_against_the_simulator(make_sim, write_manifest, tmp_path: Path, slug: str) -> None:
    model = load_model(slug)
    images = "".join(
        f"    {name}: {IMAGE}\n"
        for name in model.request_schema.get("required", [])
        if "x-image" in model.request_fields[name]
    )
    text = f"version: 1\nname: one\nmodel: {slug}\nshots:\n  - id: a\n    prompt: 'a lighthouse at dawn'\n{images}"
    sim = await make_sim()
    result = await run_in_process(write_manifest(text), tmp_path / "out", sim)
    assert result.exit_code == ExitCode.OK
    assert_all_done(tmp_path / "out", 1)
    (charge,) = sim.account().charges
    default = model.field_default("duration")
    assert charge.amount_micros == estimate_micros({"prompt": "x", "duration": default}, model)


def test_models_lists_the_catalogue_and_shows_one() -> None:
    listing = run_cli("models")
    assert listing.returncode == 0
    for slug in known_models():
        assert slug in listing.stdout
    assert "veo-3  " in listing.stdout and "$0.800-$3.200" in listing.stdout and "4, 6, 8" in listing.stdout
    one = run_cli("models", "kling-3-standard-image2video")
    assert one.returncode == 0 and "start_image_url: an image's https URL" in one.stdout and "required" in one.stdout
    assert "guess: " in one.stdout and "source: https://www.segmind.com/models/" in one.stdout
    wrong = run_cli("models", "veo3")
    assert wrong.returncode == 2 and 'did you mean "veo-3"' in wrong.stderr
