"""Shot lists from CSV and JSONL (`shots_from:` and `batchgen import`): the same jobs as a YAML manifest, every
problem at the line and column of the rows file, ids that do not depend on the order of the rows."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from batchgen import ManifestError, expand, load_manifest
from batchgen.launch import load_run_manifest, open_run
from batchgen.rows import convert
from tests.conftest import MANIFESTS, run_cli

HEAD = "version: 1\nname: night\ndefaults:\n  duration: 5\n  generate_audio: false\n"

# Every kind of cell: text with commas and quotes, integers (Kling's string durations too), numbers, booleans, JSON
# lists and mappings, matrices over a variable, a field and the model, a shot of another model, a local image, takes,
# and blank cells that leave a key to the defaults.
CSV = """\
id,prompt,model,duration,aspect_ratio,generate_audio,cfg_scale,negative_prompt,multi_prompt,voice_ids,seed,image,takes,matrix.time,matrix.aspect_ratio,matrix.model
valley,Fog drifts through the valley at {time},,,,,,,,,,,2,dawn | dusk,16:9|9:16,
temple,"Slow push-in, ""cinematic"", through a temple",,10,1:1,true,0.7,blur,,,,,,,,
two-shot,,,10,,,,,"[{""prompt"":""A lamp is lit."",""duration"":4},{""prompt"":""It glows."",""duration"":6}]",,,,,,,
voices,<<<voice_1>>> says hello,,,,true,,,,"[""voice-a""]",,,,,,
harbour,A small harbour at dusk,veo-3-fast,4,,,,,,,42,,,,,
lighthouse,The beam starts to sweep,kling-3-standard-image2video,,,,,,,,,images/lighthouse.png,,,,
compare,A field of wheat in the wind,,,,,,,,,,,,,,kling-3-standard-text2video|kling-3-pro-text2video
"""

YAML_TWIN = (
    HEAD
    + """\
shots:
  - id: valley
    prompt: "Fog drifts through the valley at {time}"
    takes: 2
    matrix:
      time: [dawn, dusk]
      aspect_ratio: ["16:9", "9:16"]
  - id: temple
    prompt: 'Slow push-in, "cinematic", through a temple'
    duration: 10
    aspect_ratio: "1:1"
    generate_audio: true
    cfg_scale: 0.7
    negative_prompt: blur
  - id: two-shot
    duration: "10"
    multi_prompt:
      - {prompt: A lamp is lit., duration: 4}
      - {prompt: It glows., duration: 6}
  - id: voices
    prompt: "<<<voice_1>>> says hello"
    generate_audio: true
    voice_ids: [voice-a]
  - id: harbour
    model: veo-3-fast
    prompt: A small harbour at dusk
    duration: 4
    seed: 42
  - id: lighthouse
    model: kling-3-standard-image2video
    prompt: The beam starts to sweep
    image: images/lighthouse.png
  - id: compare
    prompt: A field of wheat in the wind
    matrix:
      model: [kling-3-standard-text2video, kling-3-pro-text2video]
