"""Expansion: order, rendering, normalised payloads, and ids stable across key orders and processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from batchgen import expand, load_manifest
from batchgen.canonical import canonical_json

MATRIX = """\
version: 1
name: valley
defaults:
  duration: 5
  generate_audio: false
shots:
  - id: valley-fog
    prompt: "Fog drifts through the valley at {time}. {{literal}}"
    matrix:
      time: [dawn, dusk]
      aspect_ratio: ["16:9", "9:16"]
    takes: 2
  - id: two-shot
    duration: 10
    multi_prompt:
      - {prompt: "A lantern is lit in the dark.", duration: 4}
      - {prompt: "The flame reveals a painted wall.", duration: 6}
"""

REORDERED = """\
shots:
  - takes: 2
    matrix:
      time: [dawn, dusk]
      aspect_ratio: ["16:9", "9:16"]
    prompt: "Fog drifts through the valley at {time}. {{literal}}"
    id: valley-fog
  - multi_prompt:
      - {duration: 4, prompt: "A lantern is lit in the dark."}
      - {duration: 6, prompt: "The flame reveals a painted wall."}
    duration: "10"
    id: two-shot
defaults:
  generate_audio: false
  duration: "5"
name: valley
version: 1
"""


def test_expansion_order_ids_and_payloads(write_manifest) -> None:
    jobs = expand(load_manifest(write_manifest(MATRIX)))
    assert [j.id.rsplit("-", 1)[0] for j in jobs] == [
        "valley-fog-dawn-16x9-t1",
        "valley-fog-dawn-16x9-t2",
        "valley-fog-dawn-9x16-t1",
        "valley-fog-dawn-9x16-t2",
        "valley-fog-dusk-16x9-t1",
        "valley-fog-dusk-16x9-t2",
        "valley-fog-dusk-9x16-t1",
        "valley-fog-dusk-9x16-t2",
        "two-shot",
    ]
    assert [j.index for j in jobs] == list(range(9))
    assert dict(jobs[2].payload) == {
        "prompt": "Fog drifts through the valley at dawn. {literal}",
        "duration": "5",
        "generate_audio": False,
        "aspect_ratio": "9:16",
    }
    assert jobs[2].variables == (("time", "dawn"), ("aspect_ratio", "9:16"))
    assert dict(jobs[-1].payload) == {
        "duration": "10",
        "generate_audio": False,
        "multi_prompt": [
            {"prompt": "A lantern is lit in the dark.", "duration": "4"},
            {"prompt": "The flame reveals a painted wall.", "duration": "6"},
        ],
        "prompt": "A lantern is lit in the dark. The flame reveals a painted wall.",
    }
    assert len({j.id for j in jobs}) == len(jobs)
    assert all(len(j.id.rsplit("-", 1)[1]) == 8 for j in jobs)


def test_ids_do_not_depend_on_key_order(write_manifest) -> None:
    first = expand(load_manifest(write_manifest(MATRIX, "a.yaml")))
    second = expand(load_manifest(write_manifest(REORDERED, "b.yaml")))
    assert [j.id for j in first] == [j.id for j in second]
    assert [canonical_json(j.payload) for j in first] == [canonical_json(j.payload) for j in second]


def test_any_change_to_what_is_sent_changes_the_id(write_manifest) -> None:
    base = {j.id for j in expand(load_manifest(write_manifest(MATRIX, "a.yaml")))}
    changed = {j.id for j in expand(load_manifest(write_manifest(MATRIX.replace("dusk", "noon"), "b.yaml")))}
    assert len(base & changed) == 5  # the dawn jobs and the untouched two-shot keep their ids
    cfg = {
        j.id
        for j in expand(
            load_manifest(
                write_manifest(
                    MATRIX.replace("  generate_audio: false", "  generate_audio: false\n  cfg_scale: 0.7"), "c.yaml"
                )
            )
        )
    }
    assert not base & cfg


def test_ids_are_the_same_in_another_process(write_manifest) -> None:
    path = write_manifest(MATRIX)
    here = [j.id for j in expand(load_manifest(path))]
    code = "import sys, batchgen; print('\\n'.join(j.id for j in batchgen.expand(batchgen.load_manifest(sys.argv[1]))))"
    env = {"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == here


def test_demo_manifest_expands_to_six_cheap_jobs() -> None:
    jobs = expand(load_manifest(Path(__file__).parent.parent / "manifests" / "demo.yaml"))
    assert len(jobs) == 6
    assert {j.payload["duration"] for j in jobs} == {"3"}
