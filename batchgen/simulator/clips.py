"""Real, small MP4 clips made with PyAV: H.264 video of the requested duration and aspect, AAC audio when asked.

The picture is a slow colour ramp whose palette comes from the prompt, so clips of different prompts differ. Clips
are cached by (seconds, aspect, audio, palette): a batch of thousands of jobs encodes a few dozen clips at most.
A large clip (for memory benchmarks) is the same small clip followed by an MP4 ``free`` box of padding, streamed
from zeros, so it is still a valid MP4 and costs no encoding.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from fractions import Fraction
from functools import lru_cache

import av

FPS = 4
AUDIO_RATE = 8000
SIZES = {"16:9": (320, 180), "9:16": (180, 320), "1:1": (240, 240)}
PALETTES = 16
FREE_BOX_HEADER = 16  # a 64-bit "free" box: size 1, type, then the 8-byte large size


def size_of(aspect_ratio: str) -> tuple[int, int]:
    """The clip's size for an aspect ratio ``W:H``: the three of ``SIZES``, else the longest side 320 (even sides,
    as H.264 wants them); a ratio that is no ratio gets 16:9's."""
    if aspect_ratio in SIZES:
        return SIZES[aspect_ratio]
    try:
        width, height = (float(part) for part in aspect_ratio.split(":"))
        scale = 320 / max(width, height)
        return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)
    except (ValueError, ZeroDivisionError):
        return SIZES["16:9"]


def palette_of(prompt: str) -> int:
    """Which of the palettes a prompt draws with."""
    return hashlib.sha256(prompt.encode("utf-8")).digest()[0] % PALETTES


@lru_cache(maxsize=512)
def make_clip(seconds: int, aspect_ratio: str, audio: bool, palette: int = 0) -> bytes:
    """An MP4 of exactly ``seconds`` seconds at the size of ``aspect_ratio``, with silent AAC audio when ``audio``."""
    width, height = size_of(aspect_ratio)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "ultrafast", "crf": "40"}
        sound = container.add_stream("aac", rate=AUDIO_RATE) if audio else None
        _encode_video(container, video, seconds, palette)
        if sound is not None:
            _encode_audio(container, sound, seconds)
    return buffer.getvalue()


def _encode_video(container: av.container.OutputContainer, stream: av.VideoStream, seconds: int, palette: int) -> None:
    base = palette * 256 // PALETTES
    for index in range(seconds * FPS):
        frame = av.VideoFrame(stream.width, stream.height, "yuv420p")
        luma = (base + index * 6) % 220 + 16
        for plane, value in zip(frame.planes, (luma, (base * 3) % 256, (255 - base) % 256), strict=True):
            plane.update(bytes([value]) * plane.buffer_size)
        frame.pts = index
        frame.time_base = Fraction(1, FPS)
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


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
