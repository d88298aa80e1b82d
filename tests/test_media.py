"""Media readers: every PIL mode to RGB, and frame sampling robust to VFR, short clips, broken tails."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from media_factory import truncate, write_image, write_mp4
from qualitune.media import FileIndex, MediaError, load_image, load_media, media_kind, sample_frames


def _flat_clip(path, times: list[float], size=(64, 48)):
    """A clip whose frame i is a flat grey of value 10 + 20·i, shown at times[i] seconds (any spacing)."""
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("mpeg4", rate=1000)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, 1000)
        stream.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(
                np.full((size[1], size[0], 3), 10 + 20 * i, np.uint8), format="rgb24"
            )
            frame.pts = int(round(t * 1000))
            frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _index(img: Image.Image) -> int:
    return int(round((np.asarray(img, dtype=float).mean() - 10) / 20))


def test_variable_frame_rate_is_sampled_by_time(tmp_path):
    # 8 frames crowded into the first 0.35 s, then 2 frames spread over the next 3.6 s
    times = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 2.0, 3.6]
    clip = _flat_clip(tmp_path / "vfr.mp4", times)
    frames = sample_frames(clip, 2)
    # centre-of-segment times ~1.0 s and ~3.0 s: by time the frames are #8 (2.0 s) and #9 (3.6 s);
    # sampling by index would have picked #2 and #7
    assert [_index(f) for f in frames] == [8, 9]


def test_very_short_clip_repeats_frames(tmp_path):
    clip = write_mp4(tmp_path / "one.mp4", n_frames=1)
    frames = sample_frames(clip, 4)
    assert len(frames) == 4 and all(f.size == (64, 48) for f in frames)


@pytest.mark.parametrize("name", ["long.mp4", "long.mkv"])
def test_unreadable_tail_keeps_the_decodable_part(tmp_path, name):
    clip = write_mp4(tmp_path / name, n_frames=40, size=(96, 64), faststart=True)
    truncate(clip, 0.9)  # the container still claims 5 s; the last ~half of the frames are gone
    frames = sample_frames(clip, 3)
    assert len(frames) == 3
    assert len({np.asarray(f).tobytes() for f in frames}) == 3  # resampled over the decodable span


def test_mp4_without_its_index_is_a_clear_error(tmp_path):
    clip = truncate(write_mp4(tmp_path / "noindex.mp4", n_frames=20), 0.6)  # moov atom was at the end
    with pytest.raises(MediaError, match="cannot open video"):
        sample_frames(clip, 2)


def test_undecodable_video_raises(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(100))
    with pytest.raises(MediaError, match="bad.mp4"):
        sample_frames(bad, 2)
    with pytest.raises(MediaError, match="file not found"):
        sample_frames(tmp_path / "none.mp4", 2)


@pytest.mark.parametrize(
    "mode,make",
    [
        ("L", lambda: Image.new("L", (8, 6), 128)),
        ("RGBA", lambda: Image.new("RGBA", (8, 6), (255, 0, 0, 0))),
        ("I;16", lambda: Image.fromarray(np.full((6, 8), 65535, np.uint16))),
        ("CMYK", lambda: Image.new("CMYK", (8, 6), (0, 255, 255, 0))),
        ("P", lambda: Image.new("P", (8, 6), 3)),
    ],
)
def test_every_mode_becomes_rgb(tmp_path, mode, make):
    img = make()
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    img.save(path)
    rgb = load_image(path)
    assert rgb.mode == "RGB" and rgb.size == (8, 6)
    px = np.asarray(rgb)
    if mode == "RGBA":  # fully transparent red on white: white
        assert px.min() == 255
    if mode == "I;16":  # 16-bit full scale stays white, not clipped garbage
        assert px.min() == 255


def test_truncated_and_empty_images_raise(tmp_path):
    p = truncate(write_image(tmp_path / "t.jpg", size=(128, 128)), 0.5)
    with pytest.raises(MediaError, match="cannot decode"):
        load_image(p)
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(MediaError, match="empty"):
        load_image(tmp_path / "e.png")


def test_media_kind_and_load_media(tmp_path):
    assert media_kind("a/B.JPG") == "image" and media_kind("c.MP4") == "video"
    with pytest.raises(MediaError, match="unsupported extension"):
        media_kind("x.txt")
    assert len(load_media(write_mp4(tmp_path / "c.mp4"), n_frames=3)) == 3


def test_file_index_tolerates_case_and_missing_extension(tmp_path):
    write_image(tmp_path / "Photo (1).JPG")
    write_mp4(tmp_path / "clip.mp4")
    idx = FileIndex(tmp_path)
    assert idx.find("photo (1).jpg").name == "Photo (1).JPG"
    assert idx.find("clip").name == "clip.mp4"
    assert idx.find("nope.jpg") is None
