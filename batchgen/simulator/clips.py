"""Real, small MP4 clips made with PyAV: H.264 video of the requested duration and aspect, AAC audio when asked.

The picture is a slow colour ramp whose palette comes from the prompt, so clips of different prompts differ; an
image-to-video clip shows its first-frame image instead (scaled to the clip's size), its light breathing slowly, so
a gallery shows the user's still come to life. Clips are cached by (seconds, aspect, audio, palette, image): a batch
of thousands of jobs encodes a few dozen clips at most.
A large clip (for memory benchmarks) is the same small clip followed by an MP4 ``free`` box of padding, streamed
from zeros, so it is still a valid MP4 and costs no encoding.
"""

from __future__ import annotations

import hashlib
import io
import math
import random
from collections.abc import Iterator
from fractions import Fraction
from functools import lru_cache

import av

from batchgen.images import picture_size

FPS = 4
AUDIO_RATE = 8000
SIZES = {"16:9": (320, 180), "9:16": (180, 320), "1:1": (240, 240)}
PALETTES = 16
FREE_BOX_HEADER = 16  # a 64-bit "free" box: size 1, type, then the 8-byte large size


RESOLUTIONS = {"720p": 720, "1080p": 1080}  # the short side of a realistic clip (``--resolution``)


def size_of(aspect_ratio: str, resolution: str = "") -> tuple[int, int]:
    """The clip's size for an aspect ratio ``W:H``: small by default (the three of ``SIZES``, else the longest side
    320), or at a real ``resolution`` (720p, 1080p: the short side 720 or 1080); even sides, as H.264 wants them. A
    ratio that is no ratio gets 16:9's."""
    if not resolution and aspect_ratio in SIZES:
        return SIZES[aspect_ratio]
    try:
        width, height = (float(part) for part in aspect_ratio.split(":"))
        scale = RESOLUTIONS[resolution] / min(width, height) if resolution else 320 / max(width, height)
        return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)
    except (ValueError, ZeroDivisionError):
        return size_of("16:9", resolution)


def palette_of(prompt: str) -> int:
    """Which of the palettes a prompt draws with."""
    return hashlib.sha256(prompt.encode("utf-8")).digest()[0] % PALETTES


def make_clip(
    seconds: int,
    aspect_ratio: str,
    audio: bool,
    palette: int = 0,
    image: bytes | None = None,
    resolution: str = "",
) -> bytes:
    """An MP4 of exactly ``seconds`` seconds at the size of ``aspect_ratio`` (and ``resolution``: see ``size_of``),
    with silent AAC audio when ``audio``; starting on ``image`` (a PNG, JPEG or WebP file's bytes) when one is given
    and can be decoded. At a real resolution the picture is a textured landscape drifting sideways, so that its
    stills weigh what a real clip's do (a flat card would make every thumbnail a few hundred bytes)."""
    if not aspect_ratio and image:  # the clip takes its image's ratio
        picture = picture_size(image)
        aspect_ratio = f"{picture[0]}:{picture[1]}" if picture else ""
    width, height = size_of(aspect_ratio, resolution)
    if resolution and image is None:
        return _textured_clip(seconds, width, height, audio, palette % REAL_PALETTES)
    return _clip(seconds, width, height, audio, palette, image)


@lru_cache(maxsize=512)
def _clip(seconds: int, width: int, height: int, audio: bool, palette: int, image: bytes | None) -> bytes:
    still = _still(image, width, height) if image else None
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "ultrafast", "crf": "28" if still else "40"}
        sound = container.add_stream("aac", rate=AUDIO_RATE) if audio else None
        _encode_video(container, video, seconds, palette, still)
        if sound is not None:
            _encode_audio(container, sound, seconds)
    return buffer.getvalue()


def _still(image: bytes, width: int, height: int) -> list[bytes] | None:
    """The image's YUV planes at the clip's size, ``None`` when it cannot be decoded (a colour ramp then)."""
    try:
        with av.open(io.BytesIO(image), "r") as source:
            frame = next(source.decode(video=0))
    except (av.FFmpegError, StopIteration):
        return None
    scaled = frame.reformat(width=width, height=height, format="yuv420p")
    return [bytes(plane) for plane in scaled.planes]


def _encode_video(
    container: av.container.OutputContainer,
    stream: av.VideoStream,
    seconds: int,
    palette: int,
    still: list[bytes] | None,
) -> None:
    base = palette * 256 // PALETTES
    for index in range(seconds * FPS):
        frame = av.VideoFrame(stream.width, stream.height, "yuv420p")
        if still is not None and all(len(data) == p.buffer_size for data, p in zip(still, frame.planes, strict=True)):
            # The first second is the image as it is; then its light rises and falls a little.
            lift = 0 if index < FPS else round(12 * _triangle(index - FPS, 4 * FPS))
            frame.planes[0].update(still[0].translate(_LIFT[lift]))
            frame.planes[1].update(still[1])
            frame.planes[2].update(still[2])
        else:
            luma = (base + index * 6) % 220 + 16
            for plane, value in zip(frame.planes, (luma, (base * 3) % 256, (255 - base) % 256), strict=True):
                plane.update(bytes([value]) * plane.buffer_size)
        frame.pts = index
        frame.time_base = Fraction(1, FPS)
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


