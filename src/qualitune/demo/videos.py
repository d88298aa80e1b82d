"""The demo's clips: windows of the packaged videos, encoded deterministically, and their distortions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from qualitune.demo import distortions as dist
from qualitune.demo.kadid_table import PRISTINE, kadid_mos, load_kadid_table
from qualitune.demo.sources import VIDEOS, _rng, video_path
from qualitune.errors import QualituneError

# Video distortion -> KADID row its MOS comes from (spatial ones match; the rest are proxies).
VIDEO_KADID_PROXY: dict[str, str] = {
    "h264": "jpeg",
    "gaussian_blur": "gaussian_blur",
    "white_noise": "white_noise",
    "frame_drop": "jitter",
    "stutter": "jitter",
}
VIDEO_KINDS = tuple(VIDEO_KADID_PROXY)
CRF_LADDER = (28, 33, 38, 45, 51)  # libx264 CRF for h264 levels 1..5
CRF_CLEAN = 17  # every other clip: visually lossless, so its distortion is the only visible one
MPEG4_BITS_PER_PIXEL = (0.8, 0.4, 0.2, 0.1, 0.05)  # fallback encoder when PyAV lacks libx264
VIDEO_STRIDE = 2  # keep every 2nd source frame: more motion per clip, half the frame rate


def _encoder() -> str:
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_clip(
    frames: Sequence[np.ndarray], path: str | Path, fps: Fraction, crf: int = CRF_CLEAN, level: int = 0
) -> Path:
    """Encode RGB frames as an MP4 (libx264, yuv420p; mpeg4 if PyAV lacks libx264), deterministically.

    `crf` sets libx264's quality; with the mpeg4 fallback `level` (0 = clean) picks a bit rate.
    """
    import av

    if not frames:
        raise QualituneError(f"{path}: no frames to write")
    h, w = frames[0].shape[:2]
    if h % 2 or w % 2:
        raise QualituneError(f"{path}: yuv420p needs even dimensions, got {w}x{h}")
    codec = _encoder()
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.thread_count = 1  # one thread: identical bytes on every run
        if codec == "libx264":
            # asm=0: x264's SIMD paths gave different bytes from one process to the next (measured
            # with PyAV 18); plain C is bit-exact everywhere and costs ~0.06 s more per clip.
            stream.options = {"crf": str(crf), "preset": "medium", "x264-params": "asm=0"}
        else:
            bpp = 2.0 if level == 0 else MPEG4_BITS_PER_PIXEL[level - 1]
            stream.bit_rate = int(bpp * w * h * float(fps))
        for i, arr in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            frame.pts = i  # explicit timestamps: constant frame rate, nothing left to the muxer
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)


def _decode_windows(
    path: Path, n_windows: int, n_frames: int, width: int
) -> tuple[list[list[np.ndarray]], Fraction]:
    """`n_windows` non-overlapping windows of `n_frames` frames (every VIDEO_STRIDE-th), evenly spread."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = Fraction(stream.average_rate) if stream.average_rate else Fraction(25)
        src = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    span = n_frames * VIDEO_STRIDE
    if len(src) < span * n_windows:
        raise QualituneError(f"{path.name}: {len(src)} frames cannot hold {n_windows} windows of {span}")
    h, w = src[0].shape[:2]
    out_w = width - width % 2
    out_h = max(2, round(h * out_w / w / 2) * 2)
    gap = (len(src) - span * n_windows) // max(1, n_windows)
    windows = []
    for k in range(n_windows):
        start = gap // 2 + k * (span + gap)
        picked = src[start : start + span : VIDEO_STRIDE]
        windows.append([cv2.resize(f, (out_w, out_h), interpolation=cv2.INTER_AREA) for f in picked])
    return windows, rate / VIDEO_STRIDE


def _video_task(source: str, k: int, n_windows: int, variants: int, cfg: dict, vid_dir: str) -> list[dict]:
    """Write the pristine clip of window `k` of one source video and `variants` distorted versions."""
    table = load_kadid_table()
    out_dir = Path(vid_dir)
    stem = Path(source).stem
    windows, fps = _decode_windows(video_path(source), n_windows, cfg["video_frames"], cfg["video_width"])
    kinds, levels = cfg["video_distortions"], cfg["levels"]
    ref = f"{stem}_w{k}"
    frames = windows[k]
    write_clip(frames, out_dir / f"{ref}.mp4", fps)
    mos, std = kadid_mos(table, PRISTINE, 0)
    rows = [
        dict(
            name=f"videos/{ref}.mp4",
            mos=mos,
            mos_std=std,
            media="video",
            distortion=PRISTINE,
            level=0,
            reference=ref,
            kadid_type=PRISTINE,
        )
    ]
    pick = _rng(cfg["seed"], ref)
    offset = int(pick.integers(len(kinds))) if kinds else 0
    for j in range(variants):  # consecutive kinds from a random offset: every kind gets used
        kind = kinds[(offset + j) % len(kinds)]
        level = int(levels[int(pick.integers(len(levels)))])
        name = f"{ref}_{kind}_{level}.mp4"
        rng = _rng(cfg["seed"], name)
        crf = CRF_CLEAN
        if kind == "h264":
            out, crf = frames, CRF_LADDER[level - 1]
        elif kind in dist.TEMPORAL_KINDS:
            out = dist.apply_temporal(frames, kind, level, rng)
        else:
            out = [dist.apply(f, kind, level, rng) for f in frames]
        write_clip(out, out_dir / name, fps, crf=crf, level=level if kind == "h264" else 0)
        mos, std = kadid_mos(table, VIDEO_KADID_PROXY[kind], level)
        rows.append(
            dict(
                name=f"videos/{name}",
                mos=mos,
                mos_std=std,
                media="video",
                distortion=kind,
                level=level,
                reference=ref,
                kadid_type=VIDEO_KADID_PROXY[kind],
            )
        )
    return rows


def _plan_windows(n_clips: int, variants: int) -> list[tuple[str, int, int, int]]:
    """(source, window index, windows in that source, distorted variants) for `n_clips` clips in all.

    Windows go round-robin over VIDEOS; each gives one pristine clip and `variants` distorted ones,
    except that the last windows give fewer so the total is exactly `n_clips`.
    """
    per = 1 + variants
    n_windows = math.ceil(n_clips / per) if n_clips else 0
    sources = [VIDEOS[i % len(VIDEOS)] for i in range(n_windows)]
    counts = {v: sources.count(v) for v in VIDEOS}
    excess = n_windows * per - n_clips
    plan = []
    seen: dict[str, int] = {}
    for i, source in enumerate(sources):
        k = seen.get(source, 0)
        seen[source] = k + 1
        cut = min(variants, max(0, excess - (n_windows - 1 - i) * variants))
        plan.append((source, k, counts[source], variants - cut))
    return plan