"""
)


def _jsonl_lines() -> list[str]:
    shots = [
        {"id": "valley", "prompt": "Fog drifts through the valley at {time}", "takes": 2,
         "matrix": {"time": ["dawn", "dusk"]}, "matrix.aspect_ratio": ["16:9", "9:16"]},
        {"id": "temple", "prompt": 'Slow push-in, "cinematic", through a temple', "duration": 10,
         "aspect_ratio": "1:1", "generate_audio": True, "cfg_scale": 0.7, "negative_prompt": "blur"},
        {"id": "two-shot", "duration": "10", "multi_prompt": [
            {"prompt": "A lamp is lit.", "duration": 4}, {"prompt": "It glows.", "duration": 6}]},
        {"id": "voices", "prompt": "<<<voice_1>>> says hello", "generate_audio": True, "voice_ids": ["voice-a"]},
        {"id": "harbour", "model": "veo-3-fast", "prompt": "A small harbour at dusk", "duration": 4, "seed": 42,
         "aspect_ratio": None},
        {"id": "lighthouse", "model": "kling-3-standard-image2video", "prompt": "The beam starts to sweep",
         "image": "images/lighthouse.png"},
        {"id": "compare", "prompt": "A field of wheat in the wind",
         "matrix": {"model": ["kling-3-standard-text2video", "kling-3-pro-text2video"]}},
    ]  # fmt: skip
    return [json.dumps(shot) for shot in shots]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A directory with the example still in images/, as the manifests and rows files of a test expect."""
    (tmp_path / "images").mkdir()
    shutil.copy(MANIFESTS / "images" / "lighthouse.png", tmp_path / "images" / "lighthouse.png")
    return tmp_path


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def _jobs(path: Path) -> list[tuple[str, str, dict[str, object]]]:
    return [(job.id, job.model, dict(job.payload)) for job in expand(load_manifest(path))]


def _messages(path: Path) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    return [str(problem) for problem in caught.value.problems]


def test_a_good_csv_plans_exactly_the_jobs_of_its_yaml_twin(folder: Path) -> None:
    _write(folder, "shots.csv", CSV)
    from_rows = _jobs(_write(folder, "rows.yaml", HEAD + "shots_from: shots.csv\n"))
    from_yaml = _jobs(_write(folder, "twin.yaml", YAML_TWIN))
    assert from_rows == from_yaml
    assert len(from_rows) == 8 + 1 + 1 + 1 + 1 + 1 + 2
    payloads = {job_id.rsplit("-", 1)[0]: payload for job_id, _, payload in from_rows}
    assert payloads["temple"]["duration"] == "10" and payloads["temple"]["cfg_scale"] == 0.7  # Kling's text
    assert payloads["harbour"] == {"prompt": "A small harbour at dusk", "duration": 4, "seed": 42,
                                   "generate_audio": False}  # fmt: skip
    assert str(payloads["lighthouse"]["start_image_url"]).startswith("image:sha256:")


def test_a_good_jsonl_plans_exactly_the_jobs_of_its_yaml_twin(folder: Path) -> None:
    _write(folder, "shots.jsonl", "\n".join(_jsonl_lines()) + "\n\n")
    from_rows = _jobs(_write(folder, "rows.yaml", HEAD + "shots_from: shots.jsonl\n"))
    assert from_rows == _jobs(_write(folder, "twin.yaml", YAML_TWIN))


def test_reordering_rows_changes_no_job_id(folder: Path) -> None:
    header, *rows = CSV.splitlines()
    _write(folder, "shots.csv", CSV)
    _write(folder, "reversed.csv", "\n".join([header, *reversed(rows)]) + "\n")
    _write(folder, "shots.jsonl", "\n".join(reversed(_jsonl_lines())) + "\n")
    forward = _jobs(_write(folder, "a.yaml", HEAD + "shots_from: shots.csv\n"))
    backward = _jobs(_write(folder, "b.yaml", HEAD + "shots_from: reversed.csv\n"))
    jsonl = _jobs(_write(folder, "c.yaml", HEAD + "shots_from: shots.jsonl\n"))
    assert [job[0] for job in backward] != [job[0] for job in forward]  # the order of the plan follows the rows
    assert sorted(backward) == sorted(forward) == sorted(jsonl)


def test_blank_cells_fall_back_to_the_defaults(folder: Path) -> None:
    _write(folder, "shots.csv", "id,prompt,duration,generate_audio\nown,a,10,true\nblank,b,,\nspaces,c,  ,\n")
    path = _write(folder, "m.yaml", "version: 1\nname: n\ndefaults: {duration: 8}\nshots_from: shots.csv\n")
    payloads = {job.shot_id: dict(job.payload) for job in expand(load_manifest(path))}
    assert payloads == {
        "own": {"prompt": "a", "duration": "10", "generate_audio": True},
        "blank": {"prompt": "b", "duration": "8"},
        "spaces": {"prompt": "c", "duration": "8"},
    }


