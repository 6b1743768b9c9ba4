"""Opening a run: where it talks to (base URL, key), its directory, its lock and its state, ready for the runner.

The key is read from the environment (``SEGMIND_API_KEY``, or the variable ``--api-key-env`` names) and handed to
the client only; it is never stored, logged or put in a message.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from yarl import URL

from batchgen import __version__
from batchgen.client import DEFAULT_BASE_URL, DEFAULT_HISTORY_URL, DEFAULT_UPLOAD_URL
from batchgen.errors import OutputError, RunLockedError, StateError, UsageError
from batchgen.images import LocalImage
from batchgen.jobs import Job, expand
from batchgen.manifest import Manifest, load_manifest, manifest_from_data
from batchgen.models import load_model
from batchgen.outputs import RunDir, RunLock, write_text
from batchgen.pricing import estimate_micros, price_class
from batchgen.store import ImageRow, Owner, Store
from batchgen.yamlsource import parse_document, read_source

BASE_URL_ENV = "SEGMIND_BASE_URL"
OWNER_STALE_S = 60.0  # an owner not heard from for this long is gone (a run says it is alive every 10 s)
HISTORY_URL_ENV = "SEGMIND_HISTORY_URL"
UPLOAD_URL_ENV = "SEGMIND_UPLOAD_URL"


@dataclass(frozen=True)
class Target:
    """Where a run sends its requests. ``repr`` leaves the key out."""

    base_url: str
    api_key: str
    history_url: str | None = None
    upload_url: str | None = None

    def __repr__(self) -> str:
        return f"Target(base_url={self.base_url!r}, history_url={self.history_url!r}, upload_url={self.upload_url!r})"


def run_root(name: str, out: str | None) -> Path:
    """The run directory: ``--out``, else ``output/<manifest name>/``."""
    return Path(out) if out else Path("output") / name


def resolve_target(
    manifest: Manifest,
    *,
    base_url_flag: str | None,
    key_env: str,
    environ: Mapping[str, str],
    allow_insecure_http: bool = False,
    history_url_flag: str | None = None,
    upload_url_flag: str | None = None,
) -> Target:
    """The base URL (flag, ``SEGMIND_BASE_URL``, the manifest's ``api.base_url``, the default), the request
    history's (flag, ``SEGMIND_HISTORY_URL``, the default; ``off`` for none), the storage's (flag,
    ``SEGMIND_UPLOAD_URL``, the default) and the key."""
    base_url = base_url_flag or environ.get(BASE_URL_ENV) or manifest.base_url or DEFAULT_BASE_URL
    check_base_url(base_url, allow_insecure_http)
    history_url: str | None = history_url_flag or environ.get(HISTORY_URL_ENV) or DEFAULT_HISTORY_URL
    if history_url == "off":
        history_url = None
    else:
        check_base_url(str(history_url), allow_insecure_http, "the request history's URL (--history-url)")
    upload_url = upload_url_flag or environ.get(UPLOAD_URL_ENV) or DEFAULT_UPLOAD_URL
    check_base_url(upload_url, allow_insecure_http, "the storage's URL (--upload-url)")
    key = environ.get(key_env, "").strip()
    if not key:
        raise UsageError(
            f"no API key: set {key_env} (or name another variable with --api-key-env), "
            "or pass --simulate to run against the built-in simulator"
        )
    return Target(base_url, key, history_url, upload_url)


def check_base_url(base_url: str, allow_insecure_http: bool, what: str = "the base URL") -> None:
    """Refuse anything but https, except plain http to loopback or with ``--allow-insecure-http``."""
    try:
        url = URL(base_url)
        host = url.host  # yarl checks some parts (the port) only when they are read
    except ValueError as exc:
        raise UsageError(
            f"{what} {base_url!r} is not a valid URL ({exc}); write one such as {DEFAULT_BASE_URL}"
        ) from None
    if url.scheme not in ("http", "https") or not host:
        raise UsageError(f"{what} {base_url!r} is not an http(s) URL such as {DEFAULT_BASE_URL}")
    if url.scheme == "http" and not allow_insecure_http and not is_loopback(host):
        raise UsageError(
            f"{what} {base_url} is plain http to another machine: the key would travel in clear text; "
            "use https, or pass --allow-insecure-http if you really mean it"
        )


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class RunManifest:
    """A run's manifest, its jobs, and the digest of what they were made from. ``jobs`` is None when the run
    directory already holds exactly them (see ``load_run_manifest``)."""

    manifest: Manifest
    jobs: list[Job] | None
    digest: str


def load_run_manifest(path: str, max_jobs: int, out: str | None, *, shared: bool = False) -> RunManifest:
    """The manifest of ``batchgen run``, validated and expanded, unless its run directory already holds its jobs.

    The state keeps the digest of the manifest bytes, the job limit, this version and its schemas, with the
    normalised document (the shots of its ``shots_from`` file in it) and the stamps of the files its jobs were made
    from (local images, the ``shots_from`` file): when they match, the manifest is rebuilt from that document and
    its jobs are the state's,
    so a resumed 100,000-job run starts without checking and expanding every job again (without ``--out`` the file
    is parsed for its name first). A ``shared`` state (PostgreSQL) is not looked in: its jobs are made every time.
    """
    raw = read_source(path)
    digest = manifest_digest(raw, max_jobs)
    doc = None
    root = Path(out) if out is not None else None
    if out is None:
        doc = parse_document(raw, path)  # for the name; a broken file fails here as it would below
        name = doc.data.get("name")
        root = run_root(name, None) if isinstance(name, str) and name else None
    known = None if root is None or shared else _known_manifest(root, digest, path)
    if known is not None:
        return RunManifest(known, None, digest)
    manifest = load_manifest(path, max_jobs=max_jobs, document=doc or parse_document(raw, path))
    return RunManifest(manifest, expand(manifest, max_jobs=max_jobs), digest)


def manifest_digest(raw: bytes, max_jobs: int) -> str:
    """What a run's jobs are made from: the manifest's bytes, the job limit, this version and its schemas."""
    digest = hashlib.sha256(f"batchgen {__version__} max_jobs={max_jobs}\n".encode())
    digest.update(_schemas_digest().encode())
    digest.update(raw)
    return digest.hexdigest()


@cache
def _schemas_digest() -> str:
    digest = hashlib.sha256()

    def add(entry: Traversable, name: str) -> None:
        if entry.is_dir():
            for child in sorted(entry.iterdir(), key=lambda item: item.name):
                add(child, f"{name}/{child.name}")
        else:
            digest.update(f"{name}\n".encode())
            digest.update(entry.read_bytes())

    add(resources.files("batchgen").joinpath("schema"), "schema")
    return digest.hexdigest()


def _known_manifest(root: Path, digest: str, file: str) -> Manifest | None:
    state = RunDir(root).state
    if not state.exists():
        return None
    try:
        store = Store.open(state, readonly=True)
    except StateError:
        return None  # empty, older or damaged: the run opens it for writing, and says what it cannot use

    try:
        if store.get_meta("manifest_digest") != digest:
            return None
        data = store.get_meta("manifest_data")
        stamps = [*store.get_meta("manifest_images", []), *store.get_meta("manifest_files", [])]
    finally:
        store.close()
    if not isinstance(data, dict) or not files_unchanged(stamps):
        return None
    return manifest_from_data(file, data)


def image_stamps(images: list[LocalImage]) -> list[list[Any]]:
    """What tells, cheaply, that the local images a run's jobs were made from are still the same: each one's path,
    size, modification time and sha256."""
    return file_stamps({image.path: image.sha256 for image in images})


def file_stamps(files: Mapping[str, str]) -> list[list[Any]]:
    """The stamps of files read for a run's jobs (by absolute path, with the sha256 of what was read): each one's
    path, size, modification time and sha256."""
    stamps = []
    for path, sha256 in files.items():
        info = os.stat(path)
        stamps.append([path, info.st_size, info.st_mtime_ns, sha256])
    return stamps


def files_unchanged(stamps: Any) -> bool:
    """Whether every file of ``file_stamps`` (a local image, a ``shots_from`` file) still holds the same content:
    one whose size or time changed is read again and hashed (a file touched but not changed is still the same)."""
    for path, size, mtime_ns, sha256 in stamps if isinstance(stamps, list) else []:
        try:
            info = os.stat(path)
            if (info.st_size, info.st_mtime_ns) == (size, mtime_ns):
                continue
            if hashlib.sha256(Path(path).read_bytes()).hexdigest() != sha256:
                return False
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class SharedState:
    """A PostgreSQL state: its URL, the account its runs spend from (a hash of the key), and a worker's lease."""

    url: str
    account: str | None = None
    lease_s: float = OWNER_STALE_S
    alone: bool = False  # a worker with a simulator of its own (--simulate): the others could not poll its requests


STATE_LINK = "state.link"  # in a run directory whose state is in PostgreSQL: where (no password), for readers


def state_url(flag: str | None, environ: Mapping[str, str]) -> str | None:
    """The PostgreSQL state to use: ``--state``, else ``$BATCHGEN_STATE_URL``; ``None``: the run directory's file."""
    from batchgen.pgstore import URL_ENV, check_state_url

    url = flag or environ.get(URL_ENV) or None
    return None if url is None else check_state_url(url)


def _open_shared(run_dir: RunDir, shared: SharedState, *, readonly: bool = False, create: bool = False) -> Store:
    """The run of ``run_dir``'s name in the shared state (made when ``create``: a run; a command on an existing run
    is told there is none, and the run directory is left as it is)."""
    from batchgen.pgstore import PgStore, shown_url

    store = PgStore.connect(
        shared.url, run_dir.root.name, run_dir.root, account=shared.account, readonly=readonly, create=create
    )
    store.lease_s = shared.lease_s
    if create:
        link = json.dumps({"state": shown_url(shared.url), "run": run_dir.root.name}) + "\n"
        path = run_dir.root / STATE_LINK
        with contextlib.suppress(OSError, OutputError):  # workers sharing a directory write the same line
            if not path.exists() or path.read_text(encoding="utf-8") != link:
                write_text(path, link)
    return store


def _refuse_company(store: Store, alone: bool) -> None:
    """A worker that runs a simulator of its own (``--simulate``) works alone: another worker could neither poll its
    requests nor find them in its request history."""
    if alone and store.live_workers():
        raise RunLockedError(
            f"--simulate runs a simulator of its own, and {store.where} has other workers: to try several workers, "
            "run `batchgen simulate` once and point every worker at it (SEGMIND_BASE_URL, SEGMIND_API_KEY)"
        )


@contextmanager
def open_run(
    root: Path,
    manifest: Manifest,
    jobs: list[Job] | None,
    budget_micros: int | None,
    digest: str | None = None,
    shared: SharedState | None = None,
) -> Iterator[tuple[RunDir, Store]]:
    """The run directory created and locked, its state opened and reconciled with the manifest's jobs (``None``:
    the state holds them already); with ``digest``, the state remembers what its jobs were made from. With
    ``shared``, the state is in PostgreSQL, and this process is one of the run's workers (no lock file: the
    database says who holds what)."""
    run_dir = RunDir(root)
    run_dir.prepare()
    lock = RunLock(run_dir) if shared is None else None
    if lock is not None:
        lock.acquire()
    try:
        store = Store.open(run_dir.state) if shared is None else _open_shared(run_dir, shared, create=True)
        try:
            claim(store)
            if shared is not None:
                _refuse_company(store, shared.alone)
            now = time.time()
            if jobs is None:
                store.requeue_skipped(now)
                store.fill_price_classes(lambda model, payload: price_class(payload, load_model(model)))
            else:
                models = {job.model: load_model(job.model) for job in jobs}
                tables = {slug: manifest.price_table(model) for slug, model in models.items()}
                estimates = [estimate_micros(job.payload, models[job.model], tables[job.model]) for job in jobs]
                classes = [price_class(job.payload, models[job.model]) for job in jobs]
                # Workers of one run share its jobs: one with another manifest or budget than the live ones is refused
                # (checked and recorded under the run's lock, so that two starting together cannot both pass).
                terms = None if shared is None else {"digest": digest, "budget_micros": budget_micros}
                store.sync_jobs(jobs, estimates, classes, now, terms)
                images = list(manifest.local_images().values())
                store.sync_images([ImageRow(i.sha256, i.path, i.mime, i.size) for i in images])
                store.set_meta(manifest_data=manifest.data, manifest_images=image_stamps(images))
                if digest is not None:
                    store.set_meta(manifest_digest=digest, manifest_files=file_stamps(manifest.row_files))
            store.set_meta(
                name=manifest.name,
                manifest=os.path.abspath(manifest.file),
                model=manifest.model.slug,
                budget_micros=budget_micros,
                started_at=time.time(),
                previous_started_at=store.get_meta("started_at", 0.0),
            )
            yield run_dir, store
        finally:
            _let_go(store)
    finally:
        if lock is not None:
            lock.release()


def _let_go(store: Store) -> None:
    """Release the ownership (when this process got it) and close the state; a state that cannot be written any
    more keeps its owner row, which the next run finds stale."""
    with contextlib.suppress(StateError):
        store.release()
    store.close()


def claim(store: Store) -> None:
    """Record this process as the owner of the run directory in its state (the lock file can be deleted; the
    state cannot be fooled): :class:`RunLockedError` when a live process owns it, else its stale owner is taken
    over (``store.took_over`` says from whom)."""
    store.claim(uuid.uuid4().hex, os.getpid(), socket.gethostname(), time.time(), owner_is_live)


def owner_is_live(owner: Owner, now: float | None = None) -> bool:
    """Whether a recorded owner still runs: heard from within ``OWNER_STALE_S`` and, on this host, its process
    alive (and not this very process, which is not running the directory if it asks)."""
    now = time.time() if now is None else now
    if now - owner.heartbeat_at > OWNER_STALE_S:
        return False
    if owner.host != socket.gethostname():
        return True
    if owner.pid == os.getpid():
        return False
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


@contextmanager
def open_state(root: Path, *, write: bool = False, shared: SharedState | None = None) -> Iterator[tuple[RunDir, Store]]:
    """An existing run's state: read-only without the lock (a run may be going), or locked for a change (``shared``:
    the run of that name in PostgreSQL, joined as a worker for a change)."""
    run_dir = RunDir(root)
    if shared is None and not run_dir.state.exists():
        link = root / STATE_LINK
        if link.exists():
            where = json.loads(link.read_text(encoding="utf-8")).get("state", "PostgreSQL")
            raise UsageError(
                f"the state of {root} is in PostgreSQL ({where}): pass --state postgresql://… or set BATCHGEN_STATE_URL"
            )
        raise UsageError(f"no run in {root}: there is no {run_dir.state.name} (run `batchgen run` first)")
    lock = RunLock(run_dir) if write and shared is None else None
    if lock is not None:
        lock.acquire()
    try:
        if shared is None:
            store = Store.open(run_dir.state, readonly=not write)
        else:
            store = _open_shared(run_dir, shared, readonly=not write)
        try:
            if write:
                claim(store)
            yield run_dir, store
        finally:
            _let_go(store)
    finally:
        if lock is not None:
            lock.release()
