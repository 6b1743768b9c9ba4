"""Progress: one plain line a minute when stderr is not a terminal, a bar that ends on the true counts when it is."""

from __future__ import annotations

import io
import re
from pathlib import Path
from types import SimpleNamespace

from tqdm import tqdm

from batchgen import expand, load_manifest
from batchgen.cli import Progress
from batchgen.launch import open_run
from batchgen.runner import Event
from tests.conftest import batch_manifest


def test_lines_a_minute_apart_with_the_states_figures(write_manifest, tmp_path: Path, monkeypatch, capsys) -> None:
    manifest = load_manifest(write_manifest(batch_manifest(3, extra="budget: 10\n")))
    with open_run(tmp_path / "out", manifest, expand(manifest), 10_000_000) as (_, store):
        progress = Progress(3, 10_000_000, enabled=True)
        progress.runner = SimpleNamespace(store=store)  # the store is all a Progress reads of its runner
        clock = [1000.0]
        monkeypatch.setattr("batchgen.cli.time.monotonic", lambda: clock[0])
        progress.last_line = clock[0]
        job = store.jobs()[0]
        store.mark_skipped(job.id, "over budget", 0.0)
        progress.event(Event("skipped", job.id, "- skipped"))
        assert capsys.readouterr().err == ""  # not a minute yet
        clock[0] += 60
        progress.event(Event("skipped", job.id, "- skipped"))
        line = capsys.readouterr().err
        assert re.fullmatch(
            r"\d\d:\d\d:\d\d 1/3 finished, 0 failed, 0 at the provider, 0 downloading, \$0.000 of \$10.000 spent\n",
            line,
        )


def test_the_bar_ends_on_the_final_counts(write_manifest, tmp_path: Path) -> None:
    manifest = load_manifest(write_manifest(batch_manifest(3)))
    with open_run(tmp_path / "out", manifest, expand(manifest), None) as (_, store):
        progress = Progress(3, None, enabled=True)
        screen = io.StringIO()
        progress.bar = tqdm(total=3, file=screen)
        progress.runner = SimpleNamespace(store=store)  # the store is all a Progress reads of its runner
        for job in store.jobs():
            store.mark_skipped(job.id, "deadline", 0.0)
            progress.event(Event("skipped", job.id, "- skipped"))  # most fall between two updates
        progress.close()
        assert "3/3" in screen.getvalue().splitlines()[-1].split("\r")[-1]