def test_rows_are_appended_to_the_manifests_own_shots(folder: Path) -> None:
    _write(folder, "shots.csv", "id,prompt\nfrom-csv,b\n")
    path = _write(folder, "m.yaml", HEAD + "shots_from: shots.csv\nshots:\n  - {id: own, prompt: a}\n")
    assert [job.shot_id for job in expand(load_manifest(path))] == ["own", "from-csv"]
    _write(folder, "empty.csv", "id,prompt\n")  # no rows: the manifest's own shots are the batch
    path = _write(folder, "n.yaml", HEAD + "shots_from: empty.csv\nshots:\n  - {id: own, prompt: a}\n")
    assert [job.shot_id for job in expand(load_manifest(path))] == ["own"]


def test_a_csv_with_many_errors_reports_every_one_at_its_line_and_column(folder: Path) -> None:
    csv = _write(
        folder,
        "shots.csv",
        "id,promt,prompt,duration,generate_audio,matrix.time,matrix.bad-name\n"  # 1
        "a,x,Fog at {time},20,maybe,dawn|dusk,\n"  # 2
        "b,,Fine,5,false,,\n"  # 3
        "a,,Again,5,true,,,extra\n"  # 4
        'c,,"Quoted "twice",5,,,\n'  # 5
        'd,,"Never closed,5,\n'  # 6
        "e,,Unread,5,,,\n",  # 7: inside the open quote
    )
    manifest = _write(folder, "m.yaml", "version: 1\nname: n\nbudget: -1\nshots_from: shots.csv\n")
    assert _messages(manifest) == [
        f"{manifest}:3:9: budget: -1 must be more than 0",
        f'{csv}:1:4: unknown column "promt" (did you mean "prompt"?)',
        f'{csv}:1:53: "bad-name" is not a valid matrix variable name: use letters, digits and _',
        f'{csv}:2:19: shots[0].duration: "20" is not one of "3".."15"',
        f'{csv}:2:22: shots[0].generate_audio: "maybe" is not true or false',
        f'{csv}:4:1: shots[2].id: shot id "a" is already used at line 2; shot ids must be unique',
        f"{csv}:4:19: this row has a value in column 8, but the header (line 1) names 7 columns",
        f'{csv}:5:13: text after a closing quote: quote the whole cell, and write a " inside it twice ("")',
        f'{csv}:6:4: unterminated quote: this cell\'s opening " is never closed (a " inside a quoted cell is written '
        'twice: "")',
    ]


def test_a_jsonl_with_many_errors_reports_every_one_at_its_line_and_column(folder: Path) -> None:
    rows = _write(
        folder,
        "shots.jsonl",
        '{"id": "a", "prompt": "x", "promt": "y"}\n'  # 1
        '["not", "an", "object"]\n'  # 2
        '{"id": "b", "prompt": "x",}\n'  # 3
        '{"id": "c", "prompt": "x", "id": "d"}\n'  # 4
        "\n"  # 5: blank lines are skipped
        '{"id": "a", "prompt": "x", "duration": 99}\n'  # 6
        '{"id": "e", "prompt": "at {t}", "matrix": {"t": [1]}, "matrix.t": [2]}\n'  # 7
        "// a note\n",  # 8
    )
    manifest = _write(
        folder, "m.yaml", "version: 1\nname: n\nshots:\n  - {id: own, prompt: a}\nshots_from: shots.jsonl\n"
    )
    assert _messages(manifest) == [
        f'{rows}:1:28: shots[1].promt: unknown key "promt" (did you mean "prompt"?)',
        f'{rows}:2:1: this line is a list; each line of a JSONL shot list is one object: {{"id": ..., "prompt": ...}}',
        f"{rows}:3:27: not JSON: expecting a key in double quotes",
        f'{rows}:4:28: duplicate key "id" (first at column 2); keep one of them',
        f'{rows}:6:8: shots[3].id: shot id "a" is already used at line 1; shot ids must be unique',
        f'{rows}:6:40: shots[3].duration: "99" is not one of "3".."15"',
        f'{rows}:7:55: "t" is in this line\'s "matrix" too; keep one of them',
        f"{rows}:8:1: JSON has no comments: remove this line (or keep notes in a field of the shot)",
    ]


