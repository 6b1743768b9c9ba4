"""Placing received videos: checked, made durable together, renamed; a non-video never becomes an ``.mp4``."""

from __future__ import annotations

import io
from pathlib import Path

import av

from batchgen.errors import ProtocolError
from batchgen.outputs import PartFile, hash_file, place_videos
from batchgen.simulator.clips import make_clip


def _received(videos: Path, name: str, body: bytes) -> PartFile:
    part = PartFile(videos / f"{name}.mp4")
    part.write(body)
    part.close()
    return part


def test_a_batch_is_placed_together_and_a_non_video_is_refused(tmp_path: Path) -> None:
    videos, posters = tmp_path / "videos", tmp_path / "posters"
    videos.mkdir()
    posters.mkdir()
    clip = make_clip(3, "16:9", False)
    parts = [
        _received(videos, "a", clip),
        _received(videos, "junk", b"<html>not a video</html>"),
        _received(videos, "b", make_clip(5, "1:1", True)),
    ]
    results = place_videos(parts, posters)
    assert isinstance(results[1], ProtocolError)
    assert results[0] == {"duration_s": 3.0, "width": 320, "height": 180, "codec": "h264", "audio": False}
    assert results[2] == {"duration_s": 5.0, "width": 240, "height": 240, "codec": "h264", "audio": True}
    assert sorted(path.name for path in videos.iterdir()) == ["a.mp4", "b.mp4"]  # no .part, no junk
    assert hash_file(videos / "a.mp4") == (parts[0].sha256, len(clip))
    assert sorted(path.name for path in posters.iterdir()) == ["a.jpg", "b.jpg"]
    assert (posters / "a.jpg").read_bytes()[:2] == b"\xff\xd8"  # a JPEG


def test_a_batch_of_one_and_no_posters(tmp_path: Path) -> None:
    part = _received(tmp_path, "only", make_clip(3, "9:16", False))
    [probe] = place_videos([part], None)
    assert isinstance(probe, dict) and (probe["width"], probe["height"]) == (180, 320)
    assert [path.name for path in tmp_path.iterdir()] == ["only.mp4"]


def test_a_real_video_in_another_container_is_not_the_mp4_asked_for(tmp_path: Path) -> None:
    """The provider answers video/mp4; a Matroska file with the same H.264 frames is refused, not placed."""
    source = tmp_path / "source.mp4"
    source.write_bytes(make_clip(3, "16:9", False))
    matroska = io.BytesIO()
    with av.open(str(source)) as original, av.open(matroska, "w", format="matroska") as remuxed:
        stream = remuxed.add_stream_from_template(original.streams.video[0])
        for packet in original.demux(original.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                remuxed.mux(packet)
    part = _received(tmp_path, "mkv", matroska.getvalue())
    [result] = place_videos([part], None)
    assert isinstance(result, ProtocolError) and "not a playable MP4 video" in str(result)
    assert list(tmp_path.glob("mkv*")) == []


def test_a_real_size_clip_gets_a_thumbnail_poster(tmp_path: Path) -> None:
    from batchgen.outputs import POSTER_WIDTH, make_poster
    from batchgen.simulator.clips import make_clip

    video = tmp_path / "clip.mp4"
    video.write_bytes(make_clip(5, "16:9", True, 3, None, "1080p"))
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height, stream.codec_context.name) == (
            1920,
            1080,
            "h264",
        )
        assert float(stream.duration * stream.time_base) == 5.0 and container.streams.audio
    poster = tmp_path / "poster.jpg"
    make_poster(video, poster)
    with av.open(str(poster)) as still:
        frame = next(still.decode(video=0))
    assert (frame.width, frame.height) == (POSTER_WIDTH, 270)
    assert 2_000 < poster.stat().st_size <= 40_000  # a thumbnail, not a 1080p still


def test_a_clip_that_fades_in_from_black_gets_a_poster_that_shows_something(tmp_path: Path) -> None:
    from fractions import Fraction

    from batchgen.outputs import _dark, make_poster

    video = tmp_path / "fade.mp4"
    with av.open(str(video), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        stream.options = {"g": "1000", "keyint_min": "1000", "sc_threshold": "0", "preset": "ultrafast"}
        for index in range(32):  # 4 s: black for the first 1.5 s, then light; one keyframe, the first
            frame = av.VideoFrame(320, 180, "yuv420p")
            for plane, value in zip(frame.planes, (16 if index < 12 else 160, 128, 128), strict=True):
                plane.update(bytes([value]) * plane.buffer_size)
            frame.pts, frame.time_base = index, Fraction(1, 8)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    poster = tmp_path / "poster.jpg"
    make_poster(video, poster)
    with av.open(str(poster)) as still:
        frame = next(still.decode(video=0))
    assert not _dark(frame)
