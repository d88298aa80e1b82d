"""The generic `csv` format: any table of (name, MOS[, std, split, media]) with its media beside it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from qualitune.ingest import core

logger = logging.getLogger(__name__)


def read_csv_labels(
    root: Path,
    *,
    labels: str = "labels.csv",
    name_col: str = "name",
    mos_col: str = "mos",
    std_col: str | None = None,
    split_col: str | None = None,
    scale: Any = None,
    higher_is_better: Any = True,
    media_col: str | None = None,
) -> core.Adapted:
    """Any table of (name, MOS[, std, split, media]); media under images/ or the root, mixed kinds allowed."""
    lo, hi = core._as_scale(scale)
    path = Path(labels) if Path(labels).is_absolute() else root / labels
    df = core._read_table(path)
    name_c, mos_c = core._column(df, name_col, path), core._column(df, mos_col, path)
    std_c = core._column(df, std_col, path) if std_col else None
    if split_col:
        split_c = core._column(df, split_col, path)
    else:
        split_c = core._column(df, "split", path, required=False)
        if split_c:
            logger.info("csv: using column %r of %s as the split", split_c, path)
    media_c = (
        core._column(df, media_col, path) if media_col else core._column(df, "media", path, required=False)
    )
    split = core.normalize_split_values(df[split_c], f"{path} column {split_c!r}") if split_c else None
    media = None
    if media_c:
        media = [str(v).strip().lower() if not pd.isna(v) else "unknown" for v in df[media_c]]
    names = core._names(df[name_c])
    resolver = core._Resolver(core._existing_dirs(root / "images", root))
    paths, found = resolver.resolve_all(names)
    attrs, skipped = core._attributes(df, [name_c, mos_c, std_c, split_c, media_c])
    frame = core._frame(
        names,
        paths,
        found,
        df[mos_c],
        std=df[std_c] if std_c else None,
        split=split,
        media=media,
        attributes=attrs,
    )
    return core.Adapted(
        frame,
        scale=(lo, hi),
        higher_is_better=core._as_bool(higher_is_better, "higher_is_better"),
        labels=[str(path)],
        dropped_columns=skipped,
        resolved_by_stem=resolver.by_stem,
    )
