"""BIQ2021: the official train and test CSVs (`Image Name,MOS`, 0-1), images in Images/."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from qualitune.ingest.core import Adapted, _attributes, _column, _frame, _names, _read_table, _Resolver


def read_biq2021(root: Path) -> Adapted:
    """BIQ2021: official train and test CSVs (`Image Name,MOS`, 0–1), images in Images/."""
    parts = []
    files = []
    for split, fname in (("train", "Train (Images and MOS).csv"), ("test", "Test (Images and MOS).csv")):
        labels = root / fname
        df = _read_table(labels)
        name_c, mos_c = _column(df, "Image Name", labels), _column(df, "MOS", labels)
        attrs, _ = _attributes(df, [name_c, mos_c])
        part = pd.concat(
            [pd.DataFrame({"name": _names(df[name_c]), "mos": df[mos_c].reset_index(drop=True)}), attrs],
            axis=1,
        )
        part["split"] = split
        parts.append(part)
        files.append(str(labels))
    df = pd.concat(parts, ignore_index=True)
    resolver = _Resolver([root / "Images"])
    paths, found = resolver.resolve_all(df["name"].tolist())
    attrs = df.drop(columns=["name", "mos", "split"])
    frame = _frame(df["name"].tolist(), paths, found, df["mos"], split=df["split"], attributes=attrs)
    return Adapted(frame, scale=(0.0, 1.0), labels=files, resolved_by_stem=resolver.by_stem)
