"""BIQ2021: the official train and test CSVs (`Image Name,MOS`, 0-1), images in Images/."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from qualitune.ingest import core


def read_biq2021(root: Path) -> core.Adapted:
    """BIQ2021: official train and test CSVs (`Image Name,MOS`, 0–1), images in Images/."""
    parts = []
    files = []
    for split, fname in (("train", "Train (Images and MOS).csv"), ("test", "Test (Images and MOS).csv")):
        labels = root / fname
        df = core._read_table(labels)
        name_c, mos_c = core._column(df, "Image Name", labels), core._column(df, "MOS", labels)
        attrs, _ = core._attributes(df, [name_c, mos_c])
        part = pd.concat(
            [pd.DataFrame({"name": core._names(df[name_c]), "mos": df[mos_c].reset_index(drop=True)}), attrs],
            axis=1,
        )
        part["split"] = split
        parts.append(part)
        files.append(str(labels))
    df = pd.concat(parts, ignore_index=True)
    resolver = core._Resolver([root / "Images"])
    paths, found = resolver.resolve_all(df["name"].tolist())
    attrs = df.drop(columns=["name", "mos", "split"])
    frame = core._frame(df["name"].tolist(), paths, found, df["mos"], split=df["split"], attributes=attrs)
    return core.Adapted(frame, scale=(0.0, 1.0), labels=files, resolved_by_stem=resolver.by_stem)
