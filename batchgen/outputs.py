"""The run directory: its lock, atomic files, verified videos, per-job logs and ``run.log``.

A video is streamed to ``videos/<job>.mp4.part``, hashed as it comes, probed with PyAV, made durable, and only then
renamed to ``videos/<job>.mp4``: a file named ``.mp4`` is always whole, and a ``.part`` is never trusted. Videos
finished together are placed together (group commit): one ``syncfs`` for all their bytes, the renames, one fsync of
the directory; a batch of one fsyncs its file instead.
Every file is private (directories 0700, files 0600): prompts can be confidential.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import av
from av.video.reformatter import VideoReformatter

from batchgen.errors import OutputError, ProtocolError, RunLockedError
from batchgen.pricing import ClipSpec
from batchgen.store import AttemptRow, JobRow

DIR_MODE = 0o700
FILE_MODE = 0o600
DURATION_TOLERANCE_S = 0.5
ASPECT_TOLERANCE = 0.03
THUMBNAIL_WIDTH = 320  # an input image's copy in the gallery
# A poster is a thumbnail: a 1080p still is ~0.2-0.7 MB, 10,000 of them gigabytes for a gallery to pull; at 480 px
# wide it is a few tens of kB (bench/gallery.py measures it). Clicking a card plays the video itself.
POSTER_WIDTH = 480
JPEG_QUALITY = 5  # FFmpeg's MJPEG qscale: 2 is best, 31 worst; 5 is a good-looking thumbnail
DARK_LUMA = 24  # a poster's mean luma below this is black (video range starts at 16)


@dataclass(frozen=True)
class RunDir:
    """The paths of one run directory."""

    root: Path

    @property
    def state(self) -> Path:
        return self.root / "state.db"

    @property
    def videos(self) -> Path:
        return self.root / "videos"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def posters(self) -> Path:
        return self.root / "posters"

    @property
    def inputs(self) -> Path:
        """Small copies of the local images the run's jobs start from, for the gallery."""
        return self.root / "inputs"

    @property
    def run_log(self) -> Path:
        return self.root / "run.log"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    def video(self, job_id: str) -> Path:
        """Where a job's video goes."""
        return self.videos / f"{job_id}.mp4"

    def prepare(self) -> None:
        """Create the directory tree, private to its owner. Its subdirectories must be real directories: a symbolic
        link there would have batchgen write (and chmod) somewhere outside the run."""
        try:
            self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            self.root.chmod(DIR_MODE)
            _refuse_link(self.inputs)  # made when a run has local images (report.py), never through a link
            for path in (self.videos, self.logs, self.posters):
                _refuse_link(path)
                path.mkdir(mode=DIR_MODE, exist_ok=True)
                _refuse_link(path)  # not made a link meanwhile: chmod would follow it
                path.chmod(DIR_MODE)
        except OSError as exc:
            raise OutputError(f"cannot create the run directory {self.root}: {exc.strerror}") from None

    def remove_stale_parts(self) -> int:
        """Delete ``.part`` files a stopped run left behind (never trusted); how many there were."""
        parts = list(self.videos.glob("*.part"))
        for part in parts:
            part.unlink(missing_ok=True)
        return len(parts)


