"""LSVQ: labels_train_test.csv (+ labels_test_1080p.csv), names without extension, videos <name>.mp4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from qualitune.ingest import core


def read_lsvq(root: Path, *, include_1080p: bool = True) -> core.Adapted:
    """LSVQ: labels_train_test.csv (+ labels_test_1080p.csv); names without extension; videos <name>.mp4."""
    sources = [(root / "labels_train_test.csv", "main")]
    extra = root / "labels_test_1080p.csv"
    if core._as_bool(include_1080p, "include_1080p") and extra.is_file():
        sources.append((extra, "1080p"))
    parts, files, skipped_all = [], [], []
    for labels, subset in sources:
        df = core._read_table(labels)
        name_c, mos_c = core._column(df, "name", labels), core._column(df, "mos", labels)
        test_c = core._column(df, "is_test", labels, required=subset == "main")
        is_test = (
            core._parse_bool(df[test_c], f"{labels} column {test_c!r}") if test_c else np.ones(len(df), bool)
        )
        if subset == "1080p":
            is_test = np.ones(len(df), dtype=bool)  # the 1080p set is a test set by construction
        attrs, skipped = core._attributes(df, [name_c, mos_c])
        skipped_all += [s for s in skipped if s not in skipped_all]
        part = pd.concat(
            [pd.DataFrame({"name": core._names(df[name_c]), "mos": df[mos_c].reset_index(drop=True)}), attrs],
            axis=1,
        )
        part["split"] = np.where(is_test, "test", "train")
        part["subset"] = subset
        parts.append(part)
        files.append(str(labels))
    df = pd.concat(parts, ignore_index=True)
    resolver = core._Resolver(core._existing_dirs(root, root / "videos"), ".mp4")
    paths, found = resolver.resolve_all(df["name"].tolist())
    attrs = df.drop(columns=["name", "mos", "split"])
    frame = core._frame(
        df["name"].tolist(), paths, found, df["mos"], split=df["split"], media="video", attributes=attrs
    )
    return core.Adapted(
        frame,
        scale=(0.0, 100.0),
        labels=files,
        dropped_columns=skipped_all,
        resolved_by_stem=resolver.by_stem,
    )
