"""Validation: every rule has a broken manifest, each asserting its exact message and line:col."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchgen import ManifestError, expand, load_manifest
from batchgen.yamlsource import MAX_NODES

BROKEN = sorted((Path(__file__).parent / "manifests" / "broken").glob("*.yaml"))
VALID_HEAD = "version: 1\nname: ok\n"


def _expected(path: Path) -> list[str]:
    lines = path.read_text("utf-8").splitlines()
    return [f"{path}:{line.removeprefix('# expect: ')}" for line in lines if line.startswith("# expect: ")]


def _messages(path: Path, **kwargs: int) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load_manifest(path, **kwargs)
    return [str(problem) for problem in caught.value.problems]


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_broken_manifest_reports_exact_message_and_position(path: Path) -> None:
    expected = _expected(path)
    assert expected, f"{path.name} has no '# expect:' line"
    assert _messages(path) == sorted(expected, key=lambda m: [int(n) for n in m.split(":")[1:3]])


def test_every_problem_of_a_file_is_reported_at_once(write_manifest) -> None:
    path = write_manifest(
        "version: 1\nname: Bad\nbudget: -1\nshots:\n  - id: a\n    prompt: x\n    duration: 99\n"
        "  - id: b\n    promt: y\n"
    )
    messages = _messages(path)
    assert [m.split(": ", 1)[0].split(":", 1)[1] for m in messages] == ["2:7", "3:9", "7:15", "9:5"]


def test_not_utf8_names_the_byte_and_its_position(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"version: 1\nname: caf\xe9\n")
    assert _messages(path) == [f"{path}:2:10: not UTF-8 text (byte 0xe9); save the file as UTF-8"]


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file_is_one_clear_error(write_manifest, text: str) -> None:
    path = write_manifest(text)
    assert _messages(path) == [f"{path}:1:1: the file is empty; a manifest starts with `version: 1`"]


def test_scalar_at_top_level(write_manifest) -> None:
    path = write_manifest("just text\n")
    assert _messages(path) == [
        f"{path}:1:1: the top level is a single value; a manifest is a mapping (`version: 1`, ...)"
    ]


def test_segment_prompt_longer_than_512_characters(write_manifest) -> None:
    long = "a" * 513
    path = write_manifest(
        VALID_HEAD
        + f"shots:\n  - id: a\n    duration: 5\n    multi_prompt:\n      - prompt: {long}\n        duration: 5\n"
    )
    assert _messages(path) == [
        f"{path}:7:17: shots[0].multi_prompt[0].prompt: is 513 characters long; at most 512 are allowed"
    ]


def test_job_limit_refuses_and_names_the_flag(write_manifest) -> None:
    values = ", ".join(str(i) for i in range(60))
    path = write_manifest(
        VALID_HEAD + f"shots:\n  - id: a\n    prompt: 'x {{n}}'\n    matrix: {{n: [{values}]}}\n    takes: 2\n"
    )
    assert _messages(path, max_jobs=100) == [
        f"{path}:3:1: shots: the manifest expands to 120 jobs, more than the limit of 100; pass --max-jobs 120"
    ]
    assert load_manifest(path, max_jobs=120).job_count == 120


def test_huge_matrix_is_refused_without_enumerating_it(write_manifest) -> None:
    values = ", ".join(str(i) for i in range(100))
    path = write_manifest(
        VALID_HEAD + f"shots:\n  - id: a\n    prompt: '{{a}} {{b}} {{c}} {{d}}'\n"
        f"    matrix: {{a: [{values}], b: [{values}], c: [{values}], d: [{values}]}}\n"
    )
    assert "expands to 100,000,000 jobs" in _messages(path)[0]


def test_alias_bomb_is_refused(write_manifest) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = write_manifest("\n".join(lines) + "\n")
    messages = _messages(path)
    assert len(messages) == 1 and f"more than {MAX_NODES:,} values" in messages[0]


def test_deep_nesting_is_refused(write_manifest) -> None:
    path = write_manifest("a: " + "[" * 5000 + "]" * 5000 + "\n")
    messages = _messages(path)
    assert len(messages) == 1 and ("deeper than" in messages[0] or "maximum nesting depth" in messages[0])


def test_merge_keys_may_be_overridden_without_a_duplicate_error(write_manifest) -> None:
    path = write_manifest(
        VALID_HEAD
        + "shots:\n  - &first {id: a, prompt: base, duration: 5}\n  - <<: *first\n    id: b\n    duration: 7\n"
    )
    assert [(job.shot_id, dict(job.payload)) for job in expand(load_manifest(path))] == [
        ("a", {"prompt": "base", "duration": "5"}),
        ("b", {"prompt": "base", "duration": "7"}),
    ]


def test_ints_are_normalised_to_the_api_strings(write_manifest) -> None:
    path = write_manifest(
        VALID_HEAD + "defaults: {duration: 5}\nshots:\n  - id: a\n    duration: 9\n"
        "    multi_prompt: [{prompt: one, duration: 4}, {prompt: two, duration: 5}]\n"
    )
    (job,) = expand(load_manifest(path))
    assert job.payload["duration"] == "9"
    assert job.payload["multi_prompt"] == [{"prompt": "one", "duration": "4"}, {"prompt": "two", "duration": "5"}]


def test_budget_and_settings_are_read(write_manifest) -> None:
    path = write_manifest(
        VALID_HEAD + "budget: 12.5\nconcurrency: 8\nrpm: 50\nmax_attempts: 3\n"
        "api: {base_url: 'http://127.0.0.1:9', transport: v1}\npricing: {silent: 0.1}\n"
        "shots: [{id: a, prompt: x}]\n"
    )
    manifest = load_manifest(path)
    assert (manifest.budget_usd, manifest.concurrency, manifest.rpm, manifest.max_attempts) == (12.5, 8, 50, 3)
    assert (manifest.base_url, manifest.transport) == ("http://127.0.0.1:9", "v1")
    table = manifest.price_table(manifest.model)
    assert (table.rules[-1].label, table.rules[-1].usd, table.rules[1].usd) == ("silent", 0.1, 0.252)


def test_every_example_manifest_is_valid() -> None:
    examples = sorted((Path(__file__).parent.parent / "manifests").glob("*.yaml"))
    assert {p.name for p in examples} >= {"demo.yaml", "temple.yaml", "multi-shot.yaml", "matrix.yaml"}
    for path in examples:
        assert load_manifest(path).job_count > 0


def test_an_empty_matrix_axis_is_a_problem_not_a_crash(write_manifest) -> None:
    from tests.conftest import run_cli

    path = write_manifest("version: 1\nname: e\nshots:\n  - id: a\n    prompt: 'x {t}'\n    matrix: {t: []}\n")
    done = run_cli("validate", str(path))
    assert done.returncode == 2 and "Traceback" not in done.stderr and "matrix.t" in done.stderr, done.stderr
