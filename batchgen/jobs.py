"""A validated manifest → jobs: one per matrix combination × take, each with a stable content-hash id.

A job id reads ``<shot-id>[-<combination slug>][-t<take>]-<8 hex>``; the hex is the start of the sha256 of the
canonical JSON of ``{model, payload, take}``. The same content gives the same id in every process, whatever the key
order of the YAML, and any change to what is sent gives a new id: that is what lets a rerun skip finished work and
redo only what changed. A local image is in the payload as the sha256 of its bytes (``images.py``): editing the image
makes new ids, moving it does not.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from batchgen.canonical import content_hash
from batchgen.errors import ManifestError
from batchgen.manifest import MAX_JOBS, Manifest
from batchgen.yamlsource import Document

SLUG_MAX = 40


@dataclass(frozen=True)
class Job:
    """One generation to run: the exact JSON body the provider receives, and where it came from."""

    id: str
    index: int
    shot_id: str
    take: int
    variables: tuple[tuple[str, Any], ...]
    model: str
    payload: Mapping[str, Any]


def expand(manifest: Manifest, *, max_jobs: int = MAX_JOBS) -> list[Job]:
    """Every job of ``manifest`` in manifest order: shots, then combinations, then takes."""
    if manifest.job_count > max_jobs:
        problem = Document(manifest.file, None).problem(
            (),
            f"the manifest expands to {manifest.job_count:,} jobs, more than the limit of {max_jobs:,}; "
            f"pass --max-jobs {manifest.job_count}",
        )
        raise ManifestError([problem])
    jobs: list[Job] = []
    for shot in manifest.shots:
        for combination in manifest.combinations(shot):
            slug = combination_slug(combination.values)
            for take in range(1, shot.takes + 1):
                model = combination.model.slug
                digest = content_hash({"model": model, "payload": combination.fields, "take": take})
                parts = [shot.id, slug, f"t{take}" if shot.takes > 1 else "", digest[:8]]
                job_id = "-".join(part for part in parts if part)
                jobs.append(Job(job_id, len(jobs), shot.id, take, combination.values, model, combination.fields))
    return jobs


def combination_slug(values: tuple[tuple[str, Any], ...]) -> str:
    """The matrix values as a file-name-safe slug: ``(("time", "dawn"), ("aspect_ratio", "16:9"))`` → ``dawn-16x9``."""
    words = [re.sub(r"[^a-z0-9]+", "-", str(value).lower().replace(":", "x")).strip("-") for _, value in values]
    slug = "-".join(word for word in words if word)
    return slug[:SLUG_MAX].rstrip("-")