class RunLock:
    """An exclusive lock on a run directory, held for the life of a run; it names the holder's pid."""

    def __init__(self, run_dir: RunDir) -> None:
        self.path = run_dir.lock_file
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunLockedError` naming the other run's pid."""
        handle = open(_private(self.path, os.O_RDWR | os.O_CREAT), "r+", encoding="utf-8")  # noqa: SIM115
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunLockedError(
                f"another batchgen run (pid {holder}) is using {self.path.parent}; wait for it, or stop it first"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._file = handle

    def release(self) -> None:
        """Let go of the lock."""
        if self._file is not None:
            self._file.close()
            self._file = None


class PartFile:
    """A video being received: written to ``.part``, hashed on the way, placed only when whole and checked."""

    def __init__(self, final: Path) -> None:
        self.final = final
        self.part = final.with_name(final.name + ".part")
        self._digest = hashlib.sha256()
        self.size = 0
        self._fd = _fresh(self.part)
        stat = os.fstat(self._fd)
        self.identity = (stat.st_dev, stat.st_ino)  # the file written: the one placed, never one swapped in for it

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``."""
        try:
            os.write(self._fd, chunk)
        except OSError as exc:
            self.discard()
            raise _output_error(exc, self.part) from None
        self._digest.update(chunk)
        self.size += len(chunk)

    @property
    def sha256(self) -> str:
        """The hash of what was written."""
        return self._digest.hexdigest()

    def check_identity(self) -> None:
        """``ProtocolError`` unless ``.part`` is still the file written (not a link or another file put there)."""
        try:
            stat = os.lstat(self.part)
        except FileNotFoundError:
            raise ProtocolError(f"{self.part.name} disappeared before it was placed") from None
        if (stat.st_dev, stat.st_ino) != self.identity:
            raise ProtocolError(f"{self.part.name} was replaced by another file before it was placed: not used")

    def close(self) -> None:
        """Stop writing: every byte is handed to the kernel (not yet durable: see ``place_videos``)."""
        self._close()

    def discard(self) -> None:
        """Forget a broken or unwanted ``.part``."""
        self._close()
        self.part.unlink(missing_ok=True)

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def probe_video(path: Path, poster: Path | None = None) -> dict[str, Any]:
    """What the file really is, read with PyAV; ``ProtocolError`` when it is no video at all.

    With ``poster``, also a JPEG still from its middle (the keyframe at or before it), from the same reading (best
    effort: a video without one is still a video).
    """
    try:
        # The provider answers video/mp4: the MP4 demuxer is named (no guessing of the format: a quarter of the
        # open), and one decoder thread is enough for the single frame decoded at most
        with av.open(str(path), format="mp4", options={"threads": "1"}) as container:
            if not container.streams.video:
                raise ProtocolError("the file has no video stream")
            video = container.streams.video[0]
            seconds = _seconds(container)
            probe = {
                "duration_s": round(seconds, 3),
                "width": video.codec_context.width,
                "height": video.codec_context.height,
                "codec": video.codec_context.name,
                "audio": bool(container.streams.audio),
            }
            if poster is not None:
                with contextlib.suppress(av.FFmpegError, OSError, ProtocolError):
                    _write_poster(container, seconds / 2, poster)
            return probe
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"the download is not a playable MP4 video: {exc}") from None


def make_poster(video: Path, poster: Path) -> None:
    """A JPEG thumbnail (at most ``POSTER_WIDTH`` wide) of the middle of ``video`` (the keyframe at or before it),
    written atomically to ``poster`` (PyAV only, no imaging library)."""
    with av.open(str(video), format="mp4", options={"threads": "1"}) as container:
        _write_poster(container, _seconds(container) / 2, poster)


def _seconds(container: Any) -> float:
    """The duration of an open container's first video stream (the container's when the stream has none)."""
    video = container.streams.video[0]
    if video.duration is not None and video.time_base is not None:
        return float(video.duration * video.time_base)
    if container.duration is not None:
        return float(container.duration) / 1_000_000
    return 0.0


def _write_poster(container: Any, middle_s: float, poster: Path) -> None:
    """The keyframe at or before ``middle_s``: one frame decoded, not every frame up to the middle. A clip that
    fades in from black and has no keyframe but its first would show black: then the frames after it are decoded,
    up to the middle, until one shows something."""
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1
    if middle_s > 0 and stream.time_base:
        container.seek(int(middle_s / stream.time_base), stream=stream, backward=True, any_frame=False)
    frames = container.decode(stream)
    frame = next(frames, None)
    if frame is None:
        raise ProtocolError(f"{poster.stem} has no frame to show")
    while _dark(frame) and stream.time_base and frame.pts is not None and frame.pts * stream.time_base < middle_s:
        following = next(frames, None)
        if following is None:
            break
        frame = following
    _write_jpeg(frame, *_fit(frame.width, frame.height, POSTER_WIDTH), poster)


def _dark(frame: Any) -> bool:
    """Whether a picture is all but black (the mean of a sample of its luma near the video range's floor)."""
    if frame.format.name not in ("yuv420p", "yuvj420p", "yuv422p", "yuv444p"):
        return False
    luma = bytes(memoryview(frame.planes[0])[::97])  # a sample, without copying the plane
    return bool(luma) and sum(luma) / len(luma) < DARK_LUMA


def _fit(width: int, height: int, max_width: int) -> tuple[int, int]:
    """A picture's size at most ``max_width`` wide (never enlarged), its ratio kept, its sides even."""
    scale = min(1.0, max_width / width)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def make_thumbnail(image: Path, thumbnail: Path, max_width: int = THUMBNAIL_WIDTH) -> None:
    """A JPEG at most ``max_width`` wide of the image file at ``image`` (PNG, JPEG, WebP), written atomically."""
    with av.open(str(image), "r") as container:
        frame = next(container.decode(video=0), None)
    if frame is None:
        raise ProtocolError(f"{image} has no picture to show")
    _write_jpeg(frame, *_fit(frame.width, frame.height, max_width), thumbnail)


def _write_jpeg(frame: av.VideoFrame, width: int, height: int, path: Path) -> None:
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.thread_count = 1  # one small still: starting and joining two threads cost more than encoding it
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuvj420p"
    encoder.time_base = Fraction(1, 25)
    encoder.qmin = encoder.qmax = JPEG_QUALITY
    still = _reformatter().reformat(frame, width=width, height=height, format="yuvj420p")
    packets = encoder.encode(still) + encoder.encode(None)
    temporary = path.with_name(f".{path.name}.tmp")
    fd = _fresh(temporary)
    with os.fdopen(fd, "wb") as handle:
        handle.write(b"".join(bytes(packet) for packet in packets))
    os.replace(temporary, path)


_local = threading.local()


def _reformatter() -> VideoReformatter:
    """This thread's reformatter: it keeps its scaling context from one poster to the next (half their cost)."""
    reformatter: VideoReformatter | None = getattr(_local, "reformatter", None)
    if reformatter is None:
        reformatter = _local.reformatter = VideoReformatter()
    return reformatter


def place_videos(parts: Sequence[PartFile], posters: Path | None) -> list[dict[str, Any] | ProtocolError]:
    """Check, make durable and place received videos (closed ``PartFile``s of one directory), with one probe each
    (and a poster in ``posters`` when given); blocking: run it in a thread.

    Per part, its probe, or the ``ProtocolError`` that says it is no video (that ``.part`` is gone). Group commit:
    the bytes of every good part are made durable together, then each is renamed, then the renames are made durable
    together. An ``OutputError`` (the disk) leaves no ``.part`` of the batch behind and no ``.mp4`` unsynced.
    """
    results: list[dict[str, Any] | ProtocolError] = []
    good: list[tuple[int, PartFile]] = []
    try:
        for index, part in enumerate(parts):
            try:
                part.check_identity()
                probe = probe_video(part.part, None if posters is None else posters / f"{part.final.stem}.jpg")
            except ProtocolError as exc:
                part.discard()
                results.append(exc)
                continue
            results.append(probe)
            good.append((index, part))
        if good:
            _make_durable([part.part for _, part in good])
            for index, part in good:
                try:
                    part.check_identity()  # still the file checked: a link put there now would be placed
                except ProtocolError as exc:
                    part.discard()
                    results[index] = exc
                    continue
                os.replace(part.part, part.final)
            _fsync_dir(good[0][1].final.parent)
    except OSError as exc:
        for _, part in good:
            part.discard()
        raise _output_error(exc, parts[0].final.parent) from None
    return results


def hash_file(path: Path) -> tuple[str, int]:
    """The sha256 and size of a file already in place."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _make_durable(paths: Sequence[Path]) -> None:
    """fsync one file; ``syncfs`` their file system for several (one journal commit instead of one each)."""
    if len(paths) > 1 and _syncfs is not None:
        fd = os.open(paths[0], os.O_RDONLY)
        try:
            if _syncfs(fd) != 0:
                error = ctypes.get_errno()
                raise OSError(error, os.strerror(error))
        finally:
            os.close(fd)
        return
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _find_syncfs() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs  # Linux ≥ 2.6.39 (glibc 2.14)
    except (OSError, AttributeError):
        return None  # elsewhere each file is fsynced on its own


_syncfs = _find_syncfs()


def compare(probe: dict[str, Any], spec: ClipSpec) -> list[str]:
    """Warnings where the video differs from what was asked (kept, not refused: the clip is paid)."""
    warnings = []
    if abs(probe["duration_s"] - spec.seconds) > DURATION_TOLERANCE_S:
        warnings.append(f"duration mismatch: asked {spec.seconds} s, got {probe['duration_s']} s")
    wanted = _ratio(spec.aspect_ratio)
    got = probe["width"] / probe["height"] if probe["height"] else 0
    if wanted is not None and abs(got - wanted) > ASPECT_TOLERANCE * wanted:
        warnings.append(f"aspect mismatch: asked {spec.aspect_ratio}, got {probe['width']}x{probe['height']}")
    if probe["audio"] != spec.audio:
        warnings.append(f"audio mismatch: asked {'audio' if spec.audio else 'silence'}, got the other")
    return warnings


def _ratio(aspect_ratio: str) -> float | None:
    """``"16:9"`` → 1.777…; ``None`` when the request did not say (the clip takes its image's ratio)."""
    try:
        width, height = (float(part) for part in aspect_ratio.split(":"))
        return width / height
    except (ValueError, ZeroDivisionError):
        return None


def write_json(path: Path, data: Any, *, durable: bool = True) -> None:
    """Write JSON atomically (see ``write_text``). Per-job logs skip the fsync: they are a view of the state file,
    rewritten on resume if a stop left them behind."""
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False), durable=durable)


def write_text(path: Path, text: str, *, durable: bool = True) -> None:
    """Write a private file atomically: a temporary file renamed over ``path`` (fsynced first when ``durable``).

    A reader sees the old file or the new one, never a torn one.
    """
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        fd = _fresh(temporary)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise _output_error(exc, path) from None


def job_log(job: JobRow, attempts: list[AttemptRow]) -> dict[str, Any]:
    """The content of ``logs/<job>.json``: the job, its payload, every attempt, the outcome."""
    return {
        "job": job.id,
        "shot": job.shot_id,
        "take": job.take,
        "variables": dict(job.variables),
        "model": job.model,
        "payload": job.payload,
        "state": job.state,
        "reason": job.reason,
        "request_id": job.request_id,
        "possibly_billed_twice": job.possibly_billed_twice,
        "estimate_usd": job.estimate_micros / 1_000_000,
        "attempts": [
            {
                "number": a.number,
                "transport": a.transport,
                "started_at": _iso(a.started_at),
                "ended_at": _iso(a.ended_at),
                "request_id": a.request_id,
                "http_status": a.http_status,
                "message": a.message,
                "outcome": a.outcome,
                "backoff_s": a.backoff_s,
                "money": a.money,
                "cost_usd": a.settled_micros / 1_000_000,
            }
            for a in attempts
        ],
        "video": job.video_path,
        "sha256": job.sha256,
        "probe": job.probe,
        "warnings": job.warnings,
    }


class RunLog:
    """``run.log``: one line per state change, appended."""

    def __init__(self, path: Path) -> None:
        self._file = open(_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "a", encoding="utf-8")  # noqa: SIM115

    def line(self, job_id: str, text: str) -> None:
        """Append ``<UTC time> <job> <text>``."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._file.write(f"{stamp} {job_id} {text}\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        self._file.close()


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _refuse_link(path: Path) -> None:
    if path.is_symlink():
        raise OutputError(
            f"{path} is a symbolic link: batchgen writes only into real directories of the run; replace it with a "
            "directory (move what it points to into it, if you want to keep that)"
        )


def _private(path: Path, flags: int) -> int:
    """Open a file of the run without following a symbolic link planted at ``path`` (its target would be written)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OutputError(
                f"{path} is a symbolic link: batchgen does not write through links in a run directory; remove it"
            ) from None
        raise _output_error(exc, path) from None


def _fresh(path: Path) -> int:
    """A new private file at ``path`` for writing (a temporary one, a ``.part``): whatever was there, a planted link
    included, is removed first, and the file is created, not opened (``O_EXCL``): nothing outside is ever written."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return _private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _output_error(exc: OSError, path: Path) -> OutputError:
    if exc.errno == errno.ENOSPC:
        return OutputError(f"the disk is full while writing {path}: free some space, then run again to resume")
    return OutputError(f"cannot write {path}: {exc.strerror}")
