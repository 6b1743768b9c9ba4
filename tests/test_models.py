"""The catalogue: models as data, each file true to its page (its price table reproduces the page's range), each
runnable against the simulator, listed by `batchgen models`."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from batchgen.errors import ExitCode
from batchgen.models import known_models, load_model
from batchgen.pricing import estimate_micros, usd
from batchgen.validation import make_validator
from tests.conftest import run_cli
from tests.runs import assert_all_done, run_in_process

IMAGE = "https://images.segmind.com/assets/still.png"  # the simulator does not fetch it: Segmind would


ABSENT = object()  # the field left out: the model's default applies


def _choices(schema: dict[str, object]) -> list[object]:
    """Every value a price rule could tell apart: each of an enum, true and false, each whole number of a range."""
    if "enum" in schema:
        return list(schema["enum"])  # type: ignore[call-overload]
    if schema.get("type") == "boolean":
        return [True, False]
    if schema.get("type") == "integer" and "minimum" in schema and "maximum" in schema:
        return list(range(int(schema["minimum"]), int(schema["maximum"]) + 1))  # type: ignore[call-overload]
    if schema.get("type") == "array":
        return [["v1"]]
    return []


def _priced_requests(slug: str) -> list[dict[str, object]]:
    """Every request the model takes that differs in a field its price depends on (or in the clip's length)."""
    model = load_model(slug)
    derived = {"seconds": model.clip.seconds, "audio": model.clip.audio, "voice": model.clip.voice}
    names = {str(derived.get(name, name)) for rule in model.price.rules for name, _ in rule.when}
    names.add(str(model.clip.seconds))
    names &= set(model.request_fields)
    base: dict[str, object] = {"prompt": "x", **{name: IMAGE for name in model.required if name in model.image_fields}}
    validator = make_validator(model.request_schema)
    requests = []
    for values in itertools.product(*([ABSENT, *_choices(model.request_fields[n])] for n in sorted(names))):
        payload = {**base, **{n: v for n, v in zip(sorted(names), values, strict=True) if v is not ABSENT}}
        if validator.is_valid(payload):
            requests.append(payload)
    return requests


@pytest.mark.parametrize("slug", known_models())
def test_each_models_price_table_reproduces_its_pages_range(slug: str) -> None:
    model = load_model(slug)
    assert model.source == f"https://www.segmind.com/models/{slug}/api"
    prices = [usd(estimate_micros(payload, model)) for payload in _priced_requests(slug)]
    assert len(prices) > 1 or model.price.per == "clip"
    if model.price_range_usd is None:  # the page states none: the file says its table is a guess
        assert any(guess.startswith("price") for guess in model.guesses), model.guesses
        return
    low, high = model.price_range_usd
    assert min(prices) == pytest.approx(low, abs=0.005) and max(prices) == pytest.approx(high, abs=0.005), prices


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
    assert one.returncode == 0 and "start_image_url: an image: a local file or an https URL" in one.stdout
    assert "required" in one.stdout and "voice: $0.560 (voice true)" in one.stdout
    assert "guess: " in one.stdout and "source: https://www.segmind.com/models/" in one.stdout
    wrong = run_cli("models", "veo3")
    assert wrong.returncode == 2 and 'did you mean "veo-3"' in wrong.stderr
