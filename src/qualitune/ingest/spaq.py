"""SPAQ: the Excel annotations (MOS 0-100 and attribute scores), images in TestImage/."""

from __future__ import annotations

from pathlib import Path

from qualitune.ingest.core import (
    Adapted,
    _attributes,
    _column,
    _existing_dirs,
    _frame,
    _names,
    _read_table,
    _Resolver,
)


def read_spaq(root: Path) -> Adapted:
    """SPAQ: Excel annotations (MOS 0–100 and five attribute scores), images in TestImage/."""
    name = "MOS and Image attribute scores.xlsx"
    labels = root / "Annotations" / name
    if not labels.is_file() and (root / name).is_file():
        labels = root / name
    df = _read_table(labels)
    name_c, mos_c = _column(df, "Image name", labels), _column(df, "MOS", labels)
    names = _names(df[name_c])
    resolver = _Resolver(_existing_dirs(root / "TestImage", root / "Dataset" / "TestImage"))
    paths, found = resolver.resolve_all(names)
    attrs, skipped = _attributes(df, [name_c, mos_c])
    frame = _frame(names, paths, found, df[mos_c], attributes=attrs)
    return Adapted(
        frame,
        scale=(0.0, 100.0),
        labels=[str(labels)],
        dropped_columns=skipped,
        resolved_by_stem=resolver.by_stem,
    )
