"""LSVQ: labels_train_test.csv (+ labels_test_1080p.csv), names without extension, videos <name>.mp4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from qualitune.ingest.core import (
    Adapted,
    _as_bool,
    _attributes,
    _column,
    _existing_dirs,
    _frame,
    _names,
    _parse_bool,
    _read_table,
    _Resolver,
)


def read_lsvq(root: Path, *, include_1080p: bool = True) -> Adapted:
    """LSVQ: labels_train_test.csv (+ labels_test_1080p.csv); names without extension; videos <name>.mp4."""
    sources = [(root / "labels_train_test.csv", "main")]
    extra = root / "labels_test_1080p.csv"
    if _as_bool(include_1080p, "include_1080p") and extra.is_file():
        sources.append((extra, "1080p"))
    parts, files, skipped_all = [], [], []
    for labels, subset in sources:
        df = _read_table(labels)
        name_c, mos_c = _column(df, "name", labels), _column(df, "mos", labels)
        test_c = _column(df, "is_test", labels, required=subset == "main")
        is_test = _parse_bool(df[test_c], f"{labels} column {test_c!r}") if test_c else np.ones(len(df), bool)
        if subset == "1080p":
            is_test = np.ones(len(df), dtype=bool)  # the 1080p set is a test set by construction
        attrs, skipped = _attributes(df, [name_c, mos_c])
        skipped_all += [s for s in skipped if s not in skipped_all]
        part = pd.concat(
            [pd.DataFrame({"name": _names(df[name_c]), "mos": df[mos_c].reset_index(drop=True)}), attrs],
            axis=1,
        )
        part["split"] = np.where(is_test, "test", "train")
        part["subset"] = subset
        parts.append(part)
        files.append(str(labels))
    df = pd.concat(parts, ignore_index=True)
    resolver = _Resolver(_existing_dirs(root, root / "videos"), ".mp4")
    paths, found = resolver.resolve_all(df["name"].tolist())
    attrs = df.drop(columns=["name", "mos", "split"])
    frame = _frame(
        df["name"].tolist(), paths, found, df["mos"], split=df["split"], media="video", attributes=attrs
    )
    return Adapted(
        frame,
        scale=(0.0, 100.0),
        labels=files,
        dropped_columns=skipped_all,
        resolved_by_stem=resolver.by_stem,
    )
