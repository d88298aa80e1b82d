"""VQualA 2025 / TaobaoVD-GC: one CSV with five MOS columns (mos = Overall_MOS), videos in videos/."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from qualitune.errors import QualituneError
from qualitune.ingest import core

logger = logging.getLogger(__name__)


VQUALA_MOS_COLUMNS = ("Traditional_MOS", "Alignment_MOS", "Aesthetic_MOS", "Temporal_MOS", "Overall_MOS")


def _find_vquala_labels(root: Path) -> Path:
    csvs = sorted(p for p in root.glob("*.csv") if p.is_file())
    matching = []
    for p in csvs:
        try:
            head = core._clean_columns(pd.read_csv(p, nrows=0, encoding="utf-8-sig"))
        except Exception:
            continue
        if {"video_name", "overall_mos"} <= {c.lower() for c in head.columns}:
            matching.append(p)
    if len(matching) == 1:
        return matching[0]
    if not matching:
        raise QualituneError(
            f"{root}: no CSV with columns 'video_name' and 'Overall_MOS' (CSV files there: {[p.name for p in csvs]}); "
            "pass the labels file with --labels"
        )
    raise QualituneError(f"{root}: several label CSVs {[p.name for p in matching]}; choose one with --labels")


def read_vquala(
    root: Path, *, labels: str | None = None, scale: Any = (1.0, 5.0), split_col: str | None = None
) -> core.Adapted:
    """VQualA 2025 / TaobaoVD-GC: one CSV with five MOS columns; mos = Overall_MOS; videos in videos/.

    The challenge's label files score every dimension on a 1–5 scale (the default); pass `scale` if a
    release differs. A warning is logged when the observed MOS falls outside the scale.
    """
    lo, hi = core._as_scale(scale)
    path = (
        (root / labels if not Path(labels).is_absolute() else Path(labels))
        if labels
        else _find_vquala_labels(root)
    )
    df = core._read_table(path)
    name_c, mos_c = core._column(df, "video_name", path), core._column(df, "Overall_MOS", path)
    split_c = (
        core._column(df, split_col, path) if split_col else core._column(df, "split", path, required=False)
    )
    split = core.normalize_split_values(df[split_c], f"{path} column {split_c!r}") if split_c else None
    names = core._names(df[name_c])
    resolver = core._Resolver(core._existing_dirs(root / "videos", root), ".mp4")
    paths, found = resolver.resolve_all(names)
    mos = pd.to_numeric(df[mos_c], errors="coerce")
    if mos.notna().any() and (mos.min() < lo or mos.max() > hi):
        logger.warning(
            "vquala: Overall_MOS spans [%g, %g], outside the scale [%g, %g]; pass the right scale (e.g. --scale 0 100)",
            mos.min(),
            mos.max(),
            lo,
            hi,
        )
    attrs, skipped = core._attributes(df, [name_c, mos_c, split_c])
    frame = core._frame(names, paths, found, df[mos_c], split=split, media="video", attributes=attrs)
    return core.Adapted(
        frame, scale=(lo, hi), labels=[str(path)], dropped_columns=skipped, resolved_by_stem=resolver.by_stem
    )