def test_problems_of_the_manifest_and_of_its_rows_name_their_own_file(folder: Path) -> None:
    manifest = _write(folder, "m.yaml", HEAD + "shots_from: missing.csv\n")
    assert _messages(manifest) == [
        f"{manifest}:6:13: shots_from: cannot read {folder / 'missing.csv'}: No such file or directory"
    ]
    manifest = _write(folder, "m.yaml", HEAD + "shots_from: shots.txt\nshots: [{id: a, prompt: x}]\n")
    assert _messages(manifest) == [
        f'{manifest}:6:13: shots_from: "shots.txt" is neither a .csv nor a .jsonl file: a CSV has a header line, then '
        "one shot a line; a JSONL file one JSON object a line"
    ]
    rows = _write(folder, "shots.csv", "id,prompt\nown,dup\n")
    manifest = _write(folder, "m.yaml", HEAD + "shots_from: shots.csv\nshots:\n  - {id: own, prompt: a}\n")
    assert _messages(manifest) == [
        f'{rows}:2:1: shots[1].id: shot id "own" is already used at {manifest}:8; shot ids must be unique'
    ]
    _write(folder, "empty.csv", "id,prompt\n")
    manifest = _write(folder, "m.yaml", HEAD + "shots_from: empty.csv\n")
    assert _messages(manifest) == [
        f"{folder / 'empty.csv'}:1:1: the file has no shots, and the manifest lists none: write one shot a line (a "
        "CSV after its header)"
    ]


def test_a_row_of_a_model_is_checked_against_that_model(folder: Path) -> None:
    rows = _write(folder, "shots.csv", "id,prompt,model,duration,voice_ids\nv,x,veo-3-fast,5,\nk,y,,4,[1\n")
    manifest = _write(folder, "m.yaml", "version: 1\nname: n\nshots_from: shots.csv\n")
    assert _messages(manifest) == [
        f"{rows}:2:16: shots[0].duration: 5 is not one of 4, 6, 8 (veo-3-fast)",
        f'{rows}:3:8: shots[1].voice_ids: "[1" is not a list (kling-3-standard-text2video)',  # both models named
    ]


def test_cells_are_converted_only_where_the_type_is_plain() -> None:
    assert [convert("5", "integer"), convert(" 7 ", "integer"), convert("5.5", "integer")] == [5, 7, "5.5"]
    assert [convert("0.5", "number"), convert("1", "number"), convert("1e999", "number")] == [0.5, 1, "1e999"]
    assert [convert("TRUE", "boolean"), convert("false", "boolean"), convert("yes", "boolean")] == [True, False, "yes"]
    assert [convert('["a"]', "array"), convert("[NaN]", "array"), convert("5", "string")] == [["a"], "[NaN]", "5"]


def test_import_prints_a_manifest_that_plans_the_same_jobs(folder: Path) -> None:
    rows = _write(folder, "Night Shots.csv", CSV)
    done = run_cli("import", str(rows))
    assert done.returncode == 0 and done.stderr == "", done.stderr
    head = done.stdout.split("\n")
    assert head[0] == "# 7 shots of Night Shots.csv, by `batchgen import`"
    # its images are the rows file's: the manifest says where it must be saved
    assert head[1].startswith("# its local images are relative to ") and head[1].endswith("use shots_from: instead)")
    assert head[2:4] == ["version: 1", "name: night-shots"]
    imported = _write(folder, "imported.yaml", done.stdout)
    assert run_cli("validate", str(imported)).returncode == 0
    _write(folder, "shots.csv", CSV)
    expected = _jobs(_write(folder, "rows.yaml", "version: 1\nname: night-shots\nshots_from: shots.csv\n"))
    assert _jobs(imported) == expected
    jsonl = _write(folder, "shots.jsonl", "\n".join(_jsonl_lines()) + "\n")
    done = run_cli("import", str(jsonl), "--name", "night-shots")
    assert done.returncode == 0, done.stderr
    assert _jobs(_write(folder, "from-jsonl.yaml", done.stdout)) == expected


