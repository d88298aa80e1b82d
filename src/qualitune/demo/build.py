"""`build_demo`: the demo dataset's configuration (params section `demo`), the build and its labels."""

from __future__ import annotations

import importlib.resources
import logging
import os
import shutil
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qualitune.demo import distortions as dist
from qualitune.demo.photos import _image_task, crop_levels, reference_crops
from qualitune.demo.videos import VIDEO_KINDS, _plan_windows, _video_task
from qualitune.errors import QualituneError
from qualitune.manifest import SPLITS
from qualitune.splits import grouped_quota_split

log = logging.getLogger(__name__)


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
            raise QualituneError(f"demo.distortions: unknown {bad}; choose from {list(dist.KINDS)}")
        bad = [d for d in self.video_distortions if d not in VIDEO_KINDS]
        if bad:
            raise QualituneError(f"demo.video_distortions: unknown {bad}; choose from {list(VIDEO_KINDS)}")
        if not self.levels or any(v not in dist.LEVELS for v in self.levels):
            raise QualituneError(
                f"demo.levels must be a non-empty subset of {list(dist.LEVELS)}, got {list(self.levels)}"
            )
        if not 16 <= self.crop_size <= 300:
            raise QualituneError(
                f"demo.crop_size must be in [16, 300] (300 = the smallest packaged photo side), got {self.crop_size}"
            )
        if not 0 <= self.levels_per_crop <= len(self.levels):
            raise QualituneError(
                f"demo.levels_per_crop must be in [0, {len(self.levels)}] (0 = every level), "
                f"got {self.levels_per_crop}"
            )
        if self.crops_per_image < 1:
            raise QualituneError(f"demo.crops_per_image must be >= 1, got {self.crops_per_image}")
        if self.n_video_clips < 0 or self.video_variants < 0:
            raise QualituneError("demo.n_video_clips and demo.video_variants must be >= 0")
        if self.n_video_clips and self.video_variants and not self.video_distortions:
            raise QualituneError("demo.video_distortions is empty but demo.video_variants > 0")
        if self.video_frames < 2:
            raise QualituneError(f"demo.video_frames must be >= 2, got {self.video_frames}")
        if not 32 <= self.video_width <= 640:
            raise QualituneError(f"demo.video_width must be in [32, 640], got {self.video_width}")
        unknown = set(self.split_ratios) - set(SPLITS)
        if unknown:
            raise QualituneError(f"demo.split_ratios: unknown splits {sorted(unknown)}; use {list(SPLITS)}")

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> DemoConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(section) - known
        if unknown:
            raise QualituneError(
                f"params section 'demo' has unknown keys {sorted(unknown)}; known: {sorted(known)}"
            )
        return cls(**dict(section))


OUT_ENTRIES = frozenset({"images", "videos", "labels.csv", "PROVENANCE.md"})
LABEL_COLUMNS = ("name", "mos", "mos_std", "split", "media", "distortion", "level", "reference", "kadid_type")


def _clean(out: Path) -> None:
    """Remove a previous build. Refuses a folder holding anything else: it may not be ours to delete."""
    if out.exists():
        if not out.is_dir():
            raise QualituneError(f"demo out_dir {out} exists and is not a folder")
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OUT_ENTRIES)
        if foreign:
            raise QualituneError(
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