@lru_cache(maxsize=24)  # real-size clips weigh up to a few MB: few are kept
def _textured_clip(seconds: int, width: int, height: int, audio: bool, palette: int) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "ultrafast", "crf": "30"}
        sound = container.add_stream("aac", rate=AUDIO_RATE) if audio else None
        luma, blue, red = _texture(width, height, palette)
        for index in range(seconds * FPS):
            frame = av.VideoFrame(width, height, "yuv420p")
            shift = index * DRIFT_PX
            frame.planes[0].update(_window(luma, width, shift, frame.planes[0]))
            frame.planes[1].update(_window(blue, width // 2, shift // 2, frame.planes[1]))
            frame.planes[2].update(_window(red, width // 2, shift // 2, frame.planes[2]))
            frame.pts = index
            frame.time_base = Fraction(1, FPS)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            _encode_audio(container, sound, seconds)
    return buffer.getvalue()


DRIFT_PX = 8  # how far the textured picture moves sideways each frame
REAL_PALETTES = 4  # real-size clips come in fewer looks: each costs a second to draw and megabytes to keep


def _window(plane: list[bytes], width: int, shift: int, target: av.video.plane.VideoPlane) -> bytes:
    """Rows ``shift .. shift + width`` of a wider texture, each padded to the target plane's line size."""
    pad = bytes(target.line_size - width)
    return b"".join(row[shift : shift + width] + pad for row in plane[: target.height])


@lru_cache(maxsize=4)
def _texture(width: int, height: int, palette: int) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """A landscape-like picture wider than the frame (sky gradient, rolling hills, a fine grain): its Y, U and V
    rows. Built once per size and palette (a second or two at 1080p), then every frame is a window of it."""
    drift = DRIFT_PX * 15 * FPS  # room for the longest clip
    full = width + drift
    grain = random.Random(palette).randbytes(full + height)
    base = palette * 256 // PALETTES
    horizon = [int(height * (0.55 + 0.08 * math.sin(x / 97 + palette) + 0.04 * math.sin(x / 23))) for x in range(full)]
    luma = []
    for y in range(height):
        sky = 200 - 120 * y // height
        row = bytearray(full)
        for x in range(full):
            value = (sky if y < horizon[x] else 40 + (x * 7 + y * 3) % 60) + (grain[x + y] & 15)
            row[x] = min(235, max(16, value + (base & 31)))
        luma.append(bytes(row))
    half = full // 2
    blue = [bytes((base + 40 + y // 8) % 256 for _ in range(half)) for y in range(height // 2)]
    red = [bytes((255 - base + x // 16) % 256 for x in range(half)) for _ in range(height // 2)]
    return luma, blue, red


def _triangle(step: int, period: int) -> float:
    """0 → 1 → 0 over ``period`` steps."""
    phase = (step % period) / period
    return 1 - abs(2 * phase - 1)


# Byte tables adding 0..12 to a luma value, clamped to the video range (16-235).
_LIFT = [bytes(min(235, value + lift) if value >= 16 else value for value in range(256)) for lift in range(13)]


def _encode_audio(container: av.container.OutputContainer, stream: av.AudioStream, seconds: int) -> None:
    total = seconds * AUDIO_RATE
    sent = 0
    while sent < total:
        samples = min(1024, total - sent)
        frame = av.AudioFrame(format="fltp", layout="mono", samples=samples)
        frame.planes[0].update(bytes(frame.planes[0].buffer_size))
        frame.sample_rate = AUDIO_RATE
        frame.pts = sent
        sent += samples
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def padded_size(clip: bytes, size_bytes: int) -> int:
    """The size of ``clip`` padded to at least ``size_bytes`` (unchanged when it is already as large)."""
    if size_bytes <= len(clip) + FREE_BOX_HEADER:
        return len(clip)
    return size_bytes


def padded_chunks(clip: bytes, size_bytes: int, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """``clip`` then a ``free`` box of zeros up to ``padded_size(clip, size_bytes)`` bytes, in chunks."""
    yield clip
    total = padded_size(clip, size_bytes)
    padding = total - len(clip)
    if padding == 0:
        return
    yield (1).to_bytes(4, "big") + b"free" + padding.to_bytes(8, "big")
    left = padding - FREE_BOX_HEADER
    zeros = bytes(min(chunk_size, left))
    while left > 0:
        yield zeros[: min(chunk_size, left)]
        left -= min(chunk_size, left)
