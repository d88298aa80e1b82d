"""The generic `csv` format: any table of (name, MOS[, std, split, media]) with its media beside it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from qualitune.ingest.core import (
    Adapted,
    _as_bool,
    _as_scale,
    _attributes,
    _column,
    _existing_dirs,
    _frame,
    _names,
    _read_table,
    _Resolver,
    normalize_split_values,
)

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
) -> Adapted:
    """Any table of (name, MOS[, std, split, media]); media under images/ or the root, mixed kinds allowed."""
    lo, hi = _as_scale(scale)
    path = Path(labels) if Path(labels).is_absolute() else root / labels
    df = _read_table(path)
    name_c, mos_c = _column(df, name_col, path), _column(df, mos_col, path)
    std_c = _column(df, std_col, path) if std_col else None
    if split_col:
        split_c = _column(df, split_col, path)
    else:
        split_c = _column(df, "split", path, required=False)
        if split_c:
            logger.info("csv: using column %r of %s as the split", split_c, path)
    media_c = _column(df, media_col, path) if media_col else _column(df, "media", path, required=False)
    split = normalize_split_values(df[split_c], f"{path} column {split_c!r}") if split_c else None
    media = None
    if media_c:
        media = [str(v).strip().lower() if not pd.isna(v) else "unknown" for v in df[media_c]]
    names = _names(df[name_c])
    resolver = _Resolver(_existing_dirs(root / "images", root))
    paths, found = resolver.resolve_all(names)
    attrs, skipped = _attributes(df, [name_c, mos_c, std_c, split_c, media_c])
    frame = _frame(
        names,
        paths,
        found,
        df[mos_c],
        std=df[std_c] if std_c else None,
        split=split,
        media=media,
        attributes=attrs,
    )
    return Adapted(
        frame,
        scale=(lo, hi),
        higher_is_better=_as_bool(higher_is_better, "higher_is_better"),
        labels=[str(path)],
        dropped_columns=skipped,
        resolved_by_stem=resolver.by_stem,
    )