def test_import_of_a_bad_file_says_where_on_stderr_and_prints_nothing(folder: Path) -> None:
    rows = _write(folder, "bad.csv", "id,prompt,duraton\na,x,5\n")
    done = run_cli("import", str(rows))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [
        f'{rows}:1:11: unknown column "duraton" (did you mean "duration"?)',
        "batchgen: error: 1 problem found; nothing was run",
    ]
    for path in (folder / "missing.csv", _write(folder, "latin1.jsonl", "")):
        done = run_cli("import", str(path))
        assert done.returncode == 2 and "Traceback" not in done.stderr and done.stderr.startswith(str(path))
    (folder / "latin1.csv").write_bytes(b"id,prompt\na,caf\xe9\n")
    done = run_cli("import", str(folder / "latin1.csv"))
    assert (
        done.stderr.splitlines()[0]
        == f"{folder / 'latin1.csv'}:2:6: not UTF-8 text (byte 0xe9); save the file as UTF-8"
    )


def test_an_edited_rows_file_makes_new_jobs_on_the_fast_resume(folder: Path) -> None:
    rows = _write(folder, "shots.csv", "id,prompt\na,first\n")
    path = _write(folder, "m.yaml", HEAD + "shots_from: shots.csv\n")
    out = folder / "out"
    first = load_run_manifest(str(path), 10_000, str(out))
    assert first.jobs is not None
    with open_run(out, first.manifest, first.jobs, None, first.digest):
        pass
    assert load_run_manifest(str(path), 10_000, str(out)).jobs is None  # nothing changed: the state's jobs
    os.utime(rows)  # touched, same bytes: still the state's jobs
    assert load_run_manifest(str(path), 10_000, str(out)).jobs is None
    rows.write_text("id,prompt\na,second\n", encoding="utf-8")
    again = load_run_manifest(str(path), 10_000, str(out))
    assert again.jobs is not None and [job.payload["prompt"] for job in again.jobs] == ["second"]


def test_ten_thousand_rows_validate_in_one_pass(folder: Path) -> None:
    lines = ["id,prompt,duration,matrix.aspect_ratio"]
    lines += [f'shot-{i},"Shot {i}, of a big batch",{3 + i % 13},16:9|9:16' for i in range(5_000)]
    lines += [f"clip-{i},Clip {i},5," for i in range(5_000)]
    _write(folder, "big.csv", "\n".join(lines) + "\n")
    path = _write(folder, "big.yaml", "version: 1\nname: big\nshots_from: big.csv\n")
    started = time.perf_counter()
    manifest = load_manifest(path, max_jobs=15_000)
    jobs = expand(manifest, max_jobs=15_000)
    # ~1 s here; a cost that grows with the square of the rows (one was found: 12 s) fails this by far.
    assert time.perf_counter() - started < 6
    assert (len(manifest.shots), len(jobs)) == (10_000, 15_000)


def test_a_semicolon_separated_file_is_said_once(folder: Path) -> None:
    rows = _write(folder, "s.csv", "id;prompt\na;hello\nb;world\n")
    manifest = _write(folder, "m.yaml", "version: 1\nname: n\nshots_from: s.csv\n")
    assert _messages(manifest) == [
        f'{rows}:1:1: unknown column "id;prompt": columns are separated by commas (export comma-separated CSV)'
    ]
