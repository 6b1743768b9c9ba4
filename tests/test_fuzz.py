"""Property-based fuzzing of manifests: valid ones round-trip with stable ids; mutated ones always end in a
ManifestError whose every problem has a FILE:LINE:COL — never another exception, never a hang."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchgen import ManifestError, expand, load_manifest
from tests.conftest import run_cli

SAFE_TEXT = st.text(
    st.characters(blacklist_characters="{}<>", blacklist_categories=("Cs", "Cc")), min_size=1, max_size=80
).filter(str.strip)
IDS = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True)


@st.composite
def shots(draw: st.DrawFn, index: int) -> dict:
    shot: dict = {"id": f"{draw(IDS)}-{index}", "prompt": draw(SAFE_TEXT)}
    if draw(st.booleans()):
        shot["duration"] = draw(st.integers(3, 15))
    if draw(st.booleans()):
        shot["aspect_ratio"] = draw(st.sampled_from(["16:9", "9:16", "1:1"]))
    if draw(st.booleans()):
        shot["generate_audio"] = draw(st.booleans())
    if draw(st.booleans()):
        shot["prompt"] += " at {time}"
        shot["matrix"] = {"time": draw(st.lists(SAFE_TEXT, min_size=1, max_size=3, unique=True))}
    if draw(st.booleans()):
        shot["takes"] = draw(st.integers(1, 3))
    return shot


@st.composite
def manifests(draw: st.DrawFn) -> dict:
    count = draw(st.integers(1, 4))
    data = {"version": 1, "name": draw(IDS), "shots": [draw(shots(i)) for i in range(count)]}
    if draw(st.booleans()):
        data["budget"] = draw(st.floats(0.5, 1000))
    if draw(st.booleans()):
        data["defaults"] = {"cfg_scale": draw(st.floats(0, 1)), "duration": draw(st.integers(3, 15))}
    return data


def _shuffled(value, rng: random.Random):
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: _shuffled(v, rng) for k, v in items}
    if isinstance(value, list):
        return [_shuffled(v, rng) for v in value]
    return value


def _write(tmp: Path, name: str, text: str | bytes) -> Path:
    path = tmp / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(manifests(), st.integers(0, 2**32))
def test_valid_manifests_round_trip_with_stable_ids(tmp_path_factory, data: dict, seed: int) -> None:
    tmp = tmp_path_factory.mktemp("valid")
    first = expand(load_manifest(_write(tmp, "a.yaml", yaml.safe_dump(data, sort_keys=False, allow_unicode=True))))
    reordered = yaml.safe_dump(_shuffled(data, random.Random(seed)), sort_keys=False, allow_unicode=True)
    second = expand(load_manifest(_write(tmp, "b.yaml", reordered)))
    assert [job.id for job in first] == [job.id for job in second]
    assert len({job.id for job in first}) == len(first)


def _mutations(data: dict, rng: random.Random) -> list[tuple[str, str | bytes]]:
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    shot = dict(data["shots"][0])
    deep = "x: " + "[" * 200 + "]" * 200 + "\n"
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True)
    )
    return [
        ("wrong type", yaml.safe_dump({**data, "shots": [{**shot, "duration": [1, 2]}]})),
        ("out of range", yaml.safe_dump({**data, "shots": [{**shot, "duration": rng.choice([0, 2, 16, 99, -5])}]})),
        ("missing key", yaml.safe_dump({k: v for k, v in data.items() if k != "shots"})),
        ("unknown key", yaml.safe_dump({**data, "shots": [{**shot, "promt": "x"}]})),
        ("duplicate key", text + "version: 1\n"),
        ("huge string", yaml.safe_dump({**data, "shots": [{**shot, "prompt": "x" * 200_000}]})),
        ("deep nesting", text + deep),
        ("alias bomb", text + bomb),
        ("binary junk", bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 400)))),
        ("invalid utf-8", text.encode("utf-8") + b"\nname: \xff\xfe\n"),
        ("empty", b""),
        ("cut short", text[: rng.randint(1, max(1, len(text) - 1))] + "\n  - [unclosed"),
    ]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(manifests(), st.integers(0, 2**32))
def test_mutated_manifests_always_fail_cleanly(tmp_path_factory, data: dict, seed: int) -> None:
    tmp = tmp_path_factory.mktemp("mutated")
    for number, (kind, text) in enumerate(_mutations(data, random.Random(seed))):
        path = _write(tmp, f"{number}.yaml", text)
        with pytest.raises(ManifestError) as caught:
            load_manifest(path)
        assert caught.value.problems, kind
        for problem in caught.value.problems:
            assert problem.file == str(path) and problem.line >= 1 and problem.col >= 1, (kind, problem)
            assert str(problem).startswith(f"{path}:{problem.line}:{problem.col}: ")


def test_mutations_through_the_cli_exit_2_without_a_traceback(tmp_path: Path) -> None:
    data = {"version": 1, "name": "n", "shots": [{"id": "a", "prompt": "x"}]}
    paths = [_write(tmp_path, f"{i}.yaml", text) for i, (_, text) in enumerate(_mutations(data, random.Random(3)))]
    result = run_cli("validate", *map(str, paths))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    for path in paths:
        assert f"{path}:" in result.stderr
